"""ablations: reproducible ablation studies of Keras networks (DVC stages + MLflow tracking)."""

import os

__version__ = "0.1.0"

# The Keras backend, chosen before anything imports keras; KERAS_BACKEND in the environment
# wins. torch is the fastest measured for this pipeline's units on CPU (bench/backends.py;
# figures in docs/performance.md): it traces no graph per model, where TensorFlow does before each
# model's first step. tensorflow and jax run the same code.
DEFAULT_BACKEND = "torch"
os.environ.setdefault("KERAS_BACKEND", DEFAULT_BACKEND)
