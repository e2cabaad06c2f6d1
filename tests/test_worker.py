"""The long-lived worker (ablations.worker): `ablations` commands run in a forked child of a
server that imported everything once, with the command's own folder, environment, streams,
exit status and signals; a changed source file or import-time setting gets another server."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ablations import worker
from conftest import REPO, train_command, write_params, write_prepared

ABLATIONS = str(Path(sys.executable).with_name("ablations"))


@pytest.fixture
def runtime():
    """A private XDG_RUNTIME_DIR: this test's servers apart from the suite's; stopped after.
    Short: a Unix socket's path has at most 107 bytes (pytest's tmp_path is longer)."""
    folder = Path(tempfile.mkdtemp(prefix="w", dir="/tmp"))
    yield folder
    for socket in folder.glob("ablations-worker-*/*.sock"):
        socket.unlink()  # its server exits once its commands are done
    time.sleep(0.5)
    shutil.rmtree(folder, ignore_errors=True)


def env_with(runtime, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ABLATIONS_WORKER"}
    return {**env, "XDG_RUNTIME_DIR": str(runtime), **extra}


def ablations(args, cwd, env, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([ABLATIONS, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, **kwargs)


def server_log(runtime) -> str:
    return "".join(log.read_text() for log in runtime.glob("ablations-worker-*/*.log"))


def log_lines(runtime) -> list[tuple[int, str]]:
    """The servers' own lines (`HH:MM:SS [server pid] message`), without what imports printed."""
    lines = [re.match(r"\d\d:\d\d:\d\d \[(\d+)\] (.*)", line) for line in server_log(runtime).splitlines()]
    return [(int(match[1]), match[2]) for match in lines if match]


def served(runtime) -> list[str]:
    """The commands the servers ran, as they logged them (`<child pid>: <argv>`)."""
    return [message for _, message in log_lines(runtime) if re.match(r"\d+: ", message)]


def server_pids(runtime) -> list[int]:
    return [pid for pid, message in log_lines(runtime) if message.startswith("serving ")]


def test_commands_run_in_the_server_with_their_folder_streams_and_exit_status(runtime, tmp_path):
    env = env_with(runtime)
    first = ablations(["validate", "--out", "valid.json"], cwd=REPO.parent, env=env | {
        "ABLATIONS_WORKER": "1"}, check=False)  # wrong folder: no params.yaml there
    assert first.returncode == 2 and first.stderr.startswith("error: params.yaml")
    assert first.stderr.count("\n") == 1 and "Traceback" not in first.stderr
    (tmp_path / "project").mkdir()
    project = tmp_path / "project"
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    done = ablations(["validate", "--out", "valid.json"], cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    assert (project / "valid.json").read_text().strip().startswith("{")  # in the caller's folder
    version = ablations(["--version"], cwd=project, env=env)
    assert (version.returncode, version.stdout) == (0, f"ablations {__import__('ablations').__version__}\n")
    usage = ablations(["no-such-stage"], cwd=project, env=env)
    assert usage.returncode == 2 and "invalid choice: 'no-such-stage'" in usage.stderr
    commands = served(runtime)
    assert [c.split(": ", 1)[1] for c in commands] == [
        "validate --out valid.json", "validate --out valid.json", "--version", "no-such-stage"]
    assert len(server_pids(runtime)) == 1  # one server ran all four


def test_a_training_in_the_worker_gives_the_bits_of_one_in_its_own_process(runtime, tmp_path,
                                                                          tracking_store):
    """The same units trained by a forked child and by a fresh process: the same metrics, epoch
    by epoch, and the same weights (their seconds, run ids and save dates aside)."""
    import keras
    import numpy as np

    from ablations.history import read_history

    write_prepared(tmp_path / "data" / "d", n=128, size=8)
    params = write_params(tmp_path, variants=("v", "bn"), overrides={"bn": {"norm": "after"}})
    outputs = {}
    for mode in ("1", "0"):  # served (the server starts first), then in its own process
        out = tmp_path / f"out{mode}"
        done = subprocess.run(train_command(params, tmp_path / "data", out, tmp_path / f"ckpt{mode}"),
                              env=env_with(runtime, ABLATIONS_WORKER=mode), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[mode] = out
    assert len([c for c in served(runtime) if " train unit " in c]) == 1  # only the first was served
    for unit in ("v/seed7", "bn/seed7"):
        metrics = [[{k: v for k, v in row.items() if k != "epoch_seconds"}
                    for row in read_history(outputs[mode] / unit / "history.csv")]
                   for mode in ("1", "0")]
        assert metrics[0] == metrics[1] and len(metrics[0]) == 3
        weights = [keras.saving.load_model(outputs[mode] / unit / "model.keras").get_weights()
                   for mode in ("1", "0")]
        assert len(weights[0]) == len(weights[1]) and weights[0]
        assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_the_command_gets_its_own_environment_and_an_interrupting_signal(runtime, tmp_path):
    env = env_with(runtime)
    # An environment variable read at run time: the command's value, not the server's.
    broken = ablations(["--params", "p.yaml", "validate", "--out", "v.json"], cwd=tmp_path,
                       env=env | {"ABLATIONS_DATA_MIRROR": "x"})
    assert broken.returncode == 2 and "p.yaml" in broken.stderr
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    # validate of the notebook budget builds its 12 networks (2 s): SIGTERM in the middle
    # stops the child and the command dies of the same signal, leaving no file.
    slow = subprocess.Popen([ABLATIONS, "validate", "--budget", "notebook", "--out", "v.json"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    child = _child_of(runtime, "--out v.json", slow)
    slow.send_signal(signal.SIGTERM)
    assert slow.wait(timeout=60) == -signal.SIGTERM
    _gone(child)
    assert not (tmp_path / "v.json").exists()
    # kill -9 cannot be passed on: the server sees its client gone and kills the child.
    killed = subprocess.Popen([ABLATIONS, "validate", "--budget", "notebook", "--out", "k.json"],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    child = _child_of(runtime, "--out k.json", killed)
    killed.kill()
    assert killed.wait(timeout=60) == -signal.SIGKILL
    _gone(child)
    assert not (tmp_path / "k.json").exists()


def _child_of(runtime, argv_part: str, client: subprocess.Popen) -> int:
    """The pid of the child the server forked for the command with `argv_part`, once logged."""
    deadline = time.monotonic() + 120
    while not (mine := [c for c in served(runtime) if argv_part in c]):
        assert time.monotonic() < deadline and client.poll() is None, client.stderr.read()
        time.sleep(0.1)
    time.sleep(0.3)  # into the command's work
    return int(mine[0].split(":")[0])


def _gone(pid: int) -> None:
    """Wait up to 10 s for process `pid` to end; fail if it does not."""
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie until the server reaps it: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_removed_socket_stops_its_server_and_worker_0_runs_in_process(runtime, tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    env = env_with(runtime)
    assert ablations(["validate", "--out", "v.json"], cwd=tmp_path, env=env).returncode == 0
    [pid] = server_pids(runtime)
    [socket] = runtime.glob("ablations-worker-*/*.sock")
    socket.unlink()
    _gone(pid)  # the server outlives its socket by a loop's turn
    before = served(runtime)
    off = ablations(["validate", "--out", "v.json"], cwd=tmp_path, env=env | {"ABLATIONS_WORKER": "0"})
    assert off.returncode == 0 and served(runtime) == before
    assert not list(runtime.glob("ablations-worker-*/*.sock"))


def test_the_server_key_follows_sources_and_import_time_settings(monkeypatch):
    key = worker.server_key()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")  # read at run time
    assert worker.server_key() == key
    with monkeypatch.context() as patched:
        patched.setenv("OMP_NUM_THREADS", "7")  # read when torch starts its threads
        assert worker.server_key() != key
    assert worker.server_key() == key
    source = Path(worker.__file__).with_name("errors.py")
    stat = source.stat()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # an edit
        assert worker.server_key() != key
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert worker.server_key() == key


def test_off_where_forking_is_not_known_to_be_safe(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.delenv("ABLATIONS_WORKER", raising=False)
    assert worker.enabled() == (not Path("/proc/driver/nvidia").exists())
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert not worker.enabled()
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    monkeypatch.setenv("ABLATIONS_WORKER", "0")
    assert not worker.enabled()
