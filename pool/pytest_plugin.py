"""pytest plugin: pools as fixtures, one activity in-process, fault injection, a leak guard.

Registered through the ``pytest11`` entry point, so installing activitypool is enough. Fixtures:

- ``activity_pool``: a started ``Pool`` for one test (marker ``activity_pool(...)`` / ini options).
- ``activity_pool_session``: one pool shared by every test of the session (restarted after a
  test that fails, so a hung or broken worker never reaches the next test).
- ``pool_factory``: ``pool_factory(activities, **pool_kwargs)`` makes as many pools as a test needs.
- ``activity_env``: an :class:`ActivityEnvironment` that runs one activity in this process as a
  worker would (heartbeats recorded, attempt and previous details set, cancellation, Depends
  overrides).

Every pool fixture closes its pools with ``cancel=True`` at teardown (bounded: busy workers are
killed, nothing is drained), then fails the test if a worker process or a pipe is left behind,
or anything the pool's activities started, found by the pool's marker in its environment even
once init has adopted it (shared-memory segments are memfds, which the kernel frees with their
processes). When an
activity call fails in a test, the report gets a section with the remote traceback, and one
with the lines the pool's workers printed during the test.

Heavy imports (the pool runtime, uvloop, pydantic) happen when a fixture is first used: every
pytest run of a project that merely has activitypool installed loads this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import os
import select
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import psutil

    from pool._pool import Pool
    from sdk._context import ActivityInfo
    from sdk._definition import ActivityDefinition
    from sdk._depends import ResourceCache

__all__ = ["ActivityEnvironment", "LeakGuard", "PoolFactory", "open_pool_worker_pids"]

# How long a leak may take to clear before it is reported (ini activity_pool_leak_timeout).
# A closed pool has reaped its workers already; the grace is for the activities' own children
# and a session pool replacing a worker as the test ends.
LEAK_SETTLE = 1.0
# Worker output travels on its own pipe and may trail the failure it explains: wait for this
# much quiet (at most OUTPUT_SETTLE_MAX) before the report is written. Only on failures.
OUTPUT_QUIET = 0.05
OUTPUT_SETTLE_MAX = 0.3

# Pools made by this plugin that are still open: their workers and pipes are no leak of a
# *different* fixture (the session pool replacing a worker during a test, say).
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


def open_pool_worker_pids() -> set[int]:
    """Pids of the processes (workers, fork server) of every pool this plugin's fixtures hold
    open.

    A session pool outlives the tests that use it: a process-leak check of your own should
    leave these alone.
    """
    return {pid for pool in list(_live_pools) for pid in pool._process_pids()}


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_CAPTURES = pytest.StashKey[list[tuple["_OutputCapture", int]]]()


# -- configuration ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "activity_pool_workers",
        "worker processes of the pools the activity_pool fixtures make (default 2)",
        default="2",
    )
    parser.addini(
        "activity_pool_modules",
        "dotted module names whose activities the fixtures' pools preload",
        type="args",
        default=[],
    )
    parser.addini(
        "activity_pool_leak_check",
        "fail a test whose pools leave a process or a pipe behind",
        type="bool",
        default=True,
    )
    parser.addini(
        "activity_pool_leak_timeout",
        f"seconds a leak may take to clear before it is reported (default {LEAK_SETTLE})",
        default=str(LEAK_SETTLE),
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "activity_pool(*activities, **pool_kwargs): the Pool the activity_pool fixture makes "
        "(any Pool keyword; positional arguments are activities or modules)",
    )
    config.addinivalue_line(
        "markers",
        "activity_fault(activity, fault, *, attempt=1, times=1, exit_code=1, exception=None, "
        "memory=...): inject a fault (hang|crash|exit|raise|oom) into the pool of "
        "activity_pool / activity_pool_session for this test",
    )


def _ini_options(config: pytest.Config) -> dict[str, Any]:
    raw = config.getini("activity_pool_workers")
    try:
        workers = int(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"activity_pool_workers must be an int, got {raw!r}") from None
    return {"activities": list(config.getini("activity_pool_modules")), "workers": workers}


def _marker_options(item: pytest.Item, base: dict[str, Any]) -> dict[str, Any]:
    options = dict(base)
    # closest marker wins per keyword: apply the farthest (module, class) first
    for mark in reversed(list(item.iter_markers("activity_pool"))):
        kwargs = dict(mark.kwargs)
        if mark.args:
            kwargs["activities"] = [*mark.args, *kwargs.get("activities", ())]
        options.update(kwargs)
    return options


# -- reports ---------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    if report.failed:
        if call.excinfo is not None:
            text = _describe_activity_failure(call.excinfo.value)
            if text:
                report.sections.append((f"activitypool remote traceback ({report.when})", text))
        output = _captured_output(item)
        if output:
            report.sections.append((f"Captured activitypool worker output {report.when}", output))
    return report


def _describe_activity_failure(exc: BaseException) -> str | None:
    errors = sys.modules.get("sdk._errors")
    if errors is None:  # no activity ran in this process
        return None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, errors.ActivityError):
            return _format_activity_error(current, errors)
        current = current.__cause__ or current.__context__
    return None


def _format_activity_error(err: Any, errors: Any) -> str:
    safe_repr, safe_str = errors.safe_repr, errors.safe_str
    lines = [f"{type(err).__name__}: {err} (attempts={err.attempts})"]
    cause = err.__cause__
    tb = err.remote_traceback
    if cause is not None:
        lines.append(f"last failure: {type(cause).__name__}: {safe_str(cause)}")
        details = getattr(cause, "last_heartbeat_details", None)
        if details is not None:
            lines.append(f"last heartbeat details: {safe_repr(details)}")
        inner = cause
        while tb is None and inner is not None:
            if isinstance(inner, errors.RemoteTraceback):
                tb = inner.tb
            inner = inner.__cause__
    if tb:
        lines += ["", "remote traceback (in the worker):", tb.rstrip()]
    return "\n".join(lines)


class _OutputCapture:
    """``Pool(on_output=...)``: keeps every line the pool's workers print (loop thread)."""

    def __init__(self, chain: Callable[[int, str | None, str], None] | None = None) -> None:
        self.lines: list[str] = []
        self.last = 0.0
        self._chain = chain
        self._lock = threading.Lock()

    def __call__(self, worker_id: int, activity: str | None, text: str) -> None:
        with self._lock:
            self.lines.append(f"[worker {worker_id} {activity or '-'}] {text}")
            self.last = time.monotonic()
        if self._chain is not None:
            self._chain(worker_id, activity, text)

    def since(self, start: int) -> list[str]:
        with self._lock:
            return self.lines[start:]

    def mark(self) -> int:
        with self._lock:
            return len(self.lines)


def _watch_output(item: pytest.Item, capture: _OutputCapture) -> None:
    item.stash.setdefault(_CAPTURES, []).append((capture, capture.mark()))


def _captured_output(item: pytest.Item) -> str:
    captures = item.stash.get(_CAPTURES, [])
    if not captures:
        return ""
    end = time.monotonic() + OUTPUT_SETTLE_MAX
    while time.monotonic() < end:
        if all(time.monotonic() - c.last >= OUTPUT_QUIET for c, _ in captures):
            break
        time.sleep(0.01)
    return "\n".join(line for c, start in captures for line in c.since(start))


def _test_failed(item: pytest.Item) -> bool:
    reports = item.stash.get(_REPORTS, {})
    call = reports.get("call")
    setup = reports.get("setup")
    return call is None or call.failed or (setup is not None and setup.failed)


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


# -- pools -----------------------------------------------------------------------------------


def _start_pool(options: dict[str, Any]) -> tuple[Pool, _OutputCapture]:
    from pool._pool import Pool

    options = dict(options)
    activities = options.pop("activities", ())
    if isinstance(activities, str) or not isinstance(activities, Collection):
        activities = [activities]
    capture = _OutputCapture(options.pop("on_output", None))
    # `with` semantics: the supervisor runs on a background thread, so sync tests block on
    # run()/map() and async tests await execute() from their own loop. Not ambient: a session
    # pool would stay ambient for every later test; the fixtures make their pool ambient for one
    # test (_ambient).
    pool = Pool(activities, on_output=capture, ambient=False, **options)
    pool.__enter__()
    _live_pools.add(pool)
    return pool, capture


@contextlib.contextmanager
def _ambient(pool: Pool) -> Iterator[None]:
    """``await async_activity()`` in the test dispatches to ``pool``."""
    from sdk._context import reset_dispatcher, set_dispatcher

    token = set_dispatcher(pool)
    try:
        yield
    finally:
        try:
            reset_dispatcher(token)
        except ValueError:  # torn down in another context; the variable dies with it
            pass


def _close_pool(pool: Pool) -> BaseException | None:
    """Close with cancel=True: bounded (busy workers are killed), never drains abandoned work."""
    _live_pools.discard(pool)
    try:
        pool.close(cancel=True)
    except BaseException as exc:
        return exc
    return None


def _leaks(guard: LeakGuard, config: pytest.Config) -> list[str]:
    if not config.getini("activity_pool_leak_check"):
        return []
    raw = config.getini("activity_pool_leak_timeout")
    try:
        settle = float(raw)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"activity_pool_leak_timeout must be seconds, got {raw!r}")
    return guard.check(settle)


def _fail_on_leaks(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{what} left resources behind:\n  " + "\n  ".join(problems), pytrace=False)


class PoolFactory:
    """``pool_factory(activities, **pool_kwargs)``: started pools, all closed at teardown.

    Unset keywords take the ini defaults (``activity_pool_workers``, ``activity_pool_modules``).
    """

    def __init__(self, item: pytest.Item, defaults: dict[str, Any]) -> None:
        self._item = item
        self._defaults = defaults
        self.guard = LeakGuard()
        self.pools: list[Pool] = []

    def __call__(self, *activities: Any, **pool_kwargs: Any) -> Pool:
        options = {**self._defaults, **pool_kwargs}
        if activities:
            options["activities"] = [*activities, *pool_kwargs.get("activities", ())]
        pool, capture = _start_pool(options)
        self.pools.append(pool)
        self.guard.watch(pool)
        _watch_output(self._item, capture)
        return pool

    def close(self) -> list[BaseException]:
        self.guard.note_workers()
        errors = [_close_pool(pool) for pool in reversed(self.pools)]
        return [e for e in errors if e is not None]


def _apply_fault_markers(item: pytest.Item, pool: Pool) -> None:
    for mark in reversed(list(item.iter_markers("activity_fault"))):
        pool.inject_fault(*mark.args, **mark.kwargs)


def _teardown(factory: PoolFactory, request: pytest.FixtureRequest, what: str) -> None:
    errors = factory.close()
    _fail_on_leaks(_leaks(factory.guard, request.config), what)
    if errors:
        raise errors[0]


@pytest.fixture
def activity_pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A started Pool for this test; see the ``activity_pool`` marker and the ini options."""
    options = _marker_options(request.node, _ini_options(request.config))
    factory = PoolFactory(request.node, {})
    try:
        pool = factory(**options)
        _apply_fault_markers(request.node, pool)
        with _ambient(pool):
            yield pool
    finally:
        _teardown(factory, request, "activity_pool")


@pytest.fixture
def pool_factory(request: pytest.FixtureRequest) -> Iterator[PoolFactory]:
    """Make several pools with different options in one test; all closed at teardown."""
    factory = PoolFactory(request.node, _ini_options(request.config))
    try:
        yield factory
    finally:
        _teardown(factory, request, "pool_factory")


@pytest.fixture(scope="session")
def activity_pool_session_options(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Pool keywords of the session pool (override this fixture in a conftest.py)."""
    return _ini_options(pytestconfig)


class _SessionPool:
    """The session pool, started on first use and restarted after a failing test."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.pool: Pool | None = None
        self.capture: _OutputCapture | None = None
        self.guard: LeakGuard | None = None

    def get(self) -> tuple[Pool, _OutputCapture]:
        if self.pool is None or self.capture is None:
            self.guard = LeakGuard()
            self.pool, self.capture = _start_pool(self.options)
            self.guard.watch(self.pool)
        return self.pool, self.capture

    def discard(self, config: pytest.Config) -> tuple[list[str], BaseException | None]:
        pool, guard = self.pool, self.guard
        self.pool = self.capture = self.guard = None
        if pool is None or guard is None:
            return [], None
        guard.note_workers()
        error = _close_pool(pool)
        return _leaks(guard, config), error


@pytest.fixture(scope="session")
def _activitypool_session(
    activity_pool_session_options: dict[str, Any], pytestconfig: pytest.Config
) -> Iterator[_SessionPool]:
    holder = _SessionPool(activity_pool_session_options)
    yield holder
    problems, error = holder.discard(pytestconfig)
    _fail_on_leaks(problems, "activity_pool_session")
    if error is not None:
        raise error


@pytest.fixture
def activity_pool_session(
    request: pytest.FixtureRequest, _activitypool_session: _SessionPool
) -> Iterator[Pool]:
    """One Pool shared by every test of the session (configured by the ini options)."""
    holder = _activitypool_session
    pool, capture = holder.get()
    guard = LeakGuard()  # after the start: the session pool's own loop pipes are no leak
    _watch_output(request.node, capture)
    try:
        _apply_fault_markers(request.node, pool)
        with _ambient(pool):
            yield pool
    finally:
        pool.clear_faults()
        # a failed test may leave a hung or broken worker: the next test gets a fresh pool
        failed = _test_failed(request.node)
        problems, error = holder.discard(request.config) if failed else ([], None)
        problems += _leaks(guard, request.config)
        _fail_on_leaks(problems, "activity_pool_session")
        if error is not None:
            raise error


# -- one activity in-process -----------------------------------------------------------------


@dataclass
class _Running:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[Any]


class ActivityEnvironment:
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
        defn, args, kwargs = self._prepare(fn, args, kwargs)
        if defn.is_async:
            return self._private_loop().run_until_complete(self._run_async(defn, args, kwargs))
        return self._run_sync(defn, args, kwargs)

    async def arun(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """:meth:`run` for async tests: an async activity runs on the running loop, a sync one
        in a thread (so ``cancel()`` from the test can reach it)."""
        defn, args, kwargs = self._prepare(fn, args, kwargs)
        if defn.is_async:
            return await self._run_async(defn, args, kwargs)
        ctx = contextvars.copy_context()
        return await asyncio.to_thread(ctx.run, self._run_sync, defn, args, kwargs)

    def _run_sync(
        self, defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        token = self._enter(defn)
        try:
            kwargs = {**self._cache().resolve(defn, self._provided(defn, args, kwargs)), **kwargs}
            result = defn.fn(*args, **kwargs)
        finally:
            self._exit(token)
        return defn.validate_result(result)

    async def _run_async(
        self, defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        from sdk._context import set_activity

        provided = self._provided(defn, args, kwargs)
        kwargs = {**await self._cache().aresolve(defn, provided), **kwargs}
        ctx = contextvars.copy_context()
        ctx.run(set_activity, self._context(defn))
        loop = asyncio.get_running_loop()
        task = loop.create_task(defn.fn(*args, **kwargs), context=ctx)
        with self._lock:
            self._running = _Running(loop, task)
        if self._cancelled.is_set():
            task.cancel()
        try:
            result = await task
        finally:
            with self._lock:
                self._running = None
        return defn.validate_result(result)

    def close(self) -> None:
        """Tear down the Depends resources made for the runs (not the overrides)."""
        if self._resources is not None:
            self._resources.close()
            self._resources = None
        if self._loop is not None:
            from sdk._depends import close_private_loop

            loop, self._loop = self._loop, None
            close_private_loop(loop)

    # -- plumbing ------------------------------------------------------------------------------

    def _prepare(
        self, fn: Callable[..., Any] | str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[ActivityDefinition, tuple[Any, ...], dict[str, Any]]:
        from sdk._definition import get_definition

        defn = get_definition(fn)
        args, kwargs = defn.validate_args(args, kwargs)
        return defn, args, kwargs

    @staticmethod
    def _provided(
        defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> set[str]:
        return set(inspect.signature(defn.fn).bind_partial(*args, **kwargs).arguments)

    def _context(self, defn: ActivityDefinition) -> Any:
        from sdk._context import ActivityContext, ActivityInfo

        now = time.time()
        timeout = defn.start_to_close_timeout
        self.info = ActivityInfo(
            activity_id=self.activity_id,
            name=defn.name,
            attempt=self.attempt,
            worker_id=self.worker_id,
            pid=os.getpid(),
            session_id=self.session_id,
            started_at=now,
            deadline=now + timeout if timeout is not None else None,
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

    def _enter(self, defn: ActivityDefinition) -> Any:
        from sdk._context import set_activity

        return set_activity(self._context(defn))

    @staticmethod
    def _exit(token: Any) -> None:
        from sdk._context import reset_activity

        reset_activity(token)

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
            self._resources = _overriding_cache(self.overrides, self._run_coroutine)
        return self._resources


def _overriding_cache(
    overrides: dict[Callable[..., Any], Any], run_coroutine: Callable[[Any], Any]
) -> ResourceCache:
    from sdk._depends import ResourceCache

    class OverridingCache(ResourceCache):
        """A ResourceCache where overridden factories are never called (nested calls too)."""

        def _split(
            self, defn: ActivityDefinition, provided: Collection[str]
        ) -> tuple[dict[str, Any], set[str]]:
            chosen = {
                name: overrides[dep.factory]
                for name, dep in defn.depends_params().items()
                if name not in provided and dep.factory in overrides
            }
            return chosen, {*provided, *chosen}

        def resolve(
            self, defn: ActivityDefinition, provided: Collection[str] = ()
        ) -> dict[str, Any]:
            chosen, provided = self._split(defn, provided)
            return {**super().resolve(defn, provided), **chosen}

        async def aresolve(
            self, defn: ActivityDefinition, provided: Collection[str] = ()
        ) -> dict[str, Any]:
            chosen, provided = self._split(defn, provided)
            return {**await super().aresolve(defn, provided), **chosen}

    return OverridingCache(run_coroutine=run_coroutine)


@pytest.fixture
def activity_env(request: pytest.FixtureRequest) -> Iterator[ActivityEnvironment]:
    """An :class:`ActivityEnvironment`: run one activity in-process as a worker would."""
    guard = LeakGuard()
    env = ActivityEnvironment()
    try:
        yield env
    finally:
        env.close()
        _fail_on_leaks(_leaks(guard, request.config), "activity_env")
