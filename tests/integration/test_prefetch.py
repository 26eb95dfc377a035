"""Prefetch keeps calls queued in a busy worker's pipe; a dying worker must lose none of them."""

from __future__ import annotations

import time
from pathlib import Path

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
        list(pool.map(acts.sleep_for, [0.05] * 2))  # learn that it is slow, on both workers
        pids = list(pool.map(acts.sleep_for, [0.05] * 8))
    # spread over both workers, not prefetched deep into one
    assert len(set(pids)) == 2
    assert max(pids.count(p) for p in set(pids)) <= 5


def test_a_first_batch_of_slow_calls_spreads_over_the_workers():
    """Issue: map(nap_one_second, range(6)) on 2 workers took 5.2 s, not 3 s: with no timing
    history the calls were prefetched deep into one worker. Scaled down: 6 x 0.2 s."""
    with Pool([acts], workers=2) as pool:
        # each worker's first typed call pays a one-off import: not here, whatever the load
        list(pool.map(acts.renamed, [1, 2]))
        t0 = time.monotonic()
        pids = list(pool.map(acts.sleep_for, [0.2] * 6))
        took = time.monotonic() - t0
    assert sorted(pids.count(p) for p in set(pids)) == [3, 3]
    assert took < 0.95  # 0.6 s of sleep per worker; 1.0 s when one worker runs 5 of them


def _long_then_short(path: str, long: float, short: float) -> list[tuple[str, str, float]]:
    return [(path, "long", long)] + [(path, f"short{i}", short) for i in range(10)]


def _check_ran_once_each(path: str, jobs: list[tuple[str, str, float]]) -> None:
    runs = Path(path).read_text().split()
    assert sorted(runs) == sorted(tag for _, tag, _ in jobs)


def test_short_calls_do_not_wait_behind_a_long_one(tmp_path):
    """Issue: a 1 s call submitted just before ten 50 ms calls held them back 1.6 s while the
    other worker was idle. Scaled down: 0.8 s, then ten 30 ms calls; twice, so that the long
    call lands on each worker once (it takes the worker that went idle first), the first time
    with no timing history, the second time with one."""
    with Pool([acts], workers=2) as pool:
        list(pool.map(acts.renamed, [1, 2]))  # as above: the first typed call is paid for
        for run in range(2):
            path = str(tmp_path / f"runs{run}")
            jobs = _long_then_short(path, 0.8, 0.03)
            t0 = time.monotonic()
            results = list(pool.map(acts.noted_nap, jobs))
            short_done = max(end for _, end in results[1:]) - t0
            assert short_done < 0.6, run  # ~0.3 s on the other worker; >= 0.8 s behind it
            _check_ran_once_each(path, jobs)


def test_a_call_prefetched_behind_a_long_one_is_withdrawn_to_an_idle_worker(tmp_path):
    """With a timing history of 20 ms, one short call is prefetched behind the long one (they
    are all queued in one event, while the long one has just started). When the other worker
    runs out of work, that call is withdrawn from the long call's pipe and runs there, once."""
    path = str(tmp_path / "runs")
    events = []
    with Pool([acts], workers=2, on_event=events.append) as pool:
        list(pool.map(acts.noted_nap, [(path, f"warm{i}", 0.02) for i in range(4)]))
        Path(path).unlink()
        events.clear()
        jobs = _long_then_short(path, 0.8, 0.02)
        t0 = time.monotonic()
        results = list(pool.map(acts.noted_nap, jobs))
    short_done = max(end for _, end in results[1:]) - t0
    assert short_done < 0.6  # ~0.2 s on the other worker; >= 0.8 s behind the long call
    _check_ran_once_each(path, jobs)
    withdrawn = [e for e in events if e.kind == "attempt_withdrawn"]
    long_pid = results[0][0]
    assert len(withdrawn) == 1 and withdrawn[0].pid == long_pid
    assert [pid for pid, _ in results[1:]].count(long_pid) == 0
