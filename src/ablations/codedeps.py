"""The source files a stage runs: the import closure of its modules within this package.

One declaration of a stage's code dependencies: the imports themselves. The train stage's
unit fingerprint is computed over `closure("ablations.training")`, and a test checks that each
stage's `deps` in dvc.yaml cover the closure of what its `cli.cmd_<stage>` imports, so
neither can miss a module (changing config.py must re-run train@*, and retrain its units).
Every import counts, module-level or inside a function: both run when the stage does.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name  # "ablations"


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of `ablations.x.y` (module or package), None for other packages; with
    `package_dir`, of that package's modules instead (a user's `networks.x`)."""
    parts = module.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST, package_dir: Path = PACKAGE_DIR) -> set[str]:
    """Absolute names of the package's modules imported anywhere in `tree`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from ablations import tracking` imports the submodule ablations.tracking
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if module_file(name, package_dir) is not None}


def _with_parents(module: str) -> list[str]:
    """ablations.data.prepare → ablations, ablations.data, ablations.data.prepare: importing a
    module runs its packages' __init__ first."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@cache
def _imports_of(path: Path, package_dir: Path) -> frozenset[str]:
    return frozenset(imported_modules(ast.parse(path.read_text(), filename=str(path)), package_dir))


def closure(*modules: str, package_dir: Path = PACKAGE_DIR) -> tuple[Path, ...]:
    """Every source file of the package that importing `modules` may run, sorted; with
    `package_dir`, of that package (a builder's modules in the user's `networks` folder)."""
    todo = [parent for module in modules for parent in _with_parents(module)]
    files: set[Path] = set()
    while todo:
        path = module_file(todo.pop(), package_dir)
        if path is None or path in files:
            continue
        files.add(path)
        todo += [parent for module in _imports_of(path, package_dir)
                 for parent in _with_parents(module)]
    return tuple(sorted(files))


def _cli_functions() -> dict[str, ast.FunctionDef]:
    tree = ast.parse((PACKAGE_DIR / "cli.py").read_text())
    return {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}


def stage_modules(stage: str) -> set[str]:
    """The modules `ablations <stage>` imports: those imported in cli.cmd_<stage> and in the
    cli helpers it calls (cli.py itself is dispatch: argument names, no results)."""
    functions = _cli_functions()
    todo, seen, modules = [f"cmd_{stage}"], set(), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        modules |= imported_modules(functions[name])
        todo += [node.func.id for node in ast.walk(functions[name])
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    return modules


def stage_closure(stage: str) -> tuple[Path, ...]:
    return closure(*stage_modules(stage))


def relative(paths: tuple[Path, ...], root: Path) -> list[str]:
    return [path.relative_to(root).as_posix() for path in paths]
