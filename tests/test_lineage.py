"""MLflow lineage in a real SQLite store: study experiments marked as model training, prepared
datasets as run inputs, one study run per DVC experiment with the unit runs nested under it,
DVC's variables as tags; and only the tracking module imports mlflow."""

import ast
import os
import shutil
import subprocess
import sys
import warnings

import mlflow
import pytest
from conftest import REPO, copy_store, write_params, write_prepared
from test_report import chromium_page, free_port, needs_chromium, stop, wait_until_up

from ablations import tracking
from ablations.config import load_params
from ablations.io import sha256_files
from ablations.training import train_study
from ablations.units import plan

DVC_ENV = {"DVC_EXP_NAME": "bushy-tits", "DVC_EXP_BASELINE_REV": "a" * 40, "DVC_ROOT": "/repo"}


def _train(tmp_path, *only):
    units = plan(load_params(tmp_path / "params.yaml"), "unit", tmp_path / "data",
                 tmp_path / "out", tmp_path / "ckpt", only=list(only) or None)
    return train_study("unit", [unit for unit in units if not unit.is_current()], backup_seconds=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, migrated_store):
    """Two units trained once for the module inside DVC experiment `bushy-tits`, under an
    `mlflow run` entry run: (client, the entry run's id, the units' run ids, the folder)."""
    root = tmp_path_factory.mktemp("lineage")
    uri = copy_store(migrated_store, root)
    client = mlflow.MlflowClient(uri)
    outer = client.create_run(client.create_experiment("entry"), run_name="mlflow-run").info.run_id
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**DVC_ENV, "MLFLOW_RUN_ID": outer, "MLFLOW_TRACKING_URI": uri}.items():
            patch.setenv(key, value)
        write_prepared(root / "data" / "d")
        write_params(root, ["a", "b"], epochs=1)
        run_ids = _train(root)
        yield client, outer, run_ids, root


def test_study_experiment_is_marked_as_model_training(trained):
    client, _, run_ids, _ = trained
    experiment = client.get_experiment(client.get_run(run_ids[0]).info.experiment_id)
    assert experiment.name == "unit"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_units_nest_under_one_study_run_per_dvc_experiment(trained, monkeypatch):
    client, outer, run_ids, tmp_path = trained
    units = [client.get_run(run_id) for run_id in run_ids]
    parents = {run.data.tags["mlflow.parentRunId"] for run in units}
    assert len(units) == 2 and len(parents) == 1
    study = client.get_run(parents.pop())
    assert study.info.run_name == "unit" and study.data.tags["kind"] == "study"
    assert study.data.tags["mlflow.parentRunId"] == outer  # `mlflow run`'s run: not resumed
    assert client.get_run(outer).data.params == {}
    for run in (study, *units):
        assert run.data.tags["dvc_exp_name"] == DVC_ENV["DVC_EXP_NAME"]
        assert run.data.tags["dvc_exp_baseline_rev"] == DVC_ENV["DVC_EXP_BASELINE_REV"]
        assert run.data.tags["dvc_root"] == DVC_ENV["DVC_ROOT"]
    # A variant added in the same experiment joins the same study run; another experiment
    # gets its own.
    write_params(tmp_path, ["a", "b", "c"], epochs=1)
    [added] = _train(tmp_path, "c")
    assert client.get_run(added).data.tags["mlflow.parentRunId"] == study.info.run_id
    # The study's run spans its units, the one added later included (MLflow's UI shows
    # end_time - start_time as a run's duration).
    spanned = client.get_run(study.info.run_id).info
    assert spanned.start_time <= min(run.info.start_time for run in units)
    assert spanned.end_time == client.get_run(added).info.end_time > spanned.start_time
    assert spanned.status == "FINISHED"
    monkeypatch.setenv("DVC_EXP_NAME", "other-exp")
    write_params(tmp_path, ["a", "b", "c", "d"], epochs=1)
    [other] = _train(tmp_path, "d")
    other_parent = client.get_run(client.get_run(other).data.tags["mlflow.parentRunId"])
    assert other_parent.info.run_id != study.info.run_id
    assert other_parent.data.tags["dvc_exp_name"] == "other-exp"


def test_prepared_datasets_are_run_inputs(trained):
    client, _, run_ids, tmp_path = trained
    data = tmp_path / "data" / "d"
    inputs = client.get_run(run_ids[0]).inputs.dataset_inputs
    by_context = {next(tag.value for tag in item.tags if tag.key == "mlflow.data.context"):
                  item.dataset for item in inputs}
    assert sorted(by_context) == ["test", "training", "validation"]
    for context, part in (("training", "train"), ("validation", "val"), ("test", "test")):
        dataset = by_context[context]
        assert dataset.name == f"d/{part}"
        assert dataset.digest == sha256_files([data / f"x_{part}.npy", data / f"y_{part}.npy"])[:32]
        assert str(data) in dataset.source
    # Parts differ, so do their digests; both units trained on the same files.
    assert len({d.digest for d in by_context.values()}) == 3
    other = client.get_run(run_ids[1]).inputs.dataset_inputs
    assert {i.dataset.digest for i in other} == {d.digest for d in by_context.values()}


def test_logging_datasets_warns_nothing(tmp_path, tracking_store):
    """Given a plain path, MLflow warns "can be interpreted in multiple ways" on every dataset
    (two local sources are registered): the source is given with its type instead."""
    data = write_prepared(tmp_path / "data" / "d")
    run_id = tracking.start_run("unit", "a/seed0", {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracking.log_datasets(run_id, data)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    inputs = mlflow.MlflowClient(tracking_store).get_run(run_id).inputs.dataset_inputs
    assert {item.dataset.source_type for item in inputs} == {"local"}


def test_only_the_tracking_module_imports_mlflow():
    importers = set()
    for path in (REPO / "src" / "ablations").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                importers.add(path.relative_to(REPO / "src").as_posix())
    assert importers == {"ablations/tracking.py"}
    reached_through = [path.name for path in (REPO / "src" / "ablations").rglob("*.py")
                       if "tracking.mlflow" in path.read_text()]
    assert not reached_through  # nor reached through it


@needs_chromium
def test_mlflow_ui_shows_training_runs_nested_with_their_datasets(trained, tmp_path):
    """The MLflow UI (a real `mlflow ui` in headless Chromium) on the lineage store, at the
    address docs/tracking.md gives: the Model training view, one row per study run with the unit
    runs nested under it, and each unit's prepared datasets in the Dataset column."""
    client, _, run_ids, root = trained
    experiment_id = client.get_run(run_ids[0]).info.experiment_id
    runs = client.search_runs([experiment_id])
    studies = [run for run in runs if run.data.tags.get("kind") == "study"]
    run_names = [run.info.run_name for run in runs if "variant" in run.data.tags]
    shutil.copy(root / "mlflow.db", tmp_path / "mlflow.db")
    port, log = free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers: faster start
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
               f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        with chromium_page() as (page, _):
            wait_until_up(url, server, log)
            page.goto(tracking.ui_runs_url(url, experiment_id))
            study_rows = page.locator('button[data-component-id*="runnamecellrenderer"]')
            study_rows.first.wait_for(timeout=25_000)
            collapsed = page.inner_text("body")
            shown_studies = study_rows.count()
            for index in range(study_rows.count()):
                study_rows.nth(index).click()
            page.get_by_text(run_names[0], exact=True).wait_for(timeout=10_000)
            expanded = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "mlflow-ui.png"))
    finally:
        stop(server)
    assert "Token Usage" not in collapsed and "Run Name" in collapsed  # training, not GenAI
    assert shown_studies == len(studies) >= 1  # top level: one study run per DVC experiment
    assert not any(name in collapsed for name in run_names)  # units nested, not a flat list
    assert {"a/seed7", "b/seed7"} <= set(run_names) and all(name in expanded for name in run_names)
    for part, context in (("train", "Training"), ("val", "Validation"), ("test", "Test")):
        assert f"d/{part} (" in expanded and context in expanded
