"""The direct lane (pool._lane): while the pool has nothing else to do, a thread blocked in
``pool.run`` writes its call to a lent worker and reads the reply itself. It must change nothing
but latency: every value, error, retry, timeout, crash, output line and interruption is what
the loop gives, and a call that is anything but a quick RESULT is handed to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time

import pytest

from pool import Pool
from sdk import (
    ActivityError,
    ActivityTimeoutError,
    PoolClosedError,
    TimeoutType,
    WorkerCrashedError,
)
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(60)


def _lane(pool: Pool):  # (the lane is the supervisor's; these tests look at its counters)
    assert pool._sup is not None
    return pool._sup.lane


def test_sequential_calls_take_the_lane():
    with Pool([acts], workers=2) as pool:
        got = [pool.run(acts.add, i, 1) for i in range(200)]
        lane = _lane(pool)
        assert lane.channel is not None  # lent between calls
        answered = lane.n_completed
        stats = pool.stats()
    assert got == [i + 1 for i in range(200)]
    assert answered > 150  # the first call goes through the loop; it lends after it
    assert stats.completed == 200  # the lane's calls count in the pool's stats


def test_off_when_direct_run_is_zero():
    with Pool([acts], workers=2, direct_run=0) as pool:
        got = [pool.run(acts.add, i, 1) for i in range(50)]
        lane = _lane(pool)
        assert lane.channel is None and lane.n_completed == 0
    assert got == [i + 1 for i in range(50)]


def test_a_failure_is_retried_by_the_loop():
    with Pool([acts], workers=2) as pool:
        for i in range(5):
            pool.run(acts.add, i, 1)
        assert _lane(pool).channel is not None
        # attempt 1 fails on the lent worker; the loop retries it (attempt 2 succeeds)
        assert pool.run(acts.flaky, 1) == 2
        assert pool.run(acts.flaky, 2) == 3
        with pytest.raises(ActivityError) as info:
            pool.run(acts.always_fails)
        assert info.value.attempts == 3


def test_a_call_longer_than_the_window_is_handed_to_the_loop():
    with Pool([acts], workers=1, direct_run=0.005) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        for _ in range(3):
            assert isinstance(pool.run(acts.sleep_for, 0.03), int)
        # the second miss on the same worker sends the activity through the loop from then on
        assert "sleep_for" in _lane(pool).slow
        assert pool.run(acts.add, 2, 2) == 4


def test_deadline_and_heartbeat_kills_happen_on_a_lent_worker():
    with Pool([acts], workers=1, direct_run=0.5) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        t = time.monotonic()
        with pytest.raises(ActivityError) as info:
            pool.run(acts.hang_sleep)  # start_to_close_timeout=0.1
        assert isinstance(info.value.__cause__, ActivityTimeoutError)
        assert info.value.__cause__.type is TimeoutType.START_TO_CLOSE
        assert time.monotonic() - t < 2.0
        pool.run(acts.add, 1, 1)
        with pytest.raises(ActivityError) as info:
            pool.run(acts.never_beats)  # heartbeat_timeout=0.1
        assert isinstance(info.value.__cause__, ActivityTimeoutError)
        assert info.value.__cause__.type is TimeoutType.HEARTBEAT
        assert pool.run(acts.add, 2, 3) == 5


def test_a_worker_that_dies_mid_call_is_retried():
    with Pool([acts], workers=1) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        assert pool.run(acts.kill_self_first_attempt) == 2
        with pytest.raises(ActivityError) as info:
            pool.run(acts.kill_self)
        assert isinstance(info.value.__cause__, WorkerCrashedError)
        assert pool.run(acts.add, 2, 2) == 4


def test_a_lent_idle_worker_that_is_killed_is_replaced():
    with Pool([acts], workers=1) as pool:
        pid = pool.run(acts.pid_of)
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:  # the call may find the dead worker lent, or back, or replaced
            try:
                new = pool.run(acts.pid_of)
                break
            except ActivityError:
                assert time.monotonic() < deadline
        assert new != pid


def test_output_of_a_lane_call_is_tagged_with_its_activity():
    lines: list[tuple[int, str | None, str]] = []
    with Pool([acts], workers=1, on_output=lambda w, a, t: lines.append((w, a, t))) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        assert pool.run(acts.chatty, 7) == 7
        pool.run(acts.add, 1, 1)  # (what chatty printed has been read by now, or soon)
        deadline = time.monotonic() + 5
        while not any("stderr line" in t for _, _, t in lines) and time.monotonic() < deadline:
            pool.run(acts.add, 1, 1)
    chatty = [a for _, a, t in lines if "line" in t]
    assert chatty and set(chatty) <= {"chatty", None}


def test_threads_share_the_lane_and_the_loop():
    results: dict[int, list[int]] = {}

    def caller(k: int, pool: Pool) -> None:
        results[k] = [pool.run(acts.add, k * 1000, i) for i in range(200)]

    with Pool([acts], workers=2) as pool:
        pool.run(acts.add, 0, 0)
        threads = [threading.Thread(target=caller, args=(k, pool)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for k in range(3):
        assert results[k] == [k * 1000 + i for i in range(200)]


async def test_async_calls_beside_a_lent_worker():
    async with Pool([acts], workers=2) as pool:
        loop_thread_results: list[int] = []

        def blocking() -> None:
            loop_thread_results.extend(pool.run(acts.add, i, 0) for i in range(100))

        t = threading.Thread(target=blocking)
        t.start()
        got = [await pool.execute(acts.add, i, 1) for i in range(100)]
        await asyncio.to_thread(t.join)
    assert got == [i + 1 for i in range(100)]
    assert loop_thread_results == list(range(100))


def test_ctrl_c_during_a_lane_call_cancels_it():
    with Pool([acts], workers=1, direct_run=1.0, cancel_grace=0.05) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGALRM, interrupt)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                pool.run(acts.sleep_for, 5.0)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        t = time.monotonic()
        assert pool.run(acts.add, 2, 2) == 4  # the cancelled call's worker stopped or was killed
        assert time.monotonic() - t < 5.0


def test_a_fault_rule_applies_to_the_next_call():
    with Pool([acts], workers=1) as pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        assert pool.run(acts.flaky, 0) == 1
        pool.inject_fault(acts.flaky, "raise", exception=ValueError("injected"))
        assert pool.run(acts.flaky, 0) == 2  # attempt 1 met the fault; attempt 2 ran
        pool.inject_fault(acts.flaky, "crash", attempt=None, times=2)
        assert pool.run(acts.flaky, 0) == 3
        assert pool.run(acts.flaky, 0) == 1


async def test_an_event_stream_sees_every_attempt():
    async with Pool([acts], workers=1) as pool:
        await asyncio.to_thread(pool.run, acts.add, 1, 1)
        stream = pool.events()
        await asyncio.to_thread(lambda: [pool.run(acts.add, i, 1) for i in range(5)])
        kinds: list[str] = []
        while len([k for k in kinds if k == "attempt_completed"]) < 5:
            event = await asyncio.wait_for(stream.__anext__(), 5)
            kinds.append(event.kind)
    assert kinds.count("attempt_started") == 5


def test_close_with_a_lent_worker_leaves_nothing_behind():
    pool = Pool([acts], workers=2)
    with pool:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
    # (the autouse leak check fails the test if a worker or the fork server is left)


def test_calls_on_the_lane_under_random_kills_get_their_own_answer():
    # one thread calls pool.run in a loop (the lane lends a worker between calls) while another
    # SIGKILLs a random worker every 30-80 ms (slower, and the pool would rightly call itself
    # broken: three workers killed before they are ready): every call ends with its own value or a
    # crash error, none with another call's value, none hangs
    stop = threading.Event()
    kills = 0

    def killer(pool: Pool) -> None:
        nonlocal kills
        rng = random.Random(7)
        while not stop.wait(rng.uniform(0.03, 0.08)):
            pids = pool.worker_pids()
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1

    outcomes: dict[str, int] = {"ok": 0, "crashed": 0}
    with Pool([acts], workers=2) as pool:
        t = threading.Thread(target=killer, args=(pool,))
        t.start()
        try:
            i = 0
            while kills < 15 or i < 1000:  # (about 1 s: a kill every ~55 ms)
                i += 1
                try:
                    got = pool.run(acts.echo, f"call-{i}")
                except ActivityError as exc:
                    assert isinstance(exc.__cause__, WorkerCrashedError), exc
                    outcomes["crashed"] += 1
                else:
                    assert got == f"call-{i}"
                    outcomes["ok"] += 1
        finally:
            stop.set()
            t.join()
        lane_answered = _lane(pool).n_completed
    assert lane_answered > i // 2  # the lane was in use between kills
    assert outcomes["ok"] > i // 2


def test_no_lending_with_a_task_limit_per_worker():
    # the lane's calls would not count towards max_tasks_per_worker: it stays off
    with Pool([acts], workers=1, max_tasks_per_worker=5) as pool:
        pids = {pool.run(acts.pid_of) for _ in range(20)}
        assert _lane(pool).n_completed == 0 and _lane(pool).channel is None
    assert len(pids) >= 4  # recycled every 5 attempts


def test_a_cancelling_close_during_a_long_lane_call_answers_it():
    # the borrower hands its call back within half the close's wait for workers, whatever
    # direct_run says, so the call is failed by the close instead of waiting for a dead loop
    pool = Pool([acts], workers=1, direct_run=1.0, shutdown_timeout=0.4)
    pool.__enter__()
    try:
        pool.run(acts.add, 1, 1)
        assert _lane(pool).channel is not None
        outcome: list[BaseException] = []

        def caller() -> None:
            try:
                pool.run(acts.sleep_for, 30.0)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=caller)
        t.start()
        time.sleep(0.05)  # (it is on the lane now)
    finally:
        pool.close(cancel=True)
    t.join(10)
    assert not t.is_alive()
    assert outcome and isinstance(outcome[0], PoolClosedError), outcome
