"""params.yaml validation: the real file loads, and mistakes name their key path."""

import copy
import subprocess
import sys

import pytest
import yaml

from ablations.config import load_params
from ablations.errors import ConfigError

from conftest import REPO


def write(tmp_path, params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def raw_params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_resolve_every_variant(repo_params):
    study = repo_params.studies["batchnorm"]
    assert len(study.variants) == 8
    cfg = repo_params.variant("batchnorm", "tanh-bn-dropout")
    assert (cfg.activation, cfg.norm, cfg.dropout) == ("tanh", "before", 0.5)
    assert cfg.batch_size == 64 and cfg.seed == 0  # from the study defaults and seeds
    assert repo_params.variant("batchnorm", "relu", seed=2).seed == 2
    assert len(study.units()) == 8 * len(study.seeds)


def test_transfer_sources_train_first_and_variant_data(repo_params):
    transfer = repo_params.studies["transfer"]
    assert [variant for variant, _ in transfer.units()][: len(transfer.seeds)] == ["source"] * len(transfer.seeds)
    assert repo_params.variant_data("transfer", "source") == "fmnist_source"
    assert repo_params.variant_data("transfer", "finetune") == "fmnist_target"
    assert repo_params.input_shape("fmnist_target") == ((28, 28, 1), 5)


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p.update(studys={}), "studys"),
    (lambda p: p["studies"]["batchnorm"]["factors"]["activation"]["relu"].update(activaton="elu"),
     "studies.batchnorm: factors.activation.relu.activaton: unknown"),
    (lambda p: p["studies"]["bn_placement"]["variants"]["after"].update(activaton="elu"),
     "studies.bn_placement.variants.after.activaton"),
    (lambda p: p["studies"]["batchnorm"]["defaults"].update(epochs=0), "variants.relu.epochs"),
    (lambda p: p["studies"]["bn_placement"]["defaults"].update(dropout=1.0), "dropout"),
    (lambda p: p["studies"]["batchnorm"]["defaults"].update(learning_rate=-1), "learning_rate"),
    (lambda p: p["studies"]["batchnorm"]["defaults"].update(batch_size="big"), "batch_size"),
    (lambda p: p["studies"]["batchnorm"].update(variants={}, factors={}), "at least one variant"),
    (lambda p: p["studies"]["batchnorm"].update(data="nope"), "studies.batchnorm.data"),
    (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(source="imagenet"), "source"),
    (lambda p: p["polyfit"].update(folds=1), "polyfit.folds"),
    (lambda p: p["studies"]["bn_placement"].update(also_compare=[["before", "middle"]]),
     "studies.bn_placement: also_compare"),
    (lambda p: p["studies"]["transfer"]["variants"]["scratch"].update(freeze=True),
     "studies.transfer.variants.scratch.freeze: true needs init_from"),
])
def test_mistakes_name_their_key(tmp_path, raw_params, mutate, expected):
    params = copy.deepcopy(raw_params)
    mutate(params)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_params(write(tmp_path, params))


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("studies: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "absent.yaml")


def test_factors_expand_to_the_named_cross_product(repo_params):
    batchnorm = repo_params.studies["batchnorm"]
    assert set(batchnorm.variants) == {f"{a}{n}{d}" for a in ("relu", "tanh")
                                       for n in ("", "-bn") for d in ("", "-dropout")}
    assert batchnorm.levels()["tanh-dropout"] == {"activation": "tanh", "norm": "none",
                                                   "dropout": "dropout"}
    init_reg = repo_params.studies["init_reg"]
    assert len(init_reg.variants) == 27 and len(init_reg.levels()) == 27
    l1 = repo_params.variant("init_reg", "zeros-l1")
    assert (l1.initializer, l1.kernel_regularizer, l1.bias_regularizer) == (
        "zeros", {"class_name": "L1", "config": {"l1": 1e-4}}, {"class_name": "L1", "config": {"l1": 1e-4}})
    lenet = repo_params.studies["lenet_bn_dropout"]  # a 2 x 2 grid plus one explicit variant
    assert list(lenet.variants) == ["none", "dropout", "bn", "bn-dropout", "bn-input"]
    assert "bn-input" not in lenet.levels() and lenet.baseline == "none"


def test_explicit_variant_of_a_cell_adds_its_overrides(tmp_path, raw_params):
    """What `dvc exp run -S +studies.batchnorm.variants.relu.learning_rate=…` writes."""
    raw_params["studies"]["batchnorm"]["variants"] = {"relu": {"learning_rate": 0.01}}
    params = load_params(write(tmp_path, raw_params))
    assert len(params.studies["batchnorm"].variants) == 8
    assert params.variant("batchnorm", "relu").learning_rate == 0.01
    assert params.variant("batchnorm", "relu-bn").learning_rate == 0.001


@pytest.mark.parametrize("factors, expected", [
    ({"a": {}}, "factors.a: needs a mapping of at least one level"),
    ({"a": {"x": {"dropout": 0.1}}, "b": {"y": {"dropout": 0.2}}}, "factors a and b both set 'dropout'"),
    ({"a": {"x-y": {}, "x": {}}, "b": {"y": {}, "none": {}}}, "factors: two cells are both named 'x-y'"),
    ({"a": {"x": {"seed": 1}}}, "factors.a.x.seed"),
    ({"a": {"x": {"dropuot": 0.1}}}, "factors.a.x.dropuot: unknown"),
])
def test_bad_factors_are_refused(tmp_path, raw_params, factors, expected):
    raw_params["studies"]["bn_placement"].update(factors=factors, also_compare=[])
    with pytest.raises(ConfigError, match=f"studies.bn_placement: {expected}"):
        load_params(write(tmp_path, raw_params))


YAML_11_VS_12 = """\
learning_rate: 1e-4    # YAML 1.1 (PyYAML): the string '1e-4'
flags: [yes, no, on, off, y]   # YAML 1.1: booleans
octal: 0o17
old_octal: 017         # YAML 1.1: 15
sexagesimal: 1:30      # YAML 1.1: 90
"""


def test_params_are_read_exactly_as_dvc_reads_them(tmp_path):
    """DVC's own params reader (dvc.api.params_show on a real DVC repo) and ours agree on the
    values where YAML 1.1 and 1.2 differ, and on the repository's params.yaml."""
    import dvc.api

    from ablations.config import read_yaml

    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    path = tmp_path / "params.yaml"
    path.write_text(YAML_11_VS_12)
    ours = read_yaml(path)
    assert ours == dvc.api.params_show(repo=str(tmp_path))
    assert ours == {"learning_rate": 1e-4, "flags": ["yes", "no", "on", "off", "y"], "octal": 15,
                    "old_octal": 17, "sexagesimal": "1:30"}
    path.write_text((REPO / "params.yaml").read_text())
    assert read_yaml(path) == dvc.api.params_show(repo=str(tmp_path))


def test_duplicate_keys_are_refused_like_dvc(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("polyfit: {folds: 2}\npolyfit: {folds: 3}\n")
    with pytest.raises(ConfigError, match=r'duplicate key "polyfit" .* at line 2, column 1'):
        load_params(path)


# ---------------------------------------------------------------- budgets (conf/ → params.yaml)

def test_params_yaml_is_the_laptop_budgets_composition(tmp_path):
    """params.yaml is generated (DVC's Hydra composition of conf/), never a hand-kept copy."""
    from ablations.config import compose_budget

    compose_budget("laptop", tmp_path / "params.yaml", REPO / "conf")
    assert (REPO / "params.yaml").read_text() == (tmp_path / "params.yaml").read_text(), (
        "params.yaml differs from conf/'s laptop composition: edit conf/, then run "
        "`ablations compose laptop`")
    assert load_params(REPO / "params.yaml").budget == "laptop"


@pytest.mark.parametrize("budget", ["laptop", "notebook"])
def test_each_budget_validates(tmp_path, monkeypatch, budget):
    """What CI checks: `ablations validate --budget …` (every network built once), in-process."""
    from ablations.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "valid.json"
    assert main(["validate", "--budget", budget, "--out", str(out)]) == 0
    assert out.exists()


def test_budgets_share_studies_and_differ_in_data():
    laptop, notebook = load_params(REPO / "params.yaml", "laptop"), load_params(REPO / "params.yaml", "notebook")
    assert notebook.budget == "notebook" and set(laptop.studies) < set(notebook.studies)
    assert set(laptop.data.raw) == {"fashion_mnist"} and "cifar10" in notebook.data.raw
    for study in laptop.studies:  # the same questions and variants in both
        assert laptop.studies[study].question == notebook.studies[study].question
        assert set(laptop.studies[study].variants) == set(notebook.studies[study].variants)


def test_unknown_budget_is_one_error_line():
    with pytest.raises(ConfigError, match=r"budget 'gpu': no .*conf/budget/gpu.yaml \(have "
                                          r"\['laptop', 'notebook'\]\)"):
        load_params(REPO / "params.yaml", "gpu")


def test_compose_command_writes_the_budget_dvc_would(tmp_path):
    """`ablations compose notebook` writes what `dvc exp run -S budget=notebook` writes."""
    import shutil
    import subprocess
    import sys

    from ablations.config import compose_budget

    shutil.copytree(REPO / "conf", tmp_path / "conf")
    result = subprocess.run([sys.executable, "-m", "ablations.cli", "--params",
                             str(tmp_path / "params.yaml"), "compose", "notebook"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    compose_budget("notebook", tmp_path / "expected.yaml", REPO / "conf")
    assert (tmp_path / "params.yaml").read_text() == (tmp_path / "expected.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").budget == "notebook"


def test_dvc_exp_run_switches_the_budget(tmp_path):
    """The switch is one DVC-tracked override: a queued `dvc exp run -S budget=notebook` holds
    the notebook composition as its params.yaml (queued only: nothing is trained)."""
    import json
    import shutil
    import subprocess

    for name in ("conf", "params.yaml", "dvc.yaml", "networks", ".dvcignore", ".dvc/config"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name)

    def run(*cmd):
        result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    run("dvc", "exp", "run", "--queue", "-n", "nb", "-S", "budget=notebook")
    shown = json.loads(run("dvc", "exp", "show", "--json"))
    queued = [rev for entry in shown for exp in entry.get("experiments") or []
              for rev in exp["revs"] if rev.get("name") == "nb"]
    params = queued[0]["data"]["params"]["params.yaml"]["data"]
    committed = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["budget"] == "notebook" and committed["budget"] == "laptop"
    assert params["data"]["raw"] == ["cifar10", "mnist", "stl10"]
    assert params["studies"]["bn_placement"]["defaults"]["epochs"] == 10
