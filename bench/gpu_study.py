"""One whole study on a GPU box (issue 5, goal 6): wall seconds per stage and images/s.

    python bench/gpu_study.py                      # batchnorm, all of Fashion-MNIST, 10 epochs, batch 256
    KERAS_BACKEND=jax python bench/gpu_study.py --seeds 0 --batch-size 1000 --mixed-precision

On JAX, a batch size that divides 54,000 / 6,000 / 10,000 (1000 does) compiles each step once.

Runs the pipeline's own stage commands (download → split → standardize → train → evaluate,
as dvc.yaml would, without DVC) in a scratch folder, with a params file derived from the
repo's: only the chosen study, its dataset uncapped (every training image, 6,000 for
validation, the 10,000 test images) and the schedule given here. MLflow logs to the scratch
folder's own mlflow.db. Prints each stage's wall seconds and the training images/s: all units'
training images × epochs ÷ their fit seconds (validation included, as in bench/throughput.py),
and the steady rate from the epochs after each unit's first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ablations.history import read_history
from ablations.io import read_json

REPO = Path(__file__).resolve().parents[1]
PATHS = yaml.safe_load((REPO / "dvc.yaml").read_text())["vars"][0]  # dvc.yaml's folders


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--study", default="batchnorm")
    parser.add_argument("--epochs", type=int, default=10, help="notebook 000: 10")
    parser.add_argument("--batch-size", type=int, default=256, help="notebook 000: 256")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: the study's")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    parser.add_argument("--keep", help="keep the scratch project in this folder")
    return parser.parse_args(argv)


def study_params(args) -> dict:
    """The repo's params with only `args.study`, its dataset uncapped, and the schedule of `args`."""
    params = yaml.safe_load(Path(args.params).read_text())
    study = params["studies"][args.study]
    data = {key: value for key, value in params["data"]["prepared"][study["data"]].items()
            if not key.startswith("max_")}
    study["defaults"].update(epochs=args.epochs, batch_size=args.batch_size,
                             mixed_precision=args.mixed_precision)
    if args.seeds:
        study["seeds"] = args.seeds
    params["data"].update(raw=[data["source"]], prepared={study["data"]: data})
    params["studies"] = {args.study: study}
    return params


def stage_commands(study: str, data: str, source: str, params: Path) -> dict[str, list[str]]:
    """The stage commands of dvc.yaml for one study, with the paths of its `vars`."""
    cli = [sys.executable, "-m", "ablations.cli", "--params", str(params)]
    raw, split, prepared = (f"{PATHS['raw']}/{source}", f"{PATHS['split']}/{data}",
                            PATHS["prepared"])
    models = f"{PATHS['models']}/{study}"
    return {
        "download": [*cli, "download", source, "--out", raw],
        "split": [*cli, "split", data, "--raw", raw, "--out", split],
        "standardize": [*cli, "standardize", data, "--split", split, "--out", f"{prepared}/{data}"],
        "train": [*cli, "train", study, "--data", prepared, "--out", models,
                  "--checkpoints", f"{PATHS['checkpoints']}/{study}"],
        "evaluate": [*cli, "evaluate", study, "--models", models, "--data", prepared,
                     "--results", f"{PATHS['results']}/{study}.json",
                     "--metrics", f"{PATHS['metrics']}/{study}.json",
                     "--curves", f"{PATHS['curves']}/{study}.csv",
                     "--accuracy", f"{PATHS['accuracy']}/{study}.csv"],
    }


def training_rates(models: Path, images: int) -> dict:
    """Images/s over every unit's fit (first epochs included) and over its later epochs."""
    units = sorted(run_json.parent for run_json in models.glob("*/seed*/run.json"))
    fit_seconds, epochs, later = 0.0, 0, []
    for unit in units:
        fit_seconds += read_json(unit / "run.json")["fit_seconds"]
        seconds = [row["epoch_seconds"] for row in read_history(unit / "history.csv")]
        epochs += len(seconds)
        later += seconds[1:]
    return {"units": len(units), "fit_seconds": fit_seconds,
            "images_s": images * epochs / fit_seconds,
            "steady_images_s": images / statistics.median(later) if later else None}


def device() -> str:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True)
    except FileNotFoundError:
        return "CPU (no nvidia-smi)"
    return done.stdout.strip() or "CPU (no NVIDIA GPU)"


def run(args, work: Path) -> None:
    params = study_params(args)
    study = params["studies"][args.study]
    data = study["data"]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": os.pathsep.join(
               [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    commands = stage_commands(args.study, data, params["data"]["prepared"][data]["source"],
                              work / "params.yaml")
    seconds = {}
    for name, command in commands.items():
        started = time.perf_counter()
        subprocess.run(command, cwd=work, env=env, check=True)
        seconds[name] = time.perf_counter() - started
        print(f"{name:12s} {seconds[name]:7.1f} s", flush=True)
    import numpy as np

    images = len(np.load(work / PATHS["prepared"] / data / "y_train.npy", mmap_mode="r"))
    rates = training_rates(work / PATHS["models"] / args.study, images)
    metrics = read_json(work / PATHS["metrics"] / f"{args.study}.json")
    print(f"\n{args.study} on {device()}: {rates['units']} units ({len(study['variants'])} variants × "
          f"{len(study['seeds'])} seeds), {images} training images, {args.epochs} epochs, "
          f"batch {args.batch_size}, mixed precision {args.mixed_precision}")
    print(f"train stage  {seconds['train']:7.1f} s wall   (fit {rates['fit_seconds']:.1f} s in all; "
          f"{seconds['train'] / len(study['seeds']):.1f} s per seed of all variants)")
    print(f"whole study  {sum(seconds.values()):7.1f} s wall   (all five stages)")
    steady = rates["steady_images_s"]
    print(f"images/s     {rates['images_s']:7.0f} over all epochs, "
          f"{'n/a' if steady is None else round(steady)} after each unit's first")
    print(f"verdict      {metrics.get('verdict', metrics)}")


def main(argv=None) -> None:
    args = _args(argv)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        run(args, Path(args.keep).resolve())
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
