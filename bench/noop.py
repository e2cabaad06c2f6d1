"""No-op `dvc repro` of this pipeline ÷ DVC's own no-op for as many trivial stages (goal 3).

    python bench/noop.py                  # builds a shrunk copy of the project, reproduces it once
    python bench/noop.py --repo /tmp/p    # a checkout already reproduced (bench/tax.py --project)

Trivial stages: `cp in out` with one dependency and one output each, in a fresh git + DVC repo.
Each figure is the median of --repeat timed runs (seconds). Also says whether the YAML parser
is ruamel's C one: DVC parses params.yaml once per stage that tracks params.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _project import copy_project, environment, sh, shrink


def noop_seconds(repo: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        done = sh(["dvc", "repro"], repo)
        times.append(time.perf_counter() - started)
        if "Running stage" in done.stdout:
            raise SystemExit(f"{repo}: `dvc repro` was not a no-op; reproduce it first")
    return statistics.median(times)


def trivial_repo(dest: Path, stages: int) -> Path:
    dest.mkdir()
    sh(["git", "init", "-q"], dest)
    sh(["dvc", "init", "-q"], dest)
    lines = ["stages:"]
    for i in range(stages):
        (dest / f"in{i}.txt").write_text(f"{i}\n")
        lines += [f"  s{i}:", f"    cmd: cp in{i}.txt out{i}.txt", f"    deps: [in{i}.txt]",
                  f"    outs: [out{i}.txt]"]
    (dest / "dvc.yaml").write_text("\n".join(lines) + "\n")
    sh(["dvc", "repro"], dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, help="an already reproduced checkout")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repo = args.repo
        if repo is None:
            repo = copy_project(Path(tmp) / "project", shrink)
            sh(["dvc", "repro"], repo)
        stages = len(sh(["dvc", "stage", "list", "--name-only"], repo).stdout.split())
        ours = noop_seconds(repo, args.repeat)
        print(f"no-op dvc repro    {ours:6.2f} s   (this pipeline, {stages} stages)", flush=True)
        baseline = noop_seconds(trivial_repo(Path(tmp) / "trivial", stages), args.repeat)
    print(f"no-op dvc repro    {baseline:6.2f} s   ({stages} trivial stages)")
    print(f"ratio              {ours / baseline:6.2f}     (goal ≤ 1.2)")
    print(f"YAML parser        {yaml_parser()}")


def yaml_parser() -> str:
    """DVC parses params.yaml once per stage that tracks params: the C parser matters."""
    done = subprocess.run([sys.executable, "-c", "from ruamel.yaml.main import CParser; print(CParser)"],
                          env=environment(), capture_output=True, text=True)
    return ("C (ruamel.yaml.clib)" if done.stdout.strip() not in ("", "None")
            else "pure Python (no ruamel.yaml.clib: every YAML load is several times slower)")


if __name__ == "__main__":
    main()
