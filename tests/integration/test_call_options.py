"""Per-call options in a real pool: a copy's retries and timeouts apply to the calls it is
passed to, never to the registered activity's other calls."""

from __future__ import annotations

import asyncio
import gc

import pytest

from pool import Pool
from sdk import ActivityError, ActivityTimeoutError, TimeoutType, get_definition, with_options
from tests.integration import options_activities as acts

pytestmark = pytest.mark.timeout(30)


async def test_retries_and_timeouts_per_call():
    async with Pool([acts], workers=1) as pool:
        # the definition's own policy: four attempts
        assert await pool.execute(acts.fails_until, 3) == 3
        once = with_options(acts.fails_until, retry_policy_max_attempts=1)
        with pytest.raises(ActivityError) as info:
            await pool.execute(once, 2)
        assert info.value.attempts == 1
        short = with_options(acts.naps, start_to_close_timeout=0.05)
        with pytest.raises(ActivityError) as timed_out:
            await pool.execute(short, 5)
        assert isinstance(timed_out.value.cause, ActivityTimeoutError)
        assert timed_out.value.cause.type is TimeoutType.START_TO_CLOSE
        # and the registered activity keeps its options
        assert await pool.execute(acts.naps, 0.01) == 0.01


async def test_each_copy_gets_its_own_policy():
    """A copy made per call is freed after it; the next copy often reuses its memory address.
    The pool must not take the next copy's retry policy from the freed one."""
    async with Pool([acts], workers=1) as pool:
        defn = get_definition(acts.fails_until)
        wrong = []
        for i in range(60):
            attempts = 1 + i % 2  # one attempt fails (attempt 2 succeeds), two succeed
            try:
                await pool.execute(with_options(defn, retry_policy_max_attempts=attempts), 2)
                succeeded = True
            except ActivityError:
                succeeded = False
            if succeeded != (attempts == 2):
                wrong.append(i)
            gc.collect()  # frees the copy now, as a busy program would soon
        assert wrong == []


async def test_execute_attempt_carries_attempt_and_heartbeats_both_ways():
    """One attempt of a call whose retries another engine schedules: the activity sees that
    engine's attempt number and the details an earlier attempt heartbeated, and its own
    heartbeats reach the caller as they happen."""
    beats: list[int] = []
    async with Pool([acts], workers=1) as pool:
        result = await pool.execute_attempt(
            acts.resumes, (3,), attempt=4, heartbeat_details=10, on_heartbeat=beats.append
        )
        assert result == {"attempt": 4, "resumed_from": 10}
        # the worker coalesces heartbeats (latest wins): the last one always arrives, in order
        assert beats[-1] == 13 and beats == sorted(set(beats)) and set(beats) <= {11, 12, 13}
        # one attempt, and the engine's attempt number in the error
        once = with_options(acts.fails_until, retry_policy_max_attempts=1)
        with pytest.raises(ActivityError) as info:
            await pool.execute_attempt(once, (9,), attempt=2)
        assert info.value.attempts == 2
        assert "attempt 2 fails" in str(info.value.cause)
        with pytest.raises(ValueError, match="attempt must be an int >= 1"):
            await pool.execute_attempt(once, (9,), attempt=0)


def test_execute_attempt_from_another_loop():
    """A ``with`` pool runs on its own thread: heartbeats arrive there, results here."""
    beats: list[int] = []
    with Pool([acts], workers=1) as pool:
        result = asyncio.run(
            pool.execute_attempt(acts.resumes, (2,), attempt=1, on_heartbeat=beats.append)
        )
    assert result == {"attempt": 1, "resumed_from": None}
    assert beats[-1] == 2 and set(beats) <= {1, 2}
