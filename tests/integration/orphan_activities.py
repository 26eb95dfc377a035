"""Activities that start processes and leave them running: the worker must take them along."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdk import activity

SLEEP = ["sleep", "60"]


def _double_forked() -> int:
    """A classic daemon: fork, setsid, fork again, the first child exits; the grandchild (the
    daemon) is orphaned at once. Its pid comes back through a pipe."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(r)
            os.setsid()
            daemon = os.fork()
            if daemon == 0:
                os.close(w)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                os.execvp(SLEEP[0], SLEEP)
            os.write(w, str(daemon).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        daemon = int(f.read())
    os.waitpid(child, 0)
    return daemon


def _shell_background() -> int:
    """``sleep 60 &`` from a shell that then exits: orphaned as soon as the shell is gone."""
    out = subprocess.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], capture_output=True)
    return int(out.stdout)


def start_descendants() -> list[int]:
    """A plain child, a child in a session of its own, a double-forked daemon and a shell's
    background job: what an activity might leave behind."""
    plain = subprocess.Popen(SLEEP)
    own_session = subprocess.Popen(SLEEP, start_new_session=True)
    return [plain.pid, own_session.pid, _double_forked(), _shell_background()]


@activity(retry_policy_max_attempts=1)
def leave_descendants() -> list[int]:
    return start_descendants()


@activity(retry_policy_max_attempts=1, start_to_close_timeout=0.3)
def leave_descendants_then(how: str, pidfile: str) -> None:
    """Start them, write their pids, then end the worker ``how``: hang (until the deadline
    kill), exit, or SIGKILL itself."""
    pids = start_descendants()
    Path(pidfile).write_text(" ".join(map(str, pids)))
    if how == "exit":
        sys.stdout.flush()
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    while True:
        time.sleep(3600)
