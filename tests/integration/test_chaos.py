"""Chaos: workers SIGKILLed at random and attempts hanging at random lose no call."""

from __future__ import annotations

import time

import pytest

from pool import Pool
from tests.integration import activities as acts
from tests.integration.chaos import RandomKiller

pytestmark = pytest.mark.timeout(120)


def test_random_kills_and_hangs_lose_nothing():
    # first let the deadlines catch the injected hangs, then kill
    chaos = RandomKiller(seed=1234, kills=8, gap=(0.02, 0.08), delay=0.3)
    with Pool([acts], workers=2, on_event=chaos.on_event) as pool:
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
