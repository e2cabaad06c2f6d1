"""Fixed costs of the stage processes, before and after a change (issue 26): CPU seconds.

    python bench/fixed_costs.py --before ce7bb88 --repeat 5
    python bench/fixed_costs.py --before main --only validate,polyfit

The package's source at git revision BEFORE is extracted into a temporary folder; each probe
runs as a new process with PYTHONPATH on that source (before) or on this checkout's src/
(after), in alternating order, `--repeat` pairs, in a scratch folder holding this checkout's
params.yaml. Printed per probe: median CPU seconds (user + system of the process and the
workers it waited for) before and after, their ratio, and the median wall seconds. CPU time,
not wall, is the measure that holds on a shared machine; wall is printed for the record.

Probes:
- start-up of each stage kind: importing what its command imports (cli, then the stage's
  module), which is what a stage pays before its first line of work;
- validate: the whole `ablations validate` of params.yaml (imports + every network built);
- polyfit: the stage's draws (repeat_selection), without MLflow and the figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STARTUP = {  # stage kind → the modules its `ablations <stage>` command imports first
    "validate": "ablations.cli, ablations.config, ablations.models.blocks, ablations.models.zoo",
    "train": "ablations.cli, ablations.executors, ablations.units, ablations.training",
    "evaluate": "ablations.cli, ablations.evaluate, ablations.plots",
    "report": "ablations.cli, ablations.report",
    "polyfit": "ablations.cli, ablations.polyfit",
}
PROBES = {
    **{f"start-up {kind}": ["-c", f"import {modules}"] for kind, modules in STARTUP.items()},
    "validate": ["-m", "ablations.cli", "validate", "--out", "valid.json"],
    "polyfit draws": ["-c", "from ablations.config import load_params; from ablations import "
                            "polyfit; polyfit.repeat_selection(load_params('params.yaml').polyfit)"],
}


def measure(args: list[str], src: Path, cwd: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `python ARGS` with the package from `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "MLFLOW_DISABLE_TELEMETRY": "true",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"{args} with {src} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def extract(revision: str, dest: Path) -> Path:
    """The package source at `revision` under dest/src."""
    archive = subprocess.run(["git", "archive", revision, "src"], cwd=REPO, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def pairs(name: str, args: list[str], trees: dict[str, Path], cwd: Path, repeat: int) -> dict:
    samples = {mode: [] for mode in trees}
    for index in range(repeat):
        order = list(trees) if index % 2 == 0 else list(reversed(trees))
        for mode in order:
            samples[mode].append(measure(args, trees[mode], cwd))
    cpu = {mode: statistics.median(s[0] for s in samples[mode]) for mode in trees}
    wall = {mode: statistics.median(s[1] for s in samples[mode]) for mode in trees}
    print(f"{name:20} CPU {cpu['before']:6.2f} → {cpu['after']:6.2f} s  (× {cpu['after'] / cpu['before']:.2f}, "
          f"{cpu['after'] - cpu['before']:+6.2f} s)   wall {wall['before']:6.2f} → {wall['after']:6.2f} s"
          f"   CPU per pair before/after: "
          + " ".join(f"{b[0]:.2f}/{a[0]:.2f}" for b, a in zip(samples["before"], samples["after"])),
          flush=True)
    return {"cpu": cpu, "wall": wall, "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the 'before' source")
    parser.add_argument("--repeat", type=int, default=3, help="before/after pairs per probe")
    parser.add_argument("--only", help=f"comma-separated probes (default all: {', '.join(PROBES)})")
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(PROBES)
    unknown = [name for name in chosen if name not in PROBES]
    if unknown:
        parser.error(f"unknown probe(s) {unknown}; have {list(PROBES)}")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": extract(args.before, Path(tmp)), "after": REPO / "src"}
        cwd = Path(tmp) / "work"
        cwd.mkdir()
        shutil.copy(REPO / "params.yaml", cwd / "params.yaml")
        print(f"before: {args.before} ({trees['before']}), after: {trees['after']}; "
              f"{args.repeat} alternating pairs; medians")
        for name in chosen:
            pairs(name, PROBES[name], trees, cwd, args.repeat)


if __name__ == "__main__":
    main()
