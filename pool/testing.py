"""Test helpers: run one activity in-process, and find what a test left behind.

- :class:`ActivityEnvironment` runs one attempt of an activity in this process, as a worker
  would (``sdk._attempt``, the very code the worker runs): heartbeats recorded, attempt and
  previous details set, cancellation, ``Depends`` overrides.
- :class:`LeakGuard` snapshots processes and pipes and says what a test left behind.

The pytest plugin (``pool.pytest_plugin``) builds its fixtures on these; they work without
pytest too. Heavy imports (the pool runtime, psutil) happen on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdk._attempt import Host, arun_attempt, attempt_info, run_attempt
from sdk._context import ActivityContext
from sdk._definition import get_definition
from sdk._depends import ResourceCache, close_private_loop

if TYPE_CHECKING:
    import psutil

    from pool._pool import Pool
    from sdk._context import ActivityInfo
    from sdk._definition import ActivityDefinition
    from sdk._depends import Dependency

__all__ = [
    "ActivityEnvironment",
    "LeakGuard",
    "forget_open_pool",
    "note_open_pool",
    "open_pool_worker_pids",
]

# How long a leak may take to clear before it is reported (ini activity_pool_leak_timeout).
# A closed pool has reaped its workers already; the grace is for the activities' own children
# and a session pool replacing a worker as the test ends.
LEAK_SETTLE = 1.0

# Pools that test fixtures hold open: their workers and pipes are no leak of a *different*
# fixture (the session pool replacing a worker during a test, say).
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def note_open_pool(pool: Pool) -> None:
    """``pool`` is held open by a fixture: no other guard counts its processes as leaks."""
    _live_pools.add(pool)


def forget_open_pool(pool: Pool) -> None:
    """``pool`` is being closed: what it leaves behind counts again."""
    _live_pools.discard(pool)


def open_pool_worker_pids() -> set[int]:
    """Pids of the processes (workers, fork server) of every pool test fixtures hold open.

    A session pool outlives the tests that use it: a process-leak check of your own should
    leave these alone.
    """
    return {pid for pool in list(_live_pools) for pid in pool._process_pids()}


# -- leak guard ------------------------------------------------------------------------------


def _pipe_inodes(pid: int | str = "self") -> dict[int, str]:
    """fd -> ``pipe:[inode]`` for every pipe ``pid`` holds open."""
    out: dict[int, str] = {}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for name in names:
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            out[int(name)] = target
    return out


def _children() -> dict[int, psutil.Process]:
    import psutil

    return {p.pid: p for p in psutil.Process().children(recursive=True)}


_warmed_up = False


def _warm_up_event_loop() -> None:
    # libuv creates one process-wide pipe pair the first time any uvloop loop runs; made before
    # the first snapshot, it is not mistaken for a pipe the first pool leaked.
    global _warmed_up
    if _warmed_up:
        return
    _warmed_up = True
    from pool._pool import _new_loop

    loop = _new_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def _marked_processes() -> dict[int, str]:
    from pool._tree import marked

    return marked()


class LeakGuard:
    """Snapshots processes and pipes; :meth:`check` says what was left behind.

    Take it before the pools start and :meth:`watch` each pool; check after closing them.
    Workers of other plugin-managed pools that are still open (and the pipes they share with
    this process) are not counted.

    Beyond this process's children, it finds what escaped them: any process whose environment
    carries the marker of a watched pool (``Pool.pool_id``, inherited by what an activity
    starts), or of another pool of this process that is not open, once it is no longer a
    descendant of this process (adopted by init). See docs/testing.md for what a marker misses.
    """

    def __init__(self) -> None:
        _warm_up_event_loop()
        self.children = set(_children())
        self.pipes = _pipe_inodes()
        self.pools: list[Pool] = []
        self.worker_pids: set[int] = set()

    def watch(self, pool: Pool) -> None:
        self.pools.append(pool)
        self.note_workers()

    def note_workers(self) -> None:
        """Remember the current workers of the watched pools (call before closing them)."""
        for pool in self.pools:
            self.worker_pids.update(pool.worker_pids())

    def leaks(self) -> list[str]:
        """One look: every process and pipe fd that should be gone and is not."""
        import psutil

        others = [p for p in list(_live_pools) if p not in self.pools]
        other_workers = {pid for p in others for pid in p._process_pids()}
        other_pipes = {t for pid in other_workers for t in _pipe_inodes(pid).values()}
        problems = []
        children = _children()
        for pid, proc in sorted(children.items()):
            if pid in other_workers:
                continue
            try:
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                cmd = "" if zombie else " ".join(proc.cmdline()[:4])
            except psutil.Error:  # gone meanwhile
                continue
            if pid in self.worker_pids:
                if zombie:
                    problems.append(f"worker process {pid} of the pool exited but was never reaped")
                else:
                    problems.append(f"worker process {pid} of the pool is still running ({cmd})")
            elif pid not in self.children and not zombie:
                problems.append(f"process {pid} started during the test is still running ({cmd})")
        for pid, pool_id in sorted(self._marked(others).items()):
            if pid in self.worker_pids or pid in children:
                continue  # named above, if it is a leak
            try:
                proc = psutil.Process(pid)
                cmd, parent = " ".join(proc.cmdline()[:4]), proc.ppid()
            except psutil.Error:  # gone meanwhile
                continue
            problems.append(
                f"process {pid} started by pool {pool_id} is still running, adopted by "
                f"pid {parent} ({cmd})"
            )
        for fd, target in sorted(_pipe_inodes().items()):
            if self.pipes.get(fd) != target and target not in other_pipes:
                problems.append(f"pipe fd {fd} ({target}) is still open")
        return problems

    def _marked(self, others: list[Pool]) -> dict[int, str]:
        """pid -> pool id of the live processes that carry the marker of a watched pool, or
        of this process's pools that are not open elsewhere and escaped our tree."""
        watched = {pid for p in self.pools if (pid := getattr(p, "pool_id", None))}
        still_open = {p.pool_id for p in others}
        mine = f"{os.getpid()}."
        found: dict[int, str] = {}
        descendants: set[int] | None = None
        for pid, pool_id in _marked_processes().items():
            if pool_id in watched:
                found[pid] = pool_id
            elif pool_id.startswith(mine) and pool_id not in still_open:
                if descendants is None:
                    descendants = set(_children())
                if pid not in descendants:
                    found[pid] = pool_id
        return found

    def check(self, settle: float = LEAK_SETTLE) -> list[str]:
        """Wait up to ``settle`` seconds for leaks to clear; kill leaked processes; report."""
        deadline = time.monotonic() + settle
        while True:
            problems = self.leaks()
            if not problems or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        if problems:
            self._kill_leftovers()
        return problems

    def _kill_leftovers(self) -> None:
        import psutil

        other_pools = [pool for pool in list(_live_pools) if pool not in self.pools]
        others = {p for pool in other_pools for p in pool._process_pids()}
        leftovers = [
            proc
            for pid, proc in _children().items()
            if pid not in self.children and pid not in others
        ]
        for proc in leftovers:
            try:
                proc.kill()
                proc.wait(1.0)
            except (psutil.Error, TimeoutError):
                pass
        # not our children: dead once they exit (their pidfd says so), whenever init reaps them
        exits = []
        for pid in self._marked(other_pools):
            with contextlib.suppress(OSError):
                exits.append(os.pidfd_open(pid))
                signal.pidfd_send_signal(exits[-1], signal.SIGKILL)
        deadline = time.monotonic() + 1.0
        for fd in exits:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            os.close(fd)


# -- one activity in-process -----------------------------------------------------------------


@dataclass
class _Running:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Future[Any]


class ActivityEnvironment(Host):
    """Run one activity in this process as if inside a worker, without a pool.

    Set ``attempt``, ``heartbeat_details`` (what the previous attempt heartbeated),
    ``session_id``/``session_state`` and Depends ``overrides`` (factory -> value) before
    :meth:`run` (sync) or :meth:`arun` (async tests). Every heartbeat lands in ``heartbeats``
    and is passed to ``on_heartbeat``; :meth:`cancel` (from any thread, or from ``on_heartbeat``)
    makes ``activity.is_cancelled()`` true and cancels a running async activity, which then
    raises ``CancelledError`` as in a worker. No timeout is enforced and there are no retries:
    one call is one attempt. Arguments and the result are validated as a pool validates them.
    """

    def __init__(self) -> None:
        self.attempt = 1
        self.heartbeat_details: Any = None
        self.activity_id = "activity-env"
        self.worker_id: int | None = None
        self.session_id: str | None = None
        self.session_state: dict[str, Any] = {}
        self.heartbeats: list[Any] = []
        self.on_heartbeat: Callable[[Any], None] | None = None
        self.overrides: dict[Callable[..., Any], Any] = {}
        self.info: ActivityInfo | None = None
        """The ActivityInfo of the last run."""
        self._cancelled = threading.Event()
        self._running: _Running | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resources: ResourceCache | None = None

    # -- controls ------------------------------------------------------------------------------

    def override(self, factory: Callable[..., Any], value: Any) -> None:
        """Inject ``value`` wherever ``Depends(factory)`` is a parameter default."""
        self.overrides[factory] = value

    def cancel(self) -> None:
        """Request cancellation of the running (or next) activity; safe from any thread."""
        self._cancelled.set()
        with self._lock:
            running = self._running
        if running is not None and not running.loop.is_closed():
            running.loop.call_soon_threadsafe(running.task.cancel)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- running -------------------------------------------------------------------------------

    def run(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Run one attempt of ``fn`` to completion; async activities on a private loop."""
        defn = get_definition(fn)
        args, kwargs = defn.validate_args(args, kwargs)
        result = run_attempt(defn, self._context(defn), args, kwargs, self)
        return defn.validate_result(result)

    async def arun(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`run` for async tests: an async activity runs on the running loop, a sync one
        in a thread (so ``cancel()`` from the test can reach it)."""
        defn = get_definition(fn)
        args, kwargs = defn.validate_args(args, kwargs)
        # a sync activity is told through is_cancelled(); its thread's future is not cancelled
        on_start = self._started if defn.is_async else None
        try:
            result = await arun_attempt(defn, self._context(defn), args, kwargs, on_start=on_start)
        finally:
            self._finished()
        return defn.validate_result(result)

    def close(self) -> None:
        """Tear down the Depends resources made for the runs (not the overrides)."""
        if self._resources is not None:
            self._resources.close()
            self._resources = None
        if self._loop is not None:
            loop, self._loop = self._loop, None
            close_private_loop(loop)

    # -- the Host of sdk._attempt --------------------------------------------------------------

    def run_task(self, coro: Any) -> Any:
        """An async activity under :meth:`run`: a task on the private loop."""
        loop = self._private_loop()
        task = loop.create_task(coro)
        self._started(task)
        try:
            return loop.run_until_complete(task)
        finally:
            self._finished()

    # -- plumbing ------------------------------------------------------------------------------

    def _started(self, task: asyncio.Future[Any]) -> None:
        with self._lock:
            self._running = _Running(task.get_loop(), task)
        if self._cancelled.is_set():
            task.cancel()

    def _finished(self) -> None:
        with self._lock:
            self._running = None

    def _context(self, defn: ActivityDefinition) -> ActivityContext:
        self.info = attempt_info(
            self.activity_id,
            defn.name,
            self.attempt,
            time.time(),
            timeout=defn.start_to_close_timeout,
            worker_id=self.worker_id,
            session_id=self.session_id,
            heartbeat_timeout=defn.heartbeat_timeout,
            heartbeat_details=self.heartbeat_details,
        )
        return ActivityContext(
            info=self.info,
            heartbeat=self._heartbeat,
            is_cancelled=self._cancelled.is_set,
            session_state=self.session_state,
            resources=self._cache(),
        )

    def _heartbeat(self, details: Any) -> None:
        self.heartbeats.append(details)
        if self.on_heartbeat is not None:
            self.on_heartbeat(details)

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def _run_coroutine(self, coro: Any) -> Any:
        return self._private_loop().run_until_complete(coro)

    def _cache(self) -> ResourceCache:
        if self._resources is None:
            self._resources = _OverridingCache(self.overrides, self._run_coroutine)
        return self._resources


class _OverridingCache(ResourceCache):
    """A ResourceCache where overridden factories are never called (nested calls too)."""

    def __init__(
        self, overrides: dict[Callable[..., Any], Any], run_coroutine: Callable[[Any], Any]
    ) -> None:
        super().__init__(run_coroutine=run_coroutine)
        self.overrides = overrides

    def _split(
        self, deps: Mapping[str, Dependency], provided: Collection[str]
    ) -> tuple[dict[str, Any], set[str]]:
        chosen = {
            name: self.overrides[dep.factory]
            for name, dep in deps.items()
            if name not in provided and dep.factory in self.overrides
        }
        return chosen, {*provided, *chosen}

    def missing(self, deps: Mapping[str, Dependency], provided: Collection[str] = ()) -> bool:
        return super().missing(deps, self._split(deps, provided)[1])

    def resolve(
        self, deps: Mapping[str, Dependency], provided: Collection[str] = ()
    ) -> dict[str, Any]:
        chosen, provided = self._split(deps, provided)
        return {**super().resolve(deps, provided), **chosen}

    async def aresolve(
        self, deps: Mapping[str, Dependency], provided: Collection[str] = ()
    ) -> dict[str, Any]:
        chosen, provided = self._split(deps, provided)
        return {**await super().aresolve(deps, provided), **chosen}
