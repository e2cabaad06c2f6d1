"""evaluate stage: test metrics of every variant of a study, epochs to target, BN speed-up.

    ablations evaluate batchnorm --models models/batchnorm --data data/prepared/fmnist_pm1 \
        --metrics metrics/batchnorm.json

The BN speed-up factor of a variant with BatchNorm is (epochs to the target validation
accuracy without BN) ÷ (epochs with BN), against the variant whose config is identical but for
`norm: none`. A variant that never reaches the target has epochs_to_target = null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ablations import tracking
from ablations.config import Params
from ablations.data.prepare import load_prepared
from ablations.errors import DataError
from ablations.io import read_json, write_json
from ablations.history import read_history


def epochs_to_target(history: list[dict[str, float]], target: float) -> tuple[int | None, float | None]:
    """(epochs, wall seconds of training) until val_accuracy first reaches `target`."""
    seconds = 0.0
    for row in history:
        seconds += row["epoch_seconds"]
        if row["val_accuracy"] >= target:
            return row["epoch"], seconds
    return None, None


def _test_metrics(model_path: Path, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    import keras

    model = keras.saving.load_model(model_path, safe_mode=True)
    loss, accuracy = model.evaluate(arrays["x_test"], arrays["y_test"], batch_size=1024, verbose=0)
    return {"test_loss": float(loss), "test_accuracy": float(accuracy)}


def evaluate_variant(variant_dir: Path, arrays, target: float) -> dict[str, Any]:
    if not (variant_dir / "model.keras").exists():
        raise DataError(f"{variant_dir}/model.keras: missing; run its train stage first")
    info = read_json(variant_dir / "run.json")
    history = read_history(variant_dir / "history.csv")
    epochs, seconds = epochs_to_target(history, target)
    metrics = {
        **_test_metrics(variant_dir / "model.keras", arrays),
        "epochs_trained": len(history),
        "epochs_to_target": epochs,
        "seconds_to_target": seconds,
        "fit_seconds": info["fit_seconds"],
        "diverged": info["diverged"],
    }
    logged = {k: v for k, v in metrics.items() if isinstance(v, float) and k.startswith("test")}
    tracking.log_metrics(info["run_id"], logged)
    return metrics


def bn_speedups(params: Params, study: str, results: dict[str, dict]) -> dict[str, float | None]:
    """Speed-up of each BN variant over its twin without BN (same config but norm)."""
    configs = {name: params.variant(study, name).model_dump() for name in results}
    speedups = {}
    for name, config in configs.items():
        if config["norm"] == "none":
            continue
        twin = {**config, "norm": "none"}
        for other, other_config in configs.items():
            if other_config == twin:
                with_bn, without = results[name]["epochs_to_target"], results[other]["epochs_to_target"]
                speedups[name] = without / with_bn if with_bn and without else None
    return speedups


def evaluate_study(params: Params, study: str, models_dir: Path, data_dir: Path, metrics_path: Path):
    spec = params.studies[study]
    tracking.use_experiment(study)
    arrays = load_prepared(data_dir)
    results = {
        name: evaluate_variant(Path(models_dir) / name, arrays, spec.target_val_accuracy)
        for name in spec.variants
    }
    summary = {
        "target_val_accuracy": spec.target_val_accuracy,
        "variants": results,
        "bn_speedup": bn_speedups(params, study, results),
    }
    write_json(metrics_path, summary)
    return summary
