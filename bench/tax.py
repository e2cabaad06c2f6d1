"""Pipeline tax (issue 5, goal 1): wall time of the default `dvc repro` ÷ time inside `fit`.

    python bench/tax.py --shrink --reuse-data      # fast check: a few hundred images, 1 epoch
    python bench/tax.py --reuse-data               # the real figure: params.yaml as it is
    python bench/tax.py --single-item              # one `dvc repro --single-item` per stage
    python bench/tax.py --project /tmp/p …         # keep the copy (then: bench/noop.py --repo /tmp/p)
    python bench/tax.py --existing DIR --wall 1234 # Σ fit and tax of a repro already done in DIR

A throw-away git + DVC copy of the project (bench/_project.py) is reproduced from scratch.
Default: ONE `dvc repro`, its output time-stamped line by line; a stage's wall runs from its
"Running stage" line to the next one. --single-item: each stage (topological order of
`dvc dag`) in its own `dvc repro --single-item`, which adds DVC's start-up to every stage.
Each stage's command runs through a shim that logs when `ablations` starts and ends, so
wall = dvc (DVC's own work: start-up, hashing, caching, dvc.lock) + cmd; cmd = fit (Σ
fit_seconds of the stage's run.json files) + the rest (imports, data, testing, saving, MLflow).
`start` is a train stage's time before its first unit (Python and Keras imports, planning).
Then a second `dvc repro` is timed: the no-op. All times in seconds (wall clock).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _project import REPO, copy_project, environment, sh, shrink

SHIM = """#!/bin/bash
echo "start $(date +%s.%N)" >> {log}
{real} "$@"
rc=$?
echo "end $(date +%s.%N)" >> {log}
exit $rc
"""
UNIT_LINE = re.compile(r"^train \S+ \S+ \(\d+/\d+\)$")  # printed by train_study per unit


def run_timed(cmd: list[str], repo: Path, env: dict, log, origin: float | None = None):
    """Run `cmd`, echo stage starts (seconds since `origin`, default: its launch); return
    (launch time, [(time, line)…], end time)."""
    lines, launched = [], time.time()
    origin = origin or launched
    with subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            lines.append((time.time(), line.rstrip("\n")))
            log.write(f"{lines[-1][0]:.3f} {line}")
            if line.startswith("Running stage"):
                print(f"  {lines[-1][0] - origin:7.1f} s  {line.strip()}", flush=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed (see {log.name}):\n" +
                 "\n".join(text for _, text in lines[-30:]))
    return launched, lines, time.time()


def stage_name(line: str) -> str:
    return line.split("'")[1]  # Running stage 'train@batchnorm':


def stage_order(repo: Path) -> list[str]:
    """Stages in a topological order of `dvc dag --dot` (ties in dvc.yaml order)."""
    names = sh(["dvc", "stage", "list", "--name-only"], repo).stdout.split()
    edges = re.findall(r'"([^"]+)" -> "([^"]+)"', sh(["dvc", "dag", "--dot"], repo).stdout)
    order, done = [], set()
    while len(order) < len(names):
        ready = [n for n in names if n not in done and all(a in done for a, b in edges if b == n)]
        order.append(ready[0])
        done.add(ready[0])
    return order


def stage_outs(repo: Path) -> dict[str, list[str]]:
    """{stage: its outputs} from `dvc stage list` ("name  Outputs a, b; Reports c")."""
    outs = {}
    for line in sh(["dvc", "stage", "list"], repo).stdout.splitlines():
        name, _, rest = line.strip().partition(" ")
        outs[name] = [path for part in rest.strip().split("; ")
                      for path in part.partition(" ")[2].split(", ") if path]
    return outs


def fit_seconds(folder: Path) -> tuple[float, int]:
    """(Σ fit_seconds, units) over the run.json files under `folder`."""
    runs = [json.loads(p.read_text()) for p in folder.rglob("run.json")] if folder.is_dir() else []
    runs = [run for run in runs if "fit_seconds" in run]
    return sum(run["fit_seconds"] for run in runs), len(runs)


def stage_rows(spans, lines, shim_log: Path, repo: Path) -> list[dict]:
    """One row per (stage, begin, end) span: its command's time (from the shim's log), its fit
    seconds and units (run.json under its outputs), its time before the first unit."""
    stamps = [float(line.split()[1]) for line in shim_log.read_text().splitlines()]
    commands = list(zip(stamps[0::2], stamps[1::2]))  # (start, end) of every `ablations` run
    outs = stage_outs(repo)
    rows = []
    for name, begin, end in spans:
        cmd = [(a, b) for a, b in commands if begin <= a < end]
        units = [t for t, line in lines if begin <= t < end and UNIT_LINE.match(line)]
        found = [fit_seconds(repo / out) for out in outs[name]]
        rows.append({"stage": name, "wall": end - begin, "cmd": sum(b - a for a, b in cmd),
                     "fit": sum(f for f, _ in found), "units": sum(n for _, n in found),
                     "start": units[0] - cmd[0][0] if units and cmd else None})
    return rows


def print_table(rows: list[dict], dvc_start: float) -> float:
    print(f"\n{'stage':28} {'wall':>8} {'dvc':>7} {'cmd':>8} {'fit':>8} {'cmd-fit':>8} "
          f"{'units':>5} {'start':>6}")
    if dvc_start:  # one `dvc repro`: before its first stage
        print(f"{'(dvc start-up)':28} {dvc_start:8.1f} {dvc_start:7.1f}")
    for r in rows:
        start = f"{r['start']:6.1f}" if r["start"] is not None else ""
        print(f"{r['stage']:28} {r['wall']:8.1f} {r['wall'] - r['cmd']:7.1f} {r['cmd']:8.1f} "
              f"{r['fit']:8.1f} {r['cmd'] - r['fit']:8.1f} {r['units'] or '':>5} {start}")
    wall = dvc_start + sum(r["wall"] for r in rows)
    fit = sum(r["fit"] for r in rows)
    dvc = dvc_start + sum(r["wall"] - r["cmd"] for r in rows)
    train = [r for r in rows if r["units"]]
    other_cmds = sum(r["cmd"] for r in rows if not r["units"])
    starts = sum(r["start"] or 0 for r in train)
    outside = sum(r["cmd"] - r["fit"] - (r["start"] or 0) for r in train)
    units = sum(r["units"] for r in train)
    print(f"{'total':28} {wall:8.1f} {dvc:7.1f} {wall - dvc:8.1f} {fit:8.1f} {wall - dvc - fit:8.1f} "
          f"{units:5}")
    print(f"\nwall of all stages {wall:8.1f} s")
    print(f"Σ fit              {fit:8.1f} s   ({units} units)")
    if fit:
        print(f"tax = wall ÷ Σ fit {wall / fit:8.3f}     (goal ≤ 1.10)")
    print("where the rest goes:")
    for label, seconds in [
        ("DVC itself (start-up, hashing, caching, lock)", dvc),
        ("commands of non-train stages", other_cmds),
        (f"train start-up before the first unit ({len(train)} stages)", starts),
        (f"train units outside fit ({units} units, {outside / max(units, 1):.1f} s each; "
         "split: bench/throughput.py)", outside),
    ]:
        print(f"  {label:72} {seconds:8.1f} s  ({seconds / wall:5.1%} of wall)")
    return wall


def reuse_raw(repo: Path) -> None:
    """Copy the checkout's downloaded datasets in and record their download stages as done
    (`dvc commit`), so `dvc repro` skips them. Says what it reused."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    valid = repo / "data" / "params-valid.json"  # download's dep; validate rewrites it identically
    valid.parent.mkdir(parents=True, exist_ok=True)
    valid.write_text(json.dumps({"params": "valid"}, indent=2, sort_keys=True) + "\n")
    for name in params["data"]["raw"]:
        source = REPO / "data" / "raw" / name
        if not source.is_dir():
            print(f"reuse: {source} missing, download@{name} will run")
            continue
        shutil.copytree(source, repo / "data" / "raw" / name)
        sh(["dvc", "commit", "-f", f"download@{name}"], repo)
        print(f"reused: {source} (download@{name} committed, not run: its time is NOT in the wall)")
    valid.unlink()  # validate makes it again, inside the timed repro


def noop_seconds(repo: Path, env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode or "Running stage" in done.stdout:
        print(f"warning: the second `dvc repro` was not a no-op:\n{done.stdout[-1500:]}")
    return seconds


def existing(folder: Path, wall: float) -> None:
    """Σ fit and tax of a repro already done in `folder` (its wall measured by the caller)."""
    print(f"{'study':20} {'units':>5} {'fit s':>8}")
    for study in sorted(p for p in (folder / "models").iterdir() if p.is_dir()):
        fit, n = fit_seconds(study)
        print(f"{study.name:20} {n:5} {fit:8.1f}")
    fit, n = fit_seconds(folder / "models")
    print(f"\nwall {wall:.1f} s   Σ fit {fit:.1f} s ({n} units)   tax {wall / fit:.3f}   (goal ≤ 1.10)")
    print("(every run.json counts: units kept from an earlier repro inflate Σ fit)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shrink", action="store_true", help="a few hundred images, 1 epoch")
    parser.add_argument("--reuse-data", action="store_true", help="copy data/raw, skip download")
    parser.add_argument("--single-item", action="store_true", help="one dvc call per stage")
    parser.add_argument("--project", type=Path, help="build the copy here and keep it")
    parser.add_argument("--existing", type=Path, help="an already reproduced checkout")
    parser.add_argument("--wall", type=float, help="with --existing: its `dvc repro` seconds")
    args = parser.parse_args()
    if args.existing:
        if args.wall is None:
            parser.error("--existing needs --wall SECONDS")
        return existing(args.existing, args.wall)
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.project or Path(tmp) / "project"
        copy_project(repo, shrink if args.shrink else None)
        print(f"project copy: {repo} ({'shrunk' if args.shrink else 'params.yaml as is'})")
        if args.reuse_data:
            reuse_raw(repo)
        shim_dir, shim_log = Path(tmp) / "shim", Path(tmp) / "commands.log"
        shim_dir.mkdir()
        real = shutil.which("ablations", path=environment()["PATH"])
        (shim_dir / "ablations").write_text(SHIM.format(log=shim_log, real=real))
        (shim_dir / "ablations").chmod(0o755)
        env = {**environment(), "PYTHONUNBUFFERED": "1"}
        env["PATH"] = f"{shim_dir}:{env['PATH']}"
        log_path = repo.parent / f"{repo.name}-repro.log" if args.project else Path(tmp) / "repro.log"
        with open(log_path, "w", buffering=1) as log:  # line-buffered: `tail -f` it
            spans, lines, start = [], [], 0.0
            if args.single_item:  # each call's start-up counts in its stage's dvc column
                origin = time.time()
                for stage in stage_order(repo):
                    launched, out, ended = run_timed(["dvc", "repro", "--single-item", stage],
                                                     repo, env, log, origin)
                    spans.append((stage, launched, ended))
                    lines += out
            else:
                launched, lines, ended = run_timed(["dvc", "repro"], repo, env, log)
                marks = [(t, stage_name(text)) for t, text in lines if text.startswith("Running stage")]
                start = marks[0][0] - launched
                spans = [(name, t, marks[i + 1][0] if i + 1 < len(marks) else ended)
                         for i, (t, name) in enumerate(marks)]
            rows = stage_rows(spans, lines, shim_log, repo)
        print_table(rows, start)
        print(f"no-op dvc repro    {noop_seconds(repo, env):8.1f} s")
        if args.project:
            print(f"output of the repro: {log_path}")


if __name__ == "__main__":
    main()
