"""The train stage's executors: Ray (a local instance, 2 workers on this 2-core machine) trains
the same bits as the in-process loop, logs the same nested MLflow runs, and a failing unit
fails the stage while the others' outputs are kept; choosing Ray without Ray is one error line.

The Ray tests install the `ray` extra into this environment when it is missing (a fresh clone
under CI): they run everywhere, never skip."""

import os
import re
import subprocess

import mlflow
import numpy as np
import pytest
from conftest import copy_store, train_command, write_params, write_prepared

from ablations.history import read_history
from ablations.io import read_json


def _env(store_uri, **extra):
    # Without OMP_NUM_THREADS (which conftest sets under xdist) a local run uses every CPU
    # and Ray would give a task one thread: the case where the same bits need the executor's care.
    env = {**os.environ, "MLFLOW_TRACKING_URI": store_uri, **extra}
    for name in ("RAY_ADDRESS", "MLFLOW_RUN_ID", "ABLATIONS_EXECUTOR", "OMP_NUM_THREADS"):
        if name not in extra:
            env.pop(name, None)
    return env


def _train(tmp_path, params, out, env, *args):
    command = train_command(params, tmp_path / "data", tmp_path / out, tmp_path / f"ckpt-{out}")
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)


def _results(out):
    """Per unit: every epoch's metrics but its duration, test loss/accuracy, predictions bytes."""
    results = {}
    for run_json in sorted(out.glob("*/seed*/run.json")):
        unit = run_json.parent
        info = read_json(run_json)
        history = [{k: v for k, v in row.items() if k != "epoch_seconds"}
                   for row in read_history(unit / "history.csv")]
        results[unit.relative_to(out).as_posix()] = (
            history, info["test_loss"], info["test_accuracy"],
            (unit / "test_predictions.npy").read_bytes())
    return results


def test_ray_trains_the_same_bits_and_nested_runs_as_local(tmp_path, migrated_store, ray_extra):
    """3 units on Ray workers — a and b may run side by side, then t, which starts from a's
    weights."""
    write_prepared(tmp_path / "data" / "d", n=64)
    params = write_params(tmp_path, ["a", "b", "t"], epochs=2, overrides={
        "b": {"dropout": 0.0}, "t": {"init_from": "a", "freeze": True}})
    uri = copy_store(migrated_store, tmp_path)
    client = mlflow.MlflowClient(uri)
    parent = client.create_run(client.create_experiment("project")).info.run_id  # `mlflow run`'s
    local = _train(tmp_path, params, "local", _env(uri))
    assert local.returncode == 0, local.stderr[-3000:]
    ray = _train(tmp_path, params, "ray", _env(uri, ABLATIONS_EXECUTOR="ray", MLFLOW_RUN_ID=parent))
    assert ray.returncode == 0, ray.stderr[-3000:]
    assert "train unit: 3 to train" in ray.stdout and ray.stdout.count("finished on Ray") == 3
    assert ray.stdout.index("train unit a/seed7 finished") < ray.stdout.index("train unit t/seed7 finished")
    # The units trained in Ray workers (their output prefixed with a worker's pid; Ray folds
    # repeated lines, so not every unit's prefix shows), on at most the 2 CPUs' workers. How
    # many Ray starts is its scheduler's call: a worker freed by a short unit may take the
    # next one before a second worker has started (CI saw 1).
    workers = set(re.findall(r"\(train unit \S+ pid=(\d+)\)", ray.stdout + ray.stderr))
    assert 1 <= len(workers) <= 2

    expected, got = _results(tmp_path / "local"), _results(tmp_path / "ray")
    assert sorted(got) == ["a/seed7", "b/seed7", "t/seed7"]
    assert got == expected  # bit for bit: floats compared with ==, predictions as bytes
    study_runs = set()
    for unit in got:
        info = read_json(tmp_path / "ray" / unit / "run.json")
        assert info["tracking_complete"] is True
        assert info["fingerprint"] == read_json(tmp_path / "local" / unit / "run.json")["fingerprint"]
        run = client.get_run(info["run_id"])
        assert run.info.status == "FINISHED" and run.info.run_name == unit
        # Under `mlflow run`: unit → the study's run for this DVC experiment → `mlflow run`'s run.
        study_runs.add(run.data.tags["mlflow.parentRunId"])
        assert run.data.metrics["test_accuracy"] == info["test_accuracy"]
    [study_run] = study_runs  # one, found by every worker
    assert client.get_run(study_run).data.tags["mlflow.parentRunId"] == parent
    # The transfer units started from their source's weights: frozen layers equal the source's.
    import keras

    load = lambda unit: keras.saving.load_model(tmp_path / "ray" / unit / "model.keras")
    np.testing.assert_array_equal(load("t/seed7").get_layer("block1_conv").get_weights()[0],
                                  load("a/seed7").get_layer("block1_conv").get_weights()[0])


def test_a_raising_unit_fails_the_stage_and_the_others_are_kept(tmp_path, migrated_store, ray_extra):
    write_prepared(tmp_path / "data" / "d", n=64)
    too_deep = {"deep": {"conv_filters": [4, 4, 4, 4]}}  # 8×8 images pooled to 0×0: Keras raises
    params = write_params(tmp_path, ["good", "deep"], overrides=too_deep, epochs=2)
    env = _env(copy_store(migrated_store, tmp_path))
    failed = _train(tmp_path, params, "out", env, "--executor", "ray")
    assert failed.returncode == 1
    assert "train unit: 1 unit(s) failed (deep/seed7); 1 finished and kept" in failed.stderr
    assert "ValueError" in failed.stderr and "MaxPooling2D" in failed.stderr  # the unit's error
    kept = read_json(tmp_path / "out" / "good" / "seed7" / "run.json")
    assert not (tmp_path / "out" / "deep").exists()

    # The next run (either executor: which units run is decided before) reuses good's outputs.
    params = write_params(tmp_path, ["good", "deep"], overrides={"deep": {"conv_filters": [4, 4]}},
                          epochs=2)
    rerun = _train(tmp_path, params, "out", env, "--executor", "local")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "train unit: 1 to train, 1 current" in rerun.stdout
    assert "train unit deep/seed7 (1/1)" in rerun.stdout
    assert read_json(tmp_path / "out" / "good" / "seed7" / "run.json") == kept  # as it was
    assert read_json(tmp_path / "out" / "deep" / "seed7" / "run.json")["tracking_complete"]


def test_ray_executor_without_ray_is_one_error_line(tmp_path):
    """A `ray` package whose import fails, first on the path: the state of a machine without
    the extra, whether Ray is installed here or not."""
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("No module named \'ray\'")\n')
    write_prepared(tmp_path / "data" / "d", n=32)
    params = write_params(tmp_path)
    env = _env(f"sqlite:///{tmp_path / 'mlflow.db'}", ABLATIONS_EXECUTOR="ray",
               PYTHONPATH=os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    done = _train(tmp_path, params, "out", env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: the ray executor needs Ray, which cannot be imported (No module named 'ray'); "
        'install the extra: pip install -e ".[ray]"']
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setting, message", [
    ({"ABLATIONS_EXECUTOR": "dask"}, "error: ABLATIONS_EXECUTOR=dask: no such executor (have local, ray)"),
    ({"ABLATIONS_EXECUTOR": "ray", "ABLATIONS_GPUS_PER_UNIT": "one"},
     "error: ABLATIONS_GPUS_PER_UNIT=one: must be a number ≥ 0 (a fraction shares a device)"),
    ({"ABLATIONS_EXECUTOR": "ray", "ABLATIONS_CPUS_PER_UNIT": "-1"},
     "error: ABLATIONS_CPUS_PER_UNIT=-1: must be a number ≥ 0 (a fraction shares a device)"),
    *[({"ABLATIONS_BACKUP_SECONDS": text},
       f"error: ABLATIONS_BACKUP_SECONDS={text}: must be a number ≥ 0 (seconds between backups; "
       "0: every epoch)") for text in ("soon", "-1", "nan", "inf")],
])
def test_bad_executor_settings_are_one_error_line(tmp_path, setting, message):
    write_prepared(tmp_path / "data" / "d", n=32)
    env = _env(f"sqlite:///{tmp_path / 'mlflow.db'}", **setting)
    done = _train(tmp_path, write_params(tmp_path), "out", env)
    assert (done.returncode, done.stderr.splitlines()) == (2, [message])
    assert not (tmp_path / "out").exists()


def test_more_cpus_than_the_local_ray_has_is_an_error_not_a_hang(tmp_path, ray_extra):
    """A task asking for resources no node of a fixed local instance has would wait forever."""
    write_prepared(tmp_path / "data" / "d", n=32)
    env = _env(f"sqlite:///{tmp_path / 'mlflow.db'}", ABLATIONS_EXECUTOR="ray",
               ABLATIONS_CPUS_PER_UNIT="64")
    done = _train(tmp_path, write_params(tmp_path), "out", env)
    assert done.returncode == 2
    assert re.fullmatch(r"error: ABLATIONS_CPUS_PER_UNIT=64: this machine's Ray has \d+ CPUs",
                        done.stderr.splitlines()[-1])
    assert not (tmp_path / "out").exists()
