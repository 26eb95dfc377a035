"""``map``/``amap`` read their input lazily, a bounded window at a time (issue: a map of an
endless generator); errors at their position, ``return_exceptions``, the unordered variants."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import sdk
from pool import Pool
from pool._map import default_window
from tests.integration import map_activities as ma

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def pool():
    with Pool([ma], workers=2, cancel_grace=0.2) as p:
        yield p


def _counting(read: list[int]) -> Iterator[int]:
    for i in itertools.count():
        read.append(i)
        yield i


def test_an_endless_generator_is_read_a_window_at_a_time(pool):
    read: list[int] = []
    got = []
    for value in pool.map(ma.plus_one, _counting(read), buffersize=20):
        got.append(value)
        assert len(read) - len(got) <= 20
        if len(got) == 500:
            break
    assert got == list(range(1, 501))
    assert len(read) <= 520


def test_breaking_early_out_of_a_two_million_item_generator_is_quick_and_small(pool):
    rss = psutil.Process().memory_info().rss
    read: list[int] = []
    t0 = time.monotonic()
    got = []
    for value in pool.map(ma.plus_one, (i for i in range(2_000_000))):
        got.append(value)
        if len(got) == 10:
            break
    took = time.monotonic() - t0
    grew = psutil.Process().memory_info().rss - rss
    assert got == list(range(1, 11))
    assert took < 3.0  # was 12 s when the whole input was read first
    assert grew < 64 << 20  # was 1 GiB
    # and what it read: at most the default window
    for value in pool.map(ma.plus_one, _counting(read)):
        if value == 10:
            break
    assert len(read) <= default_window(2, 1) + 10


def _started_and_ended(where: Path) -> tuple[set[str], set[str]]:
    return (
        {p.name.removesuffix(".start") for p in where.glob("*.start")},
        {p.name.removesuffix(".end") for p in where.glob("*.end")},
    )


def _nothing_left_running(where: Path) -> set[str]:
    deadline = time.monotonic() + 5
    while True:
        started, ended = _started_and_ended(where)
        if started == ended or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert started == ended  # every item that started has stopped
    time.sleep(0.2)
    assert _started_and_ended(where)[0] == started  # and none starts any more
    return started


def test_closing_the_map_early_cancels_what_is_in_flight(pool, tmp_path):
    paths = (f"{tmp_path}/{i}" for i in itertools.count())
    it = pool.map(ma.runs_until_cancelled, paths, buffersize=6)
    assert next(it) == f"{tmp_path}/0"
    it.close()
    started = _nothing_left_running(tmp_path)
    assert 1 < len(started) <= 7  # the window, no more
    assert pool.run(ma.plus_one, 1) == 2


async def test_leaving_an_amap_early_cancels_what_is_in_flight(tmp_path):
    async with Pool([ma], workers=2, cancel_grace=0.2) as pool:
        for fn in (ma.runs_until_cancelled, ma.async_runs_until_cancelled):
            where = tmp_path / fn.__name__
            where.mkdir()
            paths = (f"{where}/{i}" for i in itertools.count())
            async with contextlib.aclosing(pool.amap(fn, paths, buffersize=4)) as results:
                async for path in results:
                    assert path == f"{where}/0"
                    break
            started = await asyncio.to_thread(_nothing_left_running, where)
            assert 1 < len(started) <= 5
        assert await pool.execute(ma.plus_one, 1) == 2


def test_a_bad_item_raises_at_its_position(pool):
    it = pool.map(ma.plus_one, [1, 2, "x", 4])
    assert [next(it), next(it)] == [2, 3]
    with pytest.raises(sdk.ActivityInputError, match="'x'"):
        next(it)
    got = list(pool.map(ma.plus_one, [1, "x", 3], return_exceptions=True))
    assert got[0] == 2 and got[2] == 4 and isinstance(got[1], sdk.ActivityInputError)


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_the_inputs_own_exception_comes_at_its_position(pool, return_exceptions):
    def items() -> Iterator[int]:
        yield from range(3)
        raise OSError("the input file broke")

    got = []
    with pytest.raises(OSError, match="the input file broke"):
        for value in pool.map(ma.plus_one, items(), return_exceptions=return_exceptions):
            got.append(value)
    assert got == [1, 2, 3]


def test_return_exceptions_yields_every_outcome(pool):
    got = list(pool.map(ma.fails_on_three, range(6), return_exceptions=True))
    assert got[:3] == [0, 1, 2] and got[4:] == [4, 5]
    assert isinstance(got[3], sdk.ActivityError) and "item 3 fails" in str(got[3].__cause__)
    chunked = list(pool.map(ma.fails_on_three, range(6), chunksize=2, return_exceptions=True))
    assert chunked[:2] == [0, 1] and chunked[4:] == [4, 5]
    assert all(isinstance(e, sdk.ActivityError) for e in chunked[2:4])  # the failed chunk
    with pytest.raises(sdk.ActivityError):
        list(pool.map(ma.fails_on_three, range(6)))


def test_unordered_yields_each_index_and_result_as_it_finishes(pool):
    naps = [0.5, 0.0, 0.0, 0.0, 0.0]
    got = list(pool.map_unordered(ma.nap, naps))
    assert sorted(got) == sorted(enumerate(naps))
    assert got[0] != (0, 0.5)  # the slow first item does not hold the others back
    got = list(pool.map_unordered(ma.fails_on_three, range(6), return_exceptions=True))
    assert sorted(i for i, _ in got) == list(range(6))
    assert all((o == i) != (i == 3) for i, o in got)
    assert isinstance(dict(got)[3], sdk.ActivityError)


def test_unordered_with_chunks_indexes_every_item(pool):
    got = list(pool.map_unordered(ma.plus_one, range(50), chunksize=7, buffersize=14))
    assert sorted(got) == [(i, i + 1) for i in range(50)]


async def test_amap_and_amap_unordered_take_sync_and_async_inputs():
    async def numbers(n: int):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async with Pool([ma], workers=2) as pool:
        assert [x async for x in pool.amap(ma.plus_one, numbers(30), buffersize=5)] == list(
            range(1, 31)
        )
        got = [x async for x in pool.amap(ma.async_plus_one, range(30), chunksize=4)]
        assert got == list(range(1, 31))
        pairs = [p async for p in pool.amap_unordered(ma.plus_one, numbers(20), buffersize=3)]
        assert sorted(pairs) == [(i, i + 1) for i in range(20)]
        outcomes = [x async for x in pool.amap(ma.fails_on_three, range(5), return_exceptions=True)]
        assert isinstance(outcomes.pop(3), sdk.ActivityError) and outcomes == [0, 1, 2, 4]


def test_amap_from_another_loop_of_a_with_pool(pool):
    async def main() -> list[int]:
        return [x async for x in pool.amap(ma.plus_one, range(40), buffersize=8)]

    assert asyncio.run(main()) == list(range(1, 41))


def test_a_sticky_session_maps_lazily_on_its_worker_in_order(pool):
    with pool.sticky_session() as session:
        got = []
        for value in session.map(ma.sticky_where, itertools.count(), buffersize=3):
            got.append(value)
            if len(got) == 12:
                break
        assert [x for x, _, _ in got] == list(range(12))
        assert len({pid for _, pid, _ in got}) == 1
        assert [seen for _, _, seen in got] == list(range(12))  # run in order, one at a time
        # leaving a session's map early leaves its worker and state alone: the item running
        # finishes, the rest are cancelled, and the session goes on where it was
        chunked = list(session.map(ma.sticky_where, range(10), chunksize=3))
        assert [x for x, _, _ in chunked] == list(range(10))
        assert {pid for _, pid, _ in chunked} == {got[0][1]}
        assert 12 <= chunked[0][2] <= 12 + 3
        pairs = list(session.map_unordered(ma.sticky_where, range(5)))
        assert sorted(i for i, _ in pairs) == list(range(5))
        assert {pid for _, (_, pid, _) in pairs} == {got[0][1]}


def test_leaving_a_sessions_map_early_lets_its_running_item_finish(pool, tmp_path):
    started = tmp_path / "started"
    with pool.sticky_session() as session:
        it = session.map(ma.sticky_nap, [(0.0, ""), (0.5, str(started)), (5.0, ""), (5.0, "")])
        pid = next(it)
        deadline = time.monotonic() + 5
        while not started.exists():  # the 0.5 s item runs now
            assert time.monotonic() < deadline
            time.sleep(0.005)
        t0 = time.monotonic()
        it.close()
        # the session keeps its worker: the next call runs there once the running item is done
        assert session.run(ma.sticky_nap, (0.0, "")) == pid
        assert 0.2 < time.monotonic() - t0 < 3  # not the two 5 s items: they were cancelled


def test_mistakes_in_the_call_itself_raise_at_the_call(pool):
    with pytest.raises(TypeError, match="buffersize"):
        pool.map(ma.plus_one, range(3), buffersize=2.5)  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="buffersize"):
        pool.map_unordered(ma.plus_one, range(3), buffersize=0)
    with pytest.raises(sdk.StickyWorkerSessionMissingError):
        pool.map(ma.sticky_where, range(3))
    with pytest.raises(TypeError):
        pool.map(ma.plus_one, 3)  # type: ignore[call-overload]
