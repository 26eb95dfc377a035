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

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Collection, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from pool.testing import (
    LEAK_SETTLE,
    ActivityEnvironment,
    LeakGuard,
    forget_open_pool,
    note_open_pool,
    open_pool_worker_pids,
)

if TYPE_CHECKING:
    from pool._pool import Pool

__all__ = ["ActivityEnvironment", "LeakGuard", "PoolFactory", "open_pool_worker_pids"]

# Worker output travels on its own pipe and may trail the failure it explains: wait for this
# much quiet (at most OUTPUT_SETTLE_MAX) before the report is written. Only on failures.
OUTPUT_QUIET = 0.05
OUTPUT_SETTLE_MAX = 0.3

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
    note_open_pool(pool)
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
    forget_open_pool(pool)
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
