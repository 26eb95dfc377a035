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

EOF on the socket (the pool closed, or the supervisor died) makes this process SIGKILL every
worker it still has, reap them and exit. It dies with the supervisor (PR_SET_PDEATHSIG), and
its workers die with it, so nothing outlives a killed supervisor.

Only ``_socket``, ``select`` and ``struct`` beyond what a worker imports: a forked worker
inherits this process's modules, and must stay as light as a spawned one.
"""

from __future__ import annotations

import _signal as signal  # not signal: it imports enum, which a worker never needs
import _socket
import os
import select
import struct
import sys

from pool import _worker
from pool._fds import above_stdio

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
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
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


def serve(sock_fd: int, supervisor: int) -> int:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, sock_fd)
    wake_r, wake_w = (above_stdio(fd) for fd in os.pipe())
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the poll below
    children: set[int] = set()  # forked and not reaped
    reported: set[int] = set()  # of those, exited and told
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    fd_space = _socket.CMSG_SPACE(_FDS.size)
    try:
        sock.send(b"U")
        while True:
            for fd, _ in poller.poll():
                if fd == wake_r:
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                        except InterruptedError:
                            continue
                        break
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
                        pid = _fork_worker(
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
        for pid in children:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


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
    sock_fd, supervisor = int(argv[0]), int(argv[1])
    _worker._set_parent_death_signal(supervisor)  # (imports ctypes once, for every worker)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor
    return serve(sock_fd, supervisor)
