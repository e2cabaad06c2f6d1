"""split and standardize stages: raw images → memory-mappable float32 arrays.

Split comes first so that standardization statistics are computed on the training split only
(never on validation or test images). The official test set is kept apart throughout.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ablations.config import PreparedData
from ablations.data.formats import RawData
from ablations.data.registry import load_raw
from ablations.errors import DataError
from ablations.io import atomic_dir, read_json, write_json
from ablations.layout import PARTS, DatasetFolder



def _stratified_cap(x, y, limit: int | None, seed: int, cap: str):
    """At most `limit` samples, class proportions kept (a shrunk run stays balanced)."""
    if limit is None or limit >= len(y):
        return x, y
    counts = np.bincount(y)
    classes = np.count_nonzero(counts)
    if limit < classes:
        raise DataError(f"{cap}: {limit} is fewer than the {classes} classes of these images "
                        "(allowed: at least one image per class)")
    if counts[counts > 0].min() < 2 or len(y) - limit < classes:
        # scikit-learn cannot stratify these (a class of one image, or fewer images left out
        # than classes): a seeded uniform draw instead
        kept = np.random.default_rng(seed).permutation(len(y))[:limit]
    else:
        from sklearn.model_selection import train_test_split  # a slow import: split only

        kept, _ = train_test_split(np.arange(len(y)), train_size=limit, stratify=y,
                                   random_state=seed)
    kept.sort()
    return x[kept], y[kept]


def _check_splittable(y: np.ndarray, val_fraction: float, raw: RawData, where: str) -> None:
    """What a stratified train/validation split needs, as one DataError instead of
    scikit-learn's traceback: two images per class, and as many images as classes on each side."""
    counts = np.bincount(y, minlength=len(raw.class_names))
    single = [raw.class_names[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise DataError(f"{where}: class {single[0]!r} has 1 training image; a stratified "
                        "train/validation split needs at least 2 per class")
    classes, val = np.count_nonzero(counts), math.ceil(val_fraction * len(y))
    if min(val, len(y) - val) < max(classes, 1):
        raise DataError(f"{where}: val_fraction {val_fraction} of {len(y)} training images "
                        f"leaves {val} for validation and {len(y) - val} for training; each "
                        f"side needs at least one per class ({classes})")


def _keep_classes(raw: RawData, classes: list[int] | None, source: str) -> RawData:
    """Only the images of `classes`, relabelled 0..k-1 in that order (None: all classes)."""
    if classes is None:
        return raw
    present = set(np.unique(raw.y_train).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"classes: {missing} not in the training images of {source} "
                        f"(allowed 0..{len(raw.class_names) - 1})")
    def keep(x, y):
        kept = np.isin(y, classes)
        # the new label of an image is the position of its class in `classes`
        return x[kept], np.argmax(y[kept, None] == np.asarray(classes), axis=1).astype(np.int64)

    return RawData(*keep(raw.x_train, raw.y_train), *keep(raw.x_test, raw.y_test),
                   class_names=tuple(raw.class_names[c] for c in classes))


def split(cfg: PreparedData, raw_dir: Path, out_dir: Path) -> dict[str, int]:
    """Stratified, seeded train/validation split of the official training set; test kept apart.

    Class selection comes first, so the caps count images of the kept classes only."""
    from sklearn.model_selection import train_test_split  # a slow import: keep it off standardize

    raw = _keep_classes(load_raw(cfg.source, Path(raw_dir)), cfg.classes, cfg.source)
    _check_splittable(raw.y_train, cfg.val_fraction, raw, f"{cfg.source} in {raw_dir}")
    x_train, x_val, y_train, y_val = train_test_split(
        raw.x_train, raw.y_train, test_size=cfg.val_fraction,
        stratify=raw.y_train, random_state=cfg.seed,
    )
    x_train, y_train = _stratified_cap(x_train, y_train, cfg.max_train, cfg.seed, "max_train")
    x_val, y_val = _stratified_cap(x_val, y_val, cfg.max_val, cfg.seed, "max_val")
    x_test, y_test = _stratified_cap(raw.x_test, raw.y_test, cfg.max_test, cfg.seed, "max_test")
    arrays = {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}
    with atomic_dir(out_dir) as tmp:
        out = DatasetFolder(tmp)
        for part, (x, y) in arrays.items():
            np.save(out.x(part), x)
            np.save(out.y(part), y.astype(np.int64))
        write_json(out.classes, list(raw.class_names))
    return {part: len(y) for part, (_, y) in arrays.items()}


def _fit_to_size(x: np.ndarray, size: int | None, fit: str = "pad") -> np.ndarray:
    """Zero-pad (e.g. 28→32 for LeNet-5, as in its paper) or resize square images to size x size."""
    if size is None or x.shape[1] == size:
        return x
    if fit == "pad" and x.shape[1] < size and (size - x.shape[1]) % 2 == 0:
        pad = (size - x.shape[1]) // 2
        return np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    from PIL import Image  # resizing is rare (STL-10 96→32); keep Pillow off the common path

    mode = "L" if x.shape[-1] == 1 else "RGB"
    resized = [np.asarray(Image.fromarray(img.squeeze(), mode).resize((size, size))) for img in x]
    return np.stack(resized).reshape(len(x), size, size, x.shape[-1])


def scale_statistics(cfg: PreparedData, x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per channel such that x' = (x - offset) / scale; from training data only."""
    channels = x_train.shape[-1]
    if cfg.scaling == "none":
        return np.zeros(channels), np.ones(channels)
    if cfg.scaling == "standardize_global":
        pixels = np.asarray(x_train, dtype=np.float64)
        return np.full(channels, pixels.mean()), np.full(channels, pixels.std() + 1e-7)
    if cfg.scaling == "zero_one":
        return np.zeros(channels), np.full(channels, 255.0)
    if cfg.scaling == "minus_one_one":
        return np.full(channels, 127.5), np.full(channels, 127.5)
    pixels = x_train.reshape(-1, channels).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0) + 1e-7  # epsilon: a constant channel


def standardize(cfg: PreparedData, split_dir: Path, out_dir: Path) -> dict[str, list[float]]:
    split = DatasetFolder(Path(split_dir))
    split.require(split.x("train"), stage="split")
    x_train = np.load(split.x("train"), mmap_mode="r")
    offset, scale = scale_statistics(cfg, x_train)
    with atomic_dir(out_dir) as tmp:
        out = DatasetFolder(tmp)
        for part in PARTS:
            x = _fit_to_size(np.load(split.x(part)), cfg.size, cfg.fit)
            np.save(out.x(part), ((x - offset) / scale).astype(np.float32))
            np.save(out.y(part), np.load(split.y(part)))
        stats = {"offset": offset.tolist(), "scale": scale.tolist()}
        write_json(out.stats, stats)
        write_json(out.classes, read_json(split.classes))
    return stats


def load_prepared(data_dir: Path) -> dict[str, np.ndarray]:
    """Memory-mapped arrays x_train, y_train, x_val, … (no copy until a batch is read)."""
    dataset = DatasetFolder(Path(data_dir))
    dataset.require(*dataset.arrays())
    return {path.stem: np.load(path, mmap_mode="r") for path in dataset.arrays()}
