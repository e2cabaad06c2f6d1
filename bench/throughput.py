"""Training throughput inside the pipeline ÷ a bare `model.fit` (issue 5, goals 2, 4, 5, 6).

    python bench/throughput.py                      # default study's first variant, 3 epochs
    KERAS_BACKEND=torch python bench/throughput.py  # same model on another backend
    python bench/throughput.py --variant relu-bn --epochs 4 --max-train 20000

Each mode runs in its own process (same imports, same caches for both):
- bare: `model.fit(x, y, shuffle=True)` on the arrays loaded into memory, as in a notebook;
- pipeline: `ablations.training.train()` on the memory-mapped arrays, with its callbacks,
  checkpoints and MLflow logging into a throw-away SQLite store.
Images/s come from the epoch times after the first (which includes tracing/compilation).
Also printed: peak RSS of the pipeline process against the size of its arrays and model.
Needs the prepared data: `dvc repro standardize` first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--study", default="batchnorm")
    parser.add_argument("--variant", help="default: the study's first variant")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="default: the variant's")
    parser.add_argument("--max-train", type=int, help="use only the first N training images")
    parser.add_argument("--mode", choices=("bare", "pipeline"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _setup(args):
    from ablations.config import load_params

    params = load_params(Path(args.params))
    study = params.studies[args.study]
    name = args.variant or next(iter(study.variants))
    overrides = {"epochs": args.epochs}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    cfg = params.variant(args.study, name).model_copy(update=overrides)
    return name, cfg, REPO / "data" / "prepared" / study.data


def _arrays(data_dir: Path, max_train: int | None, in_memory: bool):
    from ablations.data.prepare import load_prepared

    arrays = load_prepared(data_dir)
    if max_train:
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][:max_train], arrays["y_train"][:max_train]
    if in_memory:
        arrays = {key: value.copy() for key, value in arrays.items()}
    return arrays


def run_bare(args) -> dict:
    import keras

    from ablations.training import _compiled_model

    _, cfg, data_dir = _setup(args)
    arrays = _arrays(data_dir, args.max_train, in_memory=True)
    keras.utils.set_random_seed(cfg.seed)
    model = _compiled_model(cfg, arrays)
    seconds = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.__setitem__(-1, seconds[-1] + time.perf_counter()))
    model.fit(arrays["x_train"], arrays["y_train"], validation_data=(arrays["x_val"], arrays["y_val"]),
              epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, callbacks=[timer], verbose=0)
    return {"epoch_seconds": seconds, "images": len(arrays["y_train"])}


def run_pipeline(args) -> dict:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        import numpy as np

        from ablations.history import read_history
        from ablations.training import train

        name, cfg, data_dir = _setup(args)
        data = data_dir
        if args.max_train:  # a smaller copy in the prepared format
            data = Path(tmp) / "data"
            data.mkdir()
            for key, array in _arrays(data_dir, args.max_train, in_memory=False).items():
                np.save(data / f"{key}.npy", array)
        after_imports = _peak_rss_mib()
        train(args.study, name, cfg, data, Path(tmp) / "out", Path(tmp) / "ckpt")
        rows = read_history(Path(tmp) / "out" / "history.csv")
        arrays = sum((data / f).stat().st_size for f in os.listdir(data) if f.endswith(".npy"))
        model = (Path(tmp) / "out" / "model.keras").stat().st_size
        return {"epoch_seconds": [r["epoch_seconds"] for r in rows],
                "images": int(np.load(data / "y_train.npy", mmap_mode="r").shape[0]),
                "peak_rss_mib": _peak_rss_mib(), "rss_after_imports_mib": after_imports,
                "arrays_mib": arrays / 2**20, "model_mib": model / 2**20}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def images_per_second(result: dict) -> float:
    later = result["epoch_seconds"][1:] or result["epoch_seconds"]  # epoch 1 includes tracing
    return result["images"] / statistics.median(later)


def _measure(mode: str, argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, *argv, "--mode", mode],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if done.returncode:
        sys.exit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if args.mode:  # child process: one measurement, printed as JSON on the last line
        print(json.dumps(run_bare(args) if args.mode == "bare" else run_pipeline(args)))
        return
    import keras

    bare, pipeline = _measure("bare", argv), _measure("pipeline", argv)
    ratio = images_per_second(pipeline) / images_per_second(bare)
    footprint = pipeline["arrays_mib"] + pipeline["model_mib"]
    print(f"backend            {keras.backend.backend()}")
    print(f"bare model.fit     {images_per_second(bare):8.0f} images/s  epochs {_fmt(bare)}")
    print(f"pipeline train     {images_per_second(pipeline):8.0f} images/s  epochs {_fmt(pipeline)}")
    print(f"throughput ratio   {ratio:8.3f}   (goal ≥ 0.97)")
    print(f"peak RSS           {pipeline['peak_rss_mib']:8.0f} MiB  (after imports "
          f"{pipeline['rss_after_imports_mib']:.0f} MiB; arrays {pipeline['arrays_mib']:.0f} MiB + "
          f"model {pipeline['model_mib']:.1f} MiB)")
    growth = pipeline["peak_rss_mib"] - pipeline["rss_after_imports_mib"]
    print(f"RSS growth ÷ (arrays + model) {growth / footprint:6.2f}   peak ÷ (arrays + model) "
          f"{pipeline['peak_rss_mib'] / footprint:6.2f}   (goal ≤ 2)")


def _fmt(result: dict) -> str:
    return " ".join(f"{s:.1f}s" for s in result["epoch_seconds"])


if __name__ == "__main__":
    main()
