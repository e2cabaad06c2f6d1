"""MLflow tracking, the only module that imports mlflow: where the store is, experiments,
runs (start, resume, nest, end), what they hold (params, epochs, results, datasets, models,
figures), and the outage guard.

The store defaults to `sqlite:///<repo>/mlflow.db` by *absolute* path (a relative one is lost
when `dvc exp run --queue` runs a stage in a copy of the repo); MLFLOW_TRACKING_URI wins.
Every study is an experiment marked as model training (MLflow 3's UI then opens it on its
runs). Runs nest: [the `mlflow run` entry point's run, MLFLOW_RUN_ID] → one run per study and
DVC experiment → one run per (variant, seed), or the evaluate summary. Only the client API is
used, with explicit run ids: no process-wide active run to end, or to lose with the server.

A training must outlive its tracking server: `Guard` turns the first failed MLflow call into one
warning and skips MLflow afterwards; `ablations replay` (replay.py) completes the run later.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import mlflow
import numpy as np
from mlflow.entities import (DatasetInput, InputTag, LifecycleStage, LoggedModelStatus, Metric,
                             Param, Run, RunTag)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID

from ablations.errors import AblationsError
from ablations.history import metric_steps
from ablations.io import read_json, sha256_files, write_json
from ablations.layout import DatasetFolder

# The experiment tag that marks a study's experiment as model training. MLflow 3.17's UI with
# its workflow switch chooses the view from that switch instead (remembered in the browser,
# GenAI by default) or from the address: ui_runs_url gives the training view's address.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def ui_runs_url(server: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs in the Model training view."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
    """The DVC repo this process works in: DVC_ROOT, which DVC sets for every stage (for a
    queued or temporary experiment, the repo it copied), else found from the folder."""
    if start is None and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
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


def use_experiment(name: str) -> str:
    """Point MLflow at the store and experiment `name` (created marked as model training);
    return the experiment id."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for key, value in _HTTP_DEFAULTS.items():  # read by MLflow at each request: set before any
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    with _first_use_lock(uri):
        experiment = mlflow.set_experiment(name)
        if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
            MlflowClient().set_experiment_tag(experiment.experiment_id, *EXPERIMENT_KIND)
        return experiment.experiment_id


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


def dvc_tags() -> dict[str, str]:
    """Where the run comes from, as DVC tells each stage it runs: the experiment's name and
    baseline commit (`dvc exp run`), the repo; and the git commit checked out."""
    tags = {
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME"),
        "dvc_exp_baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV"),
        "dvc_root": os.environ.get("DVC_ROOT"),
        "git_commit": _git_commit(),
    }
    return {key: value for key, value in tags.items() if value}


def run_tags(study: str, variant: str, **extra: Any) -> dict[str, str]:
    return {"study": study, "variant": variant, **{k: str(v) for k, v in extra.items()},
            **dvc_tags()}


def train_tags(study: str, variant: str, seed: int) -> dict[str, str]:
    return run_tags(study, variant, seed=seed, dvc_stage=f"train@{study}")


def outer_run_id() -> str | None:
    """The run of `mlflow run`'s entry point (MLFLOW_RUN_ID, inherited by every stage that
    `dvc repro` starts): the study runs become its children rather than resuming it."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def start_run(experiment: str, name: str, tags: dict[str, str], *, run_id: str | None = None,
              parent_id: str | None = None) -> str:
    """Create a run in `experiment` (a child of `parent_id`), or mark run `run_id` RUNNING
    again; return its id. End it with `end_run`."""
    experiment_id = use_experiment(experiment)
    if run_id:
        MlflowClient().update_run(run_id, status="RUNNING")
        return run_id
    return _create_run(experiment_id, name, tags, parent_id)


def _create_run(experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None) -> str:
    if parent_id:
        tags = {**tags, MLFLOW_PARENT_RUN_ID: parent_id}
    # resolve_tags adds the tags mlflow.start_run adds (user, source, git commit).
    return MlflowClient().create_run(experiment_id, tags=resolve_tags(tags), run_name=name).info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """End the run; a study's run then spans it (`_span_parent`)."""
    client = MlflowClient()
    client.set_terminated(run_id, status)
    _span_parent(client, client.get_run(run_id))


def _span_parent(client: MlflowClient, child: Run) -> None:
    """MLflow's UI shows a run's duration as end_time - start_time. A study's run is created
    (and ended) before its first unit starts, so it would last milliseconds: each child that
    ends moves the study run's end time up to its own. A parent still RUNNING (polyfit's,
    `mlflow run`'s) ends on its own. Units ending together (Ray) take turns on a SQLite store,
    so an earlier end never overwrites a later one."""
    parent_id = child.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if not parent_id:
        return
    with _first_use_lock(tracking_uri()):
        parent = client.get_run(parent_id)
        if parent.data.tags.get("kind") != "study" or parent.info.status == "RUNNING":
            return
        if (parent.info.end_time or 0) < child.info.end_time:
            client.set_terminated(parent_id, parent.info.status, end_time=child.info.end_time)


@contextlib.contextmanager
def run(experiment: str, name: str, tags: dict[str, str], *, run_id: str | None = None,
        parent_id: str | None = None) -> Iterator[str]:
    """`start_run` … `end_run`: the run is FINISHED after the block, FAILED if it raises."""
    run_id = start_run(experiment, name, tags, run_id=run_id, parent_id=parent_id)
    try:
        yield run_id
    except BaseException:
        end_run(run_id, "FAILED")
        raise
    end_run(run_id)


def study_run_id(study: str) -> str:
    """The run of `study` in this DVC experiment (found by its tags, or created): the parent of
    the study's unit and summary runs. One per (DVC experiment or workspace, baseline commit,
    `mlflow run` entry point)."""
    tags = {"study": study, "kind": "study", **dvc_tags()}
    key = {"dvc_exp_name": tags.get("dvc_exp_name", "workspace"),
           "dvc_exp_baseline_rev": tags.get("dvc_exp_baseline_rev") or tags.get("git_commit", ""),
           "outer_run": outer_run_id() or ""}
    tags["study_run_key"] = "|".join(key.values())
    experiment_id = use_experiment(study)
    with _first_use_lock(tracking_uri()):  # trainings started together find or make one
        found = MlflowClient().search_runs(
            [experiment_id], filter_string=f"tags.study_run_key = '{tags['study_run_key']}' "
                                           "and tags.kind = 'study'", order_by=["start_time ASC"])
        if found:
            return found[0].info.run_id
        run_id = _create_run(experiment_id, study, tags, outer_run_id())
    end_run(run_id)  # its children carry the work; each stage's own run has its status
    return run_id


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


def log_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Finite values only (MLflow cannot store NaN well; the DVC outputs keep them)."""
    _log_steps(run_id, {step: metrics})


def _log_steps(run_id: str, steps: dict[int, dict[str, float]]) -> None:
    """{step: {key: value}} in one batch, finite values only (see log_metrics)."""
    timestamp = int(time.time() * 1000)
    batch = [Metric(key, float(value), timestamp, step) for step, metrics in steps.items()
             for key, value in metrics.items() if value is not None and math.isfinite(value)]
    if batch:
        MlflowClient().log_batch(run_id, metrics=batch)


def log_series(run_id: str, key: str, values) -> None:
    """values[i] as metric `key` at step i."""
    timestamp = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(key, float(value), timestamp, step)
                                              for step, value in enumerate(values)])


def log_epochs(run_id: str, rows: list[dict[str, float]]) -> None:
    """Rows of history.csv as metrics with step = epoch (numbered from 1), in one batch."""
    _log_steps(run_id, {int(row["epoch"]): {key: value for key, value in row.items() if key != "epoch"}
                        for row in rows})


def log_params(run_id: str, params: dict[str, Any]) -> None:
    """A (nested) config as MLflow params, see `flatten`."""
    MlflowClient().log_batch(run_id, params=[Param(k, v) for k, v in flatten(params).items()])


def set_tag(run_id: str, key: str, value: str) -> None:
    MlflowClient().set_tag(run_id, key, value)


def tag_key(text: str) -> str:
    """`text` as an MLflow tag key: characters outside the allowed set (letters, digits, _ - .
    space / :) replaced by "_" ("−" by "-"), at most 250 characters (MLflow's limit)."""
    return re.sub(r"[^\w\-. /:]", "_", text.replace("−", "-"), flags=re.ASCII)[:250]


def tag_decisions(run_id: str, sentences: dict[str, str], decided: str) -> None:
    """A study run's decisions (ablations.decisions): tag `decision.<answer>` = its headline
    sentence per answer, and `decisions` = "k of n" decided."""
    tags = [RunTag(f"decision.{tag_key(answer)}", sentence) for answer, sentence in sentences.items()]
    tags.append(RunTag("decisions", decided))
    for start in range(0, len(tags), 100):  # MLflow takes at most 100 tags a batch
        MlflowClient().log_batch(run_id, tags=tags[start:start + 100])


def log_artifacts(run_id: str, folder: Path) -> None:
    MlflowClient().log_artifacts(run_id, str(folder))


def log_artifact(run_id: str, path: Path) -> None:
    MlflowClient().log_artifact(run_id, str(path))


def log_dict(run_id: str, data: dict, name: str) -> None:
    MlflowClient().log_dict(run_id, data, name)


def log_text(run_id: str, text: str, name: str) -> None:
    MlflowClient().log_text(run_id, text, name)


def log_figure(run_id: str, figure, name: str) -> None:
    MlflowClient().log_figure(run_id, figure, name)


def find_run(run_id: str) -> Run | None:
    """The run, or None if the store does not hold it (another store, a deleted run)."""
    try:
        found = MlflowClient().get_run(run_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return None if found.info.lifecycle_stage == LifecycleStage.DELETED else found


# The prepared dataset's parts as MLflow contexts (what the Dataset column shows).
DATASET_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}


def _local_source(folder: Path):
    """A local folder as MLflow's dataset source of type "local". Given as a path, MLflow would
    guess its type among every registered source, find two local ones (for "" and "file://")
    and warn "can be interpreted in multiple ways" on each dataset."""
    import json

    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    return get_dataset_source_from_json(json.dumps({"uri": str(folder)}), "local")


@cache
def _dataset_inputs(data_dir: Path) -> tuple[DatasetInput, ...]:
    """One MLflow dataset per part of a prepared dataset: its arrays (schema, profile), the
    files' path and the sha256 of their bytes as digest (cut to the 32 characters a store's
    digest column holds). Computed once per process and dataset."""
    from mlflow.data import from_numpy

    inputs = []
    for part, context in DATASET_CONTEXTS.items():
        files = [DatasetFolder(data_dir).x(part), DatasetFolder(data_dir).y(part)]
        dataset = from_numpy(np.load(files[0], mmap_mode="r"), targets=np.load(files[1]),
                             source=_local_source(files[0].parent), name=f"{data_dir.name}/{part}",
                             digest=sha256_files(files)[:32])
        inputs.append(DatasetInput(dataset._to_mlflow_entity(),  # noqa: SLF001 (what log_input does)
                                   tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    return tuple(inputs)


def log_datasets(run_id: str, data_dir: Path) -> None:
    """The prepared dataset a unit trained and was tested on, as the run's inputs."""
    _log_inputs(run_id, list(_dataset_inputs(Path(data_dir))))


def log_missing_datasets(run: Run, data_dir: Path) -> int:
    """The parts of the prepared dataset that `run` lacks as inputs (replay after an outage
    before training logged them); returns how many were logged."""
    logged = {(given.dataset.name, given.dataset.digest) for given in run.inputs.dataset_inputs}
    missing = [given for given in _dataset_inputs(Path(data_dir))
               if (given.dataset.name, given.dataset.digest) not in logged]
    if missing:
        _log_inputs(run.info.run_id, missing)
    return len(missing)


def _log_inputs(run_id: str, datasets: list[DatasetInput]) -> None:
    try:
        MlflowClient().log_inputs(run_id, datasets=datasets)
    except MlflowException as error:
        # The SQL store looks a dataset up, then inserts it: two trainings of one study logging
        # the same dataset at once can both miss it, and the second insert breaks the unique
        # key. Once more, the lookup finds the row the other process wrote.
        if "UNIQUE constraint failed" not in str(error):
            raise
        MlflowClient().log_inputs(run_id, datasets=datasets)


def log_model(model, run_id: str) -> None:
    """Log a Keras model into run `run_id` (train and replay). Model.log is what
    mlflow.keras.log_model calls, with the run given explicitly instead of an active run."""
    import mlflow.keras
    from mlflow.models import Model, infer_signature

    # The signature holds shapes and dtypes only: zero batches give the same as real images and
    # a prediction, without running one.
    def zeros(tensor):
        return np.zeros((2, *tensor.shape[1:]), dtype=tensor.dtype)

    signature = infer_signature(zeros(model.inputs[0]), zeros(model.outputs[0]))
    Model.log(None, mlflow.keras, name="model", run_id=run_id, model=model, signature=signature,
              pip_requirements=pip_requirements())


def has_model(run: Run) -> bool:
    """A model whose upload finished (one cut off by an outage stays PENDING)."""
    models = MlflowClient().search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'")
    return any(model.status == LoggedModelStatus.READY for model in models)


def pip_requirements() -> list[str]:
    """Given explicitly: MLflow infers them by importing the model in a subprocess, which costs
    more than the small models' training."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for name in ("keras", "tensorflow-cpu", "tensorflow", "torch", "jax", "numpy"):
        with contextlib.suppress(PackageNotFoundError):
            requirements.append(f"{name}=={version(name)}")
    return requirements


# --------------------------------------------------------------------------- polyfit


def _log_degree_runs(scores, parent_id: str, extra: dict[int, dict[str, float]]) -> None:
    for s in scores:
        with run("polyfit", f"degree-{s.degree}", {"study": "polyfit"}, parent_id=parent_id) as run_id:
            log_params(run_id, {"degree": s.degree})
            log_metrics(run_id, {"cv_mse_mean": s.mse_mean, "cv_mse_std": s.mse_std,
                                 "cv_mse_se": s.mse_se, "train_mse_mean": s.train_mse_mean,
                                 **extra.get(s.degree, {})})
            log_series(run_id, "cv_mse_fold", s.fold_mse)  # step = fold


def log_polyfit(config: dict, scores, chosen: tuple[int, int], verdict: str, figure,
                over_draws: dict[str, float], per_degree: dict[int, dict[str, float]]) -> str:
    """One parent run "polyfit" + one nested run per degree (polyfit.DegreeScore `scores` of
    the first draw, plus `per_degree` metrics over all draws; `over_draws` on the parent);
    returns the parent's run id. Under `mlflow run` (MLFLOW_RUN_ID set) the parent is a child
    of that run. An exception ends the runs as FAILED.
    """
    true_degree = len(config["coefficients"]) - 1
    best = min(scores, key=lambda s: s.mse_mean)
    tags = {"study": "polyfit", "kind": "study", **dvc_tags()}
    with run("polyfit", "polyfit", tags, parent_id=outer_run_id()) as run_id:
        log_params(run_id, config)
        log_metrics(run_id, {"chosen_degree_min": chosen[0], "chosen_degree_1se": chosen[1],
                             "true_degree": true_degree, "best_cv_mse": best.mse_mean,
                             **over_draws})
        log_figure(run_id, figure, "cv_error.png")
        log_text(run_id, verdict, "verdict.txt")
        _log_degree_runs(scores, run_id, per_degree)
        return run_id

