"""Training throughput inside the pipeline ÷ a bare `model.fit` (issue 5, goals 2 and 5).

    python bench/throughput.py                      # default study's first variant, 3 epochs
    KERAS_BACKEND=tensorflow python bench/throughput.py  # same model on another backend
    python bench/throughput.py --variant relu-bn --epochs 4 --max-train 1000
    python bench/throughput.py --batch-size 1024 --mixed-precision   # a GPU box
    python bench/throughput.py --repeat 3 --epochs 5  # 3 bare/pipeline pairs: the median ratio
    python bench/throughput.py --json               # one JSON object (bench/backends.py reads it)

Each mode runs in its own process (same imports, same caches for both):
- bare: `model.fit(x, y, shuffle=True)` on the arrays loaded into memory, as in a notebook;
- pipeline: `ablations.training.train_study()` of the one (variant, first seed) unit, on the
  memory-mapped arrays, with its callbacks, checkpoints, testing, saving and MLflow logging into
  a throw-away folder and SQLite store.
Images/s (training images per second of an epoch, validation included) come from the epochs
after the first (which includes tracing/compilation). On 2 CPU cores one pair's ratio varies by
±15 % from run to run (the machine's noise, not the pipeline's), so --repeat N alternates the
modes N times and reports the median of the N pair ratios (each pair adjacent in time). Also
printed: the device ("CPU (no GPU)" or the GPU's name), the unit's seconds split into the steps
of train_unit, and peak RSS (MiB) of both processes against the size of the arrays and the
model.
Needs the prepared data: `dvc repro standardize@<the study's data>` first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ablations  # noqa: F401  before keras: sets the default backend (KERAS_BACKEND wins)

REPO = Path(__file__).resolve().parents[1]
PHASES = {"_compiled_model": "build", "start_run": "MLflow run", "_fit": "data+callbacks",
          "test_results": "test", "log_result": "MLflow metrics", "_save_outputs": "save",
          "log_model": "log model"}  # steps of training.train_unit, timed in the pipeline mode


def _args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--data", default=str(REPO / "data" / "prepared"), help="prepared data root")
    parser.add_argument("--study", default="batchnorm")
    parser.add_argument("--variant", help="default: the study's first variant")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, help="default: the variant's")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    parser.add_argument("--max-train", type=int, help="use only the first N training images")
    parser.add_argument("--repeat", type=int, default=1, help="bare/pipeline pairs (median ratio)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument("--mode", choices=("bare", "pipeline"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _overrides(args) -> dict:
    overrides = {"epochs": args.epochs, "mixed_precision": args.mixed_precision}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    return overrides


def _params_and_variant(args):
    from ablations.config import load_params

    params = load_params(Path(args.params))
    return params, args.variant or next(iter(params.studies[args.study].variants))


def _data_root(args, params, tmp: Path) -> Path:
    """The prepared data root; with --max-train, a copy of the study's datasets cut to the
    first N training images."""
    import numpy as np

    from ablations.data.prepare import load_prepared

    if not args.max_train:
        return Path(args.data)
    spec = params.studies[args.study]
    for name in {spec.data} | {params.variant(args.study, v).data for v in spec.variants} - {None}:
        source, target = Path(args.data) / name, tmp / "data" / name
        target.mkdir(parents=True)
        for key, array in load_prepared(source).items():
            np.save(target / f"{key}.npy", array[: args.max_train] if key.endswith("_train") else array)
        for extra in source.glob("*.json"):  # classes.json, stats.json
            shutil.copy(extra, target)
    return tmp / "data"


def device() -> str:
    """The accelerator Keras' backend sees, else "CPU (no GPU)"."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    elif backend == "torch":
        import torch

        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif backend == "jax":
        import jax

        names = [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    else:
        names = []
    return ", ".join(names) if names else "CPU (no GPU)"


def run_bare(args, tmp: Path) -> dict:
    import keras

    from ablations.data.prepare import load_prepared
    from ablations.training import _compiled_model, _num_classes

    params, name = _params_and_variant(args)
    cfg = params.variant(args.study, name).model_copy(update=_overrides(args))
    data_dir = _data_root(args, params, tmp) / (cfg.data or params.studies[args.study].data)
    arrays = {key: value.copy() for key, value in load_prepared(data_dir).items()}  # in memory
    keras.utils.set_random_seed(cfg.seed)
    model, _ = _compiled_model(cfg, arrays, _num_classes(data_dir, arrays), None)
    seconds = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: seconds.append(-time.perf_counter()),
        on_epoch_end=lambda epoch, logs: seconds.__setitem__(-1, seconds[-1] + time.perf_counter()))
    model.fit(arrays["x_train"], arrays["y_train"], validation_data=(arrays["x_val"], arrays["y_val"]),
              epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, callbacks=[timer], verbose=0)
    return {"epoch_seconds": seconds, "images": len(arrays["y_train"]), "batch_size": cfg.batch_size,
            "peak_rss_mib": _peak_rss_mib()}


def run_pipeline(args, tmp: Path) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    import numpy as np

    from ablations.executors import backup_seconds
    from ablations.history import read_history
    from ablations.io import read_json
    from ablations.training import train_study
    from ablations.units import plan

    after_imports = _peak_rss_mib()
    params, name = _params_and_variant(args)
    units = plan(params, args.study, _data_root(args, params, tmp), tmp / "out", tmp / "ckpt",
                 only=[name])
    seed = params.studies[args.study].first_seeds()[0]
    units = [dataclasses.replace(u, cfg=u.cfg.model_copy(update=_overrides(args)))
             for u in units if u.seed == seed]  # the variant (after its transfer source, if any)
    unit = units[-1]
    phases = _timed_phases()
    started = time.perf_counter()
    train_study(args.study, units, backup_seconds())
    phases["total"] = time.perf_counter() - started
    arrays = sum(path.stat().st_size for path in unit.data_dir.glob("*.npy"))
    images = len(np.load(unit.data_dir / "y_train.npy", mmap_mode="r"))
    return {"epoch_seconds": [row["epoch_seconds"] for row in read_history(unit.out / "history.csv")],
            "fit_seconds": read_json(unit.out / "run.json")["fit_seconds"],
            "images": images, "batch_size": unit.cfg.batch_size,
            "peak_rss_mib": _peak_rss_mib(), "rss_after_imports_mib": after_imports, "phases": phases,
            "arrays_mib": arrays / 2**20, "model_mib": (unit.out / "model.keras").stat().st_size / 2**20}


def _timed_phases() -> dict[str, float]:
    """Wrap the steps of training.train_unit with timers: {step: seconds, summed over units}."""
    from ablations import tracking, training

    phases = {}
    for name in PHASES:
        module = tracking if hasattr(tracking, name) else training
        def timed(*a, _func=getattr(module, name), _name=name, **k):
            started = time.perf_counter()
            try:
                return _func(*a, **k)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - started
        setattr(module, name, timed)  # train_unit looks them up at call time
    return phases


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def images_per_second(result: dict) -> float:
    later = result["epoch_seconds"][1:] or result["epoch_seconds"]  # epoch 1 includes tracing
    return result["images"] / statistics.median(later)


def _measure(mode: str, argv: list[str]) -> dict:
    argv = [a for a in argv if a != "--json"]  # (--repeat is only read by the parent)
    done = subprocess.run([sys.executable, __file__, *argv, "--mode", mode], capture_output=True,
                          text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                          "MLFLOW_DISABLE_TELEMETRY": "true"})
    if done.returncode:
        raise RuntimeError(f"{mode} run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(argv: list[str], repeat: int = 1) -> dict:
    """Both modes, each in its own process, `repeat` times alternating; images/s, ratio, memory
    of the median pair (what --json prints), and every pair's ratio."""
    pairs = [(_measure("bare", argv), _measure("pipeline", argv)) for _ in range(repeat)]
    ratios = [images_per_second(pipeline) / images_per_second(bare) for bare, pipeline in pairs]
    bare, pipeline = pairs[ratios.index(statistics.median_low(ratios))]
    footprint = pipeline["arrays_mib"] + pipeline["model_mib"]
    return {"backend": pipeline["backend"], "device": pipeline["device"], "bare": bare,
            "pipeline": pipeline, "bare_images_s": images_per_second(bare),
            "pipeline_images_s": images_per_second(pipeline),
            "ratio": statistics.median(ratios), "ratios": ratios,
            "peak_over_footprint": pipeline["peak_rss_mib"] / footprint,
            "growth_over_footprint": (pipeline["peak_rss_mib"] - pipeline["rss_after_imports_mib"])
            / footprint}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if args.mode:  # child process: one measurement, printed as JSON on the last line
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_bare if args.mode == "bare" else run_pipeline)(args, Path(tmp))
        import keras

        result.update(backend=keras.backend.backend(), device=device(),
                      dtype_policy=keras.config.dtype_policy().name)
        print(json.dumps(result))
        return
    try:
        m = measure(argv, args.repeat)
    except RuntimeError as error:
        sys.exit(str(error))
    if args.json:
        print(json.dumps(m))
        return
    bare, pipeline = m["bare"], m["pipeline"]
    print(f"backend            {m['backend']}   device {m['device']}   dtype policy "
          f"{pipeline['dtype_policy']}   batch {pipeline['batch_size']}   {pipeline['images']} images")
    print(f"bare model.fit     {m['bare_images_s']:8.0f} images/s  epochs {_fmt(bare)}")
    print(f"pipeline train     {m['pipeline_images_s']:8.0f} images/s  epochs {_fmt(pipeline)}"
          f"  (fit {pipeline['fit_seconds']:.1f}s)")
    print(f"throughput ratio   {m['ratio']:8.3f}   (goal ≥ 0.97)" + (
        f"  median of {len(m['ratios'])} pairs: " + " ".join(f"{r:.3f}" for r in m["ratios"])
        if len(m["ratios"]) > 1 else ""))
    phases = dict(pipeline["phases"])
    total = phases.pop("total")
    phases["_fit"] -= pipeline["fit_seconds"]  # the callbacks' share around model.fit's epochs
    print(f"pipeline unit      {total:8.1f} s = fit {pipeline['fit_seconds']:.1f} + " + " + ".join(
        f"{PHASES[name]} {seconds:.1f}" for name, seconds in phases.items())
        + f" + other {total - pipeline['fit_seconds'] - sum(phases.values()):.1f}")
    print(f"peak RSS           {pipeline['peak_rss_mib']:8.0f} MiB  (after imports "
          f"{pipeline['rss_after_imports_mib']:.0f} MiB; arrays {pipeline['arrays_mib']:.0f} MiB + "
          f"model {pipeline['model_mib']:.1f} MiB)")
    print(f"RSS growth ÷ (arrays + model) {m['growth_over_footprint']:6.2f}   peak ÷ (arrays + model) "
          f"{m['peak_over_footprint']:6.2f}   (goal ≤ 2)")
    print(f"peak RSS of bare   {bare['peak_rss_mib']:8.0f} MiB  (pipeline − bare: "
          f"{pipeline['peak_rss_mib'] - bare['peak_rss_mib']:+.0f} MiB)")


def _fmt(result: dict) -> str:
    return " ".join(f"{s:.1f}s" for s in result["epoch_seconds"])


if __name__ == "__main__":
    main()
