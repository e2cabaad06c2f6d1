"""Get a dataset's original files into `data/raw/<dataset>/`, verified and extracted safely.

Each file is taken from the first source that has a copy whose sha256 matches:
  1. a mirror directory: the `mirror` argument, else env var ABLATIONS_DATA_MIRROR (the argument
     wins), holding `<mirror>/<dataset>/<file>` or `<mirror>/<file>` (for offline clusters);
  2. system copies (Debian's `dataset-fashion-mnist` installs /usr/share/datasets/fashion-mnist);
  3. the official URL, streamed with a progress line on stderr.
A copy that fails verification is reported on stderr and the next source is tried. Files are
written with io.atomic_file (verified before they replace anything) and archives are streamed
into a scratch file, verified, extracted into a temp folder and renamed into place, so an
interruption never leaves a partial file. Pretrained weights: `fetch_weights`.
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
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ablations.data.formats import WEIGHTS_RECORD
from ablations.data.registry import DATASETS, WEIGHTS, DatasetSpec, FileSpec, WeightsSpec
from ablations.errors import DataError
from ablations.io import (
    atomic_dir,
    atomic_file,
    fsync_dir,
    md5_file,
    sha256_file,
    sha256_stream,
    write_json,
)

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


# --------------------------------------------------------------------------- weights


def fetch_weights(name: str | WeightsSpec, dest: Path | str, mirror: Path | str | None = None,
                  cache_dir: Path | str | None = None, allow_download: bool = True) -> Path:
    """Pretrained weights into `dest`/<file>, provisioned as Keras provisions them, with
    `dest`/weights.json recording the file's sha256 (dvc.lock pins both; a train stage loads
    the file only if it still hashes to that). Return the file's path.

    The first copy whose md5 is the one Keras publishes wins: <mirror>/<name>/<file> or
    <mirror>/<file>, then `keras.utils.get_file(file, url, file_hash=md5)`, which takes the
    copy in Keras' cache (`cache_dir`, default $KERAS_HOME or ~/.keras; subfolder models/) and
    downloads into that cache only when it has none that matches. `name` is a key of
    registry.WEIGHTS or a WeightsSpec (tests pass their own)."""
    spec = WEIGHTS[name] if isinstance(name, str) else name
    dest, failures = Path(dest), []
    mirror = _mirror_dir(mirror)
    for path in _SourceDirs(mirror, (), spec.name).candidates(spec.file):
        md5 = md5_file(path)
        if md5 == spec.md5:
            return _place_weights(spec, path, dest)
        _report(failures, f"{path}: md5 {md5}, Keras publishes {spec.md5}")
    try:
        fetched = _keras_get_file(spec, cache_dir, allow_download)
    except Exception as error:  # noqa: BLE001 get_file raises plain Exception (URL failures)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        reason = reason.rsplit(" -- ", 1)[-1]  # "URL fetch failure on <url>: <errno> -- why"
    else:
        return _place_weights(spec, fetched, dest)
    looked = (f"{mirror / spec.name}, {mirror}" if mirror else "no mirror given")
    raise DataError(f"{spec.name}: no copy of {spec.file} with the md5 Keras publishes "
                    f"({spec.md5}); put it in <mirror>/{spec.name}/ (or <mirror>/) and set "
                    f"data.mirror in params.yaml or {MIRROR_ENV}, or in Keras' cache "
                    f"{_keras_cache(cache_dir)}/ (looked in {looked}; {len(failures)} copies "
                    f"rejected; {spec.url}: {reason})")


def _keras_cache(cache_dir: Path | str | None) -> Path:
    if cache_dir is None:
        from keras.src.backend.config import keras_home  # where get_file puts what it fetches

        cache_dir = keras_home()
    return Path(cache_dir).expanduser() / "models"


def _keras_get_file(spec: WeightsSpec, cache_dir: Path | str | None,
                    allow_download: bool) -> Path:
    """Keras' own provisioning: its cache, else its URL; md5-checked either way."""
    cached = _keras_cache(cache_dir) / spec.file
    if not allow_download and not (cached.is_file() and md5_file(cached) == spec.md5):
        raise DataError("downloads disabled")
    import keras

    return Path(keras.utils.get_file(spec.file, spec.url, file_hash=spec.md5,
                                     hash_algorithm="md5", cache_subdir="models",
                                     cache_dir=None if cache_dir is None else str(cache_dir)))


def _place_weights(spec: WeightsSpec, source: Path, dest: Path) -> Path:
    """`dest` (replaced whole, atomically) holds the file and its sha256 record."""
    sha256 = sha256_file(source)
    with atomic_dir(dest) as folder:
        shutil.copyfile(source, folder / spec.file)
        if sha256_file(folder / spec.file) != sha256:  # changed while being copied
            raise DataError(f"{source}: changed while being copied to {dest}")
        write_json(folder / WEIGHTS_RECORD, {"file": spec.file, "md5": spec.md5,
                                             "sha256": sha256})
    print(f"ablations: {spec.file}: md5 {spec.md5} as Keras publishes, from {source}; "
          f"sha256 {sha256} recorded in {dest / WEIGHTS_RECORD}", file=sys.stderr)
    return dest / spec.file


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
             get: Callable[[BinaryIO], None], origin: str, failures: list[str]) -> bool:
    """Get one copy into a temp file in `dest`, verify it, then move or extract it into place.

    Returns False (after reporting on stderr) when this source failed and the next should be
    tried; a DataError about the archive's *content* (unsafe member) propagates: it is verified
    data, so another source would hold the same archive.
    """
    try:
        if spec.extract_dir is None:  # kept as is: io.atomic_file places it once verified
            with atomic_file(dest / file.name, "w+b") as handle:
                _receive(get, handle, file)
            fsync_dir(dest)
        else:  # not kept (STL-10's is 2.6 GB): a scratch copy, extracted, then deleted
            with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{file.name}.") as handle:
                _receive(get, handle, file)
                limit = (int(spec.extracted_bytes * _SIZE_MARGIN) if spec.extracted_bytes
                         else MAX_EXPANSION * handle.tell())
                _extract(Path(handle.name), dest, spec.extract_dir, file, limit)
    except _Rejected as rejected:
        return _report(failures, f"{origin}: {rejected}")
    except _NotOnServer as err:
        _report(failures, f"{origin}: {err}")
        raise
    print(f"ablations: {file.name}: verified copy from {origin}", file=sys.stderr)
    return True


class _Rejected(Exception):
    """This source's copy is unusable (unreadable, cut, wrong checksum): try the next one."""


def _receive(get: Callable[[BinaryIO], None], handle: BinaryIO, file: FileSpec) -> None:
    """Write one copy into `handle` and verify it; _Rejected if it is not the file."""
    try:
        get(handle)
    except _NotOnServer:
        raise
    except (OSError, urllib.error.URLError, DataError) as err:
        raise _Rejected(err) from None
    handle.flush()
    handle.seek(0)
    problem = _check(handle, file)
    handle.seek(0, os.SEEK_END)
    if problem:
        raise _Rejected(problem)


def _report(failures: list[str], message: str) -> bool:
    failures.append(message)
    print(f"ablations: rejected {message}; trying the next source, if any", file=sys.stderr)
    return False


def _missing_message(spec: DatasetSpec, file: FileSpec, dest: Path, sources: _SourceDirs,
                     url: str | None, allow_download: bool, failures: list[str]) -> str:
    """One line: the files this dataset needs, where to put them, where we looked and why
    each copy found was rejected."""
    where = [str(sources.mirror / spec.name), str(sources.mirror)] if sources.mirror else []
    where += [str(d) for d in sources.system_dirs]
    names = ", ".join(f.name for f in spec.files)
    looked = ", ".join(where) or "no mirror given"
    if url:
        looked += f"; URL {url}" + ("" if allow_download else " (downloads disabled)")
    rejected = f"; rejected {'; '.join(failures)}" if failures else ""
    return (f"{spec.name}: could not get a verified copy of {file.name} for {dest}; put "
            f"{names} in <mirror>/{spec.name}/ (or <mirror>/) and set data.mirror in "
            f"params.yaml or {MIRROR_ENV} (looked in: {looked}){rejected}")


# --------------------------------------------------------------------------- verification


def _verified(path: Path, file: FileSpec) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as handle:
        return not _check(handle, file)


def _check(handle: BinaryIO, file: FileSpec) -> str | None:
    """None when the content read from `handle` hashes to the spec's sha256, else what went
    wrong."""
    try:
        digest = sha256_stream(gzip.GzipFile(fileobj=handle, mode="rb") if file.decompressed
                               else handle)
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


def _copy(src: Path, out: BinaryIO) -> None:
    with open(src, "rb") as reader:
        shutil.copyfileobj(reader, out, _CHUNK)


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


def _download(url: str, out: BinaryIO) -> None:
    """Stream `url` into `out` with a progress line on stderr (timeout per socket operation)."""
    start = out.tell()
    with _open_url(url) as response:
        total = int(response.headers.get("Content-Length") or 0)
        progress = _Progress(url, total)
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            progress.update(len(chunk))
        progress.close()
    if total and out.tell() - start != total:  # the server closed early
        raise DataError(f"download incomplete: {out.tell() - start} of {total} bytes")


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
    fsync_dir(target.parent)


def _write_manifest(dest: Path, file: FileSpec, folder: str, sizes: dict[str, int]) -> None:
    record = {"archive": file.name, "sha256": file.sha256, "folder": folder, "files": sizes}
    with atomic_file(dest / MANIFEST, "wb") as out:
        out.write(json.dumps(record, indent=1, sort_keys=True).encode())
    fsync_dir(dest)


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
