"""Code dependencies declared once and complete: dvc.yaml's deps and the unit fingerprint cover
every module a stage imports, `dvc status` sees a touched module, and src/ has no import cycle."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ablations import codedeps, units
from conftest import REPO, copy_project

SRC = REPO / "src"


def dvc_stages() -> dict[str, dict]:
    """dvc.yaml's stages as written (a foreach stage's deps are under `do`)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def code_deps(stage: dict) -> list[str]:
    return [dep for dep in stage.get("deps", []) if isinstance(dep, str) and dep.startswith("src/")]


def covered(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", sorted(dvc_stages()))
def test_dvc_yaml_deps_are_the_modules_the_stage_imports(stage):
    imported = codedeps.relative(codedeps.stage_closure(stage), REPO)
    assert len(imported) >= 5  # the package, config and errors at least: the walk found them
    deps = code_deps(dvc_stages()[stage])
    missing = [path for path in imported if not covered(path, deps)]
    assert not missing, f"dvc.yaml: {stage}'s deps miss {missing}, which it imports"
    stale = [dep for dep in deps if not any(covered(path, [dep]) for path in imported)]
    assert not stale, f"dvc.yaml: {stage} lists {stale}, which it does not import"


def test_every_dvc_stage_has_a_command_and_the_walk_follows_lazy_imports():
    assert set(dvc_stages()) <= {name.removeprefix("cmd_") for name in codedeps._cli_functions()}
    train = codedeps.relative(codedeps.stage_closure("train"), codedeps.PACKAGE_DIR)
    # cli imports training inside an `if`, training imports units, units imports config
    assert {"training.py", "units.py", "config.py", "tracking.py", "models/zoo.py",
            "data/prepare.py", "history.py", "__init__.py"} <= set(train)
    # a sequential study's rounds decide on results (evaluate, sequential), never plot
    assert {"evaluate.py", "sequential.py"} <= set(train)
    assert "plots.py" not in train and "report.py" not in train and "cli.py" not in train


def test_unit_fingerprint_covers_what_train_imports():
    # All but the executor, which decides where units run, and a sequential study's rounds
    # (evaluate's decisions on the units' results), which decide which units run, not what
    # they compute: a change to them re-runs the stage (a dvc.yaml dep) but retrains no unit.
    executor = codedeps.PACKAGE_DIR / "executors.py"
    rounds = set(codedeps.closure("ablations.evaluate")) - set(units.TRAINING_CODE)
    assert codedeps.PACKAGE_DIR / "sequential.py" in rounds
    assert set(units.TRAINING_CODE) == set(codedeps.stage_closure("train")) - {executor} - rounds


def import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports (anywhere in its file)."""
    graph = {}
    for path in (SRC / "ablations").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = codedeps.imported_modules(ast.parse(path.read_text()))
    # `from ablations.data import formats` names ablations.data too: a package is no cycle
    return {module: {m for m in imports if m != module and not module.startswith(m + ".")
                     and codedeps.module_file(m).name != "__init__.py"}
            for module, imports in graph.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after

    def visit(node, path):
        state[node] = "open"
        for successor in sorted(graph.get(node, ())):
            if state.get(successor) == "open":
                return [*path[path.index(successor):], successor] if successor in path else [node, successor]
            if successor not in state and (cycle := visit(successor, [*path, successor])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_src_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 15 and graph["ablations.training"]
    assert find_cycle(graph) is None, f"import cycle: {' → '.join(find_cycle(graph))}"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # it finds one


def test_config_is_the_bottom_layer():
    """config imports only the dataset registry, its parsers' module and errors: nothing that
    imports config back."""
    graph = import_graph()
    bottom = {"ablations.errors", "ablations.io", "ablations.data.formats", "ablations.data.registry"}
    assert graph["ablations.config"] <= bottom
    for module in bottom:
        assert graph[module] <= bottom, module


# --------------------------------------------------------------------------- dvc status


def run(cmd, cwd, env):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def dvc_status(repo, env, targets) -> dict:
    import json

    return json.loads(run(["dvc", "status", "--json", *targets], repo, env).stdout or "{}")


@pytest.fixture(scope="module")
def committed_repo(tmp_path_factory):
    """A git+DVC copy of the repo whose train stages are recorded in dvc.lock without training:
    stand-in outputs and data, `dvc commit` (what `dvc status` compares with is the lock)."""
    repo = tmp_path_factory.mktemp("status")
    copy_project(repo, ("src", "dvc.yaml", "networks", "params.yaml", ".dvc/config", ".dvcignore",
                        ".gitignore"))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    studies = list(yaml.safe_load((repo / "params.yaml").read_text())["studies"])
    (repo / "data" / "prepared").mkdir(parents=True)
    (repo / "data" / "prepared" / "stand-in.npy").write_bytes(b"0")
    for study in studies:
        (repo / "models" / study).mkdir(parents=True)
        (repo / "models" / study / "run.json").write_text("{}")
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo, env)
    targets = [f"train@{study}" for study in studies]
    run(["dvc", "commit", "-f", "-q", *targets], repo, env)
    return repo, env, targets


def test_touching_any_module_train_imports_changes_every_train_stage(committed_repo):
    repo, env, targets = committed_repo
    assert dvc_status(repo, env, targets) == {}  # recorded: up to date
    imported = codedeps.relative(codedeps.stage_closure("train"), REPO)
    for path in imported:  # a comment added to each: the code's bytes change, not its behaviour
        with open(repo / path, "a") as handle:
            handle.write("# touched\n")
    status = dvc_status(repo, env, targets)
    assert sorted(status) == sorted(targets)
    deps = code_deps(dvc_stages()["train"])
    for stage in targets:
        changed = next(item["changed deps"] for item in status[stage] if "changed deps" in item)
        assert all(covered(path, [dep for dep in changed if changed[dep] == "modified"])
                   for path in imported), (stage, changed)
        assert set(changed) <= set(deps)
