"""python bench/_rusage.py CMD…: run CMD and print `rusage <peak RSS KiB> <CPU s>` to stderr: the
peak RSS of its largest descendant and the CPU seconds (user + system) of all its descendants.

The worker's server (ablations.worker) runs the stage commands as its own children and
outlives the command that started it. This process stops any server left from an untimed step,
adopts the one CMD starts (a child subreaper), stops it once CMD is done by removing its socket from the run's private XDG_RUNTIME_DIR, and waits for
it, so the seconds and RSS of the commands it ran count here too.
"""

import ctypes
import os
import resource
import subprocess
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36



def stop_servers() -> None:
    """Remove the sockets of the run's worker servers: each exits once its commands are done."""
    if os.environ.get("XDG_RUNTIME_DIR"):
        for socket in Path(os.environ["XDG_RUNTIME_DIR"]).glob("ablations-worker-*/*.sock"):
            socket.unlink()


ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
stop_servers()  # one an untimed step left: CMD starts its own, imports included
status = subprocess.call(sys.argv[1:])
stop_servers()
while True:  # the adopted server, once its commands are done
    try:
        os.wait()
    except ChildProcessError:
        break
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print("rusage", usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr)
sys.exit(status)
