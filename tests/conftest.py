"""Shared test setup: quiet TensorFlow, no MLflow telemetry, the repo's real params file."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_params():
    from ablations.config import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture
def tracking_store(tmp_path, monkeypatch):
    """A real MLflow SQLite store in tmp_path, chosen the way users choose one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri
