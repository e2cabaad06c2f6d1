"""history.csv: one row per completed epoch (numbered from 1), and a study's curves file: every
history of the study in long format, one row per (variant, seed, epoch, metric) — the data of
`dvc plots show` / `dvc plots diff` (dvc.yaml's top-level `plots:`) and of the plot stage.
No Keras import here: evaluate and plot read histories without importing Keras or its backend."""

from __future__ import annotations

import csv
from pathlib import Path

from ablations.io import atomic_file

FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")
CURVE_FIELDS = ("variant", "seed", "epoch", "metric", "value")
CURVE_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy")  # epoch_seconds is no curve


def read_history(path: Path) -> list[dict[str, float]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return [
            {key: (int(v) if key == "epoch" else float(v)) for key, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS, restval="nan")
        writer.writeheader()
        writer.writerows(rows)


def metric_steps(rows: list[dict[str, float]]) -> dict[str, dict[int, float]]:
    """{metric: {epoch: value}}: the steps MLflow holds for a history (step = epoch)."""
    return {key: {int(row["epoch"]): row[key] for row in rows if key in row} for key in FIELDS[1:]}


def curve_rows(histories: dict[str, dict[int, list[dict[str, float]]]]) -> list[dict]:
    """{variant: {seed: history}} → long-format rows; a diverged epoch's NaN stays "nan"."""
    return [{"variant": variant, "seed": seed, "epoch": int(row["epoch"]), "metric": metric,
             "value": row[metric]}
            for variant, seeds in histories.items() for seed, history in seeds.items()
            for metric in CURVE_METRICS for row in history]


def write_curves(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_curves(path: Path) -> dict[str, dict[int, list[dict[str, float]]]]:
    """The curves file back as {variant: {seed: history rows with CURVE_METRICS}}."""
    by_epoch: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            epochs = by_epoch.setdefault((row["variant"], int(row["seed"])), {})
            epoch = int(row["epoch"])
            epochs.setdefault(epoch, {"epoch": epoch})[row["metric"]] = float(row["value"])
    histories: dict[str, dict[int, list[dict[str, float]]]] = {}
    for (variant, seed), epochs in by_epoch.items():
        histories.setdefault(variant, {})[seed] = [epochs[e] for e in sorted(epochs)]
    return histories


# steps.csv: validation accuracy several times per epoch (training.StepValidator). step =
# training steps done; epoch = step / steps per epoch; train_seconds = time spent inside
# training steps so far (not in validation, callbacks or between steps).
STEP_FIELDS = ("step", "epoch", "val_accuracy", "train_seconds")


def read_steps(path: Path) -> list[dict[str, float]]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as handle:
        return [{key: (int(v) if key == "step" else float(v)) for key, v in row.items()}
                for row in csv.DictReader(handle)]


def write_steps(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_file(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=STEP_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

