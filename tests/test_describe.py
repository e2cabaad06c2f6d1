"""`ablations describe --budget notebook --json`: every notebook network, counted by Keras, has
the notebook's parameter counts (the real command, run once: building ResNet50, AlexNet and
Xception takes seconds)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

# (total, trainable) per notebook network. Keras counts BatchNorm's moving mean and variance
# as non-trainable parameters (2 per channel); PyTorch's summary (004) counts only gamma and
# beta, which are Keras' trainable ones.
NOTEBOOK_COUNTS = {
    # 000, text's layer order, code's widths/strides: 896 + 18,496 + 73,856 + Dense 128 on the
    # 1x1x128 map 16,512 + head 1,290; BN: (32 + 64 + 128 + 128) x 4.
    ("batchnorm", "relu"): (111_050, 111_050),
    ("batchnorm", "relu-bn"): (112_458, 111_754),
    # 001 AlexNet: convs 3,747,200 + dense 21,940,994 + BN (5,504 + 36,808, half trainable).
    ("init_reg", "glorot_uniform"): (25_730_506, 25_709_350),
    # 001 ResNet50 (23,587,712, of which 53,120 BN statistics) + Dense 512 on the flattened
    # 1x1x2048 map (1,049,088) + head 5,130.
    ("optimizers", "rmsprop"): (24_641_930, 24_588_810),
    # 001 MNIST LeNet: 60 + 880 + 48,120 + 10,164 + 850.
    ("transfer", "source"): (60_074, 60_074),
    # 002, printed: 896 + 524,352 + 650; deeper: 896 + 18,496 + 262,208 + 650.
    ("depth", "shallow"): (525_898, 525_898),
    ("depth", "deeper"): (282_250, 282_250),
    # 002 Xception, printed by the notebook: 33,707,954 total, 12,846,474 trainable.
    ("xception", "frozen-imagenet"): (33_707_954, 12_846_474),
    # 003, printed by the notebook for both: 553,850 total, 553,626 trainable.
    ("bn_placement", "before"): (553_850, 553_626),
    ("bn_placement", "after"): (553_850, 553_626),
    # 004, PyTorch's summary: 61,706 (plain); BN adds 12 + 32 trainable, input BN 2 more.
    ("lenet_bn_dropout", "none"): (61_706, 61_706),
    ("lenet_bn_dropout", "bn"): (61_794, 61_750),
    ("lenet_bn_dropout", "bn-input"): (61_798, 61_752),
}


def ablations(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ablations.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def notebook():
    result = ablations("describe", "--budget", "notebook", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.parametrize(("study", "variant"), sorted(NOTEBOOK_COUNTS))
def test_notebook_budget_counts_equal_the_notebooks(notebook, study, variant):
    entry = notebook[study][variant]
    assert (entry["params_total"], entry["params_trainable"]) == NOTEBOOK_COUNTS[study, variant]


def test_layers_come_in_the_notebooks_order(notebook):
    before = [row["name"] for row in notebook["bn_placement"]["before"]["layers"][:4]]
    after = [row["name"] for row in notebook["bn_placement"]["after"]["layers"][:4]]
    assert before == ["block1_conv", "block1_bn", "block1_act", "block1_pool"]  # 003 "before"
    assert after == ["block1_conv", "block1_act", "block1_bn", "block1_pool"]  # 003 "after"
    first = notebook["init_reg"]["zeros"]["layers"][0]  # 001's AlexNet: 11x11, stride 4
    assert (first["kernel_size"], first["strides"], first["output_shape"]) == ([11, 11], [4, 4],
                                                                               [8, 8, 96])
    head = [row["class"] for row in notebook["init_reg"]["zeros"]["layers"][-3:]]
    assert head == ["Dense", "BatchNormalization", "Activation"]  # BN on the output too


def test_transfer_lists_copied_and_frozen_layers(notebook):
    frozen, finetune = notebook["transfer"]["frozen"], notebook["transfer"]["finetune"]
    assert [row["name"] for row in frozen["transfer"]["layers"]] == [
        "block1_conv", "block2_conv", "fc1_dense", "fc2_dense"]
    assert frozen["transfer"]["layers"][0]["shapes"] == [[3, 3, 1, 6], [6]]
    copied = sum(row["params"] for row in frozen["layers"]
                 if row["name"] in {"block1_conv", "block2_conv", "fc1_dense", "fc2_dense"})
    assert frozen["params_trainable"] == frozen["params_total"] - copied
    assert finetune["transfer"]["layers"][-1]["name"] == "head"  # copy_head, as the notebook
    assert finetune["params_trainable"] == finetune["params_total"]


def test_describe_text_and_unknown_study(notebook, monkeypatch, capsys):
    from ablations.cli import main
    from ablations.describe import as_text

    text = as_text({"bn_placement": notebook["bn_placement"]})
    assert "bn_placement/before: 553,850 parameters, 553,626 trainable" in text
    assert "block1_bn" in text and "BatchNormalization" in text
    monkeypatch.chdir(REPO)
    assert main(["describe", "nope"]) == 2
    assert capsys.readouterr().err.startswith("error: studies.nope: no such study")


# The laptop budget's counts as docs/fidelity.md states them: (study, variant) → (total, trainable).
LAPTOP_COUNTS = {
    ("batchnorm", "relu"): (106_058, 106_058), ("batchnorm", "relu-bn"): (107_274, 106_666),
    ("init_reg", "glorot_uniform"): (146_698, 145_834),
    ("optimizers", "rmsprop"): (87_722, 87_050), ("transfer", "source"): (44_001, 44_001),
    ("depth", "shallow"): (402_442, 402_442), ("depth", "deeper"): (220_234, 220_234),
    ("bn_placement", "before"): (324_186, 323_962), ("lenet_bn_dropout", "bn"): (61_794, 61_750),
}


def test_fidelity_doc_states_the_counts_describe_gives(repo_params):
    """docs/fidelity.md's numbers are describe's: the notebook budget's (the command above)
    and the laptop's (built here), so the table cannot drift from the networks."""
    from ablations.describe import describe

    doc = (REPO / "docs" / "fidelity.md").read_text()
    laptop = describe(repo_params, sorted({study for study, _ in LAPTOP_COUNTS}))
    for (study, variant), counts in LAPTOP_COUNTS.items():
        entry = laptop[study][variant]
        assert (entry["params_total"], entry["params_trainable"]) == counts, (study, variant)
    for total, trainable in [*NOTEBOOK_COUNTS.values(), *LAPTOP_COUNTS.values()]:
        assert f"{total:,}" in doc and f"{trainable:,}" in doc
