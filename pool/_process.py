"""Start, kill and reap worker processes. No scheduling, no protocol beyond the fds.

A worker is started with ``posix_spawn`` (no fork of the supervisor's threads, no
``subprocess.Popen`` object that would try to reap it behind our back) in a session of its own,
so a kill reaches the activity's own children through the process group as well as through
psutil's view of the tree.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
from dataclasses import dataclass, field

import psutil

# Variables through which BLAS/OpenMP libraries size their thread pools. N workers each
# running numpy with one thread per core would oversubscribe the machine N times over.
THREAD_LIMIT_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


# Not "-m pool._worker": that would run the worker module as __main__, and activity modules
# (or the user's main script, re-run as __mp_main__) could not tell they are in a worker.
WORKER_BOOT = "import sys; from pool._worker import main; sys.exit(main(sys.argv[1:]))"


@dataclass(eq=False)
class WorkerProcess:
    pid: int
    to_worker: int  # write end of the request pipe (non-blocking)
    from_worker: int  # read end of the reply pipe (non-blocking)
    output: int  # read end of the worker's stdout+stderr (non-blocking)
    pidfd: int | None  # readable when the process exits (Linux >= 5.3)
    exitcode: int | None = None
    signal: int | None = None
    reaped: bool = False
    fds_closed: bool = field(default=False, repr=False)

    def poll(self) -> bool:
        """Reap without blocking; True once the exit status is known."""
        if self.reaped:
            return True
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.reaped = True  # someone else reaped it; the status is lost
            return True
        if pid == 0:
            return False
        self.reaped = True
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
        else:
            self.exitcode = os.waitstatus_to_exitcode(status)
        return True

    def wait(self) -> None:
        """Blocking reap: only for a process already killed or known to be exiting."""
        if self.reaped:
            return
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self.reaped = True
            return
        self.reaped = True
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
        else:
            self.exitcode = os.waitstatus_to_exitcode(status)

    def kill_tree(self) -> None:
        """SIGKILL the worker, its process group and every descendant psutil can see."""
        if self.reaped:
            return
        # the process group catches what the activity started; the walk catches children that
        # left the group (setsid). Walk first: once the worker dies its children are orphaned.
        children = _descendants(self.pid)
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)

    def signal_worker(self, signum: int) -> None:
        if not self.reaped:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signum)

    def close_fds(self) -> None:
        if self.fds_closed:
            return
        self.fds_closed = True
        for fd in (self.to_worker, self.from_worker, self.output, self.pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


# Pipe capacity: the default 64 KiB makes a 1 MiB frame cost 16 writer/reader wake-ups.
PIPE_SIZE = 1 << 20


def _grow_pipe(fd: int) -> None:
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    with contextlib.suppress(OSError):  # over /proc/sys/fs/pipe-max-size: keep the default
        fcntl.fcntl(fd, setpipe, PIPE_SIZE)


# Linux with CONFIG_PROC_CHILDREN lists a thread's children in /proc; not every kernel has it.
_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``: /proc/PID/task/TID/children (a read per thread of the
    tree, not a scan of every process as psutil does); psutil where that file is missing."""
    found: list[int] = []
    if _PROC_CHILDREN:
        todo = [pid]
        while todo:
            parent = todo.pop()
            try:
                for tid in os.listdir(f"/proc/{parent}/task"):
                    with open(f"/proc/{parent}/task/{tid}/children") as f:
                        kids = [int(k) for k in f.read().split()]
                    found.extend(kids)
                    todo.extend(kids)
            except OSError:  # exited meanwhile
                continue
        return found
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return found


def worker_env(thread_limit: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if thread_limit is not None:
        for var in THREAD_LIMIT_VARS:
            env.setdefault(var, str(thread_limit))
    return env


def spawn_worker(env: dict[str, str]) -> WorkerProcess:
    """Start a worker process with one pipe pair and an output pipe."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    out_r, out_w = os.pipe()
    child_fds = (req_r, rep_w, out_w)
    try:
        os.set_inheritable(req_r, True)
        os.set_inheritable(rep_w, True)
        argv = [sys.executable, "-c", WORKER_BOOT, str(req_r), str(rep_w), str(os.getpid())]
        pid = os.posix_spawn(
            sys.executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, out_w, 2),
            ],
            setsid=True,
            setsigmask=(),
        )
    except BaseException:
        for fd in (*child_fds, req_w, rep_r, out_r):
            os.close(fd)
        raise
    for fd in child_fds:
        os.close(fd)
    for fd in (req_w, rep_r, out_r):
        os.set_blocking(fd, False)
    for fd in (req_w, rep_r):
        _grow_pipe(fd)
    pidfd: int | None = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
    return WorkerProcess(pid, req_w, rep_r, out_r, pidfd)
