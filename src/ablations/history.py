"""history.csv: one row per completed epoch (numbered from 1). No Keras import here: the
plot stage reads histories without paying for TensorFlow."""

from __future__ import annotations

import csv
from pathlib import Path

from ablations.io import atomic_file

FIELDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds")


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
