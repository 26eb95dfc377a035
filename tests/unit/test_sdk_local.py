import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sdk import (
    ActivityError,
    ActivityInputError,
    ActivityTimeoutError,
    ApplicationError,
    Depends,
    RetryPolicy,
    StickyWorkerSession,
    StickyWorkerSessionMissingError,
    TimeoutType,
    activity,
    activity_heartbeat,
    run_activities_locally,
    run_sticky_worker_session,
)

FAST = 0.001
COUNTS: dict[str, int] = {}
SEEN: list[Any] = []
TEARDOWNS: list[str] = []


def bump(key: str) -> int:
    COUNTS[key] = COUNTS.get(key, 0) + 1
    return COUNTS[key]


@pytest.fixture(autouse=True)
def _reset() -> None:
    COUNTS.clear()
    SEEN.clear()
    TEARDOWNS.clear()


@activity
async def loc_add(a: int, b: int = 1) -> int:
    return a + b


@activity(retry_policy_initial_interval=FAST)
async def loc_flaky_async(fail_times: int) -> str:
    if bump("flaky_async") <= fail_times:
        raise ValueError("flaky")
    return "ok"


@activity(retry_policy_initial_interval=FAST)
def loc_flaky_sync(fail_times: int) -> str:
    if bump("flaky_sync") <= fail_times:
        raise ValueError("flaky")
    return "ok"


@activity(retry_policy_initial_interval=FAST, retry_policy_max_attempts=5)
def loc_heartbeat_resume() -> Any:
    info = activity.info()
    SEEN.append(info.heartbeat_details)
    if info.attempt == 1:
        activity.heartbeat({"done": 10})
        raise ValueError("first")
    if info.attempt == 2:
        raise ValueError("second, no heartbeat")  # hands on the attempt-1 details
    if info.attempt == 3:
        activity_heartbeat(1, 2)
        raise ValueError("third")
    return info.heartbeat_details


@activity(retry_policy_initial_interval=FAST)
async def loc_non_retryable() -> None:
    bump("non_retryable")
    raise ApplicationError("nope", non_retryable=True)


@activity(retry_policy_initial_interval=FAST, non_retryable_error_types=(KeyError,))
async def loc_listed_error() -> None:
    bump("listed")
    raise KeyError("k")


@activity(
    start_to_close_timeout=0.05, retry_policy_initial_interval=FAST, retry_policy_max_attempts=2
)
async def loc_slow_async() -> None:
    bump("slow_async")
    activity.heartbeat("started")
    await asyncio.sleep(10)


@activity(start_to_close_timeout=0.05, retry_policy_max_attempts=1)
def loc_slow_sync() -> None:
    while not activity.is_cancelled():
        time.sleep(0.005)
    SEEN.append("saw cancel")


@activity(
    schedule_to_close_timeout=0.1,
    start_to_close_timeout=None,
    retry_policy_initial_interval=0.02,
    retry_policy_max_attempts=0,
)
async def loc_never_succeeds() -> None:
    bump("never")
    raise ValueError("again")


@activity(heartbeat_timeout=1.0)
async def loc_with_heartbeat_timeout() -> str:
    return "hb"


@activity(sticky_to_worker=True)
async def loc_sticky() -> Any:
    state = activity.session_state()
    state["n"] = state.get("n", 0) + 1
    return activity.info().session_id, state["n"]


@activity
async def loc_inner(x: int) -> int:
    return x * 2


@activity(retry_policy_initial_interval=FAST)
async def loc_outer(x: int) -> int:
    n = bump("outer")
    inner = await loc_inner(x)
    if n == 1:
        raise ValueError("outer fails once")
    return inner


@activity
def loc_returns_bad() -> int:
    return "x"  # type: ignore[return-value]


def loc_resource() -> Iterator[str]:
    bump("resource")
    yield "res"
    TEARDOWNS.append("res")


@activity
def loc_uses_resource(r: str = Depends(loc_resource)) -> str:
    return r + str(threading.current_thread() is threading.main_thread())


@activity
async def loc_uses_resource_async(r: str = Depends(loc_resource)) -> str:
    return r


@activity(retry_policy_initial_interval=FAST)
async def loc_next_retry_delay() -> float:
    if bump("delay") == 1:
        raise ApplicationError("later", next_retry_delay=0.05)
    return time.monotonic()


def test_sync_cm_run_and_validation() -> None:
    with run_activities_locally() as r:
        assert r.run(loc_add, "2") == 3
        assert r.run("loc_add", 1, b=5) == 6
        with pytest.raises(ActivityInputError):
            r.run(loc_add, "x")
        with pytest.raises(ActivityInputError):
            r.run("loc_missing_name")


def test_async_cm_ambient_dispatch_and_retries() -> None:
    async def main() -> Any:
        async with run_activities_locally() as r:
            assert await loc_flaky_async(2) == "ok"
            assert await r.execute(loc_flaky_sync, 1) == "ok"
            return r

    asyncio.run(main())
    assert COUNTS == {"flaky_async": 3, "flaky_sync": 2}


def test_retries_exhausted_gives_activity_error() -> None:
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_flaky_sync, 10)
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.cause is info.value.__cause__


def test_a_local_failure_reads_as_a_pool_failure() -> None:
    # the same message as the pool's scheduler gives, and the traceback text of the failure
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_flaky_sync, 10)
    assert str(info.value).startswith(
        "activity 'loc_flaky_sync' failed after 3 attempts: ValueError"
    )
    assert info.value.remote_traceback is not None
    assert "loc_flaky_sync" in info.value.remote_traceback
    assert "ValueError" in info.value.remote_traceback


def test_default_retry_policy_from_runner() -> None:
    with run_activities_locally(retry_policy=RetryPolicy(maximum_attempts=5)) as r:
        assert r.run(loc_flaky_sync, 4) == "ok"
    assert COUNTS["flaky_sync"] == 5


def test_heartbeat_details_reach_next_attempt() -> None:
    with run_activities_locally() as r:
        assert r.run(loc_heartbeat_resume) == (1, 2)
    assert SEEN == [None, {"done": 10}, {"done": 10}, (1, 2)]


def test_non_retryable() -> None:
    async def main() -> None:
        async with run_activities_locally():
            with pytest.raises(ActivityError) as info:
                await loc_non_retryable()
            assert info.value.attempts == 1
            assert isinstance(info.value.__cause__, ApplicationError)
            with pytest.raises(ActivityError) as info:
                await loc_listed_error()
            assert info.value.attempts == 1

    asyncio.run(main())
    assert COUNTS == {"non_retryable": 1, "listed": 1}


def test_start_to_close_timeout_async() -> None:
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_slow_async)
    assert info.value.attempts == 2
    cause = info.value.__cause__
    assert isinstance(cause, ActivityTimeoutError)
    assert cause.type is TimeoutType.START_TO_CLOSE
    assert cause.last_heartbeat_details == "started"
    assert COUNTS["slow_async"] == 2


def test_start_to_close_timeout_sync_thread_sees_cancel() -> None:
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_slow_sync)
    assert isinstance(info.value.__cause__, ActivityTimeoutError)
    deadline = time.monotonic() + 2
    while not SEEN and time.monotonic() < deadline:
        time.sleep(0.005)
    assert SEEN == ["saw cancel"]


def test_schedule_to_close_timeout_not_retried() -> None:
    start = time.monotonic()
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_never_succeeds)
    elapsed = time.monotonic() - start
    cause = info.value.__cause__
    assert isinstance(cause, ActivityTimeoutError)
    assert cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    assert 0.09 < elapsed < 1.0
    assert COUNTS["never"] >= 2


def test_next_retry_delay_overrides_backoff() -> None:
    with run_activities_locally() as r:
        start = time.monotonic()
        end = r.run(loc_next_retry_delay)
    assert end - start >= 0.05


def test_heartbeat_timeout_warns_once() -> None:
    with run_activities_locally() as r:
        with pytest.warns(RuntimeWarning, match="heartbeat_timeout"):
            assert r.run(loc_with_heartbeat_timeout) == "hb"
        assert r.run(loc_with_heartbeat_timeout) == "hb"  # no second warning (error filter)


def test_sticky_requires_session_and_shares_state() -> None:
    async def main() -> None:
        async with run_activities_locally():
            with pytest.raises(StickyWorkerSessionMissingError):
                await loc_sticky()
            async with run_sticky_worker_session() as s:
                assert await loc_sticky() == (s.session_id, 1)
                assert await loc_sticky() == (s.session_id, 2)
            async with run_sticky_worker_session() as s2:
                assert await loc_sticky() == (s2.session_id, 1)

    asyncio.run(main())


def test_sticky_sync_with_given_session() -> None:
    session = StickyWorkerSession("mine")
    with run_activities_locally() as r, run_sticky_worker_session(session):
        assert r.run(loc_sticky) == ("mine", 1)
    assert not session.closed


def test_nested_call_is_plain_and_outer_is_retry_boundary() -> None:
    with run_activities_locally() as r:
        assert r.run(loc_outer, 3) == 6
    assert COUNTS["outer"] == 2


def test_result_validation_failure_is_not_retried() -> None:
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_returns_bad)
    assert info.value.attempts == 1
    assert isinstance(info.value.__cause__, ApplicationError)
    assert info.value.__cause__.type == "ResultValidationError"


def test_depends_made_once_per_runner_and_torn_down() -> None:
    with run_activities_locally() as r:
        assert r.run(loc_uses_resource) == "resFalse"  # sync activities run in a thread
        assert r.run(loc_uses_resource) == "resFalse"
        assert r.run(loc_uses_resource_async) == "res"
        assert TEARDOWNS == []
    assert COUNTS["resource"] == 1
    assert TEARDOWNS == ["res"]

    async def main() -> None:
        async with run_activities_locally():
            assert await loc_uses_resource_async() == "res"

    asyncio.run(main())
    assert TEARDOWNS == ["res", "res"]


def test_run_inside_running_loop_is_refused() -> None:
    async def main() -> None:
        with run_activities_locally() as r, pytest.raises(RuntimeError, match="execute"):
            r.run(loc_add, 1)

    asyncio.run(main())


def test_ambient_dispatcher_cleared_after_exit() -> None:
    from sdk._context import current_dispatcher

    with run_activities_locally() as r:
        assert current_dispatcher() is r
    assert current_dispatcher() is None


class _BadStr(Exception):
    def __str__(self) -> str:
        raise ValueError("no str for you")


@activity(retry_policy_max_attempts=2, retry_policy_initial_interval=FAST)
def loc_raise_bad_str() -> None:
    bump("bad_str")
    raise _BadStr()


def test_exception_whose_str_raises_follows_the_retry_policy() -> None:
    with run_activities_locally() as r, pytest.raises(ActivityError) as info:
        r.run(loc_raise_bad_str)
    assert info.value.attempts == 2 and COUNTS["bad_str"] == 2
    assert isinstance(info.value.__cause__, _BadStr)
    assert "<str() of _BadStr failed: ValueError: no str for you>" in str(info.value)
