"""On-disk layouts, the one home of file names: a unit's folder (what the train stage writes
per (variant, seed)) and a prepared dataset's folder (what split and standardize write).

The folders themselves come from the command line that dvc.yaml writes; only the names inside
them are decided here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ablations.errors import DataError

PARTS = ("train", "val", "test")  # training, validation (every epoch), official test images
# A study's figures (plots/<study>/, what the evaluate stage draws), in the report's order. Here,
# not in ablations.plots: the report lists them without importing matplotlib.
FIGURES = ("effects_forest.png", "learning_curves.png", "test_accuracy.png", "bn_speedup.png",
           "confusion_matrix.png", "examples.png", "bn_params.png")


@dataclass(frozen=True)
class UnitFolder:
    """One training's outputs, models/<study>/<variant>/seed<k>/; the same names serve its
    resume state under checkpoints/ (run.json, history.csv) while it trains."""

    path: Path

    @classmethod
    def of(cls, study_dir: Path, variant: str, seed: int) -> UnitFolder:
        return cls(Path(study_dir) / variant / f"seed{seed}")

    @property
    def run_json(self) -> Path:  # MLflow run id, fingerprint, test metrics, tracking state
        return self.path / "run.json"

    @property
    def history(self) -> Path:  # one row per epoch (ablations.history)
        return self.path / "history.csv"

    @property
    def steps(self) -> Path:  # validation accuracy within epochs, when the study asks for it
        return self.path / "steps.csv"

    @property
    def model(self) -> Path:  # the trained Keras model
        return self.path / "model.keras"

    @property
    def predictions(self) -> Path:  # predicted class per test image, int16
        return self.path / "test_predictions.npy"

    @property
    def bn_params(self) -> Path:  # gamma/beta of every BatchNorm layer, if the model has any
        return self.path / "bn_params.npz"

    @property
    def backup(self) -> Path:  # Keras' BackupAndRestore state (checkpoints only)
        return self.path / "backup"

    def require(self, *paths: Path, stage: str) -> None:
        """DataError naming the first of `paths` that is missing and the stage that makes it."""
        for path in paths:
            if not path.exists():
                raise DataError(f"{path}: missing; run the train stage first (dvc repro {stage})")


@dataclass(frozen=True)
class DatasetFolder:
    """A split (uint8) or prepared (float32, scaled) dataset: x_<part>.npy, y_<part>.npy per
    part, classes.json, and for a prepared one stats.json (the scaling)."""

    path: Path

    def x(self, part: str) -> Path:
        return self.path / f"x_{part}.npy"

    def y(self, part: str) -> Path:
        return self.path / f"y_{part}.npy"

    def arrays(self) -> list[Path]:
        """Every array file, in a fixed order."""
        return [file for part in PARTS for file in (self.x(part), self.y(part))]

    @property
    def classes(self) -> Path:  # class names, in label order
        return self.path / "classes.json"

    @property
    def stats(self) -> Path:  # {"offset": [...], "scale": [...]} per channel: raw = x*scale + offset
        return self.path / "stats.json"

    def class_names(self, count: int) -> list[str]:
        """The class names (classes.json), else "0".."count-1"."""
        if not self.classes.exists():
            return [str(i) for i in range(count)]
        return [str(c) for c in json.loads(self.classes.read_text())]

    def require(self, *paths: Path, stage: str = "standardize") -> None:
        for path in paths:
            if not path.exists():
                raise DataError(f"{path}: missing; run the {stage} stage first")
