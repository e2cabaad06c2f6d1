"""A long-lived worker that keeps Keras, torch, MLflow and matplotlib imported across the
`ablations` commands DVC starts, so a stage's process starts in milliseconds, not seconds.

DVC runs every stage as its own command: `ablations train batchnorm …`, then `ablations
evaluate batchnorm …`, and so on, about 35 processes for the default run, each of which would
import the same libraries again. With the worker, the `ablations` command is a thin client:
it sends its argument list, working folder, environment and standard streams (the file
descriptors themselves, over a Unix socket) to a server that has imported everything once, and
the server forks a child that runs the command exactly as the command would have run it: same
code (the entry point the command names: `cli.main`), same folder, umask and environment,
output straight to the caller's terminal or DVC's pipe. The client waits for the child's exit status and exits with it; a signal it gets
(Ctrl-C, DVC's kill) is passed on to the child. Stages, their outputs and every guarantee are
the ones without the worker: only where the imports happen changes.

The first command starts the server (detached; it exits after `IDLE_SECONDS` without work).
A server serves one key: the Python executable, its import path, the package's source files
and the environment variables read at import time (`_IMPORT_ENV`); a changed source file
makes a new server, and the old one idles out. Without a server the command runs in its own
process as before: set ABLATIONS_WORKER=0 to always do so. The worker is off for other Keras
backends and where an NVIDIA driver is loaded: forking after CUDA or XLA has initialised is
unsafe, and neither has been measured with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

IDLE_SECONDS = 60.0      # a server with no command for this long exits
START_TIMEOUT = 120.0    # seconds a client waits for a starting server's imports
# What the server imports before it serves: everything the stage commands import at module
# level or lazily (mlflow.keras: `Model.log`), so no child pays for an import.
WARM_MODULES = ("ablations.cli", "ablations.training", "ablations.units", "ablations.executors",
                "ablations.evaluate", "ablations.plots", "ablations.report", "ablations.polyfit",
                "ablations.describe", "ablations.data.sources", "ablations.replay",
                "mlflow.keras")
# Environment variables that modules read when they are imported (backend, threads, paths,
# locale): a server imported under other values would not be the process the command starts.
_IMPORT_ENV = ("KERAS_", "TF_", "JAX_", "XLA_", "TORCH", "PYTORCH_", "CUDA_", "OMP_", "MKL_",
               "OPENBLAS_", "MPL", "PYTHON", "LC_", "LANG", "HOME")
_SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path (sun_path, less its final NUL)
_HEADER = struct.Struct("!I")  # a request's length, sent with the caller's 3 standard streams


def enabled() -> bool:
    """Whether this command may run in the worker (see the module's docstring)."""
    return (os.environ.get("ABLATIONS_WORKER", "1") != "0"
            and os.environ.get("KERAS_BACKEND") == "torch"
            and not Path("/proc/driver/nvidia").exists()
            and hasattr(socket, "send_fds") and hasattr(os, "fork"))


def server_key() -> str:
    """What a server must share with this command to run it: the interpreter, its import path
    (each folder's mtime changes when a package is installed into it), the package's source
    files (path, size, mtime) and the import-time environment."""
    package = Path(__file__).resolve().parent
    stamps = [sys.executable, *sys.path[1:]]
    for folder in sys.path[1:]:
        with contextlib.suppress(OSError):
            stamps.append(f"{os.stat(folder or '.').st_mtime_ns}")
    for source in sorted(package.rglob("*.py")):
        stat = source.stat()
        stamps.append(f"{source}:{stat.st_size}:{stat.st_mtime_ns}")
    stamps += sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(_IMPORT_ENV))
    return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:20]


def runtime_dir() -> Path | None:
    """This user's folder for the worker's socket, lock and log (mode 0700), or None when it
    cannot be made private."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"ablations-worker-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        stat = folder.stat()
    except OSError:
        return None
    if stat.st_uid != os.getuid() or stat.st_mode & 0o077:
        return None
    return folder


class _Paths:
    """One key's socket, lock and log in the runtime folder."""

    def __init__(self, folder: Path, key: str):
        self.socket = folder / f"{key}.sock"
        self.lock = folder / f"{key}.lock"
        self.log = folder / f"{key}.log"


# --------------------------------------------------------------------------- client

def run(entry: str, argv: list[str]) -> int | None:
    """Run `ablations ARGV` in the worker as ENTRY ("module:function", called with ARGV) and
    return its exit status; None when the worker is not used (then the caller runs the command
    itself: nothing of it has run yet)."""
    if not enabled():
        return None
    folder = runtime_dir()
    if folder is None:
        return None
    paths = _Paths(folder, server_key())
    if len(os.fsencode(paths.socket.with_suffix(".4194304.tmp"))) > _SOCKET_PATH_MAX:
        return None
    connection = _connect(paths)
    if connection is None:
        return None
    with connection:
        umask = os.umask(0)
        os.umask(umask)
        request = json.dumps({"entry": entry, "argv": argv, "argv0": sys.argv[0],
                              "cwd": os.getcwd(), "umask": umask, "env": dict(os.environ),
                              "path": sys.path}).encode()
        try:
            socket.send_fds(connection, [_HEADER.pack(len(request))], [0, 1, 2])
            connection.sendall(request)
            replies = connection.makefile("r")
            started = replies.readline()
        except OSError:
            return None  # the server closed before forking: the command has not run
        if not started:
            return None
        return _wait(int(json.loads(started)["pid"]), replies)


def _wait(pid: int, replies) -> int:
    """Pass this process's interrupting signals on to the child, and return its exit status."""
    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    line = replies.readline()
    if not line:
        print("error: the ablations worker stopped before the command finished "
              "(run it again, or with ABLATIONS_WORKER=0)", file=sys.stderr)
        return 1
    status = int(json.loads(line)["exit"])
    if status < 0:  # killed by a signal: die of the same one, as the command itself would have
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _connect(paths: _Paths) -> socket.socket | None:
    """A connection to this key's server, starting one if none runs; None if none answers."""
    connection = _try_connect(paths.socket)
    if connection is not None:
        return connection
    with open(os.devnull, "rb") as devnull, open(paths.log, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "ablations.worker", str(paths.socket.parent), paths.socket.stem],
            stdin=devnull, stdout=log, stderr=log, cwd="/", start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        connection = _try_connect(paths.socket)
        if connection is not None:
            return connection
        # Ours gave way to another server of this key (it holds the lock) or failed.
        if server.poll() is not None and not _locked(paths.lock):
            return None
        time.sleep(0.05)
    return None


def _try_connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(path))
    except OSError:
        connection.close()
        return None
    return connection


def _locked(lock: Path) -> bool:
    """Whether a server holds this key's lock."""
    try:
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------- server

def serve(folder: Path, key: str) -> None:
    """Import everything, then fork a child per command until idle for IDLE_SECONDS."""
    paths = _Paths(folder, key)
    lock = open(paths.lock, "a")
    if not _lock(lock):
        return  # another server of this key runs or starts
    started = time.monotonic()
    import importlib

    for module in WARM_MODULES:
        importlib.import_module(module)
    import threading

    # A fork copies only the forking thread: a Python thread could hold a lock the child
    # needs. The native threads torch and its allocator start at import are fork-aware (their
    # pthread_atfork handlers; PyTorch's DataLoader forks after the same imports).
    if threading.active_count() != 1:
        _log(f"not serving: {threading.active_count()} Python threads after the imports")
        return
    gc.collect()
    gc.freeze()  # the imports' objects stay shared with every child (no copy on write by gc)
    listener = _listen(paths.socket)
    _log(f"serving {paths.socket} (imports took {time.monotonic() - started:.1f} s)")
    try:
        _loop(listener, paths.socket)
    finally:
        with contextlib.suppress(FileNotFoundError):
            paths.socket.unlink()
        listener.close()
        lock.close()


def _lock(lock, wait: float = 5.0) -> bool:
    """Hold this key's lock; a server whose socket was just removed lets go within a loop's
    turn, one still serving does not."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _listen(path: Path) -> socket.socket:
    """Bind under a temporary name and rename into place: a client connects only to a server
    that is ready."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(temporary))
    listener.listen(64)
    os.replace(temporary, path)
    listener.setblocking(False)
    return listener


def _loop(listener: socket.socket, path: Path) -> None:
    inode = os.stat(path).st_ino
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    jobs: dict[int, socket.socket] = {}   # child pid → its client's connection
    idle_since = time.monotonic()
    while jobs or time.monotonic() - idle_since < IDLE_SECONDS:
        for event, _ in selector.select(timeout=0.1):
            if event.fileobj is listener:
                _accept(listener, selector, jobs)
            else:  # a client's connection: readable only when its client has gone
                pid = next(p for p, c in jobs.items() if c is event.fileobj)
                selector.unregister(event.fileobj)
                # It died without passing a signal on (kill -9, a crash): so does its command.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for pid, status in _reaped():
            connection = jobs.pop(pid)
            with contextlib.suppress(OSError, KeyError, ValueError):
                selector.unregister(connection)
            with contextlib.suppress(OSError):
                connection.sendall(json.dumps({"exit": status}).encode() + b"\n")
            connection.close()
            idle_since = time.monotonic()
        if not _owns(path, inode):  # removed (or replaced): stop once the running commands finish
            idle_since = -IDLE_SECONDS


def _owns(path: Path, inode: int) -> bool:
    """Whether the socket file at `path` is still the one this server bound (its inode)."""
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _reaped() -> list[tuple[int, int]]:
    """Children that have exited, with their exit status (−N: killed by signal N)."""
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        if pid == 0:
            return done
        done.append((pid, os.waitstatus_to_exitcode(status)))


def _accept(listener, selector, jobs) -> None:
    try:
        connection, _ = listener.accept()
    except BlockingIOError:
        return
    connection.setblocking(True)
    connection.settimeout(10)
    fds: list[int] = []
    try:
        header, fds, _, _ = socket.recv_fds(connection, _HEADER.size, 3)
        size, = _HEADER.unpack(header)
        request = b""
        while len(request) < size:
            chunk = connection.recv(size - len(request))
            if not chunk:
                raise ConnectionError("request cut short")
            request += chunk
        request = json.loads(request)
        if len(fds) != 3:
            raise ConnectionError("3 standard streams expected")
    except (OSError, ValueError, struct.error) as error:
        _log(f"refused a request: {error}")
        for fd in fds:
            os.close(fd)
        connection.close()
        return
    pid = os.fork()
    if pid == 0:
        _child(connection, fds, request, selector)
    for fd in fds:
        os.close(fd)
    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    jobs[pid] = connection
    selector.register(connection, selectors.EVENT_READ)
    _log(f"{pid}: {' '.join(request['argv'])}")


def _child(connection, fds: list[int], request: dict, selector) -> None:
    """In the forked child: become the command's own process, run it, and exit with its status."""
    status = 1
    try:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()
        connection.close()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.umask(request["umask"])  # the modes of the files the command writes
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = [request["argv0"], *request["argv"]]
        sys.path[:] = request["path"]
        tempfile.tempdir = None  # read TMPDIR from the command's environment
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())
        import importlib

        module, function = request["entry"].split(":")
        status = getattr(importlib.import_module(module), function)(request["argv"])
    except SystemExit as exit_:  # argparse's usage errors, --help, --version
        status = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
    except BaseException:  # noqa: BLE001 (what an uncaught exception prints, then its status)
        traceback.print_exc()
        status = 1
    finally:
        with contextlib.suppress(Exception):
            import atexit

            atexit._run_exitfuncs()  # MLflow ends its active runs there, as at a process's end
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), sys.argv[2])
