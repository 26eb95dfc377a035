"""Sticky sessions pin to one worker; losing that worker loses the session, and only it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


async def test_session_runs_on_one_pid_in_order():
    async with Pool([acts], workers=2) as pool:
        async with sdk.run_sticky_worker_session() as session:
            assert sdk.get_sticky_worker_session() is session
            pid = await pool.execute(acts.load_model, "small")
            results = await asyncio.gather(*(pool.execute(acts.predict, str(i)) for i in range(20)))
        assert sdk.get_sticky_worker_session() is None
    assert {r[0] for r in results} == {pid}
    assert {r[1] for r in results} == {"small"}
    assert [r[2] for r in results] == list(range(1, 21))  # in order, sharing session state
    assert [r[3] for r in results] == [str(i) for i in range(20)]


async def test_sticky_without_session_and_pool_session():
    async with Pool([acts], workers=2) as pool:
        with pytest.raises(sdk.StickyWorkerSessionMissingError):
            await pool.execute(acts.predict, "x")
        async with pool.sticky_session() as s:
            pid = await s.execute(acts.load_model, "m")
            assert (await s.execute(acts.predict, "y"))[:2] == (pid, "m")
            # the session is ambient inside the block too
            assert (await pool.execute(acts.predict, "z"))[:2] == (pid, "m")
            with pytest.raises(RuntimeError, match="block"):
                s.run(acts.predict, "blocking on the loop")


def test_two_sessions_spread_over_two_workers():
    with Pool([acts], workers=2) as pool:
        with pool.sticky_session() as a, pool.sticky_session() as b:
            pid_a = a.run(acts.load_model, "a")
            pid_b = b.run(acts.load_model, "b")
            assert pid_a != pid_b
            assert a.run(acts.predict, "1")[:2] == (pid_a, "a")
            assert b.run(acts.predict, "1")[:2] == (pid_b, "b")
            # non-sticky work still runs anywhere
            assert pool.run(acts.add, 1, 1) == 2


def test_session_state_dropped_when_session_closes():
    with Pool([acts], workers=1) as pool:
        with pool.sticky_session() as s:
            s.run(acts.load_model, "m")
            assert s.run(acts.predict, "x")[1] == "m"
        with pool.sticky_session() as s2:
            assert s2.run(acts.predict, "x")[1:3] == (None, 1)


def test_lost_worker_fails_that_session_only():
    with Pool([acts], workers=2) as pool:
        with pool.sticky_session() as doomed, pool.sticky_session() as other:
            doomed.run(acts.load_model, "a")
            other.run(acts.load_model, "b")
            in_flight = doomed.submit(acts.sticky_crash)
            queued = doomed.submit(acts.predict, "later")
            with pytest.raises(sdk.StickySessionLostError) as info:
                in_flight.result(timeout=5)
            assert isinstance(info.value.__cause__, sdk.WorkerCrashedError)
            with pytest.raises(sdk.StickySessionLostError):
                queued.result(timeout=5)
            with pytest.raises(sdk.StickySessionLostError):
                doomed.run(acts.predict, "after")
            assert other.run(acts.predict, "fine")[1] == "b"
            assert pool.run(acts.add, 2, 2) == 4


def test_sticky_timeout_loses_the_session_with_the_timeout_as_cause():
    with Pool([acts], workers=1) as pool, pool.sticky_session() as s:
        s.run(acts.load_model, "a")
        with pytest.raises(sdk.StickySessionLostError) as info:
            s.run(acts.sticky_hang)
        cause = info.value.__cause__
        assert isinstance(cause, sdk.ActivityTimeoutError)
        assert cause.type is sdk.TimeoutType.START_TO_CLOSE


def test_ordinary_failure_retries_on_the_same_worker():
    with Pool([acts], workers=2) as pool, pool.sticky_session() as s:
        pid = s.run(acts.load_model, "a")
        assert s.run(acts.sticky_flaky) == (pid, 2)


async def test_sticky_cancel_kills_and_loses_session(tmp_path):
    marker = str(tmp_path / "m")
    async with Pool([acts], workers=1, cancel_grace=5) as pool:
        async with sdk.run_sticky_worker_session():
            pid = await pool.execute(acts.load_model, "a")
            task = asyncio.ensure_future(pool.execute(acts.sticky_sleep, 30, marker))
            while not os.path.exists(marker + ".started"):  # cancel it while it runs
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with pytest.raises(sdk.StickySessionLostError) as info:
                await pool.execute(acts.predict, "x")
            assert isinstance(info.value.__cause__, asyncio.CancelledError)
        # the worker was killed at once, not after the 5 s grace
        assert await pool.execute(acts.pid_of) != pid
        assert time.monotonic() - t0 < 3


def test_worker_with_pinned_session_is_not_recycled():
    with Pool([acts], workers=1, max_tasks_per_worker=2) as pool, pool.sticky_session() as s:
        pid = s.run(acts.load_model, "a")
        pids = {s.run(acts.predict, str(i))[0] for i in range(5)}
        assert pids == {pid}


def test_a_retried_sticky_call_keeps_its_place_in_the_session(tmp_path):
    """A raises once and is retried; B and C, submitted with it, wait until it has ended."""
    path = str(tmp_path / "order")
    with Pool([acts], workers=2) as pool, pool.sticky_session() as s:
        futures = [
            s.submit(acts.sticky_step, path, "A", True),
            s.submit(acts.sticky_step, path, "B"),
            s.submit(acts.sticky_step, path, "C"),
        ]
        results = [f.result(timeout=10) for f in futures]
    assert results[-1] == ["A1", "A2", "B1", "C1"]
    assert Path(path).read_text().split() == ["A1", "A2", "B1", "C1"]


def test_no_call_of_a_lost_session_runs_once_it_is_lost(tmp_path):
    """A fails and waits for its retry; B and C wait behind it. The worker dies: all three fail
    at once (not when A's retry was due), none runs again, and later calls fail too."""
    path = str(tmp_path / "order")
    with Pool([acts], workers=2) as pool, pool.sticky_session() as s:
        pid = s.run(acts.load_model, "m")
        a = s.submit(acts.sticky_step_slow_retry, path, "A", True)
        b = s.submit(acts.sticky_step_slow_retry, path, "B")
        c = s.submit(acts.sticky_step_slow_retry, path, "C")
        deadline = time.monotonic() + 5
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        for f in (a, b, c):
            with pytest.raises(sdk.StickySessionLostError):
                f.result(timeout=4)
        assert time.monotonic() - t0 < 3  # A's retry was 5 s away
        with pytest.raises(sdk.StickySessionLostError):
            s.run(acts.sticky_step_slow_retry, path, "D")
        assert pool.run(acts.add, 1, 2) == 3
    assert Path(path).read_text().split() == ["A1"]
