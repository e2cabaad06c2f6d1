"""The format parsers on small files written here in the real formats (IDX, CIFAR/STL binary)."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ablations.data.registry import CLASS_NAMES, load_raw
from ablations.data.formats import (
    DIGITS_TRAIN_SIZE,
    read_cifar10_binary,
    read_idx,
    read_mnist_npz,
    read_stl10_binary,
)
from ablations.errors import DataError

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian payload."""
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[dtype], array.ndim]) + struct.pack(f">{array.ndim}I",
                                                                      *array.shape)
    return header + array.astype(dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def cifar_records(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records from NHWC images: label byte, then the R, G, B planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels[:, None].astype(np.uint8), planes], axis=1).tobytes()


def stl_bytes(images: np.ndarray) -> bytes:
    """STL-10 binary images from NHWC: per image, per channel, column-major (as MATLAB)."""
    return images.transpose(0, 3, 2, 1).tobytes()  # (N, C, W, H): rows vary fastest


# --------------------------------------------------------------------------- IDX


def test_idx_gz_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", images)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    result = read_idx(path)
    assert result.dtype == np.uint8 and result.shape == (5, 4, 3)
    np.testing.assert_array_equal(result, images)


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
def test_raw_idx_of_every_type(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    result = read_idx(write_idx(tmp_path / "raw-idx", array, compress=False))
    assert result.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(result, array)


def test_idx_labels_one_dimension(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "y.gz", labels)), labels)


@pytest.mark.parametrize("data, expected", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "type code 0x07"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 1), "3 dimensions"),
    (b"", "magic"),
])
def test_corrupt_idx_header(tmp_path, data, expected):
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=expected) as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("delta", [-1, +1])
def test_idx_wrong_payload_length(tmp_path, delta):
    data = idx_bytes(np.zeros((3, 2, 2), np.uint8))
    data = data[:-1] if delta < 0 else data + b"\x00"
    path = tmp_path / "short-idx.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match=r"need 28 bytes .* has 2[79]") as err:
        read_idx(path)
    assert "short-idx.gz" in str(err.value)


def test_truncated_gzip(tmp_path):
    compressed = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8) % 7))
    path = tmp_path / "truncated.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="truncated.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_missing_file_is_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")


# --------------------------------------------------------------------------- CIFAR-10


def make_cifar_tar(path: Path, per_batch: int = 3, seed: int = 0) -> dict[str, tuple]:
    """A real cifar-10-binary.tar.gz with `per_batch` records in each of the 6 batches."""
    rng = np.random.default_rng(seed)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
            _add_bytes(tar, f"cifar-10-batches-bin/{name}", cifar_records(images, labels))
            batches[name] = (images, labels)
        _add_bytes(tar, "cifar-10-batches-bin/batches.meta.txt", b"airplane\nautomobile\n")
    return batches


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_cifar10_binary_from_real_tar(tmp_path):
    batches = make_cifar_tar(tmp_path / "cifar-10-binary.tar.gz")
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz") as tar:
        tar.extractall(tmp_path / "raw", filter="data")
    x_train, y_train, x_test, y_test = read_cifar10_binary(tmp_path / "raw/cifar-10-batches-bin")
    assert x_train.shape == (15, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (3, 32, 32, 3) and y_train.shape == (15,)
    np.testing.assert_array_equal(x_test, batches["test_batch.bin"][0])
    np.testing.assert_array_equal(y_train[3:6], batches["data_batch_2.bin"][1])
    # Byte layout check independent of the helper: record 1 of test_batch, G plane, row 2, col 5.
    raw = (tmp_path / "raw/cifar-10-batches-bin/test_batch.bin").read_bytes()
    offset = 1 * 3073 + 1 + 1 * 1024 + 2 * 32 + 5
    assert x_test[1, 2, 5, 1] == raw[offset]
    assert y_test[1] == raw[3073]


def test_cifar10_load_raw(tmp_path):
    make_cifar_tar(tmp_path / "a.tar.gz", per_batch=2)
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")
    raw = load_raw("cifar10", tmp_path / "cifar10")
    assert raw.x_train.shape == (10, 32, 32, 3) and raw.y_test.dtype == np.int64
    assert raw.class_names[0] == "airplane" and len(raw.class_names) == 10


def test_cifar10_wrong_length(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = cifar_records(np.zeros((2, 32, 32, 3), np.uint8), np.array([1, 2]))
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(record)
    (folder / "test_batch.bin").write_bytes(record[:-7])
    with pytest.raises(DataError, match="test_batch.bin: 6139 bytes is not .* multiple .* 3073"):
        read_cifar10_binary(folder)


# --------------------------------------------------------------------------- STL-10


def write_stl(folder: Path, n_train: int = 2, n_test: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        labels = rng.integers(1, 11, n, dtype=np.uint8)
        (folder / f"{split}_X.bin").write_bytes(stl_bytes(images))
        (folder / f"{split}_y.bin").write_bytes(labels.tobytes())
        out[split] = (images, labels)
    return out


def test_stl10_column_major_layout(tmp_path):
    folder = tmp_path / "stl10_binary"
    written = write_stl(folder)
    # A hand-placed pixel: image 0, channel 2 (blue), row 1, column 5. Column-major means the
    # byte index within a channel is column * 96 + row.
    data = bytearray((folder / "train_X.bin").read_bytes())
    data[2 * 96 * 96 + 5 * 96 + 1] = 251
    (folder / "train_X.bin").write_bytes(bytes(data))
    x_train, y_train, x_test, y_test = read_stl10_binary(folder)
    assert x_train.shape == (2, 96, 96, 3) and x_test.shape == (3, 96, 96, 3)
    assert x_train[0, 1, 5, 2] == 251
    np.testing.assert_array_equal(x_test, written["test"][0])
    np.testing.assert_array_equal(y_test, written["test"][1].astype(np.int64) - 1)
    assert y_train.min() >= 0 and y_train.max() <= 9


def test_stl10_load_raw_accepts_parent_folder(tmp_path):
    write_stl(tmp_path / "stl10" / "stl10_binary")
    raw = load_raw("stl10", tmp_path / "stl10")
    assert raw.x_test.shape == (3, 96, 96, 3) and raw.class_names[7] == "monkey"


def test_stl10_wrong_lengths(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl(folder)
    (folder / "train_y.bin").write_bytes(b"\x01")
    with pytest.raises(DataError, match="train_y.bin: expected 2 label bytes"):
        read_stl10_binary(folder)
    (folder / "train_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="train_X.bin: 100 bytes"):
        read_stl10_binary(folder)


def test_stl10_label_out_of_range(tmp_path):
    folder = tmp_path / "stl10_binary"
    write_stl(folder)
    (folder / "test_y.bin").write_bytes(bytes([0, 1, 2]))
    with pytest.raises(DataError, match="labels must lie in 1..10"):
        read_stl10_binary(folder)


# --------------------------------------------------------------------------- npz, IDX folders


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
              "y_train": np.array([0, 1, 2, 3], np.uint8),
              "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
              "y_test": np.array([9, 8], np.uint8)}
    np.savez(tmp_path / "mnist.npz", **arrays)
    x_train, y_train, x_test, y_test = read_mnist_npz(tmp_path / "mnist.npz")
    np.testing.assert_array_equal(x_test, arrays["x_test"])
    raw = load_raw("mnist", tmp_path)
    assert raw.x_train.shape == (4, 28, 28, 1) and raw.y_test.tolist() == [9, 8]


def test_npz_with_pickled_object_is_refused(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.array([{"a": 1}], dtype=object),
             y_train=np.zeros(1), x_test=np.zeros(1), y_test=np.zeros(1))
    with pytest.raises(DataError, match="pickle-free"):
        read_mnist_npz(tmp_path / "mnist.npz")


def test_npz_missing_key(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros(1))
    with pytest.raises(DataError, match="missing arrays"):
        read_mnist_npz(tmp_path / "mnist.npz")


def write_idx_folder(folder: Path, n_train: int = 6, n_test: int = 4) -> None:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz",
                  rng.integers(0, 10, n, dtype=np.uint8))


def test_load_raw_idx_folder(tmp_path):
    write_idx_folder(tmp_path)
    raw = load_raw("fashion_mnist", tmp_path)
    assert raw.x_train.shape == (6, 28, 28, 1) and raw.x_test.shape == (4, 28, 28, 1)
    assert raw.class_names == CLASS_NAMES["fashion_mnist"]


def test_load_raw_idx_folder_mismatched_counts(tmp_path):
    write_idx_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="test split has images .* and labels"):
        load_raw("mnist", tmp_path)


def test_load_raw_missing_files(tmp_path):
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz"):
        load_raw("mnist", tmp_path)


def test_load_raw_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*cifar10.*digits.*stl10"):
        load_raw("imagenet", tmp_path)


def test_load_raw_digits_scaling_and_split(tmp_path):
    images = np.tile(np.arange(64, dtype=np.uint8).reshape(1, 8, 8) % 17, (1797, 1, 1))
    target = np.arange(1797) % 10
    np.savez(tmp_path / "digits.npz", images=images, target=target)
    raw = load_raw("digits", tmp_path)
    assert raw.x_train.shape == (DIGITS_TRAIN_SIZE, 8, 8, 1)
    assert raw.x_test.shape == (1797 - DIGITS_TRAIN_SIZE, 8, 8, 1)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    assert raw.x_train[0, 0, 1, 0] == 16  # value 1 of 16 -> round(255/16)
    np.testing.assert_array_equal(raw.y_test, target[DIGITS_TRAIN_SIZE:])
