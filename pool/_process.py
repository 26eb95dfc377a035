"""Start, kill and reap worker processes. No scheduling, no protocol beyond the fds.

A worker is forked by the pool's fork server (``ForkServer``, running ``pool._forkserver``),
which has imported the worker's code once, or with ``start_method="spawn"`` started by the
same server with ``posix_spawn`` of a fresh interpreter (and whenever the server is gone, by
the supervisor itself). Either way the supervisor never forks itself (its loop thread makes
that unsafe) and no ``subprocess.Popen`` object tries to reap a worker behind our back. Each
worker runs in a session of its own, so a kill reaches the activity's own children through the
process group as well as through the walk of its descendants; the server, a subreaper, kills
whatever a worker leaves behind when it goes (see ``pool._forkserver``).

Every process the pool starts carries the pool marker (``pool._tree.POOL_MARKER``) in its
environment, which an activity's own subprocesses inherit.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import select
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field

import psutil

from pool import _tree
from pool._fds import FIRST, above_stdio, spawn_interpreter

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
FORKSERVER_BOOT = "import sys; from pool._forkserver import main; sys.exit(main(sys.argv[1:]))"


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
    # the fork server that forked it (and reaps it), or None for a child of ours
    forked_by: ForkServer | None = field(default=None, repr=False)

    def poll(self) -> bool:
        """Reap without blocking; True once the exit status is known."""
        if self.reaped:
            return True
        if self.forked_by is not None:
            # its fork server reports the status (ForkServer.read); if that server is gone,
            # the pidfd says whether it exited, the status is lost
            if self.forked_by.dead and self.exited_by_pidfd(0.0):
                self.reaped = True
            return self.reaped
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.reaped = True  # someone else reaped it; the status is lost
            return True
        if pid == 0:
            return False
        self.set_status(status)
        return True

    def set_status(self, status: int) -> None:
        """It has exited with this wait status (and is reaped, or its fork server reaps it)."""
        self.reaped = True
        if os.WIFSIGNALED(status):
            self.signal = os.WTERMSIG(status)
        else:
            self.exitcode = os.waitstatus_to_exitcode(status)

    def exited_by_pidfd(self, timeout: float) -> bool:
        """Whether the process has exited, waiting up to ``timeout`` for it (by its pidfd)."""
        if self.pidfd is None:
            return True  # cannot tell: assume so (only asked once it was killed or is gone)
        try:
            return bool(select.select([self.pidfd], [], [], timeout)[0])
        except (OSError, ValueError):
            return True

    def wait(self) -> None:
        """Blocking reap: only for a process already killed or known to be exiting."""
        if self.reaped:
            return
        if self.forked_by is not None:
            self.exited_by_pidfd(5.0)  # its fork server reaps it
            return
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            self.reaped = True
            return
        self.set_status(status)

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

    def rss(self) -> int | None:
        """Its resident memory in bytes (None if it cannot be read: gone, or not permitted)."""
        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except Exception:
            return None

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


_HAVE_PROC = os.path.isdir("/proc/self/task")


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``: from /proc (a read per process of the tree, not a scan of
    every process as psutil does); psutil where there is no /proc."""
    if _HAVE_PROC:
        return _tree.descendants(pid)
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


_pool_ids = itertools.count(1)


def new_pool_id() -> str:
    """A pool's id, unique on this machine while this process lives: ``<pid>.<n>``. A leak
    check of this process's pools looks for markers starting with ``<pid>.``."""
    return f"{os.getpid()}.{next(_pool_ids)}"


def worker_env(thread_limit: int | None, pool_id: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if thread_limit is not None:
        for var in THREAD_LIMIT_VARS:
            env.setdefault(var, str(thread_limit))
    if pool_id is not None:
        env[_tree.POOL_MARKER] = pool_id
    return env


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    return above_stdio(r), above_stdio(w)


def _worker_pipes() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(the worker's ends: request read, reply write, output write), (ours: request write,
    reply read, output read); ours are non-blocking and the channel's are grown."""
    req_r, req_w = _pipe()
    rep_r, rep_w = _pipe()
    out_r, out_w = _pipe()
    for fd in (req_w, rep_r, out_r):
        os.set_blocking(fd, False)
    for fd in (req_w, rep_r):
        _grow_pipe(fd)
    return (req_r, rep_w, out_w), (req_w, rep_r, out_r)


def _pidfd(pid: int) -> int | None:
    if hasattr(os, "pidfd_open"):
        try:
            return above_stdio(os.pidfd_open(pid))
        except OSError:
            return None
    return None


def spawn_worker(env: dict[str, str]) -> WorkerProcess:
    """Start a worker process (a fresh interpreter) with one pipe pair and an output pipe."""
    child_fds, (req_w, rep_r, out_r) = _worker_pipes()
    try:
        pid = spawn_interpreter(WORKER_BOOT, [str(os.getpid())], env, child_fds)
    except BaseException:
        for fd in (*child_fds, req_w, rep_r, out_r):
            os.close(fd)
        raise
    for fd in child_fds:
        os.close(fd)
    return WorkerProcess(pid, req_w, rep_r, out_r, _pidfd(pid))


def _socket_above_stdio(sock: socket.socket) -> socket.socket:
    if sock.fileno() >= FIRST:
        return sock
    return socket.socket(fileno=above_stdio(sock.detach()))


def caller_can_fork() -> bool:
    """Whether the fork server may be forked from this process rather than spawned.

    Only on Linux, and only while this process has a single thread (counted by the kernel, so
    native threads such as a BLAS pool count too): no other thread can then hold a lock
    (malloc's, the import lock, a logging handler's) that the child would find held forever.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_server(ours: socket.socket, theirs: socket.socket, env: dict[str, str]) -> int:
    """Fork this (single-threaded) process into the fork server; return its pid."""
    from pool import _forkserver, _worker

    _worker.load_prctl()  # here, before the fork: the server and its workers inherit it

    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        # what is buffered would otherwise be written again by the child's copy
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the child: never returns into the caller's code
        ours.close()
        code = _forkserver.main_forked(theirs.detach(), parent, env)
    except BaseException:
        with contextlib.suppress(BaseException):
            import traceback

            traceback.print_exc()
    finally:
        os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class ServerReady:
    """The fork server is up: it has imported what it forks workers with."""


@dataclass(frozen=True, slots=True)
class Forked:
    """The answer to ``request(key)``: the new worker, or None if the server could not fork."""

    key: object
    proc: WorkerProcess | None


@dataclass(frozen=True, slots=True)
class Exited:
    """A worker the server forked has exited; ``proc`` has its status."""

    proc: WorkerProcess


@dataclass(frozen=True, slots=True)
class ServerGone:
    """The server is gone (its workers die with it); ``unanswered``: the keys of the requests
    it never answered."""

    unanswered: list[object]


ForkServerEvent = ServerReady | Forked | Exited | ServerGone


class ForkServer:
    """The supervisor's end of a fork server (see ``pool._forkserver``). Loop thread only.

    ``request`` asks for a worker; ``read`` (when ``fileno`` is readable) returns what
    happened, as ``ForkServerEvent`` records. ``reap`` lets it reap a worker whose exit it
    reported. ``close`` stops it and every worker it still has.
    """

    def __init__(
        self, env: dict[str, str], *, fork_caller: bool = False, spawn: bool = False
    ) -> None:
        """Start the server: ``posix_spawn`` a fresh interpreter, or, with ``fork_caller``
        (see ``caller_can_fork``), fork this process, which is much faster (no interpreter
        start, no imports) and lets workers share the caller's pages, as mp.Pool's do. With
        ``spawn``, the server does not import the worker's code and spawns each worker as a
        fresh interpreter: it is there to reap what workers leave behind."""
        ours, theirs = (
            _socket_above_stdio(s) for s in socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        )
        try:
            if fork_caller:
                self.pid = _fork_server(ours, theirs, env)
            else:
                theirs.set_inheritable(True)
                argv = [
                    sys.executable,
                    "-c",
                    FORKSERVER_BOOT,
                    str(theirs.fileno()),
                    str(os.getpid()),
                    *([WORKER_BOOT] if spawn else []),
                ]
                self.pid = os.posix_spawn(
                    sys.executable,
                    argv,
                    env,
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    ],
                    setsid=True,
                    setsigmask=(),
                )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.forked_caller = fork_caller
        self.spawns = spawn  # its workers are fresh interpreters
        # standard modules it was told to import (see warm); forked from the caller it has the
        # caller's modules, and needs none; spawning, it never imports for its workers
        self._warm_sent: set[str] = set()
        self._report_asked = fork_caller or spawn
        ours.setblocking(False)
        self.sock = ours
        self.pidfd = _pidfd(self.pid)
        self.dead = False
        self._next = 1
        # request id -> (key, our ends of its pipes)
        self._pending: dict[int, tuple[object, tuple[int, int, int]]] = {}
        self._procs: dict[int, WorkerProcess] = {}  # forked, exit not yet reaped

    def fileno(self) -> int:
        return self.sock.fileno()

    def request(self, key: object) -> None:
        """Ask for a worker; ``read`` answers with ``Forked(key, proc)``."""
        child_fds, ours = _worker_pipes()
        req_id = self._next
        self._next += 1
        try:
            fds = struct.pack("<3i", *child_fds)
            self.sock.sendmsg(
                [b"F" + struct.pack("<Q", req_id)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
        except OSError:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        self._pending[req_id] = (key, ours)

    def read(self) -> list[ForkServerEvent]:
        events: list[ForkServerEvent] = []
        while not self.dead:
            try:
                msg = self.sock.recv(64)
            except BlockingIOError:
                break
            except OSError:
                msg = b""
            if not msg:
                events.append(ServerGone(self.lost()))
                break
            tag, body = msg[:1], msg[1:]
            if tag == b"U":
                events.append(ServerReady())
            elif tag == b"P":
                req_id, pid = struct.unpack("<Qi", body)
                pending = self._pending.pop(req_id, None)
                if pending is None:  # not ours (cannot happen): leave it to the server
                    continue
                key, (req_w, rep_r, out_r) = pending
                if pid <= 0:
                    for fd in (req_w, rep_r, out_r):
                        os.close(fd)
                    events.append(Forked(key, None))
                    continue
                proc = WorkerProcess(pid, req_w, rep_r, out_r, _pidfd(pid), forked_by=self)
                self._procs[pid] = proc
                events.append(Forked(key, proc))
            elif tag == b"X":
                pid, status = struct.unpack("<ii", body)
                gone = self._procs.get(pid)
                if gone is not None and not gone.reaped:
                    gone.set_status(status)
                    events.append(Exited(gone))
        return events

    def lost(self) -> list[object]:
        """The server is gone (its workers die with it): what it never answered. Once: the
        requests are forgotten."""
        self.dead = True
        keys = [key for key, _ in self._pending.values()]
        for _, fds in self._pending.values():
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._pending.clear()
        return keys

    def wants_warming(self) -> bool:
        """Whether to ask a new worker which standard modules it imported (see ``warm``): the
        first one only."""
        if self._report_asked or self.dead:
            return False
        self._report_asked = True
        return True

    def warm(self, modules: list[str]) -> None:
        """Have the server import these standard-library modules (those our activity modules
        need), so that the workers it forks afterwards have them already, in shared pages:
        activity modules import typing, dataclasses, json... which the server itself does not
        need. Not for a server forked from the caller: it has the caller's modules."""
        if self.dead or self.forked_caller or self.spawns:
            return
        new = set(modules) - self._warm_sent
        if new:
            self._warm_sent |= new
            with contextlib.suppress(OSError):
                self.sock.send(b"W" + "\n".join(sorted(new)).encode())

    def reap(self, proc: WorkerProcess) -> None:
        """The supervisor is done with ``proc``, which has exited: let its pid go."""
        if self._procs.pop(proc.pid, None) is not None and not self.dead:
            with contextlib.suppress(OSError):
                self.sock.send(b"R" + struct.pack("<i", proc.pid))

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server: it kills the workers it still has and everything under them,
        reaps it all, then exits."""
        with contextlib.suppress(OSError):
            self.sock.close()
        self.lost()  # (dead now) our ends of the pipes of requests it never answered
        if self.pidfd is not None and not select.select([self.pidfd], [], [], timeout)[0]:
            with contextlib.suppress(OSError):  # it would not stop: it is ours to kill
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None
