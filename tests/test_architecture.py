"""docs/architecture.md matches the code: its module table names every module under
src/ablations/ and nothing else, and a module imports only modules of its own layer or a lower
one (the layers as that table gives them)."""

import ast
import re

from ablations import codedeps
from conftest import REPO

DOC = REPO / "docs" / "architecture.md"
PACKAGE = codedeps.PACKAGE_DIR
LAYERS = ["bottom", "service", "stage", "cli"]  # lowest first
ROW = re.compile(r"^\| `(?P<module>[^`]+\.py)` \| (?P<layer>\w+) \|")


def table() -> dict[str, str]:
    """{module path relative to src/ablations: layer} from the doc's `## Modules` table."""
    section = DOC.read_text().split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    return {match["module"]: match["layer"] for line in section.splitlines()
            if (match := ROW.match(line))}


def modules() -> set[str]:
    """Every module of the package; a package's __init__.py is part of its package."""
    return {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
            if path.name != "__init__.py"}


def test_the_module_table_names_every_module_and_only_those():
    rows, actual = table(), modules()
    assert len(rows) >= 20, "docs/architecture.md: no `## Modules` table found"
    missing, stale = sorted(actual - set(rows)), sorted(set(rows) - actual)
    assert not missing, (
        "docs/architecture.md, table under `## Modules`: add a row for "
        + ", ".join(f"src/ablations/{m} (`| `{m}` | <{'/'.join(LAYERS)}> | <what it owns> |`)"
                    for m in missing))
    assert not stale, ("docs/architecture.md, table under `## Modules`: remove the row of "
                       + ", ".join(f"`{m}` (no src/ablations/{m})" for m in stale))
    bad = {m: layer for m, layer in rows.items() if layer not in LAYERS}
    assert not bad, f"docs/architecture.md: layers must be one of {LAYERS}, got {bad}"


def test_no_module_imports_a_higher_layer():
    rows = table()
    upward = []
    for module, layer in rows.items():
        path = PACKAGE / module
        for name in sorted(codedeps.imported_modules(ast.parse(path.read_text()))):
            target = codedeps.module_file(name).relative_to(PACKAGE).as_posix()
            if target in rows and LAYERS.index(rows[target]) > LAYERS.index(layer):
                upward.append(f"{module} ({layer}) imports {target} ({rows[target]})")
    assert not upward, ("docs/architecture.md's layers: " + "; ".join(upward)
                        + ": move the import, or the module to another layer in the table")
