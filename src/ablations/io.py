"""Atomic writes (a crash never leaves a half-written file or folder where a stage's output
goes), JSON files and content digests. Outputs get the modes the user's umask gives
(tempfile's private 0600/0700 would hide them from teammates on a shared machine)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ablations.errors import AblationsError


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then set it back
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import, before any thread could create a file


def publish(path: Path | str, directory: bool = False) -> None:
    """Give a temp file or folder the mode a plain open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~UMASK)


def _check_target(target: Path, folder: bool) -> None:
    """The wrong kind of thing where an output goes is a user error, not a traceback."""
    kinds = ("file", "folder")
    if target.exists() and target.is_dir() != folder:
        raise AblationsError(f"{target}: is a {kinds[not folder]}; this output is a "
                             f"{kinds[folder]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AblationsError(f"{target.parent}: is not a folder; cannot write {target.name} "
                             "there") from None


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    _check_target(target, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        publish(tmp, directory=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temp file beside `target`; it replaces `target` only if the block succeeds."""
    target = Path(target)
    _check_target(target, folder=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        publish(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    """sort_keys=False keeps the dict's order (a DVC metrics file: the order of its columns)."""
    with atomic_file(path) as handle:
        json.dump(data, handle, indent=2, sort_keys=sort_keys)
        handle.write("\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _feed(digest, path: Path, opener=open):
    with opener(path, "rb") as handle:
        while chunk := handle.read(1 << 22):  # 4 MiB
            digest.update(chunk)
    return digest


def sha256_file(path: Path, opener=open) -> str:
    """sha256 (hex) of a file's bytes; `opener=gzip.open` hashes its decompressed content."""
    return _feed(hashlib.sha256(), path, opener).hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One sha256 (hex) over several files: each one's name, then its bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        _feed(digest, path)
    return digest.hexdigest()
