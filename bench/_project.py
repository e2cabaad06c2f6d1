"""A throw-away git + DVC copy of this project, optionally with shrunk params (for benchmarks)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("src", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc/config", ".dvcignore",
                 ".gitignore")


def environment() -> dict[str, str]:
    """The venv's tools first; no tracking server or parent run leaking in from the caller."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        env.pop(key, None)
    return env


def sh(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=environment(), capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def copy_project(dest: Path, edit=None) -> Path:
    """Copy the project files into `dest` (a new git repo); `edit(params)` may change params."""
    for name in PROJECT_FILES:
        source, target = REPO / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy(source, target)
    if edit:
        params = yaml.safe_load((dest / "params.yaml").read_text())
        (dest / "params.yaml").write_text(yaml.safe_dump(edit(params), sort_keys=False))
    sh(["git", "init", "-q"], dest)
    sh(["git", "add", "-A"], dest)
    sh(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qm", "copy"], dest)
    return dest


def shrink(params: dict) -> dict:
    """Same stages, a few hundred images and 1 epoch: for timing the machinery, not training."""
    for data in params["data"]["prepared"].values():
        data.update(max_train=400, max_test=200)
    for study in params["studies"].values():
        study["defaults"].update(epochs=1, batch_size=64)
    params["polyfit"].update(max_degree=4, folds=3)
    return params
