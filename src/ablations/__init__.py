"""ablations: reproducible ablation studies of Keras networks (DVC stages + MLflow tracking)."""

__version__ = "0.1.0"
