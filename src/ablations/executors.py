"""Where the train stage runs a study's units: `local` (in this process, one after another; the
default) or `ray` (each unit a Ray task, on a local Ray instance or the cluster at RAY_ADDRESS).

The executor changes where units run, never what they compute, so it is chosen outside
params.yaml: `--executor` or ABLATIONS_EXECUTOR. So are the resources each Ray task asks for,
ABLATIONS_CPUS_PER_UNIT and ABLATIONS_GPUS_PER_UNIT: they describe the machines, not the
experiment, and one study's params (what `dvc exp show` compares, what git versions) must
reproduce it on a laptop and on a GPU cluster alike.

Both executors run the same `training.train_study` per unit, with the same semantics: the
fingerprints (ablations.units) decided which units are in `todo`; a transfer source finishes
before a unit that starts from it; each unit writes its outputs atomically into the stage's
output folder and resumes from its checkpoint folder. Under Ray those folders, and the prepared
data, are read and written by the workers themselves: they must be on a filesystem every node
mounts at the same path (see docs/ray.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from importlib.metadata import version
from pathlib import Path

from ablations.errors import AblationsError
from ablations.units import Unit, code_digest

EXECUTORS = ("local", "ray")
EXECUTOR_ENV = "ABLATIONS_EXECUTOR"
CPUS_ENV, GPUS_ENV = "ABLATIONS_CPUS_PER_UNIT", "ABLATIONS_GPUS_PER_UNIT"
# Seconds of training a kill -9 may cost at most: an epoch's end is backed up once this much
# has passed since the last backup, and the last epoch always is. A backup saves every weight
# and optimizer slot: tens of milliseconds for the small networks, a few per cent of an epoch
# that takes a second. Results do not depend on it (a resume from any backup is bit-identical),
# so it is chosen here, like the executor, outside params.yaml and the fingerprints.
BACKUP_ENV, BACKUP_SECONDS = "ABLATIONS_BACKUP_SECONDS", 30.0
RAY_EXTRA = 'pip install -e ".[ray]"'


def choose(option: str | None) -> str:
    """The executor named by `--executor`, else by ABLATIONS_EXECUTOR, else `local`."""
    name = option or os.environ.get(EXECUTOR_ENV) or "local"
    if name not in EXECUTORS:
        where = "--executor" if option else EXECUTOR_ENV
        raise AblationsError(f"{where}={name}: no such executor (have {', '.join(EXECUTORS)})")
    return name


def backup_seconds() -> float:
    """ABLATIONS_BACKUP_SECONDS, default BACKUP_SECONDS; 0: a backup after every epoch."""
    return _number(BACKUP_ENV, BACKUP_SECONDS, "seconds between backups; 0: every epoch")


def train(executor: str, study: str, todo: list[Unit]) -> None:
    """Train `todo` (in plan order: transfer sources first) with `executor`."""
    seconds = backup_seconds()
    if executor == "local":
        from ablations.training import train_study  # imports Keras

        train_study(study, todo, seconds)
    else:
        train_on_ray(study, todo, seconds)


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise AblationsError(
            f"the ray executor needs Ray, which cannot be imported ({error}); install the "
            f"extra: {RAY_EXTRA}") from None
    return ray


def _number(name: str, default: float | None, meaning: str) -> float | None:
    """Environment variable `name` as a finite number ≥ 0, else `default` when unset."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # NaN too
        raise AblationsError(f"{name}={text}: must be a number ≥ 0 ({meaning})")
    return value


def _resource(name: str, default: float | None) -> float | None:
    return _number(name, default, "a fraction shares a device")


def requested_resources() -> dict[str, float | None]:
    """ABLATIONS_CPUS_PER_UNIT (default 1) and ABLATIONS_GPUS_PER_UNIT (None: decided once the
    cluster is known), checked before Ray starts."""
    return {"num_cpus": _resource(CPUS_ENV, 1.0), "num_gpus": _resource(GPUS_ENV, None)}


def unit_resources(requested: dict[str, float | None], cluster: dict[str, float]) -> dict[str, float]:
    """What each unit's task asks for: by default 1 CPU, and 1 GPU when the cluster has GPUs."""
    gpus = requested["num_gpus"]
    if gpus is None:
        gpus = 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    return {**requested, "num_gpus": gpus}


def _check_feasible(resources: dict[str, float], cluster: dict[str, float]) -> None:
    """A task asking for more than a fixed local instance has would wait forever. (A cluster
    may add nodes when asked: an autoscaler does, so this is not checked there.)"""
    for key, kind, env in (("num_cpus", "CPU", CPUS_ENV), ("num_gpus", "GPU", GPUS_ENV)):
        if resources[key] > cluster.get(kind, 0):
            raise AblationsError(f"{env}={resources[key]:g}: this machine's Ray has "
                                 f"{cluster.get(kind, 0):g} {kind}s")


def _absolute(unit: Unit) -> Unit:
    """The unit with absolute paths: workers do not share the driver's working directory."""
    def resolve(path):
        return None if path is None else Path(path).resolve()

    return dataclasses.replace(unit, data_dir=resolve(unit.data_dir), out=resolve(unit.out),
                               checkpoint=resolve(unit.checkpoint), source=resolve(unit.source))


def _environment() -> dict[str, str]:
    """What a unit's fingerprint assumed besides its config and data: checked on the worker."""
    return {"code": code_digest(), "keras": version("keras"),
            "backend": os.environ["KERAS_BACKEND"]}


def local_threads() -> str:
    """CPU threads of one operation in a local run: OMP_NUM_THREADS, else every CPU this
    process may use (OpenMP's default, which torch follows)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return os.environ["OMP_NUM_THREADS"]
    return str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def _worker_env() -> dict[str, str]:
    """Environment of every worker: the driver's Keras backend and MLflow store (resolved here,
    where the repo is; the workers' cwd may be elsewhere), and its thread count."""
    from ablations import tracking

    names = ("KERAS_BACKEND", "TF_CPP_MIN_LOG_LEVEL", "MLFLOW_DISABLE_TELEMETRY",
             "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_ROOT")  # the study run's key and tags
    env = {name: os.environ[name] for name in names if name in os.environ}
    # On CPU the thread count sets how sums are split, hence their last bits: Ray would give
    # a task num_cpus threads, a local run uses every CPU. Same count, same bits.
    return {**env, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), "OMP_NUM_THREADS": local_threads()}


def train_one(study: str, unit: Unit, expected: dict[str, str], parent_run: str | None,
              backup_seconds: float) -> str:
    """A Ray task: train one unit on this worker; return its MLflow run id."""
    found = _environment()
    if found != expected:
        differing = {k: (expected[k], found[k]) for k in expected if expected[k] != found[k]}
        raise AblationsError(f"the Ray worker runs other software than the driver (driver, "
                             f"worker): {differing}; install the same versions on the cluster")
    if parent_run:  # `mlflow run`'s run: the parent of each unit's run, as in a local run
        os.environ["MLFLOW_RUN_ID"] = parent_run
    from ablations.training import train_study

    [run_id] = train_study(study, [unit], backup_seconds)
    return run_id


def train_on_ray(study: str, todo: list[Unit], backup_seconds: float) -> None:
    """Each unit a Ray task on the cluster at RAY_ADDRESS, or on a Ray instance started here
    (and stopped at the end). Fails with the first failed unit's error once every unit that
    could run has finished: their outputs are kept, so the next run trains only the rest."""
    requested = requested_resources()
    ray = _import_ray()
    import ablations

    address = os.environ.get("RAY_ADDRESS") or None
    # The workers import this very copy of the package (shipped with the job): the code whose
    # digest is in the fingerprints, whatever is installed on the cluster.
    job = {"runtime_env": {"env_vars": _worker_env(), "py_modules": [ablations]}}
    local = {} if address else {"include_dashboard": False}
    parent_run = os.environ.pop("MLFLOW_RUN_ID", None)  # handed to each task explicitly
    ray.init(address=address, logging_level="warning", **job, **local)
    try:
        cluster = ray.cluster_resources()
        resources = unit_resources(requested, cluster)
        if not address:
            _check_feasible(resources, cluster)
        todo = [_absolute(unit) for unit in todo]
        finished, failed = _run_tasks(ray, study, todo, resources, parent_run, backup_seconds)
    finally:
        ray.shutdown()  # stops a local instance; only disconnects from a cluster
    if failed:
        _fail(study, todo, finished, failed)


def _run_tasks(ray, study: str, todo: list[Unit], resources: dict[str, float],
               parent_run: str | None, backup_seconds: float
               ) -> tuple[list[Unit], list[tuple[Unit, Exception]]]:
    """Submit every unit whose transfer source is not in `todo`, the others once their source
    has finished; wait for all. Returns (finished units, [(failed unit, its error)])."""
    task = ray.remote(**resources)(train_one)
    expected = _environment()
    to_train = {unit.out for unit in todo}
    running: dict = {}  # ObjectRef → Unit

    def submit(unit: Unit) -> None:
        name = f"train {study} {unit.name}"
        running[task.options(name=name).remote(study, unit, expected, parent_run,
                                                             backup_seconds)] = unit

    for unit in todo:
        if unit.source not in to_train:
            submit(unit)
    finished, failed = [], []
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        unit = running.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayError as error:  # the unit raised, or its worker died
            failed.append((unit, error))
            continue
        finished.append(unit)
        print(f"train {study} {unit.name} finished on Ray ({len(finished)}/{len(todo)})", flush=True)
        for dependent in todo:
            if dependent.source == unit.out:
                submit(dependent)
    return finished, sorted(failed, key=lambda pair: todo.index(pair[0]))


def _fail(study: str, todo: list[Unit], finished: list[Unit], failed: list[tuple[Unit, Exception]]):
    """Raise the first failed unit's error (in plan order), after one line on what became of
    the others."""
    not_run = len(todo) - len(finished) - len(failed)
    print(f"train {study}: {len(failed)} unit(s) failed ({', '.join(u.name for u, _ in failed)}); "
          f"{len(finished)} finished and kept, {not_run} not run (their transfer source failed)",
          file=sys.stderr, flush=True)
    unit, error = failed[0]
    cause = getattr(error, "cause", None)  # the exception the unit raised, as raised
    if isinstance(cause, AblationsError):  # a user error: one `error:` line, as locally
        raise type(cause)(f"{unit.name}: {cause}") from None
    raise error  # its text holds the worker's traceback
