"""Shared test setup: quiet TensorFlow, no MLflow telemetry, the repo's real params file;
tiny data, variants and params files for real trainings."""

import fcntl
import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import yaml


def _worker_threads() -> None:
    """Under pytest-xdist, each worker (and every command its tests start) gets its share of
    the CPUs as OpenMP threads: torch's default, a thread per CPU in every worker, oversubscribes
    the cores and slows each training many times. Set before a test imports torch."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus // int(workers)))


_worker_threads()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
import ablations  # noqa: E402,F401  sets the default Keras backend before a test imports keras

REPO = Path(__file__).resolve().parents[1]


def copy_project(repo: Path, names) -> None:
    """Copy the repository's files `names` (folders without caches) into a temporary `repo`,
    for a real `dvc repro` there; a name the checkout lacks is skipped."""
    for name in names:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy(source, target)


def run_ok(cmd, cwd, env, timeout=600, check=True) -> subprocess.CompletedProcess:
    """Run a command; with `check`, fail the test with the end of its output unless it exits 0."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture
def repo_params():
    from ablations.config import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session", autouse=True)
def worker_cwd(tmp_path_factory):
    """Each test session (each xdist worker) works in its own empty folder, never the repo:
    MLflow puts a new experiment's artifacts under ./mlruns of the current directory, a shared
    folder that parallel workers, and `git add -A`, would otherwise all write to."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An empty MLflow SQLite store, created once by MLflow itself: creating a store runs its
    schema migrations (~4 s on 2 CPU cores), copying one takes 0.1 s. The tests about creating
    a store (concurrent trainings, the e2e repro) start from nothing instead."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def copy_store(template, folder) -> str:
    """folder/mlflow.db, a copy of the migrated `template`; returns its tracking URI."""
    shutil.copyfile(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture
def tracking_store(tmp_path, monkeypatch, migrated_store):
    """A real MLflow SQLite store in tmp_path, chosen the way users choose one."""
    uri = copy_store(migrated_store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return uri


def offline(keras_home) -> dict[str, str]:
    """The environment of a command on a machine without internet (every URL refused at once,
    through a proxy nobody listens on) and with an empty Keras cache in `keras_home`."""
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens there
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    env.update(http_proxy=refused, https_proxy=refused, HTTP_PROXY=refused, HTTPS_PROXY=refused,
               KERAS_HOME=str(keras_home), ABLATIONS_DATA_MIRROR="")
    return env


EPOCHS = 3


def write_prepared(folder, n=96, size=8, seed=0):
    """Standardized arrays the train stage reads: two separable classes of noisy images."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for part, count in (("train", n), ("val", n // 2), ("test", n // 2)):
        y = np.arange(count) % 2
        x = rng.normal(size=(count, size, size, 1)).astype(np.float32) + y[:, None, None, None]
        np.save(folder / f"x_{part}.npy", x)
        np.save(folder / f"y_{part}.npy", y.astype(np.int64))
    return folder


def variant(**overrides):
    from ablations.config import Variant

    base = dict(conv_filters=[4], dense_units=[8], epochs=EPOCHS, batch_size=16, seed=7, dropout=0.2)
    return Variant(**{**base, **overrides})


def write_params(folder, variants=("v",), seeds=(7,), overrides=None, **defaults):
    """folder/params.yaml: one study `unit` on prepared data `d`, whose variants (all =
    variant(**defaults), plus `overrides[name]`) run once per seed; the first is the baseline."""
    study_defaults = {k: v for k, v in variant(**defaults).model_dump().items() if k != "seed"}
    params = {"data": {"raw": ["fashion_mnist"], "prepared": {"d": {"source": "fashion_mnist",
              "scaling": "zero_one"}}},
              "studies": {"unit": {"question": "?", "data": "d", "target_val_accuracy": 0.9,
                                   "seeds": list(seeds), "baseline": variants[0],
                                   "defaults": study_defaults,
                                   "variants": {name: (overrides or {}).get(name, {})
                                                for name in variants}}},
              "polyfit": {"coefficients": [1.0, 2.0], "noise": 0.1, "n": 20, "x_range": [0, 1],
                          "max_degree": 2, "folds": 2, "seed": 0}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return folder / "params.yaml"


def train_command(params, data_root, out, checkpoints, *variants):
    """The real CLI command that trains study `unit` (data_root holds prepared dataset `d`)."""
    return [sys.executable, "-m", "ablations.cli", "--params", str(params), "train", "unit",
            *variants, "--data", str(data_root), "--out", str(out), "--checkpoints", str(checkpoints)]


@pytest.fixture(scope="session")
def ray_extra(tmp_path_factory):
    """Ray importable by this interpreter (and the commands it runs): the `ray` extra of
    pyproject.toml pip-installed once when missing, as on a fresh clone under CI. Never a skip.
    xdist workers take turns (a lock in their shared temporary folder): two pip installs into
    one environment at once can break it; the second worker then finds Ray installed."""
    with open(tmp_path_factory.getbasetemp().parent / "ray_extra.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        importlib.invalidate_caches()
        try:
            import ray  # noqa: F401
        except ImportError:
            extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-c",
                            str(REPO / "constraints.txt"), *extras["ray"]], check=True)
            importlib.invalidate_caches()


# Files whose module fixture runs a whole `dvc repro` (or many trainings), longest first. With
# `--dist loadfile` xdist hands files to workers in collection order: these go first, so the
# run ends on short files instead of one worker starting the longest file last.
LONGEST_FILES = ("test_notebook_smoke.py", "test_pipeline_e2e.py", "test_own_network_e2e.py",
                 "test_tracking_faults.py", "test_executors.py", "test_training.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: the order inside a file, and of the other files, is kept
