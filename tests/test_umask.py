"""Outputs honour the user's umask, through the real commands: on a shared machine teammates
read each other's data folders (temp files are created private, 0600, then published)."""

import os
import stat
import subprocess
import sys

import yaml
from test_prepare_classes import write_fashion

UMASK = 0o027  # group may read, others nothing: differs from both 0600 and the usual 0022


def ablations(*args, cwd):
    return subprocess.run([sys.executable, "-m", "ablations.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: os.umask(UMASK))


def modes(folder):
    """{relative path: permission bits} of a folder and everything in it."""
    paths = [folder, *folder.rglob("*")]
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in paths}


def test_outputs_get_the_modes_the_umask_gives(tmp_path):
    write_fashion(tmp_path / "raw", per_class_train=4, per_class_test=2)
    params = {"data": {"raw": ["fashion_mnist", "digits"],
                       "prepared": {"d": {"source": "fashion_mnist", "scaling": "zero_one",
                                          "val_fraction": 0.5}}},
              "studies": {}, "polyfit": {"coefficients": [1.0, 2.0], "noise": 0.1, "n": 20,
                                         "x_range": [0, 1], "max_degree": 2, "folds": 2, "seed": 0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for command in (["split", "d", "--raw", "raw", "--out", "split"],
                    ["standardize", "d", "--split", "split", "--out", "prepared"],
                    ["download", "digits", "--out", "digits"]):
        result = ablations(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    for folder in ("split", "prepared", "digits"):
        found = modes(tmp_path / folder)
        expected = {path: 0o750 if (tmp_path / folder / path).is_dir() else 0o640 for path in found}
        assert found == expected, folder
    assert {"x_train.npy", "classes.json", "stats.json"} <= set(modes(tmp_path / "prepared"))
