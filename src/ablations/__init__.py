"""ablations: reproducible ablation studies of Keras networks (DVC stages + MLflow tracking)."""

import os

__version__ = "0.1.0"

# The Keras backend, chosen before anything imports keras; KERAS_BACKEND in the environment
# wins. torch is the fastest measured for this pipeline's units on CPU (bench/backends.py:
# no graph tracing per model, where TensorFlow spends 3-8 s per small CNN and ~60 s per
# ResNet50 before the first step); tensorflow and jax run the same code.
DEFAULT_BACKEND = "torch"
os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
