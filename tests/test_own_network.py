"""Your own network (model: {file | builder}) and generated ablations, without training: the
variants an `ablate:` block makes, the networks Keras rebuilds for them (Functional and
Sequential), weights kept from the file, the fingerprint, and bad input through the real
`ablations validate` (one error line, nothing written)."""

import shutil

import numpy as np
import pytest
import yaml

from conftest import REPO
from test_bad_input import assert_clean_failure, validate_in_process

EXAMPLE = REPO / "examples" / "own-network"
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def study(ablate, model=None, **defaults):
    return {"question": "?", "data": "fmnist_pm1", "target_val_accuracy": 0.5,
            "defaults": {"model": model or {"file": "networks/own_net.keras"}, "epochs": 1,
                         "batch_size": 32, **defaults},
            "ablate": ablate}


def write_repo(folder, block, network=EXAMPLE / "own_net.keras"):
    """folder/params.yaml with one study `own` = `block`; networks/own_net.keras the example."""
    (folder / "networks").mkdir(exist_ok=True)
    if network is not None:
        shutil.copy(network, folder / "networks" / "own_net.keras")
    params = {**BASE, "studies": {"own": block}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def test_ablate_block_generates_named_variants_with_full_as_baseline():
    from ablations.config import Study

    spec = Study(**study({"layers": ["bn1", "dropout"], "groups": {"residual": {"prefix": "res_"},
                                                                   "norms": ["bn1", "res_bn"]},
                          "replace": {"relu1": {"class_name": "Activation",
                                                "config": {"activation": "tanh"}},
                                      "bn1": {"class_name": "LayerNormalization"}}}))
    assert spec.baseline == "full"
    assert {name: overrides for name, overrides in spec.variants.items()} == {
        "full": {}, "no-bn1": {"remove_layers": ["bn1"]}, "no-dropout": {"remove_layers": ["dropout"]},
        "no-residual": {"remove_prefixes": ["res_"]}, "no-norms": {"remove_layers": ["bn1", "res_bn"]},
        "relu1-tanh": {"replace_layers": {"relu1": {"class_name": "Activation",
                                                     "config": {"activation": "tanh"}}}},
        "bn1-LayerNormalization": {"replace_layers": {"bn1": {"class_name": "LayerNormalization"}}}}


def load_example():
    import keras

    return keras.saving.load_model(EXAMPLE / "own_net.keras", safe_mode=True)


def test_example_file_is_what_its_script_builds(tmp_path):
    """The committed .keras file and build_own_net.py describe the same network."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_own_net", EXAMPLE / "build_own_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built, saved = module.build(), load_example()
    assert [(l.name, type(l).__name__, l.count_params()) for l in built.layers] == [
        (l.name, type(l).__name__, l.count_params()) for l in saved.layers]


def test_weights_keep_copies_the_files_weights_into_every_unchanged_layer(tmp_path, monkeypatch):
    from ablations.config import Variant
    from ablations.models.zoo import build_model

    write_repo(tmp_path, study({"layers": ["bn1"]}))
    monkeypatch.chdir(tmp_path)
    original = load_example()
    network = {"file": "networks/own_net.keras", "weights": "keep"}
    cfg = Variant(model=network, epochs=1, batch_size=8,
                  replace_layers={"res_bn": {"class_name": "LayerNormalization"}}, remove_layers=["bn1"])
    model = build_model(cfg, (28, 28, 1), 10)
    for layer in model.layers:
        if layer.weights and layer.name != "res_bn":
            for kept, saved in zip(layer.get_weights(), original.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(kept, saved)
    fresh = build_model(cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": "fresh"})}),
                        (28, 28, 1), 10)
    assert not np.array_equal(fresh.get_layer("conv1").get_weights()[0],
                              original.get_layer("conv1").get_weights()[0])


SEQUENTIAL_BUILDER = '''
import keras
from keras import layers
from networks.parts import WIDTH


def build(input_shape, num_classes, cfg):
    return keras.Sequential([keras.Input(input_shape), layers.Conv2D(WIDTH, 3, name="conv"),
                             layers.BatchNormalization(name="bn"), layers.ReLU(name="act"),
                             layers.Flatten(name="flat"),
                             layers.Dense(num_classes, activation="softmax", name="head")])
'''


def test_builder_of_a_sequential_model_is_ablated_and_fingerprinted(tmp_path, monkeypatch):
    from ablations import units
    from ablations.config import Variant
    from ablations.models.zoo import build_model

    (tmp_path / "networks").mkdir()
    (tmp_path / "networks" / "seq.py").write_text(SEQUENTIAL_BUILDER)
    (tmp_path / "networks" / "parts.py").write_text("WIDTH = 4\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = Variant(model={"builder": "networks.seq:build"}, epochs=1, batch_size=8)
    full = build_model(cfg, (8, 8, 1), 3)
    no_bn = build_model(cfg.model_copy(update={"remove_layers": ["bn"]}), (8, 8, 1), 3)
    tanh = build_model(cfg.model_copy(update={"replace_layers": {
        "act": {"class_name": "Activation", "config": {"activation": "tanh"}}}}), (8, 8, 1), 3)
    assert type(no_bn).__name__ == "Sequential"
    assert [layer.name for layer in no_bn.layers] == ["conv", "act", "flat", "head"]
    assert full.count_params() - no_bn.count_params() == 4 * 4  # BatchNorm: 4 per channel
    assert type(tanh.get_layer("act")).__name__ == "Activation"
    # the builder's module and the networks module it imports are in the fingerprint
    before = units.network_digest(cfg)
    (tmp_path / "networks" / "parts.py").write_text("WIDTH = 4  # a comment\n")
    assert units.network_digest(cfg) != before


LAMBDA_NETWORK = '''
import keras
from keras import layers
inputs = keras.Input((28, 28, 1))
x = layers.Lambda(lambda t: t * 2.0, name="double")(inputs)
x = layers.Flatten(name="flat")(x)
keras.Model(inputs, layers.Dense(10, activation="softmax", name="head")(x)).save("networks/own_net.keras")
'''


@pytest.fixture(scope="module")
def lambda_file(tmp_path_factory):
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("lambda")
    (folder / "networks").mkdir()
    subprocess.run([sys.executable, "-c", "import ablations\n" + LAMBDA_NETWORK], cwd=folder,
                   check=True, capture_output=True)
    return folder / "networks" / "own_net.keras"


BAD = {  # case → (ablate, model, network file (None: the example's), words of the one error line)
    "unknown layer": ({"layers": ["bn9"]}, None, None,
                      ["studies.own.variants.no-bn9", "ablate", "'bn9'", "conv1"]),
    "shape-changing removal": ({"layers": ["conv1"]}, None, None,
                               ["studies.own.variants.no-conv1", "'conv1'",
                                "(None, 28, 28, 1)", "(None, 28, 28, 8)"]),
    "shape-changing replacement": ({"replace": {"relu1": {"class_name": "Dense",
                                                          "config": {"units": 3}}}}, None, None,
                                   ["studies.own.variants.relu1-Dense", "relu1"]),
    "unknown layer class": ({"replace": {"relu1": {"class_name": "Relu"}}}, None, None,
                            ["ablate.replace.relu1", "Relu"]),
    "builder that does not import": ({"layers": ["bn"]}, {"builder": "networks.missing:build"},
                                     None, ["studies.own.variants.full", "networks.missing",
                                            "cannot import"]),
    "builder outside networks/": ({"layers": ["bn"]}, {"builder": "mypkg.nets:build"}, None,
                                  ["model.builder", "networks"]),
    "file that is not a Keras model": ({"layers": ["bn1"]}, None, "text",
                                       ["networks/own_net.keras", "not a Keras model file"]),
    "missing file": ({"layers": ["bn1"]}, {"file": "networks/mine.keras"}, None,
                     ["networks/mine.keras", "not found"]),
    "zoo key on an own network": ({"layers": ["bn1"]}, None, None, ["activation", "ablate.replace"]),
    "Lambda layer in safe mode": ({"layers": ["flat"]}, None, "lambda",
                                  ["networks/own_net.keras", "Lambda", "safe_mode: false"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_components_fail_validate_with_one_line(case, tmp_path, monkeypatch, capsys, lambda_file):
    ablate, model, network, expected = BAD[case]
    block = study(ablate, model)
    if case == "zoo key on an own network":
        block["defaults"]["activation"] = "tanh"
    write_repo(tmp_path, block, network=lambda_file if network == "lambda" else
               None if network == "text" else EXAMPLE / "own_net.keras")
    if network == "text":
        (tmp_path / "networks" / "own_net.keras").write_text("not a zip\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, *expected, absent=[tmp_path / "valid.json"])


def test_a_lambda_file_loads_once_the_user_opts_out_of_safe_mode(tmp_path, monkeypatch, capsys,
                                                                 lambda_file):
    block = study({"layers": ["double"]}, {"file": "networks/own_net.keras", "safe_mode": False})
    write_repo(tmp_path, block, network=lambda_file)
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "valid.json").exists()


def test_docs_name_the_keys_they_document():
    page = (REPO / "docs" / "own-network.md").read_text()
    for key in ("safe_mode: false", "weights: keep", "ablate:", "layers:", "groups:", "prefix:",
                "replace:", "builder:", "networks/", "ablations describe"):
        assert key in page, key
    assert "docs/own-network.md" in (REPO / "README.md").read_text()


LOGITS_BUILDER = '''
import keras
from keras import layers


def build(input_shape, num_classes, cfg):
    inputs = keras.Input(input_shape)
    x = layers.Flatten(name="flat")(inputs)
    x = layers.Dropout(0.1, name="drop")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="head")(x))
'''


def test_a_network_without_softmax_is_refused(tmp_path, monkeypatch, capsys):
    """Training reads the outputs as probabilities: logits would train silently wrong."""
    write_repo(tmp_path, study({"layers": ["drop"]}, {"builder": "networks.logits:build"}),
               network=None)
    (tmp_path / "networks" / "logits.py").write_text(LOGITS_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, "networks.logits:build", "not class probabilities", "softmax",
                         absent=[tmp_path / "valid.json"])


def test_dvc_yaml_tracks_the_networks_folder_where_config_looks():
    """One folder, named in config.NETWORKS_DIR, is a dependency of the stages that build
    networks (validate) and train them."""
    from ablations.config import NETWORKS_DIR

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert NETWORKS_DIR in stages["validate"]["deps"]
    assert NETWORKS_DIR in stages["train"]["do"]["deps"]
    assert (REPO / NETWORKS_DIR).is_dir()  # DVC stops on a missing dependency


@pytest.mark.parametrize("ablate, expected", [
    ({}, "lists no component"),
    ({"layers": "bn1"}, "ablate.layers: must be a list"),
    ({"layers": ["bn1"], "groups": {"bn1": ["bn1", "res_bn"]}}, "both make a variant named 'no-bn1'"),
    ({"replace": {"relu1": {"activation": "tanh"}}}, "replace.relu1: must be {class_name"),
    ({"layers": ["bn1"], "extra": 1}, "ablate.extra: unknown key"),
])
def test_bad_ablate_blocks_are_config_errors(ablate, expected, tmp_path):
    from ablations.config import load_params
    from ablations.errors import ConfigError

    write_repo(tmp_path, study(ablate))
    with pytest.raises(ConfigError, match="studies.own") as raised:
        load_params(tmp_path / "params.yaml")
    assert expected in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
