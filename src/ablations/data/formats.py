"""Parsers of the datasets' original file formats, numpy only (no pickle anywhere).

Every parser checks lengths and headers against what the format promises and raises
`DataError` naming the file and what was expected, so a truncated download or a wrong file
never turns into silently mis-shaped arrays.
"""

from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ablations.errors import DataError
from ablations.io import atomic_file

# Folders the official archives extract to (sources.py uses the same names).
CIFAR10_DIR = "cifar-10-batches-bin"
STL10_DIR = "stl10_binary"

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

_CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes of 32x32, row-major
_STL_IMAGE = 3 * 96 * 96

# Pretrained weights (data.weights, files in data/registry.py WEIGHTS): the weights stage writes
# <prepared data root>/weights/<name>/<file> and, beside it, WEIGHTS_RECORD with the file's
# sha256 (dvc.lock pins both); a train stage loads the file only if it still hashes to that.
WEIGHTS_DIR = "weights"
WEIGHTS_RECORD = "weights.json"




# digits has no official split: the first 1500 of sklearn's 1797 samples train, the rest test.
# Deterministic and seed-free; the samples cycle through the classes, so both parts are balanced.
DIGITS_TRAIN_SIZE = 1500

_IDX_NAMES = {  # split -> (images, labels) as the official .gz names
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


@dataclass(frozen=True)
class RawData:
    """A dataset as the original files hold it: images uint8 (N, H, W, C), labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


# --------------------------------------------------------------------------- IDX


def read_idx(path: Path | str) -> np.ndarray:
    """Read an IDX file (MNIST, Fashion-MNIST), gzipped (detected by magic bytes) or raw."""
    path = Path(path)
    data = _read_bytes(path)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, path)
    return parse_idx(data, name=str(path))


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes: magic 00 00 <type> <ndim>, ndim big-endian uint32 dims, then the payload."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name}: not an IDX file (expected magic bytes 00 00 <type> <ndim>, "
                        f"got {data[:4].hex(' ') or 'nothing'})")
    dtype = _IDX_DTYPES.get(data[2])
    if dtype is None:
        allowed = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise DataError(f"{name}: unknown IDX type code 0x{data[2]:02X} (expected one of {allowed})")
    ndim, header = data[3], 4 + 4 * data[3]
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name}: IDX header declares {ndim} dimensions but the file has "
                        f"{len(data)} bytes (expected at least {header} and ndim >= 1)")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{name}: IDX dims {dims} of {dtype.name} need {expected} bytes "
                        f"(header included), the file has {len(data)}")
    array = np.frombuffer(data, dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from None


def _gunzip(data: bytes, path: Path) -> bytes:
    # A truncated download raises EOFError, a damaged one zlib.error or BadGzipFile (an OSError).
    try:
        return gzip.decompress(data)
    except (EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path}: corrupt or truncated gzip file ({err}); "
                        "delete it and download it again") from None


# --------------------------------------------------------------------------- CIFAR-10 / STL-10


def read_cifar10_binary(directory: Path | str):
    """Read the extracted `cifar-10-batches-bin/` folder -> (x_train, y_train, x_test, y_test)."""
    directory = Path(directory)
    train = [_read_cifar_batch(directory / f"data_batch_{i}.bin") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(directory / "test_batch.bin")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(f"{path}: {len(data)} bytes is not a positive multiple of the CIFAR-10 "
                        f"record size {_CIFAR_RECORD} (1 label byte + 3072 pixel bytes)")
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 0, 9, path)
    # Each record stores the R plane, then G, then B, each 32x32 row-major: NCHW -> NHWC.
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def read_stl10_binary(directory: Path | str):
    """Read the extracted `stl10_binary/` folder -> (x_train, y_train, x_test, y_test).

    `unlabeled_X.bin` is ignored. Labels 1..10 in the files become 0..9.
    """
    directory = Path(directory)
    x_train, y_train = _read_stl_split(directory, "train")
    x_test, y_test = _read_stl_split(directory, "test")
    return x_train, y_train, x_test, y_test


def _read_stl_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    x_path, y_path = directory / f"{split}_X.bin", directory / f"{split}_y.bin"
    pixels, labels = _read_bytes(x_path), _read_bytes(y_path)
    if len(pixels) == 0 or len(pixels) % _STL_IMAGE:
        raise DataError(f"{x_path}: {len(pixels)} bytes is not a positive multiple of the "
                        f"STL-10 image size {_STL_IMAGE} (3 x 96 x 96)")
    if len(labels) != len(pixels) // _STL_IMAGE:
        raise DataError(f"{y_path}: expected {len(pixels) // _STL_IMAGE} label bytes "
                        f"(one per image in {x_path.name}), got {len(labels)}")
    y = np.frombuffer(labels, np.uint8).astype(np.int64)
    _check_labels(y, 1, 10, y_path)
    # Each channel is stored column-major (MATLAB order), hence (N, C, W, H) -> (N, H, W, C).
    x = np.frombuffer(pixels, np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    return np.ascontiguousarray(x), y - 1


def _check_labels(labels: np.ndarray, low: int, high: int, path: Path) -> None:
    if labels.size and (labels.min() < low or labels.max() > high):
        raise DataError(f"{path}: labels must lie in {low}..{high}, "
                        f"found {labels.min()}..{labels.max()}")


# --------------------------------------------------------------------------- npz


def read_mnist_npz(path: Path | str):
    """Read a keras-style `mnist.npz` (x_train, y_train, x_test, y_test), never unpickling."""
    path = Path(path)
    keys = ("x_train", "y_train", "x_test", "y_test")
    arrays = _load_npz(path, keys)
    return tuple(arrays[k] for k in keys)


def _load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    # allow_pickle=False: an object array in a downloaded file must not run code on load.
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing} (expected keys {list(keys)})")
            return {k: npz[k] for k in keys}
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path}: not a valid pickle-free .npz file ({err})") from None


# --------------------------------------------------------------------------- load_raw


def load_idx_folder(raw_dir: Path):
    """IDX files (gzipped or not), or a keras-style mnist.npz when that is what the folder holds."""
    found = {}
    for names in _IDX_NAMES.values():
        for name in names:
            path = _first_existing(raw_dir / name, raw_dir / name.removesuffix(".gz"))
            if path is not None:
                found[name] = path
    if len(found) < 4 and (raw_dir / "mnist.npz").exists():
        return read_mnist_npz(raw_dir / "mnist.npz")
    missing = [n for names in _IDX_NAMES.values() for n in names if n not in found]
    if missing:
        raise DataError(f"{raw_dir}: missing {', '.join(missing)} (or mnist.npz); "
                        "run `ablations download` first")
    return tuple(read_idx(found[n]) for split in ("train", "test") for n in _IDX_NAMES[split])


def _first_existing(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def load_cifar10(raw_dir: Path):
    # Accept data/raw/cifar10 (holding cifar-10-batches-bin/) or the extracted folder itself.
    return read_cifar10_binary(_extracted(raw_dir, CIFAR10_DIR))


def load_stl10(raw_dir: Path):
    return read_stl10_binary(_extracted(raw_dir, STL10_DIR))


def _extracted(raw_dir: Path, folder: str) -> Path:
    return raw_dir / folder if (raw_dir / folder).is_dir() else raw_dir


def load_digits(raw_dir: Path):
    """`digits.npz` (written by sources.fetch): 8x8 images with values 0..16, scaled to 0..255."""
    arrays = _load_npz(raw_dir / "digits.npz", ("images", "target"))
    images, target = arrays["images"], arrays["target"]
    if images.ndim != 3 or images.shape[1:] != (8, 8) or len(images) != len(target):
        raise DataError(f"{raw_dir / 'digits.npz'}: expected images (N, 8, 8) and target (N,), "
                        f"got {images.shape} and {target.shape}")
    scaled = np.rint(np.clip(images, 0, 16) * (255.0 / 16.0)).astype(np.uint8)
    n = DIGITS_TRAIN_SIZE
    return scaled[:n], target[:n], scaled[n:], target[n:]


def write_digits(dest: Path) -> None:
    """digits ships with scikit-learn (no network): store it as a pickle-free digits.npz."""
    from sklearn.datasets import load_digits  # lazy: sklearn is slow to import

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values 0..16; load_digits scales them
    target = digits.target.astype(np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, images=images, target=target)  # deterministic bytes for equal arrays
    path = dest / "digits.npz"
    if path.is_file() and path.read_bytes() == buffer.getvalue():
        return  # idempotent: same content, leave the file (and its mtime) alone
    with atomic_file(path, "wb") as out:
        out.write(buffer.getvalue())
