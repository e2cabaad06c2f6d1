"""split with `classes`: keep some classes of a dataset, relabelled in the listed order
(a transfer source/target pair from one dataset), on a small real IDX dataset."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError
from test_data_formats import write_idx

from ablations.config import PreparedData
from ablations.data.prepare import split, standardize
from ablations.errors import DataError
from ablations.io import read_json


def write_fashion(folder, per_class_train=20, per_class_test=4, labels=range(10)):
    """Fashion-MNIST IDX files whose every pixel is 10 * the image's label, so a test can tell
    which original class each image came from."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", per_class_train), ("t10k", per_class_test)):
        y = np.repeat(np.array(list(labels), np.uint8), per_class)
        np.random.default_rng(0).shuffle(y)
        x = np.broadcast_to((10 * y)[:, None, None], (len(y), 28, 28)).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
    return folder


def prepared(**overrides):
    return PreparedData(**{"source": "fashion_mnist", "scaling": "zero_one", "val_fraction": 0.2,
                           **overrides})


def test_classes_are_kept_relabelled_in_order_before_the_caps(tmp_path):
    raw = write_fashion(tmp_path / "raw")
    cfg = prepared(classes=[7, 2, 5], max_train=30, max_test=6)
    counts = split(cfg, raw, tmp_path / "split")
    # 3 classes x 20 = 60 images → 12 validation, 48 train capped to 30 (the cap counts kept
    # classes only); test 3 x 4 = 12 capped to 6.
    assert counts == {"train": 30, "val": 12, "test": 6}
    for part in ("train", "val", "test"):
        x = np.load(tmp_path / "split" / f"x_{part}.npy")
        y = np.load(tmp_path / "split" / f"y_{part}.npy")
        assert y.dtype == np.int64 and set(y.tolist()) == {0, 1, 2}
        np.testing.assert_array_equal(x[:, 0, 0, 0], 10 * np.array([7, 2, 5])[y])  # right images
        assert np.bincount(y).min() == np.bincount(y).max()  # still stratified
    assert read_json(tmp_path / "split" / "classes.json") == ["Sneaker", "Pullover", "Sandal"]
    standardize(cfg, tmp_path / "split", tmp_path / "prepared")
    assert read_json(tmp_path / "prepared" / "classes.json") == ["Sneaker", "Pullover", "Sandal"]


def test_without_classes_every_class_is_kept(tmp_path):
    raw = write_fashion(tmp_path / "raw", per_class_train=5, per_class_test=1)
    assert split(prepared(), raw, tmp_path / "split") == {"train": 40, "val": 10, "test": 10}
    y = np.load(tmp_path / "split" / "y_test.npy")
    np.testing.assert_array_equal(np.sort(y), np.arange(10))
    assert len(read_json(tmp_path / "split" / "classes.json")) == 10


def test_absent_class_is_a_data_error(tmp_path):
    """A class the dataset has (so validate accepts it) but these files lack."""
    raw = write_fashion(tmp_path / "raw", per_class_train=5, per_class_test=1, labels=range(9))
    with pytest.raises(DataError, match=r"classes: \[9\] .*fashion_mnist.*allowed 0\.\.9"):
        split(prepared(classes=[9, 0]), raw, tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_unknown_class_is_refused_before_any_data(tmp_path):
    with pytest.raises(ValidationError, match=r"classes: \[12\] not classes of fashion_mnist "
                                              r"\(allowed 0\.\.9\)"):
        prepared(classes=[3, 12])


@pytest.mark.parametrize("per_class_train, val_fraction, expected", [
    ([1, 5, 5], 0.2, "class 'T-shirt/top' has 1 training image"),
    ([2, 2, 2], 0.2, "leaves 2 for validation and 4 for training; each side needs at least one per class (3)"),
    ([2, 2, 2], 0.9, "leaves 6 for validation and 0 for training"),
])
def test_tiny_dataset_is_one_data_error(tmp_path, per_class_train, val_fraction, expected):
    """Classes of one or two images: scikit-learn's stratified split would raise a ValueError."""
    raw = write_fashion(tmp_path / "raw", per_class_train=1, per_class_test=1, labels=range(3))
    y = np.repeat(np.arange(3, dtype=np.uint8), per_class_train)
    write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((len(y), 28, 28), np.uint8))
    write_idx(raw / "train-labels-idx1-ubyte.gz", y)
    with pytest.raises(DataError, match=re.escape(expected)):
        split(prepared(val_fraction=val_fraction), raw, tmp_path / "split")
    assert not (tmp_path / "split").exists()


def test_caps_that_scikit_learn_cannot_stratify(tmp_path):
    """A test class of one image, and a cap that leaves out fewer images than there are
    classes: a seeded draw of exactly the cap, the same for the same seed."""
    raw = write_fashion(tmp_path / "raw", per_class_train=10, per_class_test=1, labels=range(3))
    y_test = np.array([0, 0, 1, 1, 2], np.uint8)
    write_idx(raw / "t10k-images-idx3-ubyte.gz", np.zeros((5, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", y_test)
    cfg = prepared(classes=[0, 1, 2], max_test=4, max_train=23, seed=4)
    assert split(cfg, raw, tmp_path / "a") == {"train": 23, "val": 6, "test": 4}
    split(cfg, raw, tmp_path / "b")
    for name in ("y_train.npy", "y_test.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "a" / name), np.load(tmp_path / "b" / name))
