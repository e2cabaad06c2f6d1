"""The dataset registry: one complete entry per dataset, and what its parser returns agrees
with the entry (shape, classes, split sizes) on real data (digits, bundled with scikit-learn)."""

from ablations.data.registry import DATASET_NAMES, DATASETS, load_raw
from ablations.data.sources import fetch


def test_every_dataset_is_one_complete_entry():
    assert DATASET_NAMES == ("cifar10", "digits", "fashion_mnist", "mnist", "stl10")
    for name, spec in DATASETS.items():
        assert spec.name == name and callable(spec.parser)
        assert len(spec.image_shape) == 3 and len(spec.split_sizes) == 2
        assert len(set(spec.class_names)) == len(spec.class_names) >= 2
        assert spec.files or spec.build  # where its files come from
        assert all(file.sha256 for file in spec.files)


def test_digits_parse_to_what_their_entry_says(tmp_path):
    spec = DATASETS["digits"]
    raw = load_raw("digits", fetch("digits", tmp_path / "digits"))
    assert raw.x_train.shape[1:] == spec.image_shape == raw.x_test.shape[1:]
    assert (len(raw.y_train), len(raw.y_test)) == spec.split_sizes
    assert raw.class_names == spec.class_names
    assert set(raw.y_train.tolist()) == set(range(len(spec.class_names)))
