"""The ray executor's cost: a study of N tiny units trained by `ablations train` with the local
executor, then on a local Ray with k workers; wall seconds and Ray's overhead per unit.

    python bench/ray_overhead.py                   # N=8 units, k = 1 and 2 workers
    python bench/ray_overhead.py --units 16 --workers 1 2 4

Figures are printed, not asserted. The units are the tests' tiny ones (64 8×8 images, 2
epochs): almost all of a unit is fixed cost (model build, MLflow run, saving), which is what
Ray adds to. k workers = a local Ray whose tasks each ask for (CPUs of this machine) / k.

Timings on a shared machine vary by seconds from run to run, so the units' own time is taken
out: each unit's MLflow run records when it started and ended, in either executor.
  in units   Σ of the units' MLflow run durations (start → end)
  outside    wall − in units / k: process start, imports, Ray start-up, dispatch
  overhead   (outside(ray) − outside(local)) / N: what Ray adds per unit, its start-up included;
             and the same less the start-up (ray.init + ray.shutdown, measured here once)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import train_command, write_params, write_prepared  # noqa: E402  the tests' tiny study

from _project import environment  # noqa: E402
from mlflow import MlflowClient  # noqa: E402


def timed_train(folder: Path, units: int, name: str, store: Path, **env_vars: str):
    """(wall seconds, Σ seconds inside the units' MLflow runs) of `ablations train` of a fresh
    study of `units` units into folder/name, logging to a fresh copy of `store`."""
    study = folder / name
    study.mkdir()
    shutil.copyfile(store, study / "mlflow.db")
    uri = f"sqlite:///{study / 'mlflow.db'}"
    params = write_params(study, ["v"], seeds=list(range(units)), epochs=2)
    command = train_command(params, folder / "data", study / "out", study / "ckpt")
    env = {**environment(), "MLFLOW_TRACKING_URI": uri, **env_vars}
    env.pop("RAY_ADDRESS", None)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode or f"train unit: {units} to train" not in done.stdout:
        sys.exit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("unit").experiment_id])
    assert len(runs) == units and all(run.info.status == "FINISHED" for run in runs)
    return wall, sum(run.info.end_time - run.info.start_time for run in runs) / 1000


def ray_startup_seconds() -> float:
    import ray

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="warning")
    ray.shutdown()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=8, help="N, units in the study (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="k values")
    args = parser.parse_args()
    n = args.units
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
        folder = Path(tmp)
        write_prepared(folder / "data" / "d", n=64)
        store = folder / "template.db"
        MlflowClient(f"sqlite:///{store}").search_experiments()  # created (migrated) once
        startup = ray_startup_seconds()
        print(f"{n} units, {cpus} CPUs (load average {os.getloadavg()[0]:.1f}); "
              f"Ray start-up + shutdown {startup:.1f} s")
        wall, inside = timed_train(folder, n, "local", store)
        local_outside = wall - inside
        print(f"local executor:    wall {wall:6.1f} s, in units {inside:6.1f} s, "
              f"outside {local_outside:5.1f} s")
        for k in args.workers:
            wall, inside = timed_train(folder, n, f"ray{k}", store, ABLATIONS_EXECUTOR="ray",
                                       ABLATIONS_CPUS_PER_UNIT=f"{cpus / k:g}")
            overhead = (wall - inside / k - local_outside) / n
            print(f"ray, {k} worker(s): wall {wall:6.1f} s, in units {inside:6.1f} s, "
                  f"outside {wall - inside / k:5.1f} s; overhead per unit {overhead:+.2f} s "
                  f"({overhead - startup / n:+.2f} s less the start-up)")


if __name__ == "__main__":
    main()
