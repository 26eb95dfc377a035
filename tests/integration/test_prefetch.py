"""Prefetch keeps calls queued in a busy worker's pipe; a dying worker must lose none of them."""

from __future__ import annotations

import pytest

from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(60)


def test_prefetched_calls_of_a_killed_worker_are_requeued_uncounted():
    events = []
    with Pool([acts], workers=2, on_event=events.append) as pool:
        # warm the duration estimate so prefetch goes deep for this quick activity
        list(pool.map(acts.attempt_of, range(200)))
        pool.inject_fault(acts.attempt_of, "crash", attempt=1, times=1)
        results = list(pool.map(acts.attempt_of, range(2000)))
    assert [r[0] for r in results] == list(range(2000))
    attempts = [r[1] for r in results]
    assert attempts.count(2) == 1  # the call that crashed its worker was retried once
    assert attempts.count(1) == 1999  # everything prefetched behind it was not counted
    killed = [e for e in events if e.kind == "worker_exited"]
    assert len(killed) == 1
    # the dead worker had calls prefetched (else this test proves nothing)
    requeued = [e for e in events if e.kind == "attempt_requeued"]
    assert requeued and all(e.worker_id == killed[0].worker_id for e in requeued)
    assert all(e.attempt == 1 for e in requeued)


def test_prefetch_depth_adapts_and_is_bounded():
    with Pool([acts], workers=2, prefetch=4) as pool:
        assert list(pool.map(acts.echo, range(500))) == list(range(500))
    with Pool([acts], workers=2, prefetch=0) as pool:
        assert list(pool.map(acts.echo, range(100))) == list(range(100))


def test_long_calls_do_not_pile_behind_one_worker():
    with Pool([acts], workers=2) as pool:
        pool.run(acts.sleep_for, 0.05)  # learn that this activity is slow
        pids = list(pool.map(acts.sleep_for, [0.05] * 8))
    # spread over both workers, not prefetched deep into one
    assert len(set(pids)) == 2
    assert max(pids.count(p) for p in set(pids)) <= 5
