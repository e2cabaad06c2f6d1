"""The ray executor's cost: a study of N tiny units trained by `ablations train` with the local
executor, then on a local Ray with k workers; wall seconds and Ray's overhead per unit.

    python bench/ray_overhead.py                   # N=8 units, k = 1 and 2 workers
    python bench/ray_overhead.py --units 16 --workers 1 2 4

Figures are printed, not asserted. The units are the tests' tiny ones (64 8×8 images, 2
epochs): almost all of a unit is fixed cost (model build, MLflow run, saving), which is what
Ray adds to. k workers = a local Ray whose tasks each ask for (CPUs of this machine) / k.
Overheads:
  start-up   ray.init() + ray.shutdown() of a local instance, once per stage (measured here)
  per unit   (k × wall_k − wall_local) / N: worker-seconds each unit costs beyond the local
             loop's, start-up included (0 = Ray is free and k workers are k times faster);
             and the same without the start-up, k × (wall_k − start-up): what one more unit costs
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import train_command, write_params, write_prepared  # noqa: E402  the tests' tiny study

from _project import environment  # noqa: E402


def timed_train(folder: Path, params: Path, name: str, **env_vars: str) -> float:
    command = train_command(params, folder / "data", folder / name, folder / f"ckpt-{name}")
    env = {**environment(), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", **env_vars}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return wall


def ray_startup_seconds() -> float:
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="warning")
    ray.shutdown()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=8, help="units in the study (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="k values")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        folder = Path(tmp)
        write_prepared(folder / "data" / "d", n=64)
        params = write_params(folder, ["v"], seeds=list(range(args.units)), epochs=2)
        timed_train(folder, write_params(folder, ["v"], seeds=[0], epochs=1), "warm-up")  # store
        startup = ray_startup_seconds()
        local = timed_train(folder, params, "local")
        print(f"{args.units} units, {cpus} CPUs (load average {os.getloadavg()[0]:.1f}); "
              f"Ray start-up + shutdown: {startup:.1f} s")
        print(f"local executor: {local:6.1f} s wall, {local / args.units:.2f} s per unit")
        for k in args.workers:
            wall = timed_train(folder, params, f"ray{k}", ABLATIONS_EXECUTOR="ray",
                               ABLATIONS_CPUS_PER_UNIT=f"{cpus / k:g}")
            overhead = (k * wall - local) / args.units
            marginal = (k * (wall - startup) - local) / args.units
            print(f"ray, {k} worker(s): {wall:6.1f} s wall, speed-up {local / wall:.2f}, "
                  f"overhead per unit {overhead:+.2f} s ({marginal:+.2f} s without the start-up)")


if __name__ == "__main__":
    main()
