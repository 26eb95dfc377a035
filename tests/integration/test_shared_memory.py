"""Large frames go through /dev/shm; no segment outlives its message, its worker or the pool."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

np = pytest.importorskip("numpy")
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm"),
]


def segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith(f"activitypool-{os.getpid()}-")}


def test_large_values_round_trip_and_leave_nothing():
    data = os.urandom(3 << 20)
    arr = np.arange(2_000_000, dtype=np.float64)
    with Pool([acts], workers=2) as pool:
        assert pool.run(acts.big_payload, data) == data[::-1]
        back = pool.run(acts.echo, arr)
        assert isinstance(back, np.ndarray) and np.array_equal(back, arr)
        back[0] = -1.0  # arrays built on a shared segment are ordinary writable arrays
        assert pool.run(acts.array_sum, arr) == float(arr.sum())
        assert segments() == set()
    assert segments() == set()


def test_segment_of_a_call_queued_behind_a_killed_worker_is_removed():
    arr = np.ones(1 << 20)  # 8 MiB: travels through shared memory
    with Pool([acts], workers=1) as pool:
        stuck = pool.submit(acts.hang_sleep)  # start-to-close 0.1 s: the worker is killed
        queued = pool.submit(acts.array_sum, arr)  # prefetched behind it: its segment waits
        with pytest.raises(sdk.ActivityError):
            stuck.result(timeout=10)
        # re-queued (not counted) and run by the replacement, from a fresh segment
        assert queued.result(timeout=10) == float(arr.sum())
        assert segments() == set()


def test_segments_a_dead_worker_wrote_are_swept():
    with Pool([acts], workers=1) as pool:
        with pytest.raises(sdk.ActivityError) as info:
            pool.run(acts.leave_segment_and_die)
        assert isinstance(info.value.__cause__, sdk.WorkerCrashedError)
        assert segments() == set()
        assert pool.run(acts.add, 1, 1) == 2
