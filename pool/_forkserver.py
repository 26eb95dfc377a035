"""The fork server: a process that has imported the worker's code and forks workers on request.

A spawned interpreter takes tens of milliseconds to import what a worker needs; a fork of one
that already did takes about one, and the forked workers share those pages. The supervisor
starts this process once per pool (``pool._process.ForkServer``) and asks it for workers: it
forks it from the caller while the caller has a single thread (``main_forked``, which sheds
what is the caller's), and spawns it otherwise (``main``). It never forks the supervisor once
its loop thread runs. This process has one thread and runs no user code: activity modules are
imported by each worker after the fork, exactly as a spawned worker does.

Channel: a ``SOCK_SEQPACKET`` unix socket, one message per packet.

- supervisor -> here: ``F <Q request id>`` with three fds attached (``SCM_RIGHTS``): the
  worker's request pipe (read end), reply pipe (write end) and output pipe (write end).
  ``R <i pid>``: reap that worker (the supervisor is done with it). ``W <names>``: import these
  standard-library modules (newline-separated), which the first worker needed for the
  activity modules, so that later forks have them (never anything outside the stdlib).
- here -> supervisor: ``U``: ready. ``P <Q request id> <i pid>``: forked. ``X <i pid> <i wait
  status>``: that worker exited. It stays a zombie until the supervisor sends ``R``, so its pid
  cannot be reused while the supervisor may still signal it (as with a child of its own).

With ``start_method="spawn"`` the same server runs without the worker's code (``main`` is
given the worker's boot line) and starts each worker with ``posix_spawn`` of a fresh
interpreter: it is then only the pool's reaper.

What an activity starts dies with its worker. Each worker is a child subreaper
(PR_SET_CHILD_SUBREAPER, set in ``pool._worker``): a daemon that double-forks stays under it.
This process is a subreaper too, so when a worker goes, for whatever reason, what the worker
still had is handed to this process and not to init. Any child here that was not forked as a
worker is such an orphan: it is killed with its whole tree the moment the worker's exit is seen
(``_sweep``). The parent-death signal here is SIGTERM, which this process catches: when the
supervisor dies (even by SIGKILL), as on EOF on the socket (the pool closed), it kills every
worker and everything under them, reaps it all, and only then exits. What it cannot cover: this
process itself SIGKILLed (its workers die by their own parent-death signal, their orphans go to
init).

Only ``_socket``, ``select``, ``struct`` and ``pool._tree`` (``os`` only) beyond what a worker
imports: a forked worker inherits this process's modules, and must stay as light as a spawned
one.
"""

from __future__ import annotations

import _signal as signal  # not signal: it imports enum, which a worker never needs
import _socket
import os
import select
import struct
import sys

from pool import _tree
from pool._fds import above_stdio, spawn_interpreter

TYPE_CHECKING = False  # not typing's (~7 ms): a forked worker inherits what this imports
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    # (fds, supervisor pid, fds the new worker must not keep) -> the worker's pid
    StartWorker = Callable[[tuple[int, int, int], int, list[int]], int]

_FORK = struct.Struct("<Q")
_FORKED = struct.Struct("<Qi")
_PID = struct.Struct("<i")
_EXIT = struct.Struct("<ii")
_FDS = struct.Struct("<3i")


def _fork_worker(fds: tuple[int, int, int], supervisor: int, closing: list[int]) -> int:
    """Fork one worker; in the child, become it and never return."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        from pool import _worker  # (main imported it: a lookup)

        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for fd in closing:
            os.close(fd)
        req_r, rep_w, out_w = fds
        null = above_stdio(os.open(os.devnull, os.O_RDONLY))  # (closed below: not fd 2)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.close(null)
        os.close(out_w)
        os.set_inheritable(req_r, False)
        os.set_inheritable(rep_w, False)
        code = _worker.main([str(req_r), str(rep_w), str(os.getppid()), str(supervisor)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        # as a spawned worker's interpreter would at exit: atexit handlers (an activity module
        # may register some), then the streams; never the fork server's own exit path
        try:
            import atexit

            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


def _spawner(boot: str) -> StartWorker:
    """Start each worker by ``posix_spawn`` of a fresh interpreter running ``boot`` (the
    server of a ``start_method="spawn"`` pool)."""

    def spawn_worker(fds: tuple[int, int, int], supervisor: int, closing: list[int]) -> int:
        # the workers' environment is ours: the supervisor started us with it
        return spawn_interpreter(boot, [str(os.getpid()), str(supervisor)], dict(os.environ), fds)

    return spawn_worker


def _libc_prctl() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # pragma: no cover - not Linux, exotic libc
        return None


def _watch_supervisor(supervisor: int) -> bool:
    """Adopt the workers' orphans, and get SIGTERM (which ``serve`` catches) when the
    supervisor dies; False if it is gone already."""
    prctl = _libc_prctl()
    if prctl:
        PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return os.getppid() == supervisor


def _woken_by(wake_r: int, signum: int) -> bool:
    """Empty the signal wake-up pipe; whether ``signum`` was among what woke us."""
    seen = False
    while True:
        try:
            data = os.read(wake_r, 512)
        except BlockingIOError:
            return seen
        except InterruptedError:
            continue
        if not data:
            return seen
        seen = seen or signum in data


def _sweep(workers: set[int]) -> None:
    """Kill what gone workers left behind: a child of ours that we did not fork as a worker
    is an orphan adopted here (we are a subreaper) from a worker that has exited. Kill it with
    everything under it, and reap it once dead (its death wakes us again, for what it had)."""
    for pid in _tree.children(os.getpid()):
        if pid in workers:
            continue
        _tree.kill_tree(pid)
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            pass


def _sweep_all(workers: set[int]) -> None:
    """On the way out: kill every worker and everything under it (and any orphan already
    here), then reap until no child is left, so nothing outlives this process."""
    me = os.getpid()
    for pid in workers:
        for kill in (os.killpg, os.kill):  # (the worker's group, then the worker itself)
            try:
                kill(pid, signal.SIGKILL)
            except OSError:
                pass
    while True:
        for pid in _tree.children(me):
            _tree.kill_tree(pid)
        try:
            os.waitpid(-1, 0)  # one is gone: what it still had is ours by now, to kill next
        except ChildProcessError:
            return


def serve(sock_fd: int, supervisor: int, start: StartWorker | None = None) -> int:
    """Answer the supervisor's requests until it closes the socket or dies. ``start``
    starts one worker (default: fork it from here)."""
    start_worker = _fork_worker if start is None else start
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, sock_fd)
    os.set_inheritable(sock_fd, False)  # (a spawned worker must not hold it)
    wake_r, wake_w = (above_stdio(fd) for fd in os.pipe())
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    # only to wake the poll below: a worker's (or an adopted orphan's) exit, and the
    # supervisor's death (our parent-death signal)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    children: set[int] = set()  # forked and not reaped
    reported: set[int] = set()  # of those, exited and told
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    fd_space = _socket.CMSG_SPACE(_FDS.size)
    try:
        if not _watch_supervisor(supervisor):
            return 1  # the supervisor died before we could register
        sock.send(b"U")
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    if _woken_by(wake_r, signal.SIGTERM):
                        return 0  # the supervisor died: sweep everything (finally) and go
                    for pid in sorted(children - reported):
                        try:
                            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                        except ChildProcessError:  # cannot happen: we reap only when told
                            children.discard(pid)
                            continue
                        if info is not None:
                            reported.add(pid)
                            status = _wait_status(info)
                            sock.send(b"X" + _EXIT.pack(pid, status))
                    _sweep(children)
                    continue
                msg, ancdata, _, _ = sock.recvmsg(1 << 16, fd_space, _socket.MSG_CMSG_CLOEXEC)
                if not msg:
                    return 0  # the supervisor closed the pool (or died)
                if msg[:1] == b"F":
                    fds = _received_fds(ancdata)
                    if len(fds) != 3:
                        for fd in fds:
                            os.close(fd)
                        continue
                    (req_id,) = _FORK.unpack(msg[1:])
                    try:
                        pid = start_worker(
                            (fds[0], fds[1], fds[2]), supervisor, [sock_fd, wake_r, wake_w]
                        )
                    except OSError:
                        pid = -1
                    for fd in fds:
                        os.close(fd)
                    if pid > 0:
                        children.add(pid)
                    sock.send(b"P" + _FORKED.pack(req_id, pid))
                elif msg[:1] == b"W":
                    _warm(msg[1:].decode().split("\n"))
                elif msg[:1] == b"R":
                    (pid,) = _PID.unpack(msg[1:])
                    if pid in children:
                        try:
                            os.waitpid(pid, 0)
                        except ChildProcessError:
                            pass
                        children.discard(pid)
                        reported.discard(pid)
    except OSError:  # the socket broke: the supervisor closed the pool (or died)
        return 0
    finally:
        _sweep_all(children)


_NEVER_WARM = {"__main__", "antigravity", "this"}  # (their import does something)


def _warm(modules: list[str]) -> None:
    """Import standard-library modules that workers turned out to need (never user code:
    anything not in ``sys.stdlib_module_names`` is skipped), so later forks have them."""
    allowed = getattr(sys, "stdlib_module_names", ())
    for name in modules:
        if name in allowed and name not in sys.modules and name not in _NEVER_WARM:
            try:
                __import__(name)
            except BaseException:  # (a platform module that cannot load here): not needed
                pass


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(above_stdio(fd) for fd in struct.unpack(f"<{usable // 4}i", data[:usable]))
    return fds


def _wait_status(info: os.waitid_result) -> int:
    """The waitpid()-style status of a waitid() result."""
    if info.si_code == os.CLD_EXITED:
        return (info.si_status & 0xFF) << 8
    return info.si_status & 0x7F  # killed (or dumped core) by this signal


def main_forked(sock_fd: int, supervisor: int, env: dict[str, str]) -> int:
    """Become the fork server in a child just forked from the caller (``ForkServer`` with
    ``fork_caller``, only while the caller has one thread). Shed what belongs to the caller so
    a worker forked from here starts as a spawned one would, then serve."""
    os.setsid()
    _shed_caller_state(sock_fd, env)
    import contextvars

    # a fresh context: no ambient pool, session or activity of the caller's
    return contextvars.Context().run(main, [str(sock_fd), str(supervisor)])


def _shed_caller_state(keep_fd: int, env: dict[str, str]) -> None:
    import atexit
    import gc
    import stat

    # the collector would otherwise walk (and so copy) every page of the caller's objects
    gc.freeze()
    atexit._clear()  # the caller's handlers are not ours (nor our workers') to run
    # signals: the caller's handlers and mask are its own; ignored signals stay ignored, as
    # they would across exec
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # pragma: no cover - not the main thread (cannot happen: one thread)
        pass
    for signum in signal.valid_signals():
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    # fds: stdin and stdout from /dev/null, stderr kept (as a spawned server has them). Every
    # other fd but our socket is the caller's: pipes and sockets (another pool's channels,
    # connections) must not be held open here, or their far ends would never see EOF, so each
    # becomes /dev/null in place: the number stays taken, so a caller's object that closes it
    # later cannot close one of ours. Regular files (log files) stay as they are.
    null = above_stdio(os.open(os.devnull, os.O_RDWR))
    os.dup2(null, 0)
    os.dup2(null, 1)
    try:
        os.fstat(2)
    except OSError:  # the caller closed its stderr: ours is /dev/null, never a pool fd
        os.dup2(null, 2)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd <= 2 or fd in (keep_fd, null):
            continue
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if regular and not os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:"):
                continue
            os.dup2(null, fd, inheritable=False)
        except OSError:  # the directory listing's own fd, closed by now
            pass
    os.close(null)
    # Python-level state that a fresh interpreter would not have
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    streams = {
        "stdin": open(0, encoding=encoding, closefd=False),  # noqa: SIM115
        "stdout": open(1, "w", encoding=encoding, closefd=False),  # noqa: SIM115
        "stderr": open(  # noqa: SIM115
            2, "w", encoding=encoding, errors="backslashreplace", closefd=False, buffering=1
        ),
    }
    for name, stream in streams.items():
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        try:
            asyncio.events._set_running_loop(None)
            asyncio.set_event_loop(None)
        except Exception:  # pragma: no cover - a policy that refuses
            pass
    # the workers' environment (the BLAS limit...): only what differs (each change is a putenv)
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def main(argv: list[str]) -> int:
    """``argv``: the socket's fd, the supervisor's pid, and for a server that spawns its
    workers (``start_method="spawn"``) the line a fresh worker interpreter runs."""
    sock_fd, supervisor = int(argv[0]), int(argv[1])
    start = None
    if len(argv) > 2:
        start = _spawner(argv[2])
    else:
        from pool import _worker

        _worker.load_prctl()  # once here, for every worker forked from here
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor
    return serve(sock_fd, supervisor, start)
