"""Get a dataset's original files into `data/raw/<dataset>/`, verified and extracted safely.

Each file is taken from the first source that has a copy whose sha256 matches:
  1. a mirror directory: the `mirror` argument, else env var ABLATIONS_DATA_MIRROR (the argument
     wins), holding `<mirror>/<dataset>/<file>` or `<mirror>/<file>` (for offline clusters);
  2. system copies (Debian's `dataset-fashion-mnist` installs /usr/share/datasets/fashion-mnist);
  3. the official URL, streamed with a progress line on stderr.
A copy that fails verification is reported on stderr and the next source is tried. Files are
written atomically (temp file in the destination, fsync, os.replace) and archives are extracted
into a temp folder and renamed into place, so an interruption never leaves a partial file.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from ablations.data.formats import PRETRAINED_FILES
from ablations.data.registry import DATASETS, DatasetSpec, FileSpec
from ablations.errors import DataError
from ablations.io import atomic_file, publish, sha256_file

MIRROR_ENV = "ABLATIONS_DATA_MIRROR"
MANIFEST = ".fetched.json"  # records a verified archive's extraction (see _archive_is_current)
_CHUNK = 1 << 20
_TIMEOUT_S = 60  # per socket operation, not for the whole download
DOWNLOAD_ATTEMPTS = 3  # a dropped connection or a corrupted transfer is retried from scratch
_RETRY_PAUSE_S = 2.0  # seconds before the 2nd attempt, doubled before each later one
# Archive bounds (a "compression bomb" expands a small verified file without limit).
# Image archives hardly compress (CIFAR-10: 163 MB → 184 MB); a known size gets 10 % margin.
MAX_EXPANSION = 20  # extracted bytes per archive byte, when the dataset's size is unknown
_SIZE_MARGIN = 1.1
MAX_MEMBERS = 1_000  # files and folders per archive (CIFAR-10 has 8, STL-10 8)


# Pretrained weights, provisioned like datasets: the mirror, then Keras' own cache (where
# keras.applications put a file it downloaded), then Keras' URL. Keras publishes an md5 per
# file (keras/src/applications/*.py file_hash), not a sha256: params pin the sha256
# (data.weights.<name>.sha256) and KERAS_MD5 is what to check a copy against before pinning.
KERAS_CACHE = Path("~/.keras/models").expanduser()
WEIGHTS: dict[str, DatasetSpec] = {
    "xception_imagenet": DatasetSpec(
        "xception_imagenet",
        files=(FileSpec(PRETRAINED_FILES["xception_imagenet"], None),),
        base_url="https://storage.googleapis.com/tensorflow/keras-applications/xception/",
        system_dirs=(KERAS_CACHE,),
    ),
}
KERAS_MD5 = {"xception_imagenet": "b0042744bf5b25fce3cb969f33bebb97"}


def fetch_weights(name: str, dest: Path | str, sha256: str | None,
                  mirror: Path | str | None = None, system_dirs: Sequence[Path] | None = None,
                  base_url: str | None = None, allow_download: bool = True) -> Path:
    """`dest`/<file> for pretrained weights `name`, verified against `sha256` (from params);
    `system_dirs` and `base_url` default to Keras' cache and URL (tests pass their own)."""
    spec = WEIGHTS[name]
    file = spec.files[0].name
    if sha256 is None:  # Keras' own download checks the md5 and fills the cache searched above
        raise DataError(
            f"data.weights.{name}.sha256: required to verify {file}; Keras publishes its md5 "
            f"only. Get an md5-checked copy: python -c \"import keras; print(keras.utils."
            f"get_file('{file}', '{spec.base_url}{file}', file_hash='{KERAS_MD5[name]}', "
            "cache_subdir='models'))\", then pin the output of sha256sum on that path")
    spec = replace(spec, files=(replace(spec.files[0], sha256=sha256),),
                   base_url=base_url or spec.base_url,
                   system_dirs=spec.system_dirs if system_dirs is None else tuple(system_dirs))
    return fetch(spec, dest, mirror=mirror, allow_download=allow_download) / spec.files[0].name


# --------------------------------------------------------------------------- fetch


def fetch(
    dataset: str | DatasetSpec,
    dest: Path | str,
    mirror: Path | str | None = None,
    system_dirs: Sequence[Path] | None = None,
    allow_download: bool = True,
) -> Path:
    """Make `dest` hold the dataset's verified files (extracted for archives); return `dest`.

    `dataset` is a name in DATASETS or a DatasetSpec (tests pass their own). `system_dirs=None`
    means the spec's own system copies: searching Debian's Fashion-MNIST folder for MNIST files
    would only produce spurious checksum-mismatch warnings. Idempotent: files already verified
    in `dest` are kept untouched.
    """
    spec = _resolve_spec(dataset)
    dest = Path(dest)
    dirs = tuple(spec.system_dirs if system_dirs is None else system_dirs)
    sources = _SourceDirs(_mirror_dir(mirror), dirs, spec.name)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        if spec.build is not None:
            spec.build(dest)
        for file in spec.files:
            _fetch_file(spec, file, dest, sources, allow_download)
    except BaseException:
        _remove_if_empty(dest, created)  # a failed first fetch leaves no empty folder behind
        raise
    return dest


def _resolve_spec(dataset: str | DatasetSpec) -> DatasetSpec:
    if isinstance(dataset, DatasetSpec):
        spec = dataset
    elif dataset in DATASETS:
        spec = DATASETS[dataset]
    else:
        raise DataError(f"unknown dataset {dataset!r}; allowed: {', '.join(sorted(DATASETS))}")
    unknown = [f.name for f in spec.files if not f.sha256]
    if unknown:  # refuse up front: no source could ever be verified
        raise DataError(f"{spec.name}: no sha256 checksum is known for {', '.join(unknown)}; "
                        "refusing to use unverified files (add the checksum to DATASETS)")
    return spec


def _mirror_dir(mirror: Path | str | None) -> Path | None:
    """Explicit argument > ABLATIONS_DATA_MIRROR > none."""
    if mirror is not None:
        return Path(mirror)
    env = os.environ.get(MIRROR_ENV, "").strip()
    return Path(env) if env else None


@dataclass(frozen=True)
class _SourceDirs:
    mirror: Path | None
    system_dirs: tuple[Path, ...]
    dataset: str

    def candidates(self, name: str) -> Iterator[Path]:
        """Local copies of `name`, in priority order, that exist."""
        paths = []
        if self.mirror is not None:
            paths += [self.mirror / self.dataset / name, self.mirror / name]
        paths += [d / name for d in self.system_dirs]
        return (p for p in paths if p.is_file())


def _remove_if_empty(path: Path, created: bool) -> None:
    if created and path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def _fetch_file(spec: DatasetSpec, file: FileSpec, dest: Path,
                sources: _SourceDirs, allow_download: bool) -> None:
    if spec.extract_dir is None and _verified(dest / file.name, file):
        return  # already here and intact: keep it (and its mtime) untouched
    if spec.extract_dir is not None and _archive_is_current(dest, spec, file):
        return
    failures: list[str] = []
    for path in sources.candidates(file.name):
        if _install(spec, file, dest, lambda tmp, p=path: _copy(p, tmp), str(path), failures):
            return
    url = spec.base_url + file.name if spec.base_url else None
    if url and allow_download:
        for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
            if attempt > 1:
                time.sleep(_RETRY_PAUSE_S * 2 ** (attempt - 2))
            origin = f"{url} (attempt {attempt}/{DOWNLOAD_ATTEMPTS})"
            try:
                if _install(spec, file, dest, lambda tmp: _download(url, tmp), origin, failures):
                    return
            except _NotOnServer:
                break  # asking again will not make it appear
    raise DataError(_missing_message(spec, file, dest, sources, url, allow_download, failures))


def _install(spec: DatasetSpec, file: FileSpec, dest: Path,
             get: Callable[[Path], None], origin: str, failures: list[str]) -> bool:
    """Get one copy into a temp file in `dest`, verify it, then move or extract it into place.

    Returns False (after reporting on stderr) when this source failed and the next should be
    tried; a DataError about the archive's *content* (unsafe member) propagates: it is verified
    data, so another source would hold the same archive.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=f".{file.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            get(tmp)
        except _NotOnServer as err:
            _report(failures, f"{origin}: {err}")
            raise
        except (OSError, urllib.error.URLError, DataError) as err:
            return _report(failures, f"{origin}: {err}")
        problem = _check(tmp, file)
        if problem:
            return _report(failures, f"{origin}: {problem}")
        _place(spec, file, tmp, dest)
        print(f"ablations: {file.name}: verified copy from {origin}", file=sys.stderr)
        return True
    finally:
        tmp.unlink(missing_ok=True)  # a partial or rejected copy is never kept


def _report(failures: list[str], message: str) -> bool:
    failures.append(message)
    print(f"ablations: rejected {message}; trying the next source, if any", file=sys.stderr)
    return False


def _place(spec: DatasetSpec, file: FileSpec, tmp: Path, dest: Path) -> None:
    if spec.extract_dir is None:
        _fsync(tmp)
        publish(tmp)
        os.replace(tmp, dest / file.name)
        _fsync_dir(dest)
    else:
        limit = (int(spec.extracted_bytes * _SIZE_MARGIN) if spec.extracted_bytes
                 else MAX_EXPANSION * tmp.stat().st_size)
        _extract(tmp, dest, spec.extract_dir, file, limit)


def _missing_message(spec: DatasetSpec, file: FileSpec, dest: Path, sources: _SourceDirs,
                     url: str | None, allow_download: bool, failures: list[str]) -> str:
    where = [str(sources.mirror / spec.name), str(sources.mirror)] if sources.mirror else []
    where += [str(d) for d in sources.system_dirs]
    names = ", ".join(f.name for f in spec.files)
    lines = [f"{spec.name}: could not get a verified copy of {file.name}.",
             f"Put the file(s) {names} in <mirror>/{spec.name}/ (or <mirror>/) and pass "
             f"--mirror or set {MIRROR_ENV}; looked in: {', '.join(where) or 'no mirror given'}."]
    if url:
        lines.append(f"URL: {url}" + ("" if allow_download else " (downloads disabled)"))
    lines += [f"  rejected {f}" for f in failures]
    lines.append(f"Destination: {dest}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- verification


def _verified(path: Path, file: FileSpec) -> bool:
    return path.is_file() and not _check(path, file)


def _check(path: Path, file: FileSpec) -> str | None:
    """None when `path` hashes to the spec's sha256, else what went wrong."""
    try:
        digest = sha256_of(path, decompressed=file.decompressed)
    except (OSError, EOFError, zlib.error) as err:  # truncated or damaged gzip
        return f"cannot read {'gzip content' if file.decompressed else 'file'} ({err})"
    if digest != file.sha256:
        what = "decompressed content" if file.decompressed else "file"
        return f"sha256 mismatch of the {what}: got {digest}, expected {file.sha256}"
    return None


def sha256_of(path: Path, decompressed: bool = False) -> str:
    """sha256 of a file's bytes, or of its gunzipped content."""
    return sha256_file(path, gzip.open if decompressed else open)


# --------------------------------------------------------------------------- sources


def _copy(src: Path, tmp: Path) -> None:
    with open(src, "rb") as reader, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)


class _NotOnServer(DataError):
    """HTTP 4xx: the server answered that the file is not there for us (no point retrying)."""


def _open_url(url: str):
    request = urllib.request.Request(url, headers={"User-Agent": "ablations-fetch"})
    try:
        return urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if 400 <= err.code < 500:
            raise _NotOnServer(f"HTTP {err.code} {err.reason}") from None
        raise


def _download(url: str, tmp: Path) -> None:
    """Stream `url` into `tmp` with a progress line on stderr (timeout per socket operation)."""
    with _open_url(url) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        progress = _Progress(url, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            progress.update(len(chunk))
        progress.close()
    if total and tmp.stat().st_size != total:  # the server closed early
        raise DataError(f"download incomplete: {tmp.stat().st_size} of {total} bytes")


class _Progress:
    """Plain-text progress on stderr: rewritten in place on a terminal, a line per 10% in logs."""

    def __init__(self, url: str, total: int) -> None:
        self.name, self.total, self.done = url.rsplit("/", 1)[-1], total, 0
        self.tty, self.last_step, self.last_time = sys.stderr.isatty(), -1, 0.0

    def update(self, n: int) -> None:
        self.done += n
        step = int(10 * self.done / self.total) if self.total else -1
        now = time.monotonic()
        if (self.tty and now - self.last_time > 0.2) or (not self.tty and step > self.last_step):
            self.last_step, self.last_time = step, now
            self._write("\r" if self.tty else "", "" if self.tty else "\n")

    def close(self) -> None:
        self._write("\r" if self.tty else "", "\n")

    def _write(self, start: str, end: str) -> None:
        size = f"{self.done / 1e6:.1f}" + (f"/{self.total / 1e6:.1f}" if self.total else "")
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        sys.stderr.write(f"{start}downloading {self.name}: {size} MB{pct}{end}")
        sys.stderr.flush()


# --------------------------------------------------------------------------- archives


def _extract(archive: Path, dest: Path, folder: str, file: FileSpec, limit: int) -> None:
    """Extract a verified .tar.gz (at most `limit` bytes of files) into a temp folder in
    `dest`, then rename `folder` into place."""
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{folder}.partial-"))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                members = check_members(tar, file.name, limit)
                tar.extractall(staging, members=members, filter="data")  # second line of defence
        except (tarfile.TarError, EOFError, OSError) as err:
            raise DataError(f"{file.name}: corrupt archive ({err})") from None
        if not (staging / folder).is_dir():
            raise DataError(f"{file.name}: expected the archive to contain the folder {folder}/")
        sizes = _sizes(staging / folder)
        _replace_dir(staging / folder, dest / folder)
        _write_manifest(dest, file, folder, sizes)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_members(tar: tarfile.TarFile, archive_name: str,
                  limit: int) -> list[tarfile.TarInfo]:
    """The archive's members, read one header at a time; refused whole when one could write
    outside the target or is not a plain file/folder, or when they are more than MAX_MEMBERS or
    would hold more than `limit` bytes (the sizes are the headers', which extraction obeys)."""
    members, total = [], 0
    for member in tar:
        members.append(member)
        total += member.size
        if len(members) > MAX_MEMBERS or total > limit:
            what = (f"more than {MAX_MEMBERS} members" if len(members) > MAX_MEMBERS
                    else f"more than {limit:,} bytes once extracted")
            raise DataError(f"{archive_name}: holds {what}; allowed: the dataset's known size "
                            f"+ 10 %, or {MAX_EXPANSION} times the archive's size when that is "
                            f"unknown, and at most {MAX_MEMBERS} members; refusing to extract "
                            "anything")
        path = PurePosixPath(member.name)
        if path.is_absolute() or member.name.startswith(("/", "\\")) or ".." in path.parts:
            reason = "escapes the extraction folder"
        elif member.issym() or member.islnk():
            reason = f"is a {'symlink' if member.issym() else 'hardlink'} to {member.linkname!r}"
        elif not (member.isreg() or member.isdir()):
            reason = "is not a regular file or folder"
        else:
            continue
        raise DataError(f"{archive_name}: unsafe archive member {member.name!r} {reason}; "
                        "refusing to extract anything")
    return members


def _sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _replace_dir(new: Path, target: Path) -> None:
    # A stale or partial copy of the folder (it failed the manifest check) is replaced whole.
    if target.exists():
        shutil.rmtree(target)
    os.replace(new, target)
    _fsync_dir(target.parent)


def _write_manifest(dest: Path, file: FileSpec, folder: str, sizes: dict[str, int]) -> None:
    record = {"archive": file.name, "sha256": file.sha256, "folder": folder, "files": sizes}
    _write_atomic(dest / MANIFEST, json.dumps(record, indent=1, sort_keys=True).encode())


def _archive_is_current(dest: Path, spec: DatasetSpec, file: FileSpec) -> bool:
    """The archive is not kept (STL-10's is 2.6 GB): the manifest written after a verified
    extraction stands for it; a cheap size check of every file catches a damaged folder."""
    try:
        record = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if record.get("sha256") != file.sha256 or record.get("folder") != spec.extract_dir:
        return False
    folder = dest / spec.extract_dir
    files = record.get("files") or {}
    return bool(files) and all((folder / rel).is_file() and (folder / rel).stat().st_size == size
                               for rel, size in files.items())


# --------------------------------------------------------------------------- atomic writes


def _write_atomic(path: Path, data: bytes) -> None:
    """io.atomic_file, then the folder's entry made durable too."""
    with atomic_file(path, "wb") as out:
        out.write(data)
    _fsync_dir(path.parent)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    # The rename itself must reach the disk; not possible on every platform (e.g. Windows).
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
