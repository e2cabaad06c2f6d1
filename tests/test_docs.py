"""The README stays a few screens long, and its example study is one validate accepts."""

import re

import yaml

from ablations.config import load_params
from conftest import REPO

README = (REPO / "README.md").read_text()
MAX_README_LINES = 250


def test_readme_fits_on_a_few_screens():
    lines = len(README.splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/ and link it")


def test_readme_example_study_is_valid(tmp_path):
    [block] = re.findall(r"```yaml\n(.*?)```", README, re.S)
    example = yaml.safe_load(block)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["studies"].update(example)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    [(name, study)] = example.items()
    assert sorted(load_params(tmp_path / "params.yaml").studies[name].variants) == sorted(
        study["variants"])
