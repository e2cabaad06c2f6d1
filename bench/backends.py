"""Keras backends compared (issue 5, goal 4): images/s of one small CNN under each backend.

    python bench/backends.py                              # batchnorm's relu, 3 epochs, all images
    python bench/backends.py --max-train 500 --epochs 2   # a quick check
    python bench/backends.py --backends torch jax         # only these

Per backend, with KERAS_BACKEND set, each measurement in its own process:
- bench/throughput.py's two modes (bare `model.fit` on in-memory arrays, and the pipeline's
  `train_study` of one unit), images/s = training images per second of an epoch after the first
  (steady state); also the first epoch's seconds (graph tracing / compilation included) and the
  images/s of the whole bare unit, first epoch included, which decides the default backend;
- `ablations train batchnorm relu` end to end on a tiny copy of the data (256 training images,
  1 epoch, seed 0): passes when it exits 0 and writes run.json.
A backend that fails is printed with the end of its error output, not hidden.
Needs the prepared data: `dvc repro standardize@fmnist_pm1` first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml
from throughput import REPO, measure

BACKENDS = ("tensorflow", "torch", "jax")
STUDY, VARIANT, DATA = "batchnorm", "relu", "fmnist_pm1"


def end_to_end(backend: str, tmp: Path) -> tuple[bool, str]:
    """`ablations train` of one tiny unit under `backend`: (passed, what happened)."""
    source, data = REPO / "data" / "prepared" / DATA, tmp / "prepared" / DATA
    data.mkdir(parents=True)
    for path in source.glob("*.npy"):
        np.save(data / path.name, np.load(path, mmap_mode="r")[:256])  # first 256 of each split
    for path in source.glob("*.json"):
        shutil.copy(path, data)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["studies"][STUDY].update(seeds=[0])
    params["studies"][STUDY]["defaults"].update(epochs=1, batch_size=64)
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [shutil.which("ablations", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
           "--params", "params.yaml", "train", STUDY, VARIANT, "--data", "prepared",
           "--out", f"models/{STUDY}", "--checkpoints", f"checkpoints/{STUDY}"]
    env = {**os.environ, "KERAS_BACKEND": backend, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    run_json = tmp / "models" / STUDY / VARIANT / "seed0" / "run.json"
    if done.returncode or not run_json.exists():
        return False, (f"exit {done.returncode}, run.json {'written' if run_json.exists() else 'missing'}"
                       f":\n{(done.stdout + done.stderr)[-2500:]}")
    run = json.loads(run_json.read_text())
    return True, f"exit 0, run.json: fit {run['fit_seconds']:.1f} s, test accuracy {run['test_accuracy']:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-train", type=int, help="use only the first N training images")
    args = parser.parse_args()
    argv = ["--study", STUDY, "--variant", VARIANT, "--epochs", str(args.epochs)]
    argv += ["--max-train", str(args.max_train)] if args.max_train else []
    results, checks = {}, {}
    for backend in args.backends:
        print(f"{backend}: throughput …", flush=True)
        os.environ["KERAS_BACKEND"] = backend  # inherited by throughput.py's child processes
        try:
            results[backend] = measure(argv)
        except RuntimeError as error:
            print(f"{backend}: throughput FAILED: {error}")
        print(f"{backend}: ablations train end to end …", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            checks[backend] = end_to_end(backend, Path(tmp))
        if not checks[backend][0]:
            print(f"{backend}: end to end FAILED: {checks[backend][1]}")
    print(f"\n{'backend':11} {'device':14} {'first epoch s':>13} {'unit img/s':>10} {'bare img/s':>10} "
          f"{'pipeline img/s':>14} {'ratio':>6}  end to end")
    for backend in args.backends:
        m, (ok, what) = results.get(backend), checks[backend]
        figures = (f"{m['bare']['epoch_seconds'][0]:13.1f} {unit_images_s(m):10.0f} {m['bare_images_s']:10.0f} "
                   f"{m['pipeline_images_s']:14.0f} {m['ratio']:6.3f}"
                   if m else f"{'failed':>13} {'':>10} {'':>10} {'':>14} {'':>6}")
        device = m["device"] if m else "?"
        print(f"{backend:11} {device:14} {figures}  {'ok: ' + what if ok else 'FAILED'}")
    if results:
        for label, speed in (("per unit", unit_images_s),
                             ("steady", lambda m: m["bare_images_s"]),
                             ("pipeline", lambda m: m["pipeline_images_s"])):
            best = max(results, key=lambda b: speed(results[b]))
            print(f"fastest {label:9} {best} ({speed(results[best]):.0f} images/s)")
        print("(the default backend, ablations.DEFAULT_BACKEND, should be the fastest per unit: a "
              "study trains many short units, each paying the first epoch's tracing/compilation)")


def unit_images_s(m: dict) -> float:
    """Bare training images per second over ALL epochs, the first (tracing, compilation) included."""
    seconds = m["bare"]["epoch_seconds"]
    return m["bare"]["images"] * len(seconds) / sum(seconds)

if __name__ == "__main__":
    main()
