"""Reply spin: after sending the pool's only call, of an activity that usually answers within
``reply_spin``, the supervisor polls the reply pipe instead of sleeping in its loop. It must
change nothing but latency: every reply, error and death is handled as without it."""

from __future__ import annotations

import asyncio

import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(60)

# wide enough that a loaded machine's round trips still count as quick (the default is 200 µs)
SPIN = 0.005


def _spins(pool: Pool) -> tuple[int, int]:
    assert pool._sup is not None
    return pool._sup.reply_spin.caught, pool._sup.reply_spin.missed


async def test_calls_one_after_another_are_caught_by_the_spin():
    async with Pool([acts], workers=2, reply_spin=SPIN) as pool:
        got = [await pool.execute(acts.echo, i) for i in range(300)]
        caught, _ = _spins(pool)
    assert got == list(range(300))
    # the first calls teach the average; a loaded machine may miss some, not most
    assert caught > 100


async def test_no_spin_when_turned_off():
    async with Pool([acts], workers=2, reply_spin=0) as pool:
        got = [await pool.execute(acts.echo, i) for i in range(100)]
        assert _spins(pool) == (0, 0)
    assert got == list(range(100))


async def test_no_spin_while_other_calls_are_in_flight():
    async with Pool([acts], workers=2, reply_spin=SPIN) as pool:
        for i in range(20):  # a short average for echo
            await pool.execute(acts.echo, i)
        before = sum(_spins(pool))

        async def stream(offset: int) -> list[int]:
            return [await pool.execute(acts.echo, offset + i) for i in range(100)]

        # two callers: two calls in flight most of the time. One is alone only when the other
        # caller's reply came and it has not submitted yet (seen: up to ~13% of calls on a
        # loaded machine, and up to a third under heavy load); one caller alone spins for nearly
        # every call, so half the calls still tells the two apart
        a, b = await asyncio.gather(stream(0), stream(1000))
        during = sum(_spins(pool)) - before
    assert a == list(range(100)) and b == list(range(1000, 1100))
    assert during < 100, f"{during} spins for 200 calls, two callers at a time"


async def test_a_slow_reply_after_fast_ones_is_left_to_the_loop():
    async with Pool([acts], workers=1, reply_spin=SPIN) as pool:
        for _ in range(30):
            assert await pool.execute(acts.sleep_if, 0) == 0
        caught_before, missed_before = _spins(pool)
        assert caught_before > 0
        assert await pool.execute(acts.sleep_if, 0.1) == 0.1  # the spin gives up
        _, missed = _spins(pool)
        assert missed == missed_before + 1
        assert [await pool.execute(acts.echo, i) for i in range(5)] == list(range(5))


async def test_a_worker_dying_during_the_spin_fails_only_its_call():
    async with Pool([acts], workers=1, reply_spin=SPIN) as pool:
        for _ in range(30):
            assert await pool.execute(acts.exit_if, 0) == 0
        spins_before = _spins(pool)
        assert spins_before[0] > 0
        with pytest.raises(sdk.ActivityError) as info:
            await pool.execute(acts.exit_if, 3)
        crash = info.value.__cause__
        assert isinstance(crash, sdk.WorkerCrashedError) and crash.exitcode == 3
        assert sum(_spins(pool)) == sum(spins_before) + 1  # it was spun for
        assert await pool.execute(acts.echo, "after") == "after"  # on the replacement


def test_blocking_run_from_a_thread_is_answered_with_the_spin_on():
    with Pool([acts], workers=2) as pool:
        assert [pool.run(acts.add, i, 1) for i in range(200)] == [i + 1 for i in range(200)]


@pytest.mark.parametrize("bad", [-0.001, 0.5, "fast", True, None])
def test_reply_spin_is_validated(bad):
    with pytest.raises(ValueError, match="reply_spin"):
        Pool([acts], reply_spin=bad)
