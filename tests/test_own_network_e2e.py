"""examples/own-network through the real `dvc repro`: a user copies the example's .keras file
into networks/, pastes its study block (ablate: layers, a group, two replacements), runs the
pipeline, and gets every generated variant trained, evaluated against the full network, in
the report, in MLflow and in DVC's metrics. Shrunk: a few hundred images, one epoch, one seed.
"""

import html
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_project, run_ok

EXAMPLE = REPO / "examples" / "own-network"
FASHION = Path("/usr/share/datasets/fashion-mnist")
COPIED = ("src", "dvc.yaml", "pyproject.toml", "networks", ".dvc/config", ".dvc/plots",
          ".dvcignore", ".gitignore")

pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist")

# The example network's parameters, layer by layer (Keras' counts: a 3x3 conv has 9·in·out
# weights + out biases, BatchNorm 4 per channel (2 trainable), LayerNormalization 2 per
# channel, the head (7·7·8 features → 10 classes) 392·10 + 10).
CONV1, BN, RES_CONV, LN, HEAD = 9 * 1 * 8 + 8, 4 * 8, 9 * 8 * 8 + 8, 2 * 8, 7 * 7 * 8 * 10 + 10
FULL_LAYERS = ["conv1", "bn1", "relu1", "pool1", "res_conv", "res_bn", "res_relu", "res_add",
               "pool2", "flatten", "dropout", "head"]
EXPECTED = {  # variant → (its layers, its parameter count)
    "full": (FULL_LAYERS, CONV1 + BN + RES_CONV + BN + HEAD),
    "no-bn1": ([n for n in FULL_LAYERS if n != "bn1"], CONV1 + RES_CONV + BN + HEAD),
    "no-res_bn": ([n for n in FULL_LAYERS if n != "res_bn"], CONV1 + BN + RES_CONV + HEAD),
    "no-dropout": ([n for n in FULL_LAYERS if n != "dropout"], CONV1 + BN + RES_CONV + BN + HEAD),
    "no-residual": ([n for n in FULL_LAYERS if not n.startswith("res_")], CONV1 + BN + HEAD),
    "relu1-tanh": (FULL_LAYERS, CONV1 + BN + RES_CONV + BN + HEAD),
    "bn1-LayerNormalization": (FULL_LAYERS, CONV1 + LN + RES_CONV + BN + HEAD),
}


def shrink(params: dict) -> dict:
    """The real params.yaml with only the example's study (as pasted), cut down."""
    study = yaml.safe_load((EXAMPLE / "study.yaml").read_text())
    study["own_network"].update(seeds=[0], target_val_accuracy=0.3)
    study["own_network"]["defaults"].update(epochs=1)
    params["studies"] = study
    data = params["data"]["prepared"]["fmnist_pm1"]
    data.update(max_train=300, max_val=100, max_test=100)
    params["data"]["prepared"] = {"fmnist_pm1": data}
    params["polyfit"].update(max_degree=3, n=30, folds=3, draws=1)
    return params


run = run_ok


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    repo = tmp_path_factory.mktemp("own")
    copy_project(repo, COPIED)
    shutil.copy(EXAMPLE / "own_net.keras", repo / "networks" / "own_net.keras")  # the user's step
    params = shrink(yaml.safe_load((REPO / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "ABLATIONS_DATA_MIRROR"):
        env.pop(key, None)
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)
    run(["dvc", "repro"], repo, env)
    return repo, env


def test_describe_lists_each_variants_layers_and_parameters(pipeline, monkeypatch):
    """What `ablations describe own_network --json` prints (its function, in this process:
    Keras is imported already)."""
    from ablations.config import load_params
    from ablations.describe import describe

    repo, _ = pipeline
    monkeypatch.chdir(repo)
    variants = describe(load_params(repo / "params.yaml"), ["own_network"])["own_network"]
    assert list(variants) == list(EXPECTED)
    for name, (layers, count) in EXPECTED.items():
        assert [row["name"] for row in variants[name]["layers"]] == layers, name
        assert variants[name]["params_total"] == count, name
        assert sum(row["params"] for row in variants[name]["layers"]) == count, name
    classes = {row["name"]: row["class"] for row in variants["relu1-tanh"]["layers"]}
    assert classes["relu1"] == "Activation" and variants["relu1-tanh"]["layers"][2]["activation"] == "tanh"
    assert {row["name"]: row["class"] for row in variants["bn1-LayerNormalization"]["layers"]}[
        "bn1"] == "LayerNormalization"


def test_every_variant_is_trained_compared_and_reported(pipeline):
    repo, env = pipeline
    trained = {p.parent.name for p in (repo / "models" / "own_network").glob("*/seed0")}
    assert trained == set(EXPECTED)
    results = json.loads((repo / "results" / "own_network.json").read_text())
    assert set(results["variants"]) == set(EXPECTED)
    assert {name: c["vs"] for name, c in results["comparisons"].items()} == {
        name: "full" for name in EXPECTED if name != "full"}
    assert {(pair["variant"], pair["vs"]) for pair in results["effects"]["pairs"]} == {
        (name, "full") for name in EXPECTED if name != "full"}  # the forest plot's rows
    assert {"effects_forest.png", "test_accuracy.png", "learning_curves.png"} <= {
        path.name for path in (repo / "plots" / "own_network").iterdir()}
    # each generated variant is an answer with a decision (one seed here: undecided)
    assert {tuple(d["variants"]) for d in results["decisions"] if d["kind"] == "pair"} == {
        (name, "full") for name in EXPECTED if name != "full"}
    assert {d["decision"] for d in results["decisions"]} <= {"better", "worse", "equivalent",
                                                              "undecided"}
    report = (repo / "reports" / "index.html").read_text()
    decided = results["decided"]
    for text in ("own_network", html.escape(results["summary"]),
                 f"Decisions: {decided['decided']} of {decided['answers']} answers decided"):
        assert text in report, text
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)[""]["data"]
    headline = shown["metrics/own_network.json"]["data"]["own_network"]  # the study's headline
    assert (headline["best"], headline["decided"], headline["answers"]) == (
        results["best_variant"], decided["decided"], decided["answers"])


def test_mlflow_runs_hold_the_variants_layers(pipeline):
    repo, _ = pipeline
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("own_network")
    runs = {r.data.tags["variant"]: r for r in
            client.search_runs([experiment.experiment_id], "tags.dvc_stage = 'train@own_network'")}
    assert set(runs) == set(EXPECTED)
    assert runs["no-bn1"].data.params["remove_layers"] == "['bn1']"
    assert runs["no-residual"].data.params["remove_prefixes"] == "['res_']"
    assert runs["full"].data.params["model.file"] == "networks/own_net.keras"
    for name, (layers, count) in EXPECTED.items():
        path = mlflow.artifacts.download_artifacts(run_id=runs[name].info.run_id,
                                                   artifact_path="layers.json",
                                                   tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
        logged = json.loads(Path(path).read_text())["layers"]
        assert [row["name"] for row in logged if row["class"] != "InputLayer"] == layers, name
        assert sum(row["params"] for row in logged) == count, name


def test_changing_the_network_file_retrains_its_units(pipeline, monkeypatch):
    """DVC sees the file (train@own_network's deps) and the units' fingerprints hash it."""
    repo, env = pipeline
    status = json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")
    assert status == {}
    with open(repo / "networks" / "own_net.keras", "ab") as handle:
        handle.write(b"\0")  # other bytes: a zip still readable
    status = json.loads(run(["dvc", "status", "--json"], repo, env).stdout)
    assert {"validate", "train@own_network"} <= set(status), status
    from ablations import units
    from ablations.config import load_params

    monkeypatch.chdir(repo)
    planned = units.plan(load_params(repo / "params.yaml"), "own_network",
                         repo / "data" / "prepared", repo / "models" / "own_network",
                         repo / "checkpoints")
    assert len(planned) == len(EXPECTED) and not any(unit.is_current() for unit in planned)
