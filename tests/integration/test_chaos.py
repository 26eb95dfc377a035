"""Chaos: workers SIGKILLed at random and attempts hanging at random lose no call."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(120)


def test_random_kills_and_hangs_lose_nothing():
    rng = random.Random(1234)
    events = []
    stop = threading.Event()
    ready: set[int] = set()  # kill only workers that are up: a pool gives up on workers that
    # keep dying before they are ready (a loaded machine starts them slowly), another test

    def on_event(event) -> None:
        events.append(event)
        if event.kind == "worker_started" and event.pid is not None:
            ready.add(event.pid)

    with Pool([acts], workers=2, on_event=on_event) as pool:
        pool.inject_fault(acts.chaos_echo, "hang", attempt=1, times=5)

        def killer() -> None:
            if stop.wait(0.3):  # first let the deadlines catch the injected hangs
                return
            for _ in range(8):
                if stop.wait(rng.uniform(0.02, 0.08)):
                    return
                pids = sorted(ready.intersection(pool.worker_pids()))
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer)
        t.start()
        try:
            items = list(range(3000))
            t0 = time.monotonic()
            results = list(pool.map(acts.chaos_echo, items))
        finally:
            stop.set()
            t.join()
        assert results == items
        assert time.monotonic() - t0 < 60
        assert pool.run(acts.add, 1, 1) == 2
    kinds = [e.kind for e in events]
    assert kinds.count("worker_exited") >= 1  # the chaos really happened
    assert kinds.count("worker_killed") >= 1  # hangs were caught by the deadline
