"""Large frames go through shared-memory segments, reused after the peer copies them out; no
segment outlives its pool, its worker or a kill, and none is ever named in a file system."""

from __future__ import annotations

import os
import time

import pytest

import sdk
from benchmarks.chaos import RandomKiller
from pool import Pool
from pool._protocol import SHM_MIN
from pool._segments import KEEP_BYTES, KEEP_SEGMENTS, shm_supported
from tests.integration import activities as acts

np = pytest.importorskip("numpy")
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not shm_supported(), reason="needs memfd and /proc"),
]

count = acts.count_memfd_segments


def shm_files() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("activitypool")}


def test_large_values_round_trip_and_leave_nothing():
    before = count()
    data = os.urandom(3 << 20)
    arr = np.arange(2_000_000, dtype=np.float64)
    with Pool([acts], workers=2) as pool:
        assert pool.run(acts.big_payload, data) == data[::-1]
        back = pool.run(acts.echo, arr)
        assert isinstance(back, np.ndarray) and np.array_equal(back, arr)
        back[0] = -1.0  # a received array is an ordinary writable array of our own
        again = pool.run(acts.echo, arr)  # the same segments again: the copy above is intact
        assert back[0] == -1.0 and again[0] == 0.0 and np.array_equal(again, arr)
        assert pool.run(acts.array_sum, arr) == float(arr.sum())
        assert count() > before  # segments were used, and are kept for the next frame
    assert count() == before
    assert shm_files() == set()


def test_segments_are_reused_not_piled_up():
    arr = np.ones((SHM_MIN * 4) // 8)
    with Pool([acts], workers=1) as pool:
        for _ in range(3):
            assert np.array_equal(pool.run(acts.echo, arr), arr)
        ours, theirs = count(), pool.run(acts.memfd_segments)
        for _ in range(40):
            assert np.array_equal(pool.run(acts.echo, arr), arr)
        # a released segment serves the next frame: nothing grows on either side
        assert (count(), pool.run(acts.memfd_segments)) == (ours, theirs)
        # prefetched calls in flight at once each need a segment: more are kept (up to
        # KEEP_SEGMENTS a side; each is an fd, the mmap's fd and a mapping, and the peer's
        # mapping with its fd), the rest are one-offs closed on release
        futures = [pool.submit(acts.echo, arr) for _ in range(4 * KEEP_SEGMENTS)]
        assert all(np.array_equal(f.result(timeout=20), arr) for f in futures)
        del futures  # results from one-off segments stay mapped while they live
        for _ in range(3):  # RELEASEs still in the pipes are applied: one-offs are closed
            pool.run(acts.echo, arr)

        def settled() -> tuple[int, int]:
            # the worker unmaps one-off frames on a helper thread: wait until nothing changes
            deadline = time.monotonic() + 10
            last = None
            while True:
                now = count(), pool.run(acts.memfd_segments)
                if now == last:
                    return now
                assert time.monotonic() < deadline, f"segments never settled: {now}"
                last = now
                time.sleep(0.05)

        after_burst = settled()
        for _ in range(10):
            pool.run(acts.echo, arr)
        assert settled() == after_burst
        assert max(after_burst) <= 1 + 5 * KEEP_SEGMENTS


def test_a_frame_past_the_keep_budget_is_mapped_once_and_freed_after_the_call():
    big = np.arange((KEEP_BYTES + (4 << 20)) // 8, dtype=np.float64)  # a one-off segment
    with Pool([acts], workers=1) as pool:
        theirs = pool.run(acts.memfd_segments)
        assert pool.run(acts.array_sum, big) == float(big.sum())
        # the worker mapped the supervisor's one-off segment privately (no copy) and lets it
        # go on a helper thread once it has answered: nothing stays mapped there
        deadline = time.monotonic() + 10
        while pool.run(acts.memfd_segments) != theirs:
            assert time.monotonic() < deadline, "the one-off segment stayed mapped"
            time.sleep(0.01)
        back = pool.run(acts.echo, big)  # and back: the result is mapped here, ours alone
        back[0] = -1.0
        assert back[0] == -1.0 and np.array_equal(back[1:], big[1:]) and big[0] == 0.0


def test_segment_of_a_call_queued_behind_a_killed_worker_is_freed():
    before = count()
    arr = np.ones(1 << 20)  # 8 MiB: travels through shared memory
    with Pool([acts], workers=1) as pool:
        stuck = pool.submit(acts.hang_sleep)  # start-to-close 0.1 s: the worker is killed
        queued = pool.submit(acts.array_sum, arr)  # prefetched behind it: its segment waits
        with pytest.raises(sdk.ActivityError):
            stuck.result(timeout=10)
        # re-queued (not counted) and run by the replacement, from a segment of its own
        assert queued.result(timeout=10) == float(arr.sum())
        with_one_worker = count()
    assert count() == before
    # the probe fd and one segment (fd, the mmap's fd, the mapping) to the replacement: the
    # one lent to the dead worker was closed with it
    assert with_one_worker == before + 4


def test_random_kills_during_large_transfers_lose_nothing_and_leak_nothing():
    before = count()
    items = [np.full((SHM_MIN * 2) // 8, float(i)) for i in range(150)]
    chaos = RandomKiller(seed=99, kills=6, gap=(0.02, 0.06))
    with Pool([acts], workers=2, on_event=chaos.on_event) as pool:
        with chaos.killing(pool):
            results = list(pool.map(acts.chaos_array, items))
        assert chaos.count("worker_exited") >= 1  # the chaos really happened
        assert len(results) == len(items)
        for i, got in enumerate(results):
            assert got.shape == items[i].shape and np.all(got == 2.0 * i)
        del results, got  # results from one-off segments stay mapped while they live
    assert count() == before
    assert shm_files() == set()
