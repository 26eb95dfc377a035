"""Chaos: workers SIGKILLed at random and attempts hanging at random lose no call."""

from __future__ import annotations

import time

import pytest

from pool import Pool
from tests.integration import activities as acts
from tests.integration.chaos import RandomKiller

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_random_kills_and_hangs_lose_nothing(start_method):
    # first let the deadlines catch the injected hangs, then kill
    chaos = RandomKiller(seed=1234, kills=8, gap=(0.02, 0.08), delay=0.3)
    with Pool([acts], workers=2, on_event=chaos.on_event, start_method=start_method) as pool:
        pool.inject_fault(acts.chaos_echo, "hang", attempt=1, times=5)
        items = list(range(3000))
        t0 = time.monotonic()
        with chaos.killing(pool):
            results = list(pool.map(acts.chaos_echo, items))
        assert results == items
        assert time.monotonic() - t0 < 60
        assert pool.run(acts.add, 1, 1) == 2
    assert chaos.count("worker_exited") >= 1  # the chaos really happened
    assert chaos.count("worker_killed") >= 1  # hangs were caught by the deadline


async def test_random_kills_during_calls_one_after_another_lose_nothing():
    # awaited one at a time: the supervisor spins for each reply (reply_spin), and the kills
    # land during those spins as well as between them
    chaos = RandomKiller(seed=99, kills=6, gap=(0.01, 0.05))
    # (chaos_echo sleeps 0.5 ms: a reply_spin of 5 ms covers it even on a loaded machine)
    async with Pool([acts], workers=2, on_event=chaos.on_event, reply_spin=0.005) as pool:
        with chaos.killing(pool):
            results = [await pool.execute(acts.chaos_echo, i) for i in range(1500)]
        assert results == list(range(1500))
        assert pool._sup is not None and pool._sup.spins_caught > 0
    assert chaos.count("worker_exited") >= 1
