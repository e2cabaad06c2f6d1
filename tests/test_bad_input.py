"""Bad input, through the real command line: exit status 2, one `error:` line naming the key or
file and what is allowed, and nothing written where the output would go."""

import copy
import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def ablations(*args, cwd, env=None):
    command = [sys.executable, "-m", "ablations.cli", *args]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


def validate_in_process(cwd, monkeypatch, capsys) -> subprocess.CompletedProcess:
    """`ablations validate --out valid.json` in `cwd` through the command's own entry point
    (cli.main), in this process: the same code and exit status without paying a Python and
    Keras start-up per case (~10 s when Keras names are checked)."""
    from ablations import cli

    monkeypatch.chdir(cwd)
    code = cli.main(["validate", "--out", "valid.json"])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["ablations", "validate"], code, captured.out, captured.err)


def assert_clean_failure(result, *expected, absent=()):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert len(errors[0]) <= 1000, f"{len(errors[0])} characters: {errors[0][:300]}…"
    for text in expected:
        assert text in errors[0], errors[0]
    for path in absent:
        assert not Path(path).exists(), f"{path} left behind"


def study(params):
    return params["studies"]["batchnorm"]


def variant(params, name):
    """The explicit overrides of batchnorm's variant `name`, added on top of its factorial cell."""
    return study(params).setdefault("variants", {}).setdefault(name, {})


CONFIG_CASES = {
    "unknown top-level key": (lambda p: p.update(studys={}), ["studys", "unknown key"]),
    "unknown study key": (lambda p: study(p).update(questoin="?"), ["studies.batchnorm.questoin"]),
    "unknown variant key": (lambda p: variant(p, "relu").update(activaton="elu"),
                            ["variants.relu.activaton", "unknown key"]),
    "unknown activation": (lambda p: variant(p, "relu").update(activation="relux"),
                           ["variants.relu", "relux", "activation"]),
    "unknown initializer": (lambda p: study(p)["defaults"].update(initializer="glorot_unicorn"),
                            ["glorot_unicorn", "initializer"]),
    "unknown regularizer": (lambda p: study(p)["defaults"].update(kernel_regularizer="l3"),
                            ["kernel_regularizer", "l3"]),
    "unknown optimizer": (lambda p: study(p)["defaults"].update(optimizer="adamx"),
                          ["optimizer", "adamx"]),
    "unknown dataset": (lambda p: p["data"].update(raw=["imagenet"]),
                        ["data.raw.0", "imagenet", "fashion_mnist"]),
    "wrong type": (lambda p: study(p)["defaults"].update(batch_size="big"), ["batch_size", "big"]),
    "zero epochs": (lambda p: study(p)["defaults"].update(epochs=0), ["epochs", "must be > 0"]),
    "negative epochs": (lambda p: variant(p, "tanh").update(epochs=-3),
                        ["variants.tanh.epochs"]),
    "zero batch size": (lambda p: study(p)["defaults"].update(batch_size=0), ["batch_size"]),
    "learning rate <= 0": (lambda p: study(p)["defaults"].update(learning_rate=0.0),
                           ["learning_rate", "must be > 0"]),
    "dropout >= 1": (lambda p: variant(p, "relu").update(dropout=1.0), ["dropout", "must be < 1"]),
    "dropout < 0": (lambda p: variant(p, "relu").update(dropout=-0.1), ["dropout"]),
    "norm placement": (lambda p: variant(p, "relu").update(norm="middle"),
                       ["norm", "'none', 'before' or 'after'"]),
    "study without variants": (lambda p: study(p).update(variants={}, factors={}), ["at least one variant"]),
    "size the model cannot take": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(size=4),
                                   ["cannot take (4, 4, 1)", "data.prepared.fmnist_pm1.size"]),
    "unknown prepared data": (lambda p: study(p).update(data="cifar"), ["studies.batchnorm.data"]),
    "polyfit folds": (lambda p: p["polyfit"].update(folds=1), ["polyfit.folds"]),
    "baseline not a variant": (lambda p: study(p).update(baseline="sigmoid"),
                               ["studies.batchnorm", "baseline 'sigmoid'", "relu-bn"]),
    "seed set per variant": (lambda p: variant(p, "relu").update(seed=3),
                             ["relu.seed", "`seeds`"]),
    "init_from no such variant": (lambda p: variant(p, "relu").update(init_from="vgg"),
                                  ["variants.relu.init_from", "'vgg'", "tanh-bn"]),
    "classes repeated": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(classes=[1, 1]),
                         ["data.prepared.fmnist_pm1", "classes must be distinct"]),
    "margin 0": (lambda p: study(p).update(margin=0), ["studies.batchnorm.margin", "must be > 0"]),
    "margin negative": (lambda p: study(p).update(margin=-1.5), ["studies.batchnorm.margin", "must be > 0"]),
    "margin not a number": (lambda p: study(p).update(margin="1pt"), ["studies.batchnorm.margin", "1pt"]),
    "margin infinite": (lambda p: study(p).update(margin=float("inf")), ["studies.batchnorm.margin"]),
    "margin NaN": (lambda p: study(p).update(margin=float("nan")), ["studies.batchnorm.margin"]),
    "seed range max < min": (lambda p: study(p).update(seeds={"min": 4, "max": 2}),
                             ["studies.batchnorm.seeds", "max (2) must be >= min (4)"]),
    "seed range min 0": (lambda p: study(p).update(seeds={"min": 0, "max": 2}),
                         ["studies.batchnorm.seeds.min", "must be >= 1"]),
    "seed range without max": (lambda p: study(p).update(seeds={"min": 2}),
                               ["studies.batchnorm.seeds.max: required key is missing"]),
    "seed range unknown key": (lambda p: study(p).update(seeds={"min": 2, "max": 4, "step": 2}),
                               ["studies.batchnorm.seeds.step: unknown key"]),
}

# Upper bounds (config.MAX_*): each message names the limit.
BOUND_CASES = {
    "epochs 10**12": (lambda p: study(p)["defaults"].update(epochs=10**12),
                      ["epochs", "must be <= 10000", "1000000000000"]),
    "batch size 10**6": (lambda p: variant(p, "tanh").update(batch_size=10**6),
                         ["variants.tanh.batch_size", "must be <= 65536"]),
    "1001 seeds": (lambda p: study(p).update(seeds=list(range(1001))),
                   ["studies.batchnorm.seeds: must have at most 1000 entries (got 1001)"]),
    "seed 2**32": (lambda p: study(p).update(seeds=[0, 2**32]),
                   ["studies.batchnorm.seeds.1", "must be <= 4294967295"]),
    "split seed 2**40": (lambda p: p["data"]["prepared"]["fmnist_std"].update(seed=2**40),
                         ["data.prepared.fmnist_std.seed", "must be <= 4294967295"]),
    "conv width 10**6": (lambda p: study(p)["defaults"].update(conv_filters=[16, 10**6]),
                         ["conv_filters.1", "must be <= 65536"]),
    "65 dense layers": (lambda p: study(p)["defaults"].update(dense_units=[8] * 65),
                        ["dense_units: must have at most 64 entries (got 65)"]),
    "kernel 1000": (lambda p: study(p)["defaults"].update(kernel_size=1000),
                    ["kernel_size", "must be <= 64"]),
    "image size 10**5": (lambda p: p["data"]["prepared"]["fmnist32"].update(size=10**5),
                         ["data.prepared.fmnist32.size", "must be <= 1024"]),
    "learning rate 1000": (lambda p: study(p)["defaults"].update(learning_rate=1000.0),
                           ["learning_rate", "must be <= 10"]),
    "max_train 10**9": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(max_train=10**9),
                        ["fmnist_pm1.max_train", "must be <= 10000000"]),
    "polyfit degree 1000": (lambda p: p["polyfit"].update(max_degree=1000),
                            ["polyfit.max_degree", "must be <= 50"]),
    "polyfit 10**6 folds": (lambda p: p["polyfit"].update(folds=10**6),
                            ["polyfit.folds", "must be <= 100"]),
    "polyfit 10**9 samples": (lambda p: p["polyfit"].update(n=10**9),
                              ["polyfit.n", "must be <= 10000000"]),
    "margin 101 points": (lambda p: study(p).update(margin=101.0),
                          ["studies.batchnorm.margin", "must be <= 100"]),
    "10000 factorial cells": (lambda p: study(p).update(factors={
        f"f{i}": {f"l{i}{j}": {} for j in range(10)} for i in range(4)}),
        ["studies.batchnorm", "factors: 10000 cells", "at most 1000"]),
}
# Settings that would do nothing, and values the dataset cannot satisfy.
DATASET_CASES = {
    "freeze without init_from": (lambda p: variant(p, "relu").update(freeze=True),
                                 ["variants.relu", "freeze: true", "init_from", "weights_file"]),
    "weights_sha256 without file": (lambda p: variant(p, "relu").update(weights_sha256="ab" * 32),
                                    ["variants.relu", "weights_sha256", "weights_file"]),
    "class 10 of 10": (lambda p: p["data"]["prepared"]["fmnist_source"].update(classes=[0, 10]),
                       ["data.prepared.fmnist_source", "[10] not classes of fashion_mnist",
                        "allowed 0..9"]),
    "one class": (lambda p: p["data"]["prepared"]["fmnist_target"].update(classes=[7]),
                  ["data.prepared.fmnist_target", "at least 2"]),
    "max_train < classes": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(max_train=5),
                            ["fmnist_pm1", "max_train: 5 is fewer than the 10 classes"]),
    "max_val < kept classes": (lambda p: p["data"]["prepared"]["fmnist_target"].update(max_val=4),
                               ["fmnist_target", "max_val: 4 is fewer than the 5 classes"]),
    "max_test < classes": (lambda p: p["data"]["prepared"]["fmnist32"].update(max_test=9),
                           ["fmnist32", "max_test: 9 is fewer than the 10 classes"]),
    "too few validation images": (
        lambda p: p["data"]["prepared"]["fmnist_pm1"].update(val_fraction=0.0001),
        ["fmnist_pm1", "val_fraction: 0.0001 leaves 6 validation images of the 60000",
         "allowed: between 0.00017"]),
    "too few training images": (
        lambda p: p["data"]["prepared"]["fmnist_source"].update(val_fraction=0.9999),
        ["fmnist_source", "val_fraction: 0.9999 leaves 3 training images of the 30000"]),
    "variant name ../x": (lambda p: variant(p, "../escape").update(dropout=0.1),
                          ["studies.batchnorm.variants", "'../escape' is not allowed",
                           "letters, digits"]),
    "study name with a space": (lambda p: p["studies"].update({"my study": p["studies"].pop("batchnorm")}),
                                ["studies: the name 'my study' is not allowed"]),
    "prepared name with a slash": (lambda p: p["data"]["prepared"].update(
        {"a/b": p["data"]["prepared"]["fmnist_pm1"]}), ["data.prepared: the name 'a/b'"]),
    "200-character variant name": (lambda p: variant(p, "v" * 200).update(dropout=0.1),
                                   ["variants: the name 'vvvvvvvvvvvvvvvvv...vvvvvvvvvvvvvvvvvv' is", "at most 100"]),
}
# Types and shapes of values: what YAML allows but the schema does not.
SHAPE_CASES = {
    "variant named 1": (lambda p: study(p).setdefault("variants", {}).update({1: {}}),
                        ["studies.batchnorm.variants.1", "must be a string (got 1)"]),
    "empty variant name": (lambda p: variant(p, "").update(dropout=0.1),
                           ["studies.batchnorm.variants: the name '' is not allowed"]),
    "val_fraction '10%'": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(val_fraction="10%"),
                           ["fmnist_pm1.val_fraction", "must be a number (got '10%')"]),
    "negative class": (lambda p: p["data"]["prepared"]["fmnist_source"].update(classes=[-1, 2]),
                       ["fmnist_source.classes.0", "must be >= 0"]),
    "no seeds": (lambda p: study(p).update(seeds=[]),
                 ["studies.batchnorm.seeds: must have at least 1 entries (got 0)"]),
    "mapping for a list": (lambda p: study(p)["defaults"].update(conv_filters={"a": 1}),
                           ["conv_filters", "must be a list"]),
    "a number as a top-level key": (lambda p: p.update({1: "x"}), ["params.yaml: 1: Keys should be strings (got 1)"]),
    # found by bench/fuzz_params.py: tracebacks, or an error on two lines
    "a level named 1": (lambda p: study(p)["factors"]["dropout"].update({1: {"dropout": 0.2}}),
                        ["factors.dropout: factor and level names must be text (got 1)"]),
    "a key with a newline": (lambda p: study(p)["factors"]["dropout"]["none"].update({"a\nb": 1}),
                             ["factors.dropout.none.'a\\nb': unknown or not allowed key"]),
    "null study": (lambda p: p["studies"].update(batchnorm=None),
                   ["studies.batchnorm: must be a mapping (got None)"]),
}
CONFIG_CASES.update(SHAPE_CASES)
CONFIG_CASES.update(BOUND_CASES)
CONFIG_CASES.update(DATASET_CASES)


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_invalid_params_fail_before_any_work(tmp_path, case, monkeypatch, capsys):
    mutate, expected = CONFIG_CASES[case]
    params = copy.deepcopy(BASE)
    mutate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, *expected, absent=[tmp_path / "valid.json"])


def test_duplicate_variant_names(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("      after:\n        norm: after\n",
                                                      "      before:\n        norm: after\n")
    assert text != (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(text)
    result = ablations("validate", "--out", "valid.json", cwd=tmp_path)
    assert_clean_failure(result, 'duplicate key "before"', absent=[tmp_path / "valid.json"])


def test_malformed_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("studies: {batchnorm: [\n")
    assert_clean_failure(ablations("validate", "--out", "v.json", cwd=tmp_path), "malformed YAML")


# params.yaml is read as DVC reads it (YAML 1.2): `yes` is text, `1e-4` a number. Each case
# sets a key to a placeholder, then writes the placeholder's YAML text verbatim.
RAW = "__raw_yaml__"
YAML_TEXT_CASES = {
    "batch_size: yes": (lambda p: study(p)["defaults"].update(batch_size=RAW), "yes",
                        ["batch_size", "must be a whole number", "'yes'"]),
    "batch_size: true": (lambda p: study(p)["defaults"].update(batch_size=RAW), "true",
                         ["batch_size", "must be a whole number", "True"]),
    "epochs: 2.5": (lambda p: variant(p, "tanh").update(epochs=RAW), "2.5",
                    ["variants.tanh.epochs", "whole number"]),
    "epochs as text": (lambda p: study(p)["defaults"].update(epochs=RAW), "'10'",
                       ["epochs", "whole number", "'10'"]),
    "freeze: on": (lambda p: study(p)["defaults"].update(freeze=RAW), "on",
                   ["freeze", "true or false", "'on'", "yes/no/on/off"]),
    "learning_rate: .inf": (lambda p: study(p)["defaults"].update(learning_rate=RAW), ".inf",
                            ["learning_rate", "finite"]),
    "learning_rate: .nan": (lambda p: study(p)["defaults"].update(learning_rate=RAW), ".nan",
                            ["learning_rate", "finite"]),
    "optimizer_config momentum: .inf": (
        lambda p: study(p)["defaults"].update(optimizer="sgd", optimizer_config={"momentum": RAW}),
        ".inf", ["optimizer_config: momentum must be a finite number (got inf)"]),
    "!!binary momentum": (
        lambda p: study(p)["defaults"].update(optimizer="sgd", optimizer_config={"momentum": RAW}),
        '!!binary "gAE="', ["optimizer_config: momentum must be a number, text, true/false, null, "
                            "a list or a mapping (got bytes)"]),
    "activation config: null": (
        lambda p: variant(p, "relu").update(activation={"class_name": "LeakyReLU", "config": RAW}),
        "null", ["activation: must be a Keras name or {class_name: <name>, config: {<arguments>}}"]),
    "regularizer l2: .nan": (
        lambda p: variant(p, "relu").update(kernel_regularizer={"class_name": "L2",
                                                                "config": {"l2": RAW}}),
        ".nan", ["variants.relu.kernel_regularizer: config.l2 must be a finite number (got nan)"]),
    "val_fraction: 1e+0": (lambda p: p["data"]["prepared"]["fmnist_pm1"].update(val_fraction=RAW),
                           "1e+0", ["fmnist_pm1.val_fraction", "must be < 1"]),
    "a date for a question": (lambda p: study(p).update(question=RAW), "2024-01-31",
                              ["studies.batchnorm.question", "must be a string"]),
    "100 kB string": (lambda p: variant(p, "relu").update(norm=RAW), "x" * 100_000,
                      ["relu.norm", "'none', 'before' or 'after'", "xxx"]),
    "100 kB Keras name": (lambda p: study(p)["defaults"].update(optimizer=RAW), "a" * 100_000,
                          ["optimizer", "is not a Keras optimizer"]),
    "50k-entry list": (lambda p: study(p)["defaults"].update(dense_units=RAW),
                       "[" + ", ".join(["-1"] * 50_000) + "]",
                       ["dense_units: must have at most 64 entries (got 50000)"]),
    "40 bad entries": (lambda p: study(p)["defaults"].update(dense_units=RAW),
                       "[" + ", ".join(["-1"] * 40) + "]",
                       ["dense_units.0: must be > 0 (got -1)", "; and 35 more"]),
    "python object tag": (lambda p: study(p).update(question=RAW), "!!python/object:os.system x",
                          ["params.yaml: malformed YAML", "constructor", "line"]),
    "tab indentation": (lambda p: study(p).update(question=RAW), "\n\t\tbad: 1",
                        ["params.yaml: malformed YAML", "line"]),
    "100,000 nested lists": (lambda p: study(p)["defaults"].update(optimizer_config=RAW),
                             "[" * 100_000 + "]" * 100_000,
                             ["params.yaml: values nested more than 64 levels deep at line"]),
    "aliases nested 100 deep": (
        lambda p: study(p)["defaults"].update(optimizer_config=RAW),
        "{x: &a0 [1], " + ", ".join(f"y{i}: &a{i} [*a{i - 1}]" for i in range(1, 100)) + "}",
        ["params.yaml: values nested more than 64 levels deep once YAML aliases"]),
    "recursive alias": (lambda p: study(p)["defaults"].update(optimizer_config=RAW),
                        "&loop [*loop]", ["params.yaml", "once YAML aliases (*name) are expanded"]),
}


@pytest.mark.parametrize("case", list(YAML_TEXT_CASES))
def test_yaml_values_as_dvc_reads_them(tmp_path, case, monkeypatch, capsys):
    mutate, raw, expected = YAML_TEXT_CASES[case]
    params = copy.deepcopy(BASE)
    mutate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, width=1 << 20).replace(RAW, raw))
    (tmp_path / "valid.json").write_text("{}")  # an earlier run's output: removed on failure
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, *expected, absent=[tmp_path / "valid.json"])
    assert len(result.stderr) < 1000  # the bad value is quoted, never echoed whole


@pytest.mark.parametrize("content, expected", [
    ("- studies\n- data\n", "expected a mapping at the top level"),
    ("", "required key is missing"),
    ("# only a comment\n", "required key is missing"),
])
def test_params_not_a_mapping(tmp_path, content, expected, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(content)
    result = validate_in_process(tmp_path, monkeypatch, capsys)
    assert_clean_failure(result, "params.yaml", expected, absent=[tmp_path / "valid.json"])


def test_params_not_utf8(tmp_path):
    data = b"# Caf\xe9 (Latin-1)\n" + (REPO / "params.yaml").read_bytes()
    (tmp_path / "params.yaml").write_bytes(data)
    result = ablations("validate", "--out", "valid.json", cwd=tmp_path)
    assert_clean_failure(result, "params.yaml: not UTF-8", "0xe9", "offset",
                         absent=[tmp_path / "valid.json"])


@pytest.mark.parametrize("args, expected", [
    (["--params", "absent.yaml", "validate", "--out", "v.json"],
     "absent.yaml: cannot read (No such file or directory)"),
    (["--params", "folder", "validate", "--out", "v.json"], "folder: cannot read (Is a directory)"),
    (["validate", "--out", "folder"], "--out folder: is a folder"),
])
def test_params_or_output_path_unusable(tmp_path, args, expected):
    (tmp_path / "folder").mkdir()
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = ablations(*args, cwd=tmp_path)
    assert_clean_failure(result, expected, absent=[tmp_path / "v.json"])
    assert (tmp_path / "folder").is_dir()


def test_params_larger_than_10_mib(tmp_path):
    text = (REPO / "params.yaml").read_text() + "# padding\n" * (1 << 20)
    (tmp_path / "params.yaml").write_text(text)
    result = ablations("validate", "--out", "valid.json", cwd=tmp_path)
    assert_clean_failure(result, "params.yaml:", "bytes; allowed: at most 10,485,760",
                         absent=[tmp_path / "valid.json"])


def alias_bomb(levels: int) -> str:
    """'Billion laughs': each anchor a list of ten aliases of the one before (10**levels)."""
    lines = ["lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [5, 9])
def test_yaml_alias_bomb_is_refused_quickly(tmp_path, levels):
    (tmp_path / "params.yaml").write_text(alias_bomb(levels) + (REPO / "params.yaml").read_text())
    result = ablations("validate", "--out", "valid.json", cwd=tmp_path)
    assert_clean_failure(result, "params.yaml: more than 100000 values", "aliases",
                         absent=[tmp_path / "valid.json"])


def test_unknown_variant_on_the_command_line(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    result = ablations("train", "batchnorm", "relu", "relu-typo", "--data", "d", "--out", "m",
                       "--checkpoints", "c", cwd=tmp_path)
    assert_clean_failure(result, "studies.batchnorm.variants.relu-typo", "relu-bn", absent=[tmp_path / "m"])


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_like(folder: Path, images: bytes | None = None, labels=None) -> None:
    """A raw dataset folder in the IDX gz format with 20 images of 28x28 (test set)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = np.zeros((20, 28, 28), np.uint8), np.arange(20) % 10
    files = {"train-images-idx3-ubyte.gz": images or idx_bytes(x),
             "train-labels-idx1-ubyte.gz": idx_bytes(y if labels is None else labels),
             "t10k-images-idx3-ubyte.gz": idx_bytes(x), "t10k-labels-idx1-ubyte.gz": idx_bytes(y)}
    for name, payload in files.items():
        (folder / name).write_bytes(gzip.compress(payload))


def split_params(tmp_path, source="mnist"):
    params = copy.deepcopy(BASE)
    params["data"] = {"raw": [source], "prepared": {"d": {"source": source, "scaling": "zero_one"}}}
    params["studies"] = {"batchnorm": study(params)}
    study(params)["data"] = "d"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.parametrize("corrupt, expected", [
    (lambda good: good[:-300], "train-images-idx3-ubyte.gz"),                 # payload too short
    (lambda good: b"\x00\x00\x99\x03" + good[4:], "train-images-idx3-ubyte.gz"),  # bad type code
])
def test_corrupt_idx_is_rejected(tmp_path, corrupt, expected):
    split_params(tmp_path)
    good = idx_bytes(np.zeros((20, 28, 28), np.uint8))
    write_mnist_like(tmp_path / "raw", images=corrupt(good))
    result = ablations("split", "d", "--raw", "raw", "--out", "split", cwd=tmp_path)
    assert_clean_failure(result, expected, absent=[tmp_path / "split"])


def test_tiny_dataset_split_is_one_error(tmp_path):
    """20 images, 2 per class: 10 % validation is 2 images for 10 classes (scikit-learn's
    stratified split raises a ValueError); then a class of one image."""
    split_params(tmp_path)
    write_mnist_like(tmp_path / "raw")
    result = ablations("split", "d", "--raw", "raw", "--out", "split", cwd=tmp_path)
    assert_clean_failure(result, "mnist in raw: val_fraction 0.1 of 20 training images leaves 2",
                         "at least one per class (10)", absent=[tmp_path / "split"])
    y = np.arange(19) % 10  # class 9 has one image
    (tmp_path / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    (tmp_path / "raw" / "train-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros((19, 28, 28)))))
    result = ablations("split", "d", "--raw", "raw", "--out", "split", cwd=tmp_path)
    assert_clean_failure(result, "class '9' has 1 training image", absent=[tmp_path / "split"])


@pytest.mark.parametrize("out, expected", [
    ("taken", "taken: is a file; this output is a folder"),
    ("taken/split", "taken: is not a folder; cannot write split there"),
])
def test_output_path_of_the_wrong_kind(tmp_path, out, expected):
    split_params(tmp_path)
    write_mnist_like(tmp_path / "raw", images=idx_bytes(np.zeros((100, 28, 28), np.uint8)),
                     labels=np.arange(100) % 10)
    (tmp_path / "taken").write_text("someone's notes")
    result = ablations("split", "d", "--raw", "raw", "--out", out, cwd=tmp_path)
    assert_clean_failure(result, expected)
    assert (tmp_path / "taken").read_text() == "someone's notes"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_truncated_gzip_is_rejected(tmp_path):
    split_params(tmp_path)
    write_mnist_like(tmp_path / "raw")
    path = tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-10])
    result = ablations("split", "d", "--raw", "raw", "--out", "split", cwd=tmp_path)
    assert_clean_failure(result, "t10k-labels-idx1-ubyte.gz", absent=[tmp_path / "split"])


def test_cifar_binary_of_wrong_length(tmp_path):
    split_params(tmp_path, source="cifar10")
    folder = tmp_path / "raw" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073 * 2))
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 * 2 + 5))
    result = ablations("split", "d", "--raw", "raw", "--out", "split", cwd=tmp_path)
    assert_clean_failure(result, "data_batch_3.bin", absent=[tmp_path / "split"])


def test_missing_dataset_with_no_source_says_where_to_put_files(tmp_path):
    params = copy.deepcopy(BASE)
    params["data"]["raw"] = ["mnist"]
    for prepared in params["data"]["prepared"].values():
        prepared["source"] = "mnist"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    mirror = tmp_path / "mirror"
    (mirror / "mnist").mkdir(parents=True)
    (mirror / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"not the real file")
    result = ablations("download", "mnist", "--out", "raw/mnist", cwd=tmp_path,
                       env={"ABLATIONS_DATA_MIRROR": str(mirror)})
    assert_clean_failure(result, "train-images-idx3-ubyte.gz", absent=[tmp_path / "raw" / "mnist"])
    assert "sha256" in result.stderr  # the bad mirror copy was reported as such


def test_unreachable_tracking_server(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    result = ablations("polyfit", "--results", "r.json", "--metrics", "m.json", "--plot", "p.png",
                       cwd=tmp_path, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert_clean_failure(result, "MLFLOW_TRACKING_URI=http://127.0.0.1:9", "unreachable",
                         absent=[tmp_path / "r.json", tmp_path / "m.json", tmp_path / "p.png"])
