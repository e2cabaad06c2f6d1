"""fetch(): mirror -> system copy -> URL, sha256 verification, safe extraction, atomic writes.

Real files, real tar.gz archives and a real HTTP server on 127.0.0.1: nothing is mocked.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import re
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from ablations.data import sources
from ablations.data.registry import load_raw
from ablations.data.sources import (DATASETS, MANIFEST, MAX_MEMBERS, MIRROR_ENV, DatasetSpec,
                                   FileSpec, fetch)
from ablations.errors import DataError


@pytest.fixture(autouse=True)
def _no_env_mirror_no_retry_pause(monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    monkeypatch.setattr(sources, "_RETRY_PAUSE_S", 0.0)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idx_gz(array: np.ndarray, level: int = 9) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=level)


LABELS = idx_gz(np.array([1, 2, 3], np.uint8))


def one_file_spec(data: bytes = LABELS, name: str = "labels-idx1-ubyte.gz", **kw) -> DatasetSpec:
    return DatasetSpec("toy", files=(FileSpec(name, sha256(data)),), **kw)


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*")) if path.exists() else []


# --------------------------------------------------------------------------- the table


def test_table_has_every_dataset_with_real_checksums():
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "stl10", "digits"}
    for spec in DATASETS.values():
        for file in spec.files:
            assert file.sha256 and len(file.sha256) == 64, file.name
            int(file.sha256, 16)
        assert (spec.extract_dir is not None) == any(f.name.endswith(".tar.gz")
                                                     for f in spec.files)
    assert all(f.decompressed for f in DATASETS["fashion_mnist"].files)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'svhn'; allowed: cifar10, digits"):
        fetch("svhn", Path("unused"))


def test_no_known_checksum_is_refused(tmp_path):
    spec = DatasetSpec("toy", files=(FileSpec("a.bin", None),))
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/a.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="no sha256 checksum is known for a.bin"):
        fetch(spec, tmp_path / "dest", mirror=tmp_path / "mirror")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------- mirror / system


@pytest.mark.parametrize("layout", ["toy/", ""])
def test_fetch_from_mirror_is_verified_and_idempotent(tmp_path, layout):
    (tmp_path / "mirror" / layout).mkdir(parents=True, exist_ok=True)
    (tmp_path / "mirror" / layout / "labels-idx1-ubyte.gz").write_bytes(LABELS)
    dest = tmp_path / "raw" / "toy"
    assert fetch(one_file_spec(), dest, mirror=tmp_path / "mirror", system_dirs=()) == dest
    assert (dest / "labels-idx1-ubyte.gz").read_bytes() == LABELS
    assert listing(dest) == ["labels-idx1-ubyte.gz"]  # no temp file left behind
    mtime = (dest / "labels-idx1-ubyte.gz").stat().st_mtime_ns
    fetch(one_file_spec(), dest, mirror=tmp_path / "nowhere", allow_download=False)
    assert (dest / "labels-idx1-ubyte.gz").stat().st_mtime_ns == mtime


def test_env_mirror_and_explicit_argument_precedence(tmp_path, monkeypatch):
    for name, data in (("env", b"bad"), ("arg", LABELS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels-idx1-ubyte.gz").write_bytes(data)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "arg"))
    fetch(one_file_spec(), tmp_path / "d1", allow_download=False)  # env var alone
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "env"))
    fetch(one_file_spec(), tmp_path / "d2", mirror=tmp_path / "arg", allow_download=False)
    assert (tmp_path / "d2/labels-idx1-ubyte.gz").read_bytes() == LABELS


def test_decompressed_hash_accepts_a_recompressed_copy(tmp_path):
    array = np.arange(50, dtype=np.uint8)
    upstream, recompressed = idx_gz(array, level=9), idx_gz(array, level=1)
    assert upstream != recompressed
    spec = DatasetSpec("toy", files=(FileSpec("x.gz", sha256(gzip.decompress(upstream)), True),))
    (tmp_path / "system").mkdir()
    (tmp_path / "system/x.gz").write_bytes(recompressed)
    fetch(spec, tmp_path / "dest", system_dirs=[tmp_path / "system"], allow_download=False)
    assert (tmp_path / "dest/x.gz").read_bytes() == recompressed


def test_checksum_mismatch_rejected_and_nothing_left(tmp_path, capsys):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/labels-idx1-ubyte.gz").write_bytes(LABELS + b"tampered")
    dest = tmp_path / "raw/toy"
    with pytest.raises(DataError) as err:
        fetch(one_file_spec(), dest, mirror=tmp_path / "mirror", allow_download=False)
    assert "sha256 mismatch of the file" in str(err.value)
    assert str(tmp_path / "mirror/labels-idx1-ubyte.gz") in str(err.value)
    assert "rejected" in capsys.readouterr().err
    assert not dest.exists()


def test_bad_mirror_copy_falls_back_to_system_copy(tmp_path, capsys):
    for name, data in (("mirror", b"corrupt"), ("system", LABELS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "labels-idx1-ubyte.gz").write_bytes(data)
    fetch(one_file_spec(), tmp_path / "dest", mirror=tmp_path / "mirror",
          system_dirs=[tmp_path / "system"], allow_download=False)
    assert (tmp_path / "dest/labels-idx1-ubyte.gz").read_bytes() == LABELS
    stderr = capsys.readouterr().err
    assert "mirror" in stderr and "sha256 mismatch" in stderr


def test_no_source_lists_files_directory_and_url(tmp_path):
    spec = DatasetSpec("toy", files=(FileSpec("a.gz", "0" * 64), FileSpec("b.gz", "1" * 64)),
                       base_url="http://127.0.0.1:9/")  # port 9 (discard): nothing listens
    with pytest.raises(DataError) as err:
        fetch(spec, tmp_path / "dest", mirror=tmp_path / "mirror", system_dirs=())
    message = str(err.value)
    assert "a.gz, b.gz" in message and str(tmp_path / "mirror" / "toy") in message
    assert "URL http://127.0.0.1:9/a.gz" in message and MIRROR_ENV in message
    assert "\n" not in message  # the CLI prints it as one `error:` line
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------- archives


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind=tarfile.REGTYPE,
               linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def cifar_archive(extra=None) -> bytes:
    """A real cifar-10-binary.tar.gz: 2 records per batch, plus optional extra members."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add_member(tar, "cifar-10-batches-bin", kind=tarfile.DIRTYPE)
        for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
            add_member(tar, f"cifar-10-batches-bin/{name}",
                       rng.integers(0, 10, (2, 3073), dtype=np.uint8).tobytes())
        for member in extra or ():
            add_member(tar, *member)
    return buffer.getvalue()


def cifar_spec(archive: bytes) -> DatasetSpec:
    return DatasetSpec("cifar10", files=(FileSpec("cifar-10-binary.tar.gz", sha256(archive)),),
                       extract_dir="cifar-10-batches-bin")


def test_archive_extracted_from_mirror_then_loaded(tmp_path):
    archive = cifar_archive()
    (tmp_path / "mirror/cifar10").mkdir(parents=True)
    (tmp_path / "mirror/cifar10/cifar-10-binary.tar.gz").write_bytes(archive)
    dest = tmp_path / "raw/cifar10"
    fetch(cifar_spec(archive), dest, mirror=tmp_path / "mirror")
    assert sorted(p.name for p in dest.iterdir()) == [MANIFEST, "cifar-10-batches-bin"]
    raw = load_raw("cifar10", dest)
    assert raw.x_train.shape == (10, 32, 32, 3) and raw.x_test.shape == (2, 32, 32, 3)
    # Idempotent without any source; a damaged folder is detected and fetched again.
    fetch(cifar_spec(archive), dest, mirror=tmp_path / "empty", allow_download=False)
    (dest / "cifar-10-batches-bin/test_batch.bin").write_bytes(b"")
    with pytest.raises(DataError, match="could not get a verified copy"):
        fetch(cifar_spec(archive), dest, mirror=tmp_path / "empty", allow_download=False)
    fetch(cifar_spec(archive), dest, mirror=tmp_path / "mirror")
    assert (dest / "cifar-10-batches-bin/test_batch.bin").stat().st_size == 2 * 3073


@pytest.mark.parametrize("member, fragment", [
    (("../evil.bin", b"x"), "'../evil.bin' escapes"),
    (("cifar-10-batches-bin/../../evil.bin", b"x"), "escapes"),
    (("/tmp/ablations-evil.bin", b"x"), "'/tmp/ablations-evil.bin' escapes"),
    (("cifar-10-batches-bin/link", b"", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
    (("cifar-10-batches-bin/hard", b"", tarfile.LNKTYPE, "/etc/passwd"), "is a hardlink"),
    (("cifar-10-batches-bin/fifo", b"", tarfile.FIFOTYPE), "not a regular file"),
])
def test_unsafe_archive_members_rejected(tmp_path, member, fragment):
    archive = cifar_archive(extra=[member])
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/cifar-10-binary.tar.gz").write_bytes(archive)
    dest = tmp_path / "work/raw/cifar10"
    with pytest.raises(DataError, match="unsafe archive member") as err:
        fetch(cifar_spec(archive), dest, mirror=tmp_path / "mirror", allow_download=False)
    assert fragment in str(err.value)
    assert not dest.exists()  # no partial extraction, no staging folder, no temp archive
    assert listing(tmp_path / "work") == ["raw"]
    assert not Path("/tmp/ablations-evil.bin").exists()


def zeros_archive(size: int) -> bytes:
    """A cifar-10-binary.tar.gz whose one member is `size` zero bytes: ~1000x compression."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def many_members_archive(count: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for i in range(count):
            add_member(tar, f"cifar-10-batches-bin/f{i}", b"")
    return buffer.getvalue()


@pytest.mark.parametrize("archive, spec_size, expected", [
    # 8 MiB of zeros in an ~8 KiB archive, no known size: bounded by MAX_EXPANSION x the archive
    (zeros_archive(8 << 20), None, "holds more than"),
    # incompressible records, but more than the dataset's known size + 10 %
    (cifar_archive(), 30_000, "holds more than 33,000 bytes once extracted"),
    (many_members_archive(MAX_MEMBERS + 1), None, f"holds more than {MAX_MEMBERS} members"),
])
def test_archive_beyond_its_bound_is_refused(tmp_path, archive, spec_size, expected):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/cifar-10-binary.tar.gz").write_bytes(archive)
    spec = dataclasses.replace(cifar_spec(archive), extracted_bytes=spec_size)
    dest = tmp_path / "work/raw/cifar10"
    with pytest.raises(DataError, match=re.escape(expected)) as err:
        fetch(spec, dest, mirror=tmp_path / "mirror", allow_download=False)
    assert "refusing to extract anything" in str(err.value)
    assert not dest.exists()  # nothing extracted, no staging folder, no temp archive
    assert listing(tmp_path / "work") == ["raw"]


def test_corrupt_archive_with_matching_hash_is_data_error(tmp_path):
    archive = b"\x1f\x8b" + b"not really gzip" * 10
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror/cifar-10-binary.tar.gz").write_bytes(archive)
    with pytest.raises(DataError, match="corrupt archive"):
        fetch(cifar_spec(archive), tmp_path / "dest", mirror=tmp_path / "mirror")
    assert not (tmp_path / "dest").exists()


# --------------------------------------------------------------------------- download


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_download_good_file(tmp_path, http_root, capsys):
    root, url = http_root
    (root / "labels-idx1-ubyte.gz").write_bytes(LABELS)
    dest = tmp_path / "dest"
    fetch(one_file_spec(base_url=url), dest, mirror=tmp_path / "none", system_dirs=())
    assert (dest / "labels-idx1-ubyte.gz").read_bytes() == LABELS
    assert listing(dest) == ["labels-idx1-ubyte.gz"]
    assert "downloading labels-idx1-ubyte.gz" in capsys.readouterr().err


def test_download_corrupt_file_rejected(tmp_path, http_root):
    root, url = http_root
    (root / "labels-idx1-ubyte.gz").write_bytes(LABELS[:-3] + b"bad")
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=f"{url}labels-idx1-ubyte.gz \\(attempt 3/3\\): sha256 mismatch"):
        fetch(one_file_spec(base_url=url), dest, system_dirs=())
    assert not dest.exists()


def test_download_missing_file_404(tmp_path, http_root):
    _, url = http_root
    with pytest.raises(DataError, match="404"):
        fetch(one_file_spec(base_url=url), tmp_path / "dest", system_dirs=())
    assert not (tmp_path / "dest").exists()


def test_download_archive_and_extract(tmp_path, http_root):
    root, url = http_root
    archive = cifar_archive()
    (root / "cifar-10-binary.tar.gz").write_bytes(archive)
    spec = DatasetSpec("cifar10", files=cifar_spec(archive).files, base_url=url,
                       extract_dir="cifar-10-batches-bin")
    dest = fetch(spec, tmp_path / "dest")
    assert len(list((dest / "cifar-10-batches-bin").iterdir())) == 6
    assert not any(p.name.endswith(".partial") for p in dest.rglob("*"))


class _FlakyHandler(http.server.BaseHTTPRequestHandler):
    """Serves `payload`, spoiling the n-th answer as `faults[n]` says: "cut" (the connection
    closes half-way through the announced length), "corrupt" (bytes flipped) or None (good)."""

    payload = b""
    faults: list = []
    requests = 0

    def do_GET(self):
        fault = self.faults[min(type(self).requests, len(self.faults) - 1)]
        type(self).requests += 1
        body = self.payload
        if fault == "corrupt":
            body = bytes(b ^ 0xFF for b in body[:8]) + body[8:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if fault == "cut" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    """A real HTTP server on 127.0.0.1 whose answers fail as the test says; yields its class."""
    handler = type("Flaky", (_FlakyHandler,), {"payload": LABELS, "faults": [None], "requests": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cut_and_corrupted_downloads_are_retried_until_a_verified_copy(tmp_path, flaky_server,
                                                                      capsys):
    flaky_server.faults = ["cut", "corrupt", None]
    dest = tmp_path / "dest"
    fetch(one_file_spec(base_url=flaky_server.url), dest, mirror=tmp_path / "none", system_dirs=())
    assert flaky_server.requests == 3
    assert (dest / "labels-idx1-ubyte.gz").read_bytes() == LABELS
    assert listing(dest) == ["labels-idx1-ubyte.gz"]  # no partial file kept
    err = capsys.readouterr().err
    assert "(attempt 1/3): download incomplete" in err and "(attempt 2/3): sha256 mismatch" in err


def test_download_failing_every_attempt_leaves_nothing(tmp_path, flaky_server):
    flaky_server.faults = ["cut"]
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"attempt 3/3\): download incomplete") as error:
        fetch(one_file_spec(base_url=flaky_server.url), dest, system_dirs=())
    assert str(error.value).count("download incomplete") == sources.DOWNLOAD_ATTEMPTS
    assert flaky_server.requests == sources.DOWNLOAD_ATTEMPTS
    assert not dest.exists()


def test_file_missing_on_the_server_is_not_retried(tmp_path, http_root):
    _, url = http_root
    with pytest.raises(DataError, match="HTTP 404") as error:
        fetch(one_file_spec(base_url=url), tmp_path / "dest", system_dirs=())
    assert "attempt 2/3" not in str(error.value)


# --------------------------------------------------------------------------- real datasets


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_found_and_verified(tmp_path):
    dest = fetch("fashion_mnist", tmp_path / "fashion_mnist", allow_download=False)
    names = sorted(p.name for p in dest.iterdir())
    assert names == sorted(f.name for f in DATASETS["fashion_mnist"].files)
    raw = load_raw("fashion_mnist", dest)
    assert raw.x_train.shape == (60000, 28, 28, 1) and raw.x_test.shape == (10000, 28, 28, 1)
    assert raw.y_train.shape == (60000,) and set(np.unique(raw.y_test)) == set(range(10))


def test_digits_fetch_and_load(tmp_path):
    dest = fetch("digits", tmp_path / "digits", allow_download=False)
    mtime = (dest / "digits.npz").stat().st_mtime_ns
    raw = load_raw("digits", dest)
    assert raw.x_train.shape == (1500, 8, 8, 1) and raw.x_test.shape == (297, 8, 8, 1)
    assert raw.x_train.dtype == np.uint8 and raw.x_train.max() == 255
    fetch("digits", dest)
    assert (dest / "digits.npz").stat().st_mtime_ns == mtime  # unchanged content, untouched


def test_sha256_of_streams(tmp_path):
    (tmp_path / "f.gz").write_bytes(gzip.compress(b"hello"))
    assert sources.sha256_of(tmp_path / "f.gz", decompressed=True) == sha256(b"hello")
