"""The real `dvc repro` in a temporary git copy of the repo, with shrunk params.

Shrunk the lightning-hydra way: the real params.yaml, composed and cut down (a few hundred
images, 2 epochs, 2 variants), run through the real entry points. Needs Debian's
dataset-fashion-mnist (installed by .ci/run).
"""

import html
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, run_ok

FASHION = Path("/usr/share/datasets/fashion-mnist")
COPIED = ("src", "dvc.yaml", "networks", "params.yaml", "pyproject.toml", ".dvc/config", ".dvc/plots",
          ".dvcignore", ".gitignore")
EPOCHS = 2

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist")


def shrink(params: dict) -> dict:
    """Two studies of the real params.yaml, cut down: batchnorm (2 variants x 2 seeds) and
    transfer (pretraining on one class subset, fine-tuning on another; seeds by rounds)."""
    prepared = params["data"]["prepared"]
    params["data"]["prepared"] = {name: prepared[name]
                                  for name in ("fmnist_pm1", "fmnist_source", "fmnist_target")}
    for data in params["data"]["prepared"].values():
        data.update(max_train=300, max_val=200, max_test=200)
    params["studies"] = {name: params["studies"][name] for name in ("batchnorm", "transfer")}
    for study in params["studies"].values():
        study["defaults"].update(epochs=EPOCHS, batch_size=64, dense_units=[16])
        study["target_val_accuracy"] = 0.3
    batchnorm, transfer = params["studies"]["batchnorm"], params["studies"]["transfer"]
    batchnorm["defaults"]["conv_filters"] = [4, 8]
    batchnorm.pop("factors")  # two explicit variants instead of the 2 x 2 x 2 grid
    batchnorm["variants"] = {"relu": {}, "relu-bn": {"norm": "before"}}
    batchnorm["seeds"] = [0, 1]
    transfer["variants"] = {name: transfer["variants"][name] for name in ("source", "scratch", "finetune")}
    transfer["also_compare"] = []  # its pair names `frozen`, cut above
    transfer["variants"]["source"]["epochs"] = 1
    # Seeds by rounds (ablations.sequential): one seed gives no interval, so round 2 trains
    # seed 1 of the variants the undecided answer rests on, and of their source.
    transfer["seeds"] = {"min": 1, "max": 2}
    params["polyfit"].update(max_degree=4, n=60, folds=3)
    return params


run = run_ok


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    copy_project(repo, COPIED)
    params = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "ABLATIONS_DATA_MIRROR"):
        env.pop(key, None)
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)
    first = run(["dvc", "repro"], repo, env)
    return repo, env, first


def test_stages_ran_and_lock_records_them(pipeline):
    repo, _, _ = pipeline
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in ("download@fashion_mnist", "split@fmnist_pm1", "standardize@fmnist_target",
                  "train@batchnorm", "train@transfer", "evaluate@batchnorm", "evaluate@transfer",
                  "report", "polyfit"):
        assert stage in lock, stage
    for name in ("relu", "relu-bn"):
        for seed in (0, 1):
            folder = repo / "models" / "batchnorm" / name / f"seed{seed}"
            assert {"model.keras", "history.csv", "run.json", "test_predictions.npy"} <= {
                p.name for p in folder.iterdir()}
    assert not list((repo / "checkpoints").rglob("*.csv"))  # cleaned after success
    labels = json.loads((repo / "data" / "prepared" / "fmnist_target" / "classes.json").read_text())
    assert labels == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def test_repro_prints_no_python_or_mlflow_warning(pipeline):
    """Every stage's output as the user sees it: no Python warning (`…Warning: …`, such as
    MLflow's "dataset source can be interpreted in multiple ways") and no MLflow WARNING line."""
    _, _, first = pipeline
    lines = (first.stdout + first.stderr).splitlines()
    warnings = [line for line in lines if re.search(r"\b\w*Warning: ", line)
                or ("WARNING" in line and "mlflow" in line.lower())]
    assert not warnings, "\n".join(warnings[:20])


def test_metrics_plots_and_report(pipeline):
    repo, env, _ = pipeline
    metrics = json.loads((repo / "results" / "batchnorm.json").read_text())
    for name in ("relu", "relu-bn"):
        accuracy = metrics["variants"][name]["test_accuracy"]
        assert accuracy["n"] == 2 and 0.0 <= accuracy["mean"] <= 1.0
        assert set(accuracy["values"]) == {"seed0", "seed1"}
    assert set(metrics["bn_speedup"]) == {"relu-bn"}
    assert metrics["comparisons"]["relu-bn"]["vs"] == "relu" and metrics["verdict"]
    assert {p.name for p in (repo / "plots" / "batchnorm").iterdir()} >= {
        "learning_curves.png", "test_accuracy.png", "confusion_matrix.png", "examples.png"}
    transfer = json.loads((repo / "results" / "transfer.json").read_text())
    assert transfer["comparisons"]["finetune"]["vs"] == "scratch"
    rounds = transfer["sequential"]  # the rounds train ran, replayed from its units
    assert rounds["looks"] == 2 and rounds["looks_planned"] == 2
    assert rounds["allocation"] == {"source": 2, "scratch": 2, "finetune": 2}
    assert rounds["method"] in transfer["decisions"][0]["method"]
    assert sorted(p.name for p in (repo / "models" / "transfer" / "finetune").iterdir()) == \
        ["seed0", "seed1"]
    polyfit = json.loads((repo / "results" / "polyfit.json").read_text())
    assert 1 <= polyfit["chosen_degree_1se"] <= 4
    assert metric_files(repo) == dvc_metrics(repo, env, "show", "--json")[""]["data"]
    assert set(metric_files(repo)) == {"metrics/batchnorm.json", "metrics/transfer.json",
                                       "metrics/polyfit.json"}  # one headline file a study
    run(["dvc", "plots", "show", "-o", str(repo / "dvc_plots")], repo, env)
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout)["data"]
    bars = shown["accuracy/batchnorm.csv"][0]["content"]  # a bar per variant, its accuracy
    assert bars["mark"]["type"] == "bar" and bars["encoding"]["y"]["field"] == "variant"
    assert {(r["variant"], float(r["acc"])) for r in bars["data"]["values"]} == {
        (name, 100 * metrics["variants"][name]["test_accuracy"]["mean"])
        for name in ("relu", "relu-bn")}
    assert (repo / "dvc_plots" / "index.html").exists()
    report = (repo / "reports" / "index.html").read_text()
    for heading in ("batchnorm", "transfer", "polyfit", html.escape(metrics["summary"]),
                    f"Decisions: {metrics['decided']['decided']} of "
                    f"{metrics['decided']['answers']} answers decided"):
        assert heading in report, heading
    assert [d["kind"] for d in metrics["decisions"]] == ["pair", "speedup"]  # relu-bn vs relu


def metric_files(repo: Path) -> dict[str, dict]:
    """The headline metrics files in the workspace, keyed and wrapped as DVC's JSON has them."""
    return {str(p.relative_to(repo)): {"data": json.loads(p.read_text())}
            for p in sorted((repo / "metrics").rglob("*.json"))}


def dvc_metrics(repo: Path, env, *command) -> dict:
    return json.loads(run(["dvc", "metrics", *command], repo, env).stdout)


def curve_plots(repo: Path, env, *command) -> dict[str, dict]:
    """{curves file: its vega spec} from `dvc plots show/diff --json`."""
    shown = json.loads(run(["dvc", "plots", *command, "--json"], repo, env).stdout)["data"]
    return {path: plots[0]["content"] for path, plots in shown.items()
            if path.startswith("curves/")}


def test_learning_curves_are_dvc_plot_data(pipeline):
    """`dvc plots show` draws each study's curves file through the top-level definition: x is
    the epoch, a line per variant, every (variant, seed, epoch, metric) of the file."""
    repo, env, _ = pipeline
    curves = curve_plots(repo, env, "show")
    assert set(curves) == {"curves/batchnorm.csv", "curves/transfer.csv"}
    spec = curves["curves/batchnorm.csv"]
    assert spec["spec"]["encoding"]["x"]["field"] == "epoch"
    assert spec["spec"]["encoding"]["color"]["field"] == "variant"
    rows = spec["data"]["values"]
    written = (repo / "curves" / "batchnorm.csv").read_text().splitlines()
    assert len(rows) == len(written) - 1 == 2 * 2 * EPOCHS * 4  # variants, seeds, epochs, metrics
    assert {(r["variant"], r["seed"], r["epoch"]) for r in rows} == {
        (v, s, str(e)) for v in ("relu", "relu-bn") for s in ("0", "1")
        for e in range(1, EPOCHS + 1)}
    assert {r["metric"] for r in rows} == {"loss", "val_loss", "accuracy", "val_accuracy"}


def test_mlflow_runs_have_params_history_and_a_loadable_model(pipeline):
    repo, _, _ = pipeline
    import keras
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("batchnorm")
    runs = client.search_runs([experiment.experiment_id], "tags.variant = 'relu-bn'")
    assert sorted(r.info.run_name for r in runs) == ["relu-bn/seed0", "relu-bn/seed1"]
    run_ = runs[0]
    assert run_.info.status == "FINISHED"
    assert run_.data.params["norm"] == "before" and run_.data.params["epochs"] == str(EPOCHS)
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        steps = [m.step for m in client.get_metric_history(run_.info.run_id, key)]
        assert steps == list(range(1, EPOCHS + 1)), key
    assert "test_accuracy" in run_.data.metrics
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    model_uri = f"runs:/{run_.info.run_id}/model"
    model = mlflow.keras.load_model(model_uri)
    assert isinstance(model, keras.Model)
    assert mlflow.models.get_model_info(model_uri).signature is not None
    assert client.get_experiment_by_name("polyfit") is not None


def test_second_repro_is_a_no_op_and_one_variant_edit_dirties_only_its_study(pipeline):
    """(That the edited variant alone retrains is checked by the queued experiments below.)"""
    repo, env, _ = pipeline
    again = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in again.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["studies"]["batchnorm"]["variants"]["relu-bn"]["learning_rate"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = run(["dvc", "status", "--json"], repo, env).stdout
    changed = set(json.loads(status))
    # validate re-checks any params.yaml edit; its output is constant, so it triggers nothing.
    assert changed == {"validate", "train@batchnorm", "evaluate@batchnorm"}, changed


def test_queued_experiments_run_two_at_once_and_keep_every_mlflow_run(pipeline):
    """`dvc exp run --queue` + `dvc queue start -j 2`: the stages run in copies of the repo
    under .dvc/tmp/exps, and their MLflow runs still land in the repo's own store."""
    repo, env, _ = pipeline
    run(["git", "checkout", "params.yaml"], repo, env)
    run(["git", "add", "-A"], repo, env)  # the lock of the first repro: experiments reuse it
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "repro"], repo, env)
    rates = ("0.002", "0.003")
    for rate in rates:
        # --no-hydra: this repo's params.yaml is the shrunk file above, not conf/'s composition
        run(["dvc", "exp", "run", "--queue", "--no-hydra", "-n", f"lr-{rate}",
             "-S", f"+studies.batchnorm.variants.relu.learning_rate={rate}"], repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    deadline = time.time() + 400
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], repo, env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == len(rates), status

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("batchnorm")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for rate in rates:
        # Each experiment edited relu only: relu retrained once per seed, relu-bn's units were
        # kept (no training run of it; the experiment's `batchnorm-summary` run is evaluate's).
        runs = client.search_runs([experiment.experiment_id], f"tags.dvc_exp_name = 'lr-{rate}' "
                                  "and tags.dvc_stage = 'train@batchnorm'")
        assert sorted(r.info.run_name for r in runs) == ["relu/seed0", "relu/seed1"], rate
        # Lineage from DVC's own variables: both runs nest under the experiment's study run.
        [study_run] = {r.data.tags["mlflow.parentRunId"] for r in runs}
        study = client.get_run(study_run)
        assert study.info.run_name == "batchnorm" and study.data.tags["dvc_exp_name"] == f"lr-{rate}"
        assert len(study.data.tags["dvc_exp_baseline_rev"]) == 40
        contexts = {tag.value for r in runs for i in r.inputs.dataset_inputs for tag in i.tags}
        assert contexts == {"training", "validation", "test"}
        for kept in runs:
            assert kept.info.status == "FINISHED" and kept.data.params["learning_rate"] == rate
            steps = [m.step for m in client.get_metric_history(kept.info.run_id, "val_loss")]
            assert steps == list(range(1, EPOCHS + 1))

    check_experiments_carry_their_results(repo, env, [f"lr-{rate}" for rate in rates])


def exp_show(repo: Path, env) -> dict[str, dict]:
    """{experiment name: its metrics as `dvc exp show --json` lists them}."""
    shown = json.loads(run(["dvc", "exp", "show", "--json"], repo, env).stdout)
    return {rev["name"]: rev["data"]["metrics"] for baseline in shown
            for exp in baseline.get("experiments") or [] for rev in exp["revs"]}


# `dvc exp show` columns that are not headline keys: when and where an experiment ran, and the
# dependencies' hashes (their paths)
DEPS = r"Created|State|Executor|.*/|results|plots|params.yaml"


def headline_keys(metrics: dict[str, dict]) -> list[str]:
    """Every key of `dvc metrics show --json`'s files, flattened as `dvc exp show` heads its
    columns."""
    from dvc.utils.flatten import flatten

    return [key for shown in metrics.values() for key in flatten(shown["data"])]


def check_experiments_carry_their_results(repo: Path, env, names: list[str]) -> None:
    """Each queued experiment's commit holds its outputs' hashes (dvc.lock) and DVC's cache
    their content: `dvc exp show`, `dvc metrics diff` and `dvc plots diff` read them back."""
    shown = exp_show(repo, env)
    for name in names:
        errors = {path: m["error"] for path, m in shown[name].items() if "error" in m}
        assert not errors and "metrics/batchnorm.json" in shown[name], (name, errors)
        assert {"best", "acc", "decided", "answers"} <= set(
            shown[name]["metrics/batchnorm.json"]["data"]["batchnorm"])
    exp = names[0]
    # The baseline and the experiment differ as answers: each study's keys named after them.
    diff = dvc_metrics(repo, env, "diff", "HEAD", exp, "--all", "--json")
    batchnorm = shown[exp]["metrics/batchnorm.json"]["data"]["batchnorm"]
    assert set(diff["metrics/batchnorm.json"]) == {f"batchnorm.{key}" for key in batchnorm}
    assert diff["metrics/batchnorm.json"]["batchnorm.relu-bn"]["new"] == batchnorm["relu-bn"]
    assert set(diff["metrics/transfer.json"]) >= {"transfer.decided", "transfer.finetune"}
    overlaid = curve_plots(repo, env, "diff", "HEAD", exp)["curves/batchnorm.csv"]
    assert {row["rev"] for row in overlaid["data"]["values"]} == {"HEAD", exp}
    # In a 120-column terminal the headline columns that changed show whole, no "…" (less the
    # columns of the changed dependencies' hashes and the params, as the README's recipe).
    table = run(["dvc", "exp", "show", "--only-changed", "--no-pager", "--drop", DEPS,
                 "--drop", r"studies\."], repo, {**env, "COLUMNS": "120"}).stdout
    assert "…" not in table and "batchnorm.acc" in table, table
    # The experiment's own files, as `dvc exp apply` puts them in the workspace.
    run(["dvc", "exp", "apply", exp], repo, env)
    try:
        assert metric_files(repo) == shown[exp]
        keys = headline_keys(dvc_metrics(repo, env, "show", "--json")[""]["data"])
        assert len(keys) <= 40 and {"batchnorm.decided", "transfer.decided"} <= set(keys)
    finally:
        run(["git", "checkout", "--", "."], repo, env)
        run(["dvc", "checkout", "--force"], repo, env)
