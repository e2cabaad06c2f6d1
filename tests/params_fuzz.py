"""Fuzzing the front door: hypothesis strategies that mutate the repository's real params.yaml,
and `ablations validate` run in-process on each mutation, judged by the project's rule: valid
params, or exactly one `error:` line (exit 2), never a traceback, nothing written.

Shared by tests/test_fuzz_params.py (a few hundred examples, derandomized) and
bench/fuzz_params.py (10,000, random).

A mutated file is emitted as YAML flow style by `emit`, which — unlike a YAML library's
dumper — can write what a hand-edited file may hold: a key twice, anchors and aliases, `!!binary`
values; `splice` then corrupts a few raw bytes.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


# --------------------------------------------------------------------------- the document


@dataclass(eq=False)  # compared by identity: a node may nest thousands deep
class Node:
    """A YAML node: kind "map" (items: [key, Node] pairs, duplicates allowed), "seq" (items:
    Nodes), "scalar" (value: None, bool, int, float, str or bytes) or "alias" (value: the
    anchor's name); `anchor` names the node for aliases."""

    kind: str
    items: list = field(default_factory=list)
    value: Any = None
    anchor: str | None = None


def to_node(value: Any) -> Node:
    if isinstance(value, dict):
        return Node("map", [[key, to_node(inner)] for key, inner in value.items()])
    if isinstance(value, list):
        return Node("seq", [to_node(inner) for inner in value])
    return Node("scalar", value=value)


def scalar_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        return repr(value)
    if isinstance(value, bytes):
        return f'!!binary "{base64.b64encode(value).decode()}"'
    return json.dumps(value)  # a double-quoted YAML string: JSON's escapes are YAML's


def emit(node: Node) -> str:
    """The node as YAML flow-style text, iteratively (a mutation may nest thousands deep)."""
    out: list[str] = []
    todo: list[Any] = [node]
    while todo:
        item = todo.pop()
        if isinstance(item, str):  # literal text queued between nodes
            out.append(item)
            continue
        if item.anchor:
            out.append(f"&{item.anchor} ")
        if item.kind == "scalar":
            out.append(scalar_text(item.value))
        elif item.kind == "alias":
            out.append(f"*{item.value}")
        else:
            parts: list[Any] = []
            for i, entry in enumerate(item.items):
                if i:
                    parts.append(", ")
                if item.kind == "map":
                    parts += [f"{scalar_text(entry[0])}: ", entry[1]]
                else:
                    parts.append(entry)
            opening, closing = ("{", "}") if item.kind == "map" else ("[", "]")
            todo += [closing, *reversed(parts), opening]
    return "".join(out) + "\n"


def addresses(root: Node) -> list[tuple[Node, int]]:
    """(container, index) of every entry, in document order."""
    found, todo = [], [root]
    while todo:
        node = todo.pop(0)
        for i, entry in enumerate(node.items):
            found.append((node, i))
            child = entry[1] if node.kind == "map" else entry
            if child.kind in ("map", "seq"):
                todo.append(child)
    return found


def child(container: Node, index: int) -> Node:
    entry = container.items[index]
    return entry[1] if container.kind == "map" else entry


def set_child(container: Node, index: int, node: Node) -> None:
    if container.kind == "map":
        container.items[index][1] = node
    else:
        container.items[index] = node


# --------------------------------------------------------------------------- strategies

HUGE_INTS = [2**31, 2**32, 2**63, 2**64, 10**20, 10**400, -(10**400)]
EDGE_FLOATS = [math.inf, -math.inf, math.nan, 1e308, -1e308, 5e-324, -0.0, 1e-300]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.sampled_from(HUGE_INTS),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(EDGE_FLOATS),
    st.text(max_size=30), st.binary(max_size=24),
    st.sampled_from(["relu", "none", "before", "adam", "he_normal", "L2", "yes", "1e-4",
                     "x" * 100_000, "", "\x00", "..", "/etc/passwd"]),
)
keys = st.one_of(st.text(max_size=20), st.integers(-5, 5), st.none(), st.booleans(),
                 st.sampled_from(["class_name", "config", "defaults", "variants", "seed",
                                  "epochs", "data", "studies", "factors", "optimizer_config"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=3)),
    max_leaves=8)
DEPTHS = st.one_of(st.integers(1, 80), st.sampled_from([500, 5_000, 100_000]))


def deep(depth: int, leaf: Node, as_map: bool) -> Node:
    node = leaf
    for _ in range(depth):
        node = Node("map", [["k", node]]) if as_map else Node("seq", [node])
    return node


OPERATIONS = ["drop", "rename", "duplicate", "replace", "replace", "nest", "alias", "key_type"]


@st.composite
def mutated_params(draw) -> bytes:
    """The real params.yaml with 1-3 mutations, maybe a few corrupted bytes: YAML bytes."""
    root = to_node(BASE)
    anchors = 0
    for _ in range(draw(st.integers(1, 3))):
        places = addresses(root)
        if not places:
            break
        container, index = draw(st.sampled_from(places))
        operation = draw(st.sampled_from(OPERATIONS))
        if operation == "drop":
            del container.items[index]
        elif operation == "rename" and container.kind == "map":
            container.items[index][0] = draw(keys)
        elif operation == "key_type" and container.kind == "map":
            container.items[index][0] = draw(st.sampled_from([1, 0.5, None, True, "1"]))
        elif operation == "duplicate":
            copy = to_node(draw(values)) if draw(st.booleans()) else child(container, index)
            entry = [container.items[index][0], copy] if container.kind == "map" else copy
            container.items.insert(index + 1, entry)
        elif operation == "nest":
            leaf = to_node(draw(scalars))
            set_child(container, index, deep(draw(DEPTHS), leaf, draw(st.booleans())))
        elif operation == "alias":  # an earlier node stands for a later one
            later = draw(st.sampled_from(places))
            first, second = sorted([(container, index), later], key=places.index)
            source = child(*first)
            if source.kind == "alias" or first == second:
                continue
            anchors += 1
            source.anchor = source.anchor or f"a{anchors}"
            set_child(*second, Node("alias", value=source.anchor))
        else:  # replace, or rename/key_type on a list entry
            set_child(container, index, to_node(draw(values)))
    text = emit(root).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:
        text = splice(text, draw(st.integers(0, len(text))), draw(st.binary(min_size=1, max_size=4)))
    return text


def splice(text: bytes, at: int, raw: bytes) -> bytes:
    return text[:at] + raw + text[at + len(raw):]


# --------------------------------------------------------------------------- the judge


@dataclass
class Outcome:
    code: int | None
    stdout: str
    stderr: str
    written: list[str]  # files the command left besides params.yaml (valid.json when it passed)
    crash: str | None  # a traceback that escaped the command

    def problem(self) -> str | None:
        """What breaks the rule, None when the outcome is valid params or one error line."""
        if self.crash:
            return f"traceback:\n{self.crash}"
        if "Traceback" in self.stderr + self.stdout:
            return f"traceback printed:\n{self.stderr[-3000:]}"
        if self.code == 0:
            if self.written != ["valid.json"] or self.stderr:
                return f"passed, but wrote {self.written}, stderr {self.stderr[-500:]!r}"
            return None
        lines = self.stderr.splitlines()
        if self.code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
            return f"exit {self.code}, stderr: {self.stderr[-2000:]!r}"
        if len(lines[0]) > 1000:
            return f"error line of {len(lines[0])} characters"
        if self.written:
            return f"failed, but left {self.written} behind"
        return None


def validate(folder: Path, text: bytes) -> Outcome:
    """`ablations validate --out valid.json` on `text` as folder/params.yaml, in this process
    through the command's own entry point (cli.main)."""
    from ablations import cli

    for path in folder.iterdir():
        path.unlink()
    (folder / "params.yaml").write_bytes(text)
    out, err, crash, code = io.StringIO(), io.StringIO(), None, None
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["validate", "--out", "valid.json"])
    except BaseException:  # noqa: BLE001 anything escaping the command is the finding
        crash = traceback.format_exc()
    finally:
        os.chdir(cwd)
    written = sorted(p.name for p in folder.iterdir() if p.name != "params.yaml")
    return Outcome(code, out.getvalue(), err.getvalue(), written, crash)
