"""A throw-away git + DVC copy of this project, optionally with shrunk params (for benchmarks)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("src", "dvc.yaml", "networks", "params.yaml", "pyproject.toml", ".dvc/config", ".dvc/plots",
                 ".dvcignore", ".gitignore")


RUNTIME_DIR = Path(tempfile.mkdtemp(prefix="bench-runtime-"))


def environment() -> dict[str, str]:
    """The venv's tools first; no tracking server or parent run leaking in from the caller."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(key, None)
    # The worker's servers of this bench apart from any other (bench/_rusage.py stops them).
    env["XDG_RUNTIME_DIR"] = str(RUNTIME_DIR)
    return env


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=environment(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def copy_project(dest: Path, edit=None) -> Path:
    """Copy the project files into `dest` (a new git repo); `edit(params)` may change params
    (every data.prepared key is written out, see explicit_defaults)."""
    for name in PROJECT_FILES:
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy(source, target)
    params = explicit_defaults(yaml.safe_load((dest / "params.yaml").read_text()))
    (dest / "params.yaml").write_text(yaml.safe_dump(edit(params) if edit else params, sort_keys=False))
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "copy"], dest)
    return dest


def explicit_defaults(params: dict) -> dict:
    """Write out the data.prepared keys that dvc.yaml tracks one by one
    (`data.prepared.${key}.seed` …) but params.yaml leaves to their schema default: DVC fails
    a stage whose tracked key is missing. Same config for the pipeline; says what it added."""
    from ablations.config import PreparedData

    tracked = set(re.findall(r"data\.prepared\.\$\{key\}\.(\w+)", (REPO / "dvc.yaml").read_text()))
    filled = []
    for name, data in params["data"]["prepared"].items():
        missing = {key: field.default for key, field in PreparedData.model_fields.items()
                   if key in tracked and key not in data and not field.is_required()}
        filled += [f"{name}.{key}" for key in missing]
        data.update(missing)
    if filled:
        print(f"note: params.yaml lacks keys dvc.yaml tracks (DVC would fail): data.prepared."
              f"{{{', '.join(filled)}}}; the copy states their defaults", file=sys.stderr)
    return params


def shrink(params: dict) -> dict:
    """Same stages, a few hundred images, 1 epoch, one seed and two variants per study (the
    baseline, the next one, and any transfer source they need; a factorial study keeps its
    cross product): for timing the machinery."""
    for data in params["data"]["prepared"].values():
        data.update(max_train=400, max_val=200, max_test=200)
    for study in params["studies"].values():
        study["defaults"].update(epochs=1, batch_size=64)
        seeds = study.get("seeds", [0])
        study["seeds"] = seeds[:1] if isinstance(seeds, list) else [0]  # a range: one seed
        if "factors" in study:  # variants are the factors' cross product
            continue
        variants = study["variants"]
        keep = {study["baseline"], next(v for v in variants if v != study["baseline"])}
        keep |= {variants[v]["init_from"] for v in keep if "init_from" in variants[v]}
        study["variants"] = {name: spec for name, spec in variants.items() if name in keep}
        study["also_compare"] = [pair for pair in study.get("also_compare", []) if set(pair) <= keep]
    params["polyfit"].update(max_degree=4, folds=3)
    return params
