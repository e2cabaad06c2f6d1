"""MLflow tracking: where the store is, one experiment per study, one run per variant.

The store defaults to `sqlite:///<repo>/mlflow.db` by *absolute* path (a relative one is lost
when `dvc exp run --queue` runs a stage in a copy of the repo); MLFLOW_TRACKING_URI wins.
Under `mlflow run .`, MLFLOW_RUN_ID names the project's run: stage runs become its children
instead of all resuming (and overwriting params in) that one run.

A training must outlive its tracking server: `Guard` turns the first failed MLflow call into one
warning and skips MLflow afterwards; `ablations replay` (replay.py) completes the run later.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from ablations.errors import AblationsError
from ablations.history import metric_steps
from ablations.io import read_json, write_json

# A queued DVC experiment runs in <repo>/.dvc/tmp/exps/<run-dir>/; its store is the real repo's.
_EXP_WORKSPACE = Path(".dvc") / "tmp" / "exps"

# MLflow's defaults retry a failed HTTP request 7 times with exponential backoff (~4 minutes)
# and wait up to 120 s for each answer: a stopped server would stall training for minutes.
# With these a refused connection fails in 2-4 s (retries after 0 s and 2 s, plus up to 1 s
# jitter each) and a server that accepts but never answers in ~50 s. A user's values win.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # retries after the first attempt
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",  # seconds; urllib3 waits 0, 2, 4 … s between tries
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",  # seconds to connect, and to wait for an answer
}


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
    for name, value in _HTTP_DEFAULTS.items():  # read by MLflow at each request: set before any
        os.environ.setdefault(name, value)
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri):
        return mlflow.set_experiment(study).experiment_id


@contextlib.contextmanager
def _first_use_lock(uri: str) -> Iterator[None]:
    """Processes opening one SQLite store take turns while MLflow creates its tables (a run of
    database migrations) and the study's experiment: trainings started together would fail
    both ("Online migration expected to match one row", UNIQUE constraint). Servers and other
    databases handle their own concurrency. The lock is on the store's folder: no lock file
    is left behind (deleting one safely is not possible)."""
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    folder = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve().parent
    folder.mkdir(parents=True, exist_ok=True)  # as MLflow would
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


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


def train_tags(study: str, variant: str, seed: int) -> dict[str, str]:
    return run_tags(study, variant, seed=seed, dvc_stage=f"train@{study}")


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


def start_run(study: str, run_name: str, tags: dict[str, str], run_id: str | None = None) -> str:
    """Create a run in the study's experiment, or mark run `run_id` RUNNING again; return its id.

    Client API only, no active run in this process: when the server is lost, nothing has to
    tell it that the run ended (MLflow's `with start_run()` would, at exit). The caller ends
    the run with MlflowClient().set_terminated.
    """
    parent = _project_run_id()
    experiment_id = use_experiment(study)
    client = MlflowClient()
    if run_id:
        client.update_run(run_id, status="RUNNING")
        return run_id
    if parent:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent}
    # resolve_tags adds the tags mlflow.start_run adds (user, source, git commit).
    return client.create_run(experiment_id, tags=resolve_tags(tags), run_name=run_name).info.run_id


class Guard:
    """Runs the MLflow calls of one training. The first failure (server stopped, store locked…)
    prints one warning line and turns every later call into a no-op: an outage costs seconds,
    never the training. `ok` tells whether MLflow has received everything so far."""

    def __init__(self, advice: str):
        self.advice = advice  # what the user should do: where the results are, how to replay
        self.ok = True

    def __call__(self, when: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not self.ok:
            return
        try:
            call(*args, **kwargs)
        except (MlflowException, OSError) as error:  # requests' errors are OSErrors
            self.ok = False
            print(f"ablations: warning: MLflow tracking at {tracking_uri()} failed {when} "
                  f"({_reason(error)}); {self.advice}", file=sys.stderr, flush=True)


def _reason(error: Exception) -> str:
    """The cause in a few words: MLflow wraps `[Errno 111] Connection refused` in a long text."""
    errno = re.search(r"\[Errno -?\d+\][^'\"()]*", str(error))
    if errno:
        return errno.group(0).strip()
    return (str(error).splitlines() or [repr(error)])[0][:200]


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


def log_missing_metrics(run_id: str, steps: dict[str, dict[int, float]]) -> int:
    """Log each {metric: {step: value}} the run does not hold yet; return how many were logged.
    Idempotent: a step already logged is never logged twice. Non-finite values are skipped
    (MLflow cannot store NaN well; history.csv keeps them)."""
    client = MlflowClient()
    now = int(time.time() * 1000)
    missing = []
    for key, values in steps.items():
        logged = {metric.step for metric in client.get_metric_history(run_id, key)}
        missing += [Metric(key, float(value), now, step) for step, value in values.items()
                    if step not in logged and math.isfinite(value)]
    if missing:
        client.log_batch(run_id, metrics=missing)  # MLflow splits it into allowed batch sizes
    return len(missing)


def log_result(run_id: str, history: list[dict], fit_seconds: float, diverged: bool) -> int:
    """A training's results (train and replay): every epoch's metrics the run lacks (epochs
    trained while the server was down are filled in), fit_seconds and diverged (step 0), the
    `diverged` tag. Returns how many metric values were logged."""
    steps = {**metric_steps(history), "fit_seconds": {0: fit_seconds}, "diverged": {0: float(diverged)}}
    logged = log_missing_metrics(run_id, steps)
    MlflowClient().set_tag(run_id, "diverged", str(diverged).lower())
    return logged


def log_transfer(run_id: str, copied: list[dict], source: str) -> None:
    """What a transfer copied (layer names, weight shapes, rule) and froze: transfer.json
    artifact, and tags with the counts so runs can be filtered on them."""
    client = MlflowClient()
    client.log_dict(run_id, {"from": source, "layers": copied}, "transfer.json")
    client.set_tag(run_id, "transfer_copied", str(len(copied)))
    client.set_tag(run_id, "transfer_frozen", str(sum(row["frozen"] for row in copied)))


def mark_complete(run_json: Path, run_id: str | None = None) -> None:
    """run.json (train output): MLflow holds the whole run, `run_id` if replay made a new one."""
    info = read_json(run_json)
    write_json(run_json, {**info, "run_id": run_id or info["run_id"], "tracking_complete": True})


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


# --------------------------------------------------------------------------- polyfit


def _param_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def _log_degree_runs(scores, extra: dict[int, dict[str, float]]) -> None:
    for s in scores:
        with mlflow.start_run(run_name=f"degree-{s.degree}", nested=True):
            mlflow.set_tag("study", "polyfit")
            mlflow.log_param("degree", s.degree)
            mlflow.log_metrics({"cv_mse_mean": s.mse_mean, "cv_mse_std": s.mse_std,
                                "cv_mse_se": s.mse_se, "train_mse_mean": s.train_mse_mean,
                                **extra.get(s.degree, {})})
            for fold, value in enumerate(s.fold_mse):
                mlflow.log_metric("cv_mse_fold", value, step=fold)


def log_polyfit(config: dict, scores, chosen: tuple[int, int], verdict: str, figure,
                over_draws: dict[str, float], per_degree: dict[int, dict[str, float]]) -> str:
    """One parent run "polyfit" + one nested run per degree (polyfit.DegreeScore `scores` of
    the first draw, plus `per_degree` metrics over all draws; `over_draws` on the parent);
    returns the parent's run id.

    The caller sets the tracking URI and experiment.  Under `mlflow run` (MLFLOW_RUN_ID set)
    the parent becomes a child of that run instead of resuming it (MLflow would otherwise
    resume it and overwrite its params); inside an active run it nests under that run.  An
    exception inside the `with` blocks ends the runs as FAILED (ActiveRun.__exit__).
    """
    outer_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    try:
        true_degree = len(config["coefficients"]) - 1
        best = min(scores, key=lambda s: s.mse_mean)
        if mlflow.active_run() is not None:  # called inside a run: nest under it
            outer = {"nested": True}
        else:
            outer = {"parent_run_id": outer_run_id}
        with mlflow.start_run(run_name="polyfit", tags={"study": "polyfit"}, **outer) as parent:
            mlflow.log_params({key: _param_value(value) for key, value in config.items()})
            mlflow.log_metrics({"chosen_degree_min": chosen[0], "chosen_degree_1se": chosen[1],
                                "true_degree": true_degree, "best_cv_mse": best.mse_mean,
                                **over_draws})
            mlflow.log_figure(figure, "cv_error.png")
            mlflow.log_text(verdict, "verdict.txt")
            _log_degree_runs(scores, per_degree)
            return parent.info.run_id
    finally:
        if outer_run_id is not None:
            os.environ["MLFLOW_RUN_ID"] = outer_run_id

