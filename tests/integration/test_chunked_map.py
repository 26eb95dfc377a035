"""``map``/``amap`` with ``chunksize``: a chunk of items is one call, run in one worker."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

import sdk
from pool import Pool
from tests.integration import chunked_activities as ca

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pool():
    with Pool([ca], workers=2) as p:
        yield p


def _chunks(values: list, k: int) -> list[list]:
    return [values[i : i + k] for i in range(0, len(values), k)]


@pytest.mark.parametrize(
    ("n", "k"), [(0, 3), (1, 3), (2, 5), (7, 7), (10, 3), (12, 4), (100, 7), (1000, 64)]
)
def test_results_in_input_order(pool, n, k):
    assert list(pool.map(ca.double, range(n), chunksize=k)) == [2 * x for x in range(n)]


def test_a_chunk_is_one_call_in_one_process():
    events: list = []
    n, k = 23, 5
    with Pool([ca], workers=2, on_event=events.append) as pool:
        got = list(pool.map(ca.where, range(n), chunksize=k))
        starts = [e for e in events if e.kind == "attempt_started" and e.activity == "where"]
        assert len(starts) == math.ceil(n / k)
        assert [x for x, *_ in got] == list(range(n))
        for chunk in _chunks(got, k):
            # one process, one call (activity id), one attempt; info() names the activity
            assert len({(pid, call) for _, pid, call, _, _ in chunk}) == 1
            assert {(attempt, name) for *_, attempt, name in chunk} == {(1, "where")}
        assert len({call for _, _, call, _, _ in got}) == math.ceil(n / k)
        # chunksize=1 (the default) is still a call per item
        events.clear()
        assert len({call for _, _, call, _, _ in pool.map(ca.where, range(6))}) == 6
        assert sum(e.kind == "attempt_started" for e in events) == 6


def test_a_failing_item_retries_its_whole_chunk(pool):
    got = list(pool.map(ca.fails_first_attempt_at, range(12), chunksize=4))
    assert [x for x, _ in got] == list(range(12))
    # the chunk holding item 5 (items 4..7) ran again, all of it; the others ran once
    assert [attempt for _, attempt in got] == [1] * 4 + [2] * 4 + [1] * 4


def test_exhausted_retries_raise_at_the_chunks_first_item(pool):
    got = []
    with pytest.raises(sdk.ActivityError, match="item 5 always fails") as info:
        for value in pool.map(ca.always_fails_at, range(12), chunksize=4):
            got.append(value)
    assert got == [0, 1, 2, 3]  # the chunk before; nothing of the failing chunk (4..7)
    assert info.value.attempts == 2
    assert isinstance(info.value.__cause__, ValueError)
    assert list(pool.map(ca.double, range(5), chunksize=2)) == [0, 2, 4, 6, 8]


def test_the_deadline_is_per_item_times_the_chunk_length(pool):
    # 4 items of 0.1 s: each within the 0.2 s start_to_close_timeout, together over it
    assert list(pool.map(ca.sleeps, [0.1] * 4, chunksize=4)) == [0.1] * 4


def test_a_hanging_item_is_killed_at_the_chunks_deadline(pool):
    before = set(pool.worker_pids())
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        list(pool.map(ca.sleeps, [0.01, 3600.0], chunksize=2))
    elapsed = time.monotonic() - t0
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.START_TO_CLOSE
    assert 0.4 <= elapsed < 5  # 2 items x 0.2 s
    assert set(pool.worker_pids()) != before  # the stuck worker was replaced
    assert list(pool.map(ca.double, range(3), chunksize=2)) == [0, 2, 4]


def test_a_worker_killed_mid_chunk_retries_the_chunk(pool, tmp_path):
    pidfile = str(tmp_path / "pid")
    items = [(x, pidfile) for x in range(8)]
    it = pool.map(ca.killable, items, chunksize=3)
    deadline = time.monotonic() + 10
    while not os.path.exists(pidfile):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    with open(pidfile) as f:
        victim = int(f.read())
    os.kill(victim, signal.SIGKILL)
    got = list(it)
    assert [x for x, _, _ in got] == list(range(8))  # nothing lost, in order
    # items 0..2 are the killed chunk: run again, all of them, in another worker
    assert [attempt for _, attempt, _ in got] == [2, 2, 2, 1, 1, 1, 1, 1]
    assert {pid for _, _, pid in got[:3]} != {victim}
    assert victim not in pool.worker_pids()


def test_heartbeats_from_items_keep_the_chunk_alive(pool):
    # 10 items of 30 ms: 0.3 s in all, more than the 0.2 s heartbeat timeout
    got = list(pool.map(ca.beats_then_sleeps, [0.03] * 10, chunksize=10))
    assert got == [(0.03, 0.2)] * 10


def test_an_item_that_stops_beating_fails_its_chunk(pool):
    with pytest.raises(sdk.ActivityError) as info:
        list(pool.map(ca.beats_then_sleeps, [0.01, 0.01, 3600.0], chunksize=3))
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.HEARTBEAT
    assert cause.last_heartbeat_details == {"sleeping": 3600.0}


async def test_amap_with_chunks():
    async with Pool([ca], workers=2) as pool:
        got = [x async for x in pool.amap(ca.double, range(50), chunksize=7)]
        assert got == [2 * x for x in range(50)]
        assert [x async for x in pool.amap(ca.double, [], chunksize=7)] == []
        got = []
        with pytest.raises(sdk.ActivityError, match="item 5 always fails"):
            async for value in pool.amap(ca.always_fails_at, range(12), chunksize=4):
                got.append(value)
        assert got == [0, 1, 2, 3]


async def test_async_activities_run_chunks_on_the_workers_loop():
    async with Pool([ca], workers=2) as pool:
        got = [x async for x in pool.amap(ca.async_double, range(20), chunksize=6)]
        assert got == [2 * x for x in range(20)]
        rows = [x async for x in pool.amap(ca.async_where, range(9), chunksize=4)]
        for chunk in _chunks(rows, 4):
            assert len({(pid, call) for _, pid, call, _, _ in chunk}) == 1
        assert {name for *_, name in rows} == {"async_where"}


def test_sync_map_of_an_async_activity_in_chunks(pool):
    assert list(pool.map(ca.async_double, range(10), chunksize=3)) == [2 * x for x in range(10)]


def test_sticky_session_runs_its_chunks_on_its_worker(pool):
    with pool.sticky_session() as session:
        got = list(session.map(ca.sticky_counter, range(10), chunksize=3))
    assert [x for x, _, _ in got] == list(range(10))
    assert len({pid for _, pid, _ in got}) == 1
    assert [n for _, _, n in got] == list(range(1, 11))  # chunks in order, state kept
    with pytest.raises(sdk.StickyWorkerSessionMissingError):
        pool.map(ca.sticky_counter, range(3), chunksize=2)


def test_depends_is_resolved_for_the_items_of_a_chunk(pool):
    got = list(pool.map(ca.uses_chunk_resource, range(10), chunksize=5))
    assert [x for x, _, _ in got] == list(range(10))
    for _, pid, res_id in got:
        assert {r for _, p, r in got if p == pid} == {res_id}  # one resource per worker


def test_items_are_validated_in_the_caller_and_results_in_the_worker(pool):
    assert list(pool.map(ca.double, ["1", 2], chunksize=2)) == [2, 4]  # lax mode coerces
    it = pool.map(ca.double, [1, "not a number", 3], chunksize=2)
    assert next(it) == 2  # the bad item fails at its own position, alone
    with pytest.raises(sdk.ActivityInputError, match="'x'"):
        next(it)
    got = pool.map(ca.double, [1, "not a number", 3], chunksize=2, return_exceptions=True)
    assert [r if isinstance(r, int) else type(r) for r in got] == [2, sdk.ActivityInputError, 6]
    # (the map left at its bad item cancels what it had in flight, which stats count as failed
    # or not depending on timing: count only what follows)
    failed_before = pool.stats().failed
    with pytest.raises(sdk.ActivityError, match="invalid result") as info:
        list(pool.map(ca.bad_result, range(5), chunksize=5))
    assert info.value.attempts == 1  # a result validation error is not retried
    assert pool.stats().failed == failed_before + 1


@pytest.mark.parametrize(
    ("chunksize", "error"),
    [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
)
def test_bad_chunksize_is_refused_before_anything_runs(pool, chunksize, error):
    with pytest.raises(error, match="chunksize must be an int >= 1"):
        pool.map(ca.double, range(3), chunksize=chunksize)
    with pytest.raises(error, match="chunksize must be an int >= 1"):
        pool.amap(ca.double, range(3), chunksize=chunksize)
    with pool.sticky_session() as session, pytest.raises(error):
        session.map(ca.sticky_counter, range(3), chunksize=chunksize)
    assert pool.stats().completed == 0


def test_a_rate_limited_activity_cannot_be_chunked(pool):
    with pytest.raises(ValueError, match="rate_limit"):
        pool.map(ca.limited, range(3), chunksize=2)
    assert list(pool.map(ca.limited, range(3))) == [0, 1, 2]


def test_an_injected_fault_hits_the_chunk(pool):
    pool.inject_fault(ca.fails_first_attempt_at, "crash", attempt=1)  # once: one chunk
    got = list(pool.map(ca.fails_first_attempt_at, range(4), chunksize=2))
    assert [x for x, _ in got] == [0, 1, 2, 3]
    assert sorted(attempt for _, attempt in got) == [1, 1, 2, 2]


def test_a_worker_imports_the_chunk_runner_only_when_a_chunk_comes():
    # spawned, not forked: the worker starts from a fresh interpreter, not from this process
    with Pool([ca], workers=1, start_method="spawn") as pool:
        before = set(pool.run(ca.chunk_loaded_modules))
        assert "pool._chunks" not in before
        assert list(pool.map(ca.chunk_echo, range(4), chunksize=2)) == [0, 1, 2, 3]
        # and nothing else: no typing or pydantic to check the runner's result, for one
        assert set(pool.run(ca.chunk_loaded_modules)) - before == {"pool._chunks"}
