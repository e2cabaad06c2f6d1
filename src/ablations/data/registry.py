"""The dataset registry: one entry per dataset, every fact about it in one place — its files
(names, sha256, URL, system copies, how to build bundled ones), its parser, image shape, class
names and split sizes. Adding a dataset is one entry here and a parser in `formats`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ablations.data import formats
from ablations.data.formats import RawData
from ablations.errors import DataError


@dataclass(frozen=True)
class FileSpec:
    """One original file: its name (on the server and on disk) and its sha256.

    decompressed=True: the hash is of the gunzipped content (robust to re-compression, e.g.
    Debian's Fashion-MNIST). sha256=None: no known checksum, so the file is refused.
    """

    name: str
    sha256: str | None
    decompressed: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files come from and what they must hash to."""

    name: str
    files: tuple[FileSpec, ...] = ()
    base_url: str | None = None  # a file"s URL is base_url + file.name
    extract_dir: str | None = None  # set for a .tar.gz: the folder the archive extracts to
    # Bytes the archive"s files hold once extracted, when known; extraction stops beyond it
    # (plus a margin), else beyond MAX_EXPANSION times the archive's own size.
    extracted_bytes: int | None = None
    system_dirs: tuple[Path, ...] = ()  # distribution copies searched after the mirror
    build: Callable[[Path], None] | None = field(default=None, compare=False)  # bundled data
    # What the files hold, once parsed: the parser of data/raw/<name>/ (images, labels of the
    # official train and test splits), the image shape (height, width, channels), the class
    # names in label order, and the number of images per split (train, test).
    parser: Callable[[Path], tuple] | None = field(default=None, compare=False)
    image_shape: tuple[int, int, int] | None = None
    class_names: tuple[str, ...] = ()
    split_sizes: tuple[int, int] | None = None


_FASHION_DEBIAN = Path("/usr/share/datasets/fashion-mnist")

# Checksums: MNIST (.gz bytes), CIFAR-10 binary and STL-10 binary archives are the sha256 values
# of tensorflow/datasets" url_checksums (mnist.txt, cifar10.txt, stl10.txt). Fashion-MNIST hashes
# the *decompressed* IDX content, identical for the upstream files and Debian"s re-compressed copy.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        parser=formats.load_idx_folder, image_shape=(28, 28, 1),
        split_sizes=(60_000, 10_000),
        class_names=tuple(str(d) for d in range(10)),
        files=(
            FileSpec("train-images-idx3-ubyte.gz",
                     "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
            FileSpec("train-labels-idx1-ubyte.gz",
                     "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
            FileSpec("t10k-images-idx3-ubyte.gz",
                     "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
            FileSpec("t10k-labels-idx1-ubyte.gz",
                     "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
        ),
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        parser=formats.load_idx_folder, image_shape=(28, 28, 1),
        split_sizes=(60_000, 10_000),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        files=(
            FileSpec("train-images-idx3-ubyte.gz",
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", True),
            FileSpec("train-labels-idx1-ubyte.gz",
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", True),
            FileSpec("t10k-images-idx3-ubyte.gz",
                     "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", True),
            FileSpec("t10k-labels-idx1-ubyte.gz",
                     "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", True),
        ),
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        system_dirs=(_FASHION_DEBIAN,),
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        parser=formats.load_cifar10, image_shape=(32, 32, 3),
        split_sizes=(50_000, 10_000),
        class_names=("airplane", "automobile", "bird", "cat", "deer",
                     "dog", "frog", "horse", "ship", "truck"),
        files=(FileSpec("cifar-10-binary.tar.gz",
                        "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"),),
        base_url="https://www.cs.toronto.edu/~kriz/",
        extract_dir=formats.CIFAR10_DIR,
        extracted_bytes=6 * 10_000 * (1 + 3 * 32 * 32),  # 6 batches of 10,000 records (+ 2 small files)
    ),
    "stl10": DatasetSpec(
        "stl10",
        parser=formats.load_stl10, image_shape=(96, 96, 3),
        split_sizes=(5_000, 8_000),
        class_names=("airplane", "bird", "car", "cat", "deer",
                     "dog", "horse", "monkey", "ship", "truck"),
        files=(FileSpec("stl10_binary.tar.gz",
                        "f31fd99273a1acb8609c8db427cebb1de3f71de77758cdc0e22956e1289b9866"),),
        base_url="http://ai.stanford.edu/~acoates/stl10/",
        extract_dir=formats.STL10_DIR,
        # train 5,000 + test 8,000 + unlabeled 100,000 images of 96x96x3, a label byte each
        # labelled image (+ class names, fold indices)
        extracted_bytes=113_000 * 3 * 96 * 96 + 13_000,
    ),
    "digits": DatasetSpec(
        "digits", build=formats.write_digits,
        parser=formats.load_digits, image_shape=(8, 8, 1),
        split_sizes=(1_500, 297),
        class_names=tuple(str(d) for d in range(10)),
    ),
}

DATASET_NAMES = tuple(sorted(DATASETS))
# Views of the registry by fact, for the config schema.
CLASS_NAMES = {name: spec.class_names for name, spec in DATASETS.items()}
IMAGE_SHAPES = {name: spec.image_shape for name, spec in DATASETS.items()}
SPLIT_SIZES = {name: spec.split_sizes for name, spec in DATASETS.items()}


@dataclass(frozen=True)
class WeightsSpec:
    """Pretrained weights, provisioned as Keras provisions them: `keras.utils.get_file(file,
    url, file_hash=md5, cache_subdir="models")`. `md5` is the hash Keras publishes for the file
    (keras/src/applications/<model>.py), the only one it publishes; the weights stage records
    the verified file's sha256 in its output, which dvc.lock then pins."""

    name: str
    file: str  # its name on the server, in a mirror and in Keras' cache (~/.keras/models)
    url: str
    md5: str
    params: int  # parameters it holds: 4 bytes each, the size a user will download


WEIGHTS: dict[str, WeightsSpec] = {
    "xception_imagenet": WeightsSpec(  # notebook 002's ImageNet backbone (include_top=False)
        "xception_imagenet",
        file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/xception/"
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        md5="b0042744bf5b25fce3cb969f33bebb97",  # keras/src/applications/xception.py
        params=20_861_480,  # keras.applications.Xception(include_top=False).count_params()
    ),
}
WEIGHTS_NAMES = tuple(sorted(WEIGHTS))


def load_raw(dataset: str, raw_dir: Path | str) -> RawData:
    """Parse `data/raw/<dataset>/` (as `sources.fetch` leaves it) into uint8 NHWC arrays."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASET_NAMES)}")
    raw_dir = Path(raw_dir)
    x_train, y_train, x_test, y_test = DATASETS[dataset].parser(raw_dir)
    parts = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        x = x[..., np.newaxis] if x.ndim == 3 else x  # grayscale gets a channel axis of 1
        if x.ndim != 4 or x.dtype != np.uint8 or len(x) != len(y):
            raise DataError(f"{raw_dir}: {dataset} {split} split has images {x.shape} {x.dtype} "
                            f"and labels {y.shape}; expected uint8 (N, H, W, C) and (N,)")
        parts += [x, np.asarray(y, dtype=np.int64).reshape(-1)]
    return RawData(*parts, class_names=DATASETS[dataset].class_names)
