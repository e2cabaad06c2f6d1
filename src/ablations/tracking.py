"""MLflow tracking: where the store is, one experiment per study, one run per variant.

The store defaults to `sqlite:///<repo>/mlflow.db` by *absolute* path (a relative one is lost
when `dvc exp run --queue` runs a stage in a copy of the repo); MLFLOW_TRACKING_URI wins.
Under `mlflow run .`, MLFLOW_RUN_ID names the project's run: stage runs become its children
instead of all resuming (and overwriting params in) that one run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from ablations.errors import AblationsError

# A queued DVC experiment runs in <repo>/.dvc/tmp/exps/<run-dir>/; its store is the real repo's.
_EXP_WORKSPACE = Path(".dvc") / "tmp" / "exps"


def repo_root(start: Path | None = None) -> Path:
    """The DVC repo this process works in, seen through a queued experiment's temporary copy."""
    here = (start or Path.cwd()).resolve()
    parts = here.parts
    marker = _EXP_WORKSPACE.parts
    for i in range(len(parts) - len(marker) + 1):
        if parts[i : i + len(marker)] == marker:
            return Path(*parts[:i])
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").exists():
            return folder
    return here


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast and clearly when a tracking server does not answer (MLflow would retry for
    minutes before giving up)."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise AblationsError(
            f"MLFLOW_TRACKING_URI={uri}: tracking server unreachable ({reason}); start it "
            "(mlflow server --host 127.0.0.1) or unset MLFLOW_TRACKING_URI to use mlflow.db"
        ) from None


def use_experiment(study: str) -> str:
    """Point MLflow at the store and the study's experiment; return the experiment id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.set_experiment(study).experiment_id


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_tags(study: str, variant: str, **extra: Any) -> dict[str, str]:
    tags = {"study": study, "variant": variant, **{k: str(v) for k, v in extra.items()}}
    optional = {
        "git_commit": _git_commit(),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),  # set by `dvc exp run`
    }
    tags.update({k: v for k, v in optional.items() if v})
    return tags


def _project_run_id() -> str | None:
    """Take MLFLOW_RUN_ID (set by `mlflow run`) out of the environment: it is our parent."""
    return os.environ.pop("MLFLOW_RUN_ID", None)


@contextlib.contextmanager
def run(
    study: str, run_name: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume `run_id`) a run in the study's experiment; FAILED if the block raises."""
    parent = _project_run_id()
    experiment_id = use_experiment(study)
    if run_id:
        active = mlflow.start_run(run_id=run_id)
    else:
        active = mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=tags, parent_run_id=parent
        )
    with active:
        yield active


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config → MLflow params ("optimizer_config.momentum": "0.9")."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and "class_name" not in value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def log_metrics(run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step or 0)


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow's inference of them costs 10-13 s per model."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for name in ("keras", "tensorflow-cpu", "tensorflow", "torch", "jax", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            requirements.append(f"{name}=={version(name)}")
    return requirements
