"""Real (tiny) trainings: outputs, MLflow run, determinism, crash → FAILED, kill -9 → resume."""

import gc
import os
import signal
import subprocess
import time

import keras
import mlflow
import numpy as np
import pytest
from mlflow.models import infer_signature
from conftest import EPOCHS, copy_store, train_command, write_params, write_prepared

from ablations.config import load_params
from ablations.history import read_history, read_steps
from ablations.io import read_json
from ablations.training import train_study
from ablations.units import plan, remove_stale


def _train(tmp_path, params_path, *only):
    """Train study `unit` of `params_path` the way `ablations train` does; return the trained
    units' run ids."""
    units = plan(load_params(params_path), "unit", tmp_path / "data", tmp_path / "out",
                 tmp_path / "ckpt", only=list(only) or None)
    if not only:
        remove_stale(tmp_path / "out", units)
    return train_study("unit", [unit for unit in units if not unit.is_current()], backup_seconds=0)


def _info(tmp_path, name, seed=7):
    return read_json(tmp_path / "out" / name / f"seed{seed}" / "run.json")


def test_outputs_run_and_history(tmp_path, tracking_store):
    write_prepared(tmp_path / "data" / "d")
    [run_id] = _train(tmp_path, write_params(tmp_path, norm="before"))
    assert gc.get_freeze_count() == 0  # training's freeze ended with it (heap.frozen)
    out = tmp_path / "out" / "v" / "seed7"
    assert {p.name for p in out.iterdir()} == {
        "model.keras", "history.csv", "run.json", "test_predictions.npy", "bn_params.npz"}
    assert [row["epoch"] for row in read_history(out / "history.csv")] == [1, 2, 3]
    info = _info(tmp_path, "v")
    predictions = np.load(out / "test_predictions.npy")
    labels = np.load(tmp_path / "data" / "d" / "y_test.npy")
    assert info["test_accuracy"] == pytest.approx(np.mean(predictions == labels))
    assert info["test_accuracy"] > 0.5 and info["seed"] == 7 and info["tracking_complete"]
    bn = np.load(out / "bn_params.npz")
    assert {"block1_bn/gamma", "block1_bn/beta", "fc1_bn/gamma"} <= set(bn.files)
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").rglob("*.csv"))
    run = mlflow.MlflowClient(tracking_store).get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "v/seed7"
    assert run.data.tags["study"] == "unit" and run.data.tags["diverged"] == "false"
    assert run.data.params["dropout"] == "0.2" and run.data.params["seed"] == "7"
    assert run.data.metrics["test_accuracy"] == pytest.approx(info["test_accuracy"])
    # The logged model's signature (built from the model's specs, without predicting) is what
    # a real prediction gives: shapes with a free batch axis, float32.
    mlflow.set_tracking_uri(tracking_store)
    signature = mlflow.models.get_model_info(f"runs:/{run_id}/model").signature
    x_test = np.load(tmp_path / "data" / "d" / "x_test.npy").astype(np.float32)  # as standardize writes
    predicted = keras.saving.load_model(out / "model.keras").predict(x_test, verbose=0)
    assert signature == infer_signature(x_test, predicted)
    assert signature.outputs.to_dict()[0] == {
        "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": (-1, predicted.shape[1])}}


def test_same_seed_identical_other_seed_different(tmp_path, tracking_store):
    write_prepared(tmp_path / "data" / "d")
    _train(tmp_path, write_params(tmp_path, ["a", "b"], seeds=[7, 8]))
    history = {(name, seed): [(r["loss"], r["val_accuracy"]) for r in read_history(
        tmp_path / "out" / name / f"seed{seed}" / "history.csv")] for name in "ab" for seed in (7, 8)}
    assert history["a", 7] == history["b", 7]
    assert history["a", 7] != history["a", 8]


def test_validation_within_epochs_leaves_training_unchanged(tmp_path, tracking_store):
    """b validates 3 times per epoch on 20 images (steps.csv: step 0, then every 2 of the 6
    steps of an epoch); its training is a's bit for bit (inference mode draws no dropout mask
    and moves no BatchNorm statistic)."""
    write_prepared(tmp_path / "data" / "d")
    overrides = {"b": {"val_per_epoch": 3, "val_subset": 20}}
    _train(tmp_path, write_params(tmp_path, ["a", "b"], overrides=overrides, norm="before"))
    out = {name: tmp_path / "out" / name / "seed7" for name in "ab"}
    assert read_history(out["a"] / "history.csv") == [
        {**row, "epoch_seconds": pytest.approx(row["epoch_seconds"], abs=1e9)}
        for row in read_history(out["b"] / "history.csv")]
    assert not (out["a"] / "steps.csv").exists()
    steps = read_steps(out["b"] / "steps.csv")
    assert [r["step"] for r in steps] == list(range(0, 6 * EPOCHS + 1, 2))  # 96 images / 16
    assert [r["epoch"] for r in steps] == pytest.approx([r["step"] / 6 for r in steps])
    seconds = [r["train_seconds"] for r in steps]
    assert seconds[0] == 0.0 and all(b > a for a, b in zip(seconds, seconds[1:]))
    wall = sum(r["epoch_seconds"] for r in read_history(out["b"] / "history.csv"))
    assert seconds[-1] < wall  # time inside steps only: no validation, no callbacks
    assert all(r["val_accuracy"] * 20 == pytest.approx(round(r["val_accuracy"] * 20)) for r in steps)
    # evaluate reads them: steps to a target every seed reached, interpolated between rows
    from ablations.evaluate import read_unit, variant_metrics

    y_test = np.load(tmp_path / "data" / "d" / "y_test.npy")
    target = max(r["val_accuracy"] for r in steps)
    metrics = variant_metrics([read_unit(tmp_path / "out", "unit", "b", 7, y_test)], target, "d")
    first = next(r for r in steps if r["val_accuracy"] >= target)
    assert metrics["steps_to_target"]["values"]["seed7"] <= first["step"]
    assert metrics["steps_to_target"]["reached"] == 1


def test_only_changed_units_retrain_and_removed_ones_go(tmp_path, tracking_store):
    """The stage's output persists: a unit whose config, data and code are unchanged is kept."""
    write_prepared(tmp_path / "data" / "d")
    assert len(_train(tmp_path, write_params(tmp_path, ["a", "b", "c"]))) == 3
    before = {name: _info(tmp_path, name) for name in "abc"}
    assert _train(tmp_path, write_params(tmp_path, ["a", "b", "c"])) == []  # all current
    changed = write_params(tmp_path, ["a", "b"], seeds=[7, 9], overrides={"b": {"dropout": 0.0}})
    retrained = _train(tmp_path, changed)
    assert len(retrained) == 3  # b/seed7 (changed config), a/seed9 and b/seed9 (new seed)
    assert _info(tmp_path, "a") == before["a"]  # kept as it was
    assert _info(tmp_path, "b")["run_id"] != before["b"]["run_id"]
    assert not (tmp_path / "out" / "c").exists()  # no longer in the study


def test_transfer_starts_from_the_source_and_freezes_it(tmp_path, tracking_store):
    import keras

    write_prepared(tmp_path / "data" / "d")
    params = write_params(tmp_path, ["source", "frozen"],
                          overrides={"frozen": {"init_from": "source", "freeze": True}})
    _train(tmp_path, params, "frozen")  # trains its source first
    load = lambda name: keras.saving.load_model(tmp_path / "out" / name / "seed7" / "model.keras")
    source, frozen = load("source"), load("frozen")
    for layer in ("block1_conv", "fc1_dense"):
        for mine, theirs in zip(frozen.get_layer(layer).get_weights(), source.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(mine, theirs)  # copied, then kept fixed
    assert not np.array_equal(frozen.get_layer("head").get_weights()[0],
                              source.get_layer("head").get_weights()[0])
    record = _info(tmp_path, "frozen")["transfer"]  # what was copied and frozen, in run.json
    assert record["from"] == "source" and "head" not in [row["name"] for row in record["layers"]]
    assert {"name": "block1_conv", "shapes": [list(w.shape) for w in frozen.get_layer(
        "block1_conv").weights], "rule": "copied", "frozen": True} in record["layers"]
    run = mlflow.MlflowClient(tracking_store).get_run(_info(tmp_path, "frozen")["run_id"])
    assert run.data.tags["transfer_copied"] == str(len(record["layers"]))


def test_early_stopping_records_the_epochs_run(tmp_path, tracking_store):
    """min_delta 100: no epoch after the first improves val_loss, so patience 1 stops after 2
    of at most 6 epochs; that is no divergence, and the run says how many epochs ran."""
    write_prepared(tmp_path / "data" / "d")
    stop = {"monitor": "val_loss", "patience": 1, "min_delta": 100.0}
    [run_id] = _train(tmp_path, write_params(tmp_path, epochs=6, early_stopping=stop))
    info = _info(tmp_path, "v")
    history = read_history(tmp_path / "out" / "v" / "seed7" / "history.csv")
    assert len(history) == info["epochs_run"] == 2
    assert info["stopped_early"] is True and info["best_epoch"] == 1 and info["diverged"] is False
    assert mlflow.MlflowClient(tracking_store).get_run(run_id).data.metrics["epochs_run"] == 2


def test_a_crash_inside_training_leaves_the_run_failed_and_no_output(tmp_path, tracking_store):
    data = write_prepared(tmp_path / "data" / "d")
    np.save(data / "x_val.npy", np.zeros((4, 5, 5, 1), np.float32))  # wrong image size
    with pytest.raises(Exception):
        _train(tmp_path, write_params(tmp_path, ["broken"]))
    runs = mlflow.MlflowClient(tracking_store).search_runs(
        [mlflow.get_experiment_by_name("unit").experiment_id])
    units = [r for r in runs if r.data.tags.get("kind") != "study"]  # the study run is their parent
    assert [r.info.status for r in units] == ["FAILED"] and len(runs) == 2
    assert not (tmp_path / "out" / "broken" / "seed7").exists()


def test_diverging_variant_is_recorded_not_crashed(tmp_path, tracking_store):
    write_prepared(tmp_path / "data" / "d")
    # All-ones weights under an exponential activation overflow float32 to inf at once
    [run_id] = _train(tmp_path, write_params(tmp_path, ["ones"], learning_rate=10.0, optimizer="sgd",
                                             initializer="ones", activation="exponential"))
    assert _info(tmp_path, "ones")["diverged"] is True
    assert mlflow.MlflowClient(tracking_store).get_run(run_id).data.tags["diverged"] == "true"


def _train_command(tmp_path, data_root):
    """The real CLI train command of a 6-epoch variant with dropout and BN."""
    params = write_params(tmp_path, epochs=6, batch_size=8, norm="after")
    return train_command(params, data_root, tmp_path / "out", tmp_path / "ckpt")


def _metrics(history_csv):
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in read_history(history_csv)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, migrated_store):
    """Data, the metrics of the same training run without interruption and its shortest epoch's
    seconds (the shortest, not the median: a test run on a machine less loaded than this one
    was must still back up within about 1.5 of its own epochs, not only at the end)."""
    folder = tmp_path_factory.mktemp("reference")
    write_prepared(folder / "data" / "d", n=512, size=16)  # 6 epochs of ~1.5 s: a signal lands mid-training
    env = {**os.environ, "MLFLOW_TRACKING_URI": copy_store(migrated_store, folder)}
    done = subprocess.run(_train_command(folder, folder / "data"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    history = folder / "out" / "v" / "seed7" / "history.csv"
    return folder / "data", _metrics(history), min(
        row["epoch_seconds"] for row in read_history(history))


@pytest.mark.parametrize("signum, backup_epochs", [
    (signal.SIGKILL, 0), (signal.SIGINT, 0), (signal.SIGKILL, 1.5)],
    ids=["kill-9", "ctrl-c", "kill-9-backup-every-1.5-epochs"])
def test_interrupted_training_resumes_to_identical_metrics(tmp_path, tracking_store, uninterrupted,
                                                           signum, backup_epochs, monkeypatch):
    """A real process stopped after an epoch: the rerun resumes into the same MLflow run and
    ends with exactly the metrics of a training that was never interrupted. With a backup
    every 1.5 epochs' seconds (so every other epoch), history.csv and MLflow hold no epoch the
    backup lacks when the process dies."""
    data, reference, epoch_seconds = uninterrupted
    monkeypatch.setenv("ABLATIONS_BACKUP_SECONDS", str(backup_epochs * epoch_seconds))
    # The signal must reach the process that trains: without the worker, the command's own
    # (tests/test_worker.py checks that a signalled or killed command's child goes with it).
    monkeypatch.setenv("ABLATIONS_WORKER", "0")
    command = _train_command(tmp_path, data)
    # SIGINT back to its default in the child: a suite started in the background (`cmd &`)
    # inherits SIGINT ignored, and Python then never turns Ctrl-C into KeyboardInterrupt.
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    history = tmp_path / "ckpt" / "v" / "seed7" / "history.csv"
    deadline = time.time() + 240
    while len(read_history(history)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    os.kill(process.pid, signum)
    assert process.wait() != 0
    done_before = len(read_history(history))
    assert 2 <= done_before < 6, "the signal must land mid-training"
    client = mlflow.MlflowClient(tracking_store)
    run_id = read_json(tmp_path / "ckpt" / "v" / "seed7" / "run.json")["run_id"]
    backup = read_json(tmp_path / "ckpt" / "v" / "seed7" / "backup" / "training_metadata.json")
    logged = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    # Logged ⊆ recorded ⊆ backed up: a process dies between the three writes at worst
    assert logged == list(range(1, len(logged) + 1)) and len(logged) <= done_before <= backup["epoch"]
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Epoch {done_before + 1}/6" in resumed.stdout + resumed.stderr  # resumed, not restarted
    assert _metrics(tmp_path / "out" / "v" / "seed7" / "history.csv") == reference  # bit-identical
    assert _info(tmp_path, "v")["run_id"] == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]  # no duplicate, no missing epoch
    assert client.get_run(run_id).info.status == "FINISHED"
