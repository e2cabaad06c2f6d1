"""Real (tiny) trainings: outputs, MLflow run, determinism, crash → FAILED, kill -9 → resume."""

import os
import signal
import subprocess
import time

import mlflow
import numpy as np
import pytest
from conftest import train_command, variant, write_params, write_prepared

from ablations.history import read_history
from ablations.io import read_json
from ablations.training import train

def test_outputs_run_and_history(tmp_path, tracking_store):
    data = write_prepared(tmp_path / "data")
    run_id = train("unit", "v", variant(), data, tmp_path / "out", tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"model.keras", "history.csv", "run.json"}
    assert [row["epoch"] for row in read_history(tmp_path / "out" / "history.csv")] == [1, 2, 3]
    assert not (tmp_path / "ckpt").exists()
    run = mlflow.MlflowClient(tracking_store).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["study"] == "unit" and run.data.tags["diverged"] == "false"
    assert run.data.params["dropout"] == "0.2"


def test_same_seed_gives_identical_history(tmp_path, tracking_store):
    data = write_prepared(tmp_path / "data")
    histories = []
    for attempt in ("a", "b"):
        train("unit", attempt, variant(), data, tmp_path / attempt, tmp_path / f"ckpt-{attempt}")
        rows = read_history(tmp_path / attempt / "history.csv")
        histories.append([(r["loss"], r["val_accuracy"]) for r in rows])
    assert histories[0] == histories[1]


def test_a_crash_inside_training_leaves_the_run_failed_and_no_output(tmp_path, tracking_store):
    data = write_prepared(tmp_path / "data")
    np.save(data / "x_val.npy", np.zeros((4, 5, 5, 1), np.float32))  # wrong image size
    with pytest.raises(Exception):
        train("unit", "broken", variant(), data, tmp_path / "out", tmp_path / "ckpt")
    runs = mlflow.MlflowClient(tracking_store).search_runs(
        [mlflow.get_experiment_by_name("unit").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (tmp_path / "out").exists()


def test_diverging_variant_is_recorded_not_crashed(tmp_path, tracking_store):
    data = write_prepared(tmp_path / "data")
    run_id = train("unit", "ones", variant(learning_rate=1e6, optimizer="sgd"), data,
                   tmp_path / "out", tmp_path / "ckpt")
    assert read_json(tmp_path / "out" / "run.json")["diverged"] is True
    assert mlflow.MlflowClient(tracking_store).get_run(run_id).data.tags["diverged"] == "true"


def _train_command(tmp_path, data, out, checkpoint):
    """The real CLI train command of a 6-epoch variant with dropout and BN."""
    params = write_params(tmp_path, epochs=6, batch_size=8, norm="after")
    return train_command(params, "v", data, out, checkpoint)


def _metrics(history_csv):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in read_history(history_csv)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Data and the metrics of the same training run without interruption."""
    folder = tmp_path_factory.mktemp("reference")
    data = write_prepared(folder / "data", n=1024, size=16)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    command = _train_command(folder, data, folder / "out", folder / "ckpt")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return data, _metrics(folder / "out" / "history.csv")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_training_resumes_to_identical_metrics(tmp_path, tracking_store, uninterrupted,
                                                           signum):
    """A real process stopped after an epoch: the rerun resumes into the same MLflow run and
    ends with exactly the metrics of a training that was never interrupted."""
    data, reference = uninterrupted
    command = _train_command(tmp_path, data, tmp_path / "out", tmp_path / "ckpt")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "ckpt" / "history.csv"
    deadline = time.time() + 240
    while len(read_history(history)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.kill(process.pid, signum)
    assert process.wait() != 0
    done_before = len(read_history(history))
    assert 2 <= done_before < 6, "the signal must land mid-training"
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Epoch {done_before + 1}/6" in resumed.stdout + resumed.stderr  # resumed, not restarted
    assert _metrics(tmp_path / "out" / "history.csv") == reference  # bit-identical
    run_id = read_json(tmp_path / "out" / "run.json")["run_id"]
    client = mlflow.MlflowClient(tracking_store)
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # no duplicate, no missing epoch
    assert client.get_run(run_id).info.status == "FINISHED"
