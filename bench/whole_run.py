"""The whole default run against one bare notebook process doing the same work (issue 26).

Used by `bench/baseline.py --all`:
- bare (one Python process, `bare_all`): split and standardize every prepared dataset a study
  uses (the package's functions, no DVC), then per study the notebook loop of
  baseline.bare_loop (fit with what the question needs, test prediction, save) and one figure
  (validation accuracy per epoch, a line per variant); then polyfit's draws in a plain loop
  and its figure. No validation, DVC, MLflow, evaluation or report.
- pipeline: the whole default `dvc repro --no-run-cache` from the raw data (every output but
  data/raw and the MLflow store removed first), each `ablations` command timed by a shim that
  logs its stage kind and process id (so no command is attributed by the order of DVC's
  output); DVC's own work is the rest of the wall.
Both report their wall clock per phase; `kind_table` lines the phases up per stage kind
(validate, data, train, evaluate, report, polyfit, DVC) and says where the pipeline's
extra seconds go. All times in seconds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

from _project import environment
from tax import fit_seconds, run_timed

# What `dvc repro` makes from data/raw (dvc.yaml's vars): removed before every pipeline run.
OUTPUTS = ("data/params-valid.json", "data/split", "data/prepared", "models", "checkpoints",
           "results", "metrics", "curves", "plots", "reports")
# Stage kind (dvc.yaml stage name before "@") → the group both modes are compared in. The
# evaluate stage computes a study's numbers and draws its figures; the bare process draws a
# figure per study (its numbers come from its loop), so both count in "evaluate".
GROUPS = {"validate": "validate", "download": "data", "weights": "data", "split": "data",
          "standardize": "data", "train": "train", "evaluate": "evaluate", "report": "report",
          "polyfit": "polyfit"}
ORDER = ("start-up", "validate", "data", "train", "evaluate", "report", "polyfit", "dvc", "other")


# --------------------------------------------------------------------------- bare process


def _prepare_data(params, root: Path, names: list[str]) -> None:
    from ablations.data.prepare import split, standardize

    for name in names:
        cfg = params.data.prepared[name]
        split(cfg, Path("data/raw") / cfg.source, root / "split" / name)
        standardize(cfg, root / "split" / name, root / "prepared" / name)


def study_figure(study: str, histories: dict, path: Path) -> None:
    """Validation accuracy per epoch, mean over seeds, a line per variant (a notebook's plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, runs in histories.items():
        epochs = min(len(run["val_accuracy"]) for run in runs)
        mean = np.mean([run["val_accuracy"][:epochs] for run in runs], axis=0)
        ax.plot(range(1, epochs + 1), mean, marker="o", label=variant)
    ax.set(xlabel="epoch", ylabel="validation accuracy", title=study)
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _polyfit(cfg, path: Path) -> None:
    """Every draw's k-fold selection in a plain loop, and the median CV error per degree."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ablations.polyfit import choose_degree, cv_errors, make_data

    rows = []
    for seed in range(cfg.seed, cfg.seed + cfg.draws):
        x, y = make_data(cfg.coefficients, cfg.noise, cfg.n, cfg.x_range, seed)
        scores = cv_errors(x, y, range(1, cfg.max_degree + 1), cfg.folds, seed)
        choose_degree(scores)
        rows.append([s.mse_mean for s in scores])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(range(1, cfg.max_degree + 1), np.median(rows, axis=0), marker="o")
    ax.set(yscale="log", xlabel="degree", ylabel="median CV MSE")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bare_all(root: Path, loop, loop_flags: dict) -> dict:
    """Every default study the notebook way (baseline.bare_loop as `loop`) in this process;
    returns {"phases": {group: seconds}, "fit": Σ fit seconds}."""
    started = time.perf_counter()
    from ablations.config import load_params

    params = load_params("params.yaml")
    shutil.rmtree(root, ignore_errors=True)
    names = sorted({params.variant_data(study, variant)
                    for study, spec in params.studies.items() for variant in spec.variants})
    phases = {"start-up": time.perf_counter() - started, "data": 0.0, "train": 0.0, "evaluate": 0.0}
    mark = time.perf_counter()
    _prepare_data(params, root, names)
    phases["data"] = time.perf_counter() - mark
    fit = 0.0
    for study in params.studies:
        histories, mark = {}, time.perf_counter()
        fit += loop(study, root / "models" / study, data_root=root / "prepared",
                    histories=histories, **loop_flags)
        phases["train"] += time.perf_counter() - mark
        mark = time.perf_counter()
        study_figure(study, histories, root / "plots" / f"{study}.png")
        phases["evaluate"] += time.perf_counter() - mark
    mark = time.perf_counter()
    _polyfit(params.polyfit, root / "plots" / "polyfit.png")
    phases["polyfit"] = time.perf_counter() - mark
    return {"phases": phases, "fit": fit}


# --------------------------------------------------------------------------- pipeline

# Each `ablations` command logs its stage kind (its first argument) and process id with its
# start and end: a command's seconds go to its own kind, whatever order DVC's output arrives in.
SHIM = """#!/bin/bash
echo "start $$ $1 $(date +%s.%N)" >> {log}
{real} "$@"
rc=$?
echo "end $$ $1 $(date +%s.%N)" >> {log}
exit $rc
"""


def shim_environment(tmp: Path) -> tuple[dict, Path]:
    """(environment whose `ablations` logs each command's kind, start and end; that log)."""
    shim_dir, shim_log = tmp / "shim", tmp / "commands.log"
    shim_dir.mkdir(exist_ok=True)
    real = shutil.which("ablations", path=environment()["PATH"])
    (shim_dir / "ablations").write_text(SHIM.format(log=shim_log, real=real))
    (shim_dir / "ablations").chmod(0o755)
    env = {**environment(), "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{shim_dir}:{env['PATH']}"
    return env, shim_log


def command_seconds(shim_log: Path) -> dict[str, float]:
    """{group: Σ seconds of its commands}, start and end paired by process id."""
    started, seconds = {}, dict.fromkeys(ORDER, 0.0)
    for line in shim_log.read_text().splitlines():
        edge, pid, kind, stamp = line.split()
        if edge == "start":
            started[pid] = float(stamp)
        else:
            seconds[GROUPS[kind]] += float(stamp) - started.pop(pid)
    return seconds


def forget_stages(repo: Path) -> None:
    """Keep only the download stages in dvc.lock: with a stage's lock entry and its outputs in
    DVC's cache, `dvc repro` restores the outputs instead of running the stage (an earlier pair
    left both), so every other stage must run as on a first repro."""
    import yaml

    path = repo / "dvc.lock"
    if not path.exists():
        return
    lock = yaml.safe_load(path.read_text())
    lock["stages"] = {name: entry for name, entry in lock["stages"].items()
                      if name.startswith("download@")}
    path.write_text(yaml.safe_dump(lock, sort_keys=False))


def run_pipeline_all(repo: Path, rusage: list[str], tmp: Path) -> dict:
    """The whole `dvc repro` from raw data: {"wall", "cpu", "rss", "phases": {group: seconds of
    its stage commands, "dvc": the rest of the wall}, "fit"}."""
    for name in OUTPUTS:
        path = repo / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    forget_stages(repo)
    env, shim_log = shim_environment(tmp)
    shim_log.unlink(missing_ok=True)
    with open(tmp / "repro.log", "w", buffering=1) as log:
        launched, lines, ended = run_timed(
            [*rusage, "dvc", "repro", "--no-run-cache"], repo, env, log)
    phases = command_seconds(shim_log)
    # DVC's own work: its start-up, hashing, caching, dvc.lock, between and around the commands.
    phases["dvc"] = (ended - launched) - sum(phases.values())
    usage = next(text for _, text in lines if text.startswith("rusage")).split()
    return {"wall": ended - launched, "rss": int(usage[1]) / 1024, "cpu": float(usage[2]),
            "phases": phases, "fit": fit_seconds(repo / "models")[0]}


# --------------------------------------------------------------------------- summary


def kind_table(rows: list[dict]) -> str:
    """Median seconds per group over pairs: pipeline (its stage commands; "dvc": DVC's own work
    around them), bare (its phases), and the pipeline's extra seconds."""
    def median(mode, group):
        return statistics.median(row[mode]["phases"].get(group, 0.0) for row in rows)

    extra_total = statistics.median(r["pipeline"]["wall"] - r["bare"]["wall"] for r in rows)
    lines = [f"{'stage kind':12} {'pipeline':>9} {'bare':>8} {'extra':>8}  share of the extra "
             f"{extra_total:.1f} s"]
    for group in ORDER:
        pipe, bare = median("pipeline", group), median("bare", group)
        share = (pipe - bare) / extra_total if extra_total else float("nan")
        lines.append(f"{group:12} {pipe:9.1f} {bare:8.1f} {pipe - bare:8.1f}  {share:6.1%}")
    lines.append("(medians per row; pipeline: the seconds of each kind's `ablations` commands, dvc: "
                 "the rest of its wall; bare: start-up = reading params, data = split and "
                 "standardize, train includes test prediction and saving, other = the rest of "
                 "its wall, e.g. Python's start)")
    return "\n".join(lines)


def pair_line(index: int, row: dict) -> str:
    p, b = row["pipeline"], row["bare"]
    return (f"pair {index}: pipeline {p['wall']:7.1f} s  bare {b['wall']:7.1f} s  wall ratio "
            f"{p['wall'] / b['wall']:.3f} | CPU {p['cpu']:7.1f} / {b['cpu']:7.1f} s  ratio "
            f"{p['cpu'] / b['cpu']:.3f} | Σ fit {p['fit']:6.1f} / {b['fit']:6.1f} s")


def bare_result(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])
