"""Tracking faults with real processes: a tracking server stopped mid-training (the training
finishes, `ablations replay` completes the run later) and concurrent trainings on one SQLite
store."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import copy_store, train_command, write_params, write_prepared
from mlflow import MlflowClient

from ablations.history import FIELDS, read_history
from ablations.io import read_json

EPOCHS = 6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(uri: str | None) -> dict[str, str]:
    # A backup, hence a logged epoch, after every epoch: the server stops mid-training
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "ABLATIONS_BACKUP_SECONDS": "0"}
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, "MLFLOW_TRACKING_URI": uri} if uri else env


class Server:
    """`mlflow server` on a SQLite store and an artifact folder in `folder`; stop() and start()
    again on the same store and port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                   "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                   "--artifacts-destination", str(self.folder / "artifacts")]
        log = open(self.folder / "server.log", "ab")
        # Own process group: the server's worker processes stop with it.
        # No job runner processes (MLflow's background jobs, unused here): 2 cores are few.
        env = {**_env(None), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True,
                                        env=env)
        deadline = time.time() + 60
        while time.time() < deadline and self.process.poll() is None:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()}")

    def stop(self) -> None:
        """An outage as a crash: at once (a graceful SIGTERM can take the server seconds, in
        which the training may finish before the test sees the server gone)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def server(tmp_path, migrated_store):
    (tmp_path / "server").mkdir()
    copy_store(migrated_store, tmp_path / "server")  # where Server keeps its store
    server = Server(tmp_path / "server")
    server.start()
    yield server
    server.stop()


def _steps(client, run_id, key):
    return sorted(metric.step for metric in client.get_metric_history(run_id, key))


def _replay(params, out, uri):
    command = [sys.executable, "-m", "ablations.cli", "--params", str(params), "replay", "unit",
               "v", "--seed", "7", "--data", str(params.parent / "data"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(uri), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _wait_for(condition, process, seconds=90):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)


def test_server_stopped_mid_training_then_replay(tmp_path, server, migrated_store):
    write_prepared(tmp_path / "data" / "d", n=1024, size=16)
    params = write_params(tmp_path, epochs=EPOCHS, batch_size=8)
    out, checkpoint = tmp_path / "out" / "v" / "seed7", tmp_path / "ckpt" / "v" / "seed7"
    stderr = tmp_path / "train.err"
    with open(stderr, "w") as errors:
        command = train_command(params, tmp_path / "data", tmp_path / "out", tmp_path / "ckpt")
        training = subprocess.Popen(command,
                                    stdout=subprocess.DEVNULL, stderr=errors, env=_env(server.uri))
        _wait_for(lambda: read_history(checkpoint / "history.csv"), training)
        server.stop()
        done_before = len(read_history(checkpoint / "history.csv"))
        # Restarted once the training has noticed the outage, while it trains on (saves time).
        _wait_for(lambda: "ablations: warning" in stderr.read_text(), training)
        server.start()  # same store, same port
        assert training.wait(timeout=120) == 0, stderr.read_text()[-3000:]
    assert 1 <= done_before < EPOCHS, "the server must stop mid-training"

    # The training finished and kept everything; one warning says how to complete the run.
    warnings = [line for line in stderr.read_text().splitlines() if "ablations: warning" in line]
    assert len(warnings) == 1, stderr.read_text()[-3000:]
    assert (f"ablations replay unit v --seed 7 --data {tmp_path / 'data'} --out {out}"
            in warnings[0])
    assert {p.name for p in out.iterdir()} == {
        "model.keras", "history.csv", "run.json", "test_predictions.npy"}
    assert [row["epoch"] for row in read_history(out / "history.csv")] == list(range(1, EPOCHS + 1))
    info = read_json(out / "run.json")
    assert info["tracking_complete"] is False

    client = MlflowClient(server.uri)
    assert client.get_run(info["run_id"]).info.status == "RUNNING"  # as the outage left it
    _replay(params, out, server.uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    for key in FIELDS[1:]:
        assert _steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key
    assert run.data.params["batch_size"] == "8" and run.data.tags["diverged"] == "false"
    assert "fit_seconds" in run.data.metrics
    models = client.search_logged_models([run.info.experiment_id])
    assert [(m.source_run_id, m.status.value) for m in models] == [(run.info.run_id, "READY")]
    assert read_json(out / "run.json") == {**info, "tracking_complete": True}

    # A second replay changes nothing.
    again = _replay(params, out, server.uri)
    assert "0 metric values, 0 params, 0 dataset inputs, model already logged" in again.stdout
    rerun = client.get_run(info["run_id"])
    assert rerun.info.end_time == run.info.end_time
    assert rerun.data.to_dictionary() == run.data.to_dictionary()
    assert len(client.search_logged_models([run.info.experiment_id])) == 1
    for key in FIELDS[1:]:
        assert _steps(client, run.info.run_id, key) == list(range(1, EPOCHS + 1)), key

    # Into a store that lacks the run: a new run receives everything, its dataset inputs too.
    fresh = copy_store(migrated_store, tmp_path)
    created = _replay(params, out, fresh)
    assert "3 dataset inputs" in created.stdout
    new = MlflowClient(fresh).get_run(read_json(out / "run.json")["run_id"])
    assert sorted((given.dataset.name, given.tags[0].value)
                  for given in new.inputs.dataset_inputs) == [
        ("d/test", "test"), ("d/train", "training"), ("d/val", "validation")]
    assert {given.dataset.source_type for given in new.inputs.dataset_inputs} == {"local"}
    assert {given.dataset.digest for given in new.inputs.dataset_inputs} == {
        given.dataset.digest for given in run.inputs.dataset_inputs}


def test_replay_with_the_server_down_is_a_one_line_error(tmp_path):
    params = write_params(tmp_path)
    (tmp_path / "out").mkdir()
    for name in ("model.keras", "history.csv"):
        (tmp_path / "out" / name).write_text("")
    (tmp_path / "out" / "run.json").write_text('{"run_id": "0123"}')
    (tmp_path / "d").mkdir()  # the unit's prepared data: replay checks it before MLflow
    command = [sys.executable, "-m", "ablations.cli", "--params", str(params),
               "replay", "unit", "v", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=_env(f"http://127.0.0.1:{_free_port()}"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: MLFLOW_TRACKING_URI=http://127.0.0.1:")
    assert len(done.stderr.splitlines()) == 1


def test_concurrent_trainings_share_one_sqlite_store(tmp_path):
    """4 processes create the store, the experiment and their runs at the same moment."""
    names = ["a", "b", "c", "d"]
    write_prepared(tmp_path / "data" / "d")
    params = write_params(tmp_path, names)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trainings = [
        subprocess.Popen(train_command(params, tmp_path / "data", tmp_path / "out",
                                       tmp_path / "ckpt", name),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(uri))
        for name in names
    ]
    errors = [training.communicate(timeout=300)[1] for training in trainings]
    for training, error in zip(trainings, errors):
        assert training.returncode == 0, error[-3000:]
        assert "database is locked" not in error and "ablations: warning" not in error, error[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    [study] = [run for run in runs if run.data.tags.get("kind") == "study"]  # one, found by all four
    runs = [run for run in runs if run is not study]
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {study.info.run_id}
    # The study's run spans its units (MLflow's UI shows end_time - start_time as its duration).
    assert study.info.start_time <= min(run.info.start_time for run in runs)
    assert study.info.end_time == max(run.info.end_time for run in runs)
    assert sorted(run.data.tags["variant"] for run in runs) == names
    for run in runs:
        assert run.info.status == "FINISHED"
        for key in FIELDS[1:]:
            assert _steps(client, run.info.run_id, key) == [1, 2, 3], (run.data.tags["variant"], key)
        unit = tmp_path / "out" / run.data.tags["variant"] / "seed7"
        assert read_json(unit / "run.json")["tracking_complete"] is True
