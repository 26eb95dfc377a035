"""Where workers come from and how their exits are seen: the fork server, spawn, adopt, reap.

The ``Spawner`` owns the pool's fork server (``pool._process.ForkServer``) and everything it
needs: the workers' environment, the INIT settings, the standard-library warming and the probe
fd a worker opens to prove it can map the supervisor's segments. It reports upward through
``SpawnerListener`` (the supervisor): a process for a worker slot, a slot that could not be
filled, a worker whose exit status is known. It never touches a worker's pipes (that is
``pool._channel``) nor decides which slot needs a worker (the scheduler, through the
supervisor). Loop thread only.

Worker death is seen without polling: the supervisor sees EOF on the reply pipe and calls
``watch_exit``; the fork server's exit report, or for a spawned worker its pidfd (or a
non-blocking waitpid), then gives the exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import sys
import time
import types
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from pool._config import PoolConfig
from pool._fds import above_stdio
from pool._process import (
    Exited,
    Forked,
    ForkServer,
    ServerGone,
    ServerReady,
    WorkerProcess,
    caller_can_fork,
    spawn_worker,
    worker_env,
)
from pool._segments import shm_supported

log = logging.getLogger("activitypool")
# A replacement worker is spawned this long after the death that calls for it (see spawn()).
SPAWN_DELAY = 0.005
_LINUX = sys.platform.startswith("linux")


class SpawnerListener(Protocol):
    """What the spawner reports, on the loop thread (the supervisor implements it)."""

    def wanted(self, worker_id: int) -> bool:
        """Whether slot ``worker_id`` still waits for its process."""

    def started(self, worker_id: int, proc: WorkerProcess) -> None:
        """A new worker process for slot ``worker_id``: it is the listener's from now on."""

    def not_started(self, worker_id: int, why: str) -> None:
        """No process could be started for slot ``worker_id``."""

    def exit_reported(self, proc: WorkerProcess) -> None:
        """The fork server saw ``proc`` exit: its last frames are in its pipe; read them, then
        ``watch_exit`` it (its status is known now)."""

    def after(self) -> None:
        """An event is handled: send what it queued."""


def worker_environment(config: PoolConfig) -> dict[str, str]:
    """The environment workers start with: ours, the BLAS thread limit, and this package on
    ``PYTHONPATH`` (for a spawned worker, and an activity's own subprocesses)."""
    env = worker_env(config.thread_limit, config.pool_id)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    return env


def stdlib_imported_by(module_names: Iterable[str]) -> list[str]:
    """The standard-library top-level modules these (already imported) modules import
    directly: modules they hold, and the modules of the functions and classes they imported
    from them (``from typing import Any`` names ``typing``)."""
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    found: set[str] = set()
    for name in module_names:
        module = sys.modules.get(name)
        if module is None:
            continue
        for value in list(vars(module).values()):
            owner: object
            if isinstance(value, types.ModuleType):
                owner = value.__name__
            else:
                try:
                    owner = getattr(value, "__module__", None)
                except Exception:  # an object whose attributes are computed, and failed
                    continue
            if isinstance(owner, str):
                top = owner.partition(".")[0]
                if top in stdlib:
                    found.add(top)
    return sorted(found)


def early_forkserver(config: PoolConfig) -> ForkServer | None:
    """With ``start_method="fork"``: a fork server forked from the caller, if that is safe now
    (the caller has one thread); None otherwise (then a fresh one is spawned).

    A ``with`` pool calls this before it starts its loop thread (after which the process has
    two threads); an ``async with`` pool from its start, on the caller's own thread."""
    if config.start_method != "fork":
        return None
    if not caller_can_fork():
        log.warning(
            "start_method='fork': this process runs more than one thread, and forking it could "
            "deadlock the fork server on a lock another thread holds; starting a fresh one"
        )
        return None
    try:
        return ForkServer(worker_environment(config), fork_caller=True)
    except OSError as exc:
        log.warning("could not fork the fork server (%s): spawning it", exc)
        return None


class Spawner:
    """Starts worker processes for the supervisor and watches them exit. Loop thread only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: PoolConfig,
        listener: SpawnerListener,
        forkserver: ForkServer | None = None,
        early_tried: bool = False,
    ) -> None:
        """``forkserver``: one forked from the caller before the loop thread started
        (``early_forkserver``, which ``early_tried`` says was called); owned from here on."""
        self.loop = loop
        self.config = config
        self.listener = listener
        self._forkserver = forkserver  # forks workers (None: spawn them)
        self._early_tried = early_tried
        self._started_at = 0.0
        self._env: dict[str, str] = {}
        self._init: dict[str, Any] = {}
        # exited workers whose status the fork server reports (proc -> on_exit)
        self._awaiting: dict[WorkerProcess, Callable[[], None]] = {}
        # an fd each worker must be able to open through /proc before segments are used
        self.shm_probe: int | None = None
        if shm_supported():
            with contextlib.suppress(OSError):
                probe = os.memfd_create("activitypool-probe", os.MFD_CLOEXEC)
                self.shm_probe = above_stdio(probe)

    # -- the fork server -------------------------------------------------------------------
    def start(self) -> None:
        """Make the workers' environment and settings, and the fork server (on Linux)."""
        self._env = worker_environment(self.config)
        main = sys.modules.get("__main__")
        main_path = getattr(main, "__file__", None)
        self._init = {
            "sys_path": list(sys.path),
            "preload": list(self.config.preload),
            "main_path": os.path.abspath(main_path) if main_path else None,
            "log_levels": _log_levels(),
            "shm_probe": self.shm_probe,
        }
        self._started_at = time.monotonic()
        fs = self._forkserver
        if fs is None and not self._early_tried and _LINUX:
            fs = early_forkserver(self.config)  # (async with: this is the caller's thread)
        if fs is None and _LINUX:
            try:  # (it needs SOCK_SEQPACKET, waitid and pidfds: Linux)
                # under spawn too: it spawns the workers, and reaps what they leave behind
                fs = ForkServer(self._env, spawn=self.config.start_method == "spawn")
            except (OSError, AttributeError) as exc:
                log.warning("no fork server (%s): workers are spawned one by one", exc)
        self._forkserver = fs
        if fs is not None:
            self.loop.add_reader(fs.fileno(), self._on_forkserver)
            if not fs.forked_caller:  # (forked from the caller, it has the caller's modules)
                # before the first fork: what the activity modules import from the standard
                # library (the first worker reports the rest, e.g. a third-party package's)
                fs.warm(stdlib_imported_by(self.config.preload))

    @property
    def forking(self) -> bool:
        """Whether a live fork server starts the workers (a request costs the loop nothing)."""
        return self._forkserver is not None and not self._forkserver.dead

    def forkserver_pid(self) -> int | None:
        """The live fork server's pid (None: there is none)."""
        fs = self._forkserver
        return fs.pid if fs is not None and not fs.dead else None

    def forked_caller(self) -> bool:
        """Whether the fork server was forked from the caller (start_method="fork")."""
        return self._forkserver is not None and self._forkserver.forked_caller

    def _on_forkserver(self) -> None:
        fs = self._forkserver
        if fs is None:
            return
        for event in fs.read():
            if isinstance(event, Forked):
                self._forked(event.key, event.proc)
            elif isinstance(event, Exited):
                waiting = self._awaiting.pop(event.proc, None)
                if waiting is not None:
                    waiting()
                else:
                    self.listener.exit_reported(event.proc)
            elif isinstance(event, ServerReady):
                took = (time.monotonic() - self._started_at) * 1000
                log.debug("the fork server (pid %d) is ready after %.1f ms", fs.pid, took)
            elif isinstance(event, ServerGone):
                self._drop_forkserver()
                for worker_id in event.unanswered:  # never answered: spawn those instead
                    assert isinstance(worker_id, int)
                    self._spawn_now(worker_id)
            else:  # pragma: no cover - a new kind of event must be handled above
                raise AssertionError(f"unhandled fork server event {event!r}")
        self.listener.after()

    def _forked(self, key: object, proc: WorkerProcess | None) -> None:
        assert isinstance(key, int)
        if proc is None:
            self.listener.not_started(key, "the fork server could not fork")
        elif not self.listener.wanted(key):
            proc.kill_tree()  # not wanted any more; its exit report reaps it
            proc.close_fds()
        else:
            self._adopt(key, proc)

    def _drop_forkserver(self) -> None:
        """The fork server is gone or failing: its workers die with it (their own exits are
        seen by pidfd); from now on workers are spawned."""
        fs = self._forkserver
        if fs is None:
            return
        log.warning("the fork server (pid %d) is gone: spawning workers from now on", fs.pid)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(fs.fileno())
        self._forkserver = None
        unanswered = fs.lost()  # (empty if its EOF was read: then the caller spawns those)
        fs.close(timeout=1.0)
        awaiting, self._awaiting = self._awaiting, {}
        for proc, on_exit in awaiting.items():  # were waiting for the server's report
            self.watch_exit(proc, on_exit)
        for worker_id in unanswered:  # asked for and never forked: spawn them instead
            assert isinstance(worker_id, int)
            self._spawn_now(worker_id)

    def warm(self, stdlib: list[str]) -> None:
        """The first worker's report of the standard modules its activities imported."""
        fs = self._forkserver
        if stdlib and fs is not None and not fs.dead:
            fs.warm(stdlib)

    # -- starting workers ------------------------------------------------------------------
    def spawn(self, worker_id: int, *, now: bool) -> None:
        """Start a worker for slot ``worker_id``; ``now`` when no caller waits on this turn."""
        if now or self.forking:
            # starting up (no caller waits), or a request to the fork server (no wait here)
            self.loop.call_soon(self._spawn_now, worker_id)
            return
        # A replacement by posix_spawn: start it a moment later. os.posix_spawn holds the GIL
        # until the child has exec'd (milliseconds on a loaded machine), and a caller just
        # woken with the dead worker's error needs the GIL to see it first.
        self.loop.call_later(SPAWN_DELAY, self._spawn_now, worker_id)

    def _spawn_now(self, worker_id: int) -> None:
        if not self.listener.wanted(worker_id):
            return  # gone before it started (pool cancelled, start timeout)
        fs = self._forkserver
        if fs is not None and not fs.dead:
            try:
                fs.request(worker_id)  # answered in _on_forkserver
                return
            except OSError as exc:
                log.warning("the fork server failed (%s): spawning workers instead", exc)
                self._drop_forkserver()
        try:
            proc = spawn_worker(self._env)
        except OSError as exc:
            self.listener.not_started(worker_id, str(exc))
            return
        self._adopt(worker_id, proc)

    def _adopt(self, worker_id: int, proc: WorkerProcess) -> None:
        cpus = self.config.cpu_affinity
        if cpus is not None:
            try:
                os.sched_setaffinity(proc.pid, cpus[(worker_id - 1) % len(cpus)])
            except OSError as exc:  # a CPU outside our cgroup: run unpinned, say so
                log.warning("worker %d: cannot pin to %s: %s", worker_id, sorted(cpus[0]), exc)
        self.listener.started(worker_id, proc)

    def init_settings(self, worker_id: int) -> bytes:
        """The body of a new worker's INIT frame."""
        init = dict(self._init, worker_id=worker_id)
        fs = self._forkserver
        if fs is not None and fs.wants_warming():
            init["report_stdlib"] = True  # which standard modules your activities needed
        return pickle.dumps(init, protocol=5)

    # -- exits -----------------------------------------------------------------------------
    def watch_exit(self, proc: WorkerProcess, on_exit: Callable[[], None]) -> None:
        """Call ``on_exit`` once ``proc``'s exit status is known (it closed its pipe, or was
        killed): now, on its fork server's report, or when its pidfd turns readable."""
        if proc.poll():
            on_exit()
        elif proc.forked_by is not None and not proc.forked_by.dead:
            self._awaiting[proc] = on_exit  # its fork server reports the exit
        elif proc.pidfd is not None:
            self.loop.add_reader(proc.pidfd, self._on_pidfd, proc, on_exit)
        else:  # no pidfd: it closed its pipe, so it is exiting; a short blocking wait
            proc.wait()
            on_exit()

    def _on_pidfd(self, proc: WorkerProcess, on_exit: Callable[[], None]) -> None:
        if proc.poll():
            assert proc.pidfd is not None
            self.loop.remove_reader(proc.pidfd)
            on_exit()

    def release(self, proc: WorkerProcess) -> None:
        """The supervisor is done with ``proc``: close its fds; its fork server may reap it."""
        self._awaiting.pop(proc, None)
        if proc.fds_closed:
            return
        if proc.pidfd is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(proc.pidfd)
        proc.close_fds()
        if proc.forked_by is not None and proc.reaped:
            proc.forked_by.reap(proc)  # (not reaped yet: its exit report reaps it)

    def reap_unclaimed(self, proc: WorkerProcess) -> None:
        """An exit the fork server reported for a process already released: let it go."""
        if proc.forked_by is not None:
            proc.forked_by.reap(proc)

    def close(self) -> None:
        """Stop the fork server (it kills and reaps whatever it still has) and free the probe."""
        fs = self._forkserver
        if fs is not None:
            self._forkserver = None
            if not fs.dead:
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(fs.fileno())
            fs.close()
        if self.shm_probe is not None:
            os.close(self.shm_probe)
            self.shm_probe = None


def _log_levels() -> dict[str, int]:
    """The caller's logging levels a worker applies to its loggers: the root's effective
    level (under "") and every level set on a logger by name."""
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels
