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
from typing import Any, BinaryIO

from ablations.errors import AblationsError


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then set it back
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once, at import, before any thread could create a file


def current_umask() -> int:
    """The process's umask now, read without setting it (Linux: /proc/self/status), so a
    process whose umask changed after this import (a worker's child) gets its own; elsewhere
    the one read at import."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return UMASK


def publish(path: Path | str, directory: bool = False) -> None:
    """Give a temp file or folder the mode a plain open()/mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


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


def fsync_dir(path: Path) -> None:
    """Make a rename in folder `path` durable (not possible on every platform, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def sha256_stream(reader: BinaryIO) -> str:
    """sha256 (hex) of what `reader` holds from its position to its end."""
    return hashlib.file_digest(reader, "sha256").hexdigest()


def md5_file(path: Path) -> str:
    """md5 (hex): the only checksum Keras publishes for its weights files; not a defence on its
    own (the sha256 is recorded and checked from then on)."""
    return _feed(hashlib.md5(usedforsecurity=False), path).hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One sha256 (hex) over several files: each one's name, then its bytes, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        _feed(digest, path)
    return digest.hexdigest()
