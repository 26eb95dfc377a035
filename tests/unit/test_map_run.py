"""The lazy map without processes: a fake pool side answers the calls when the test says so."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pool._map import MapRun, aresults, check_buffersize, default_window, results
from sdk import ActivityInputError, PoolClosedError

pytestmark = pytest.mark.timeout(10)


class FakeCall:
    def __init__(self, items: list[Any], waiter: Any, chunk: bool = False) -> None:
        self.items = items
        self.chunk = chunk  # answered with a list of results
        self.waiter = waiter
        self.answered = False


class FakePool:
    """What the pool gives a MapRun: a bad item is the string "bad"; the item "closed" is
    refused as a closed pool refuses every call. Records what is sent and cancelled."""

    def __init__(self) -> None:
        self.sent: list[FakeCall] = []
        self.batches = 0
        self.cancelled: list[FakeCall] = []

    def check(self, item: Any) -> Any:
        if item == "bad":
            raise ActivityInputError("bad item")
        if item == "closed":
            raise PoolClosedError("the pool is closed")
        return item

    def one(self, item: Any, waiter: Any) -> FakeCall:
        return FakeCall([self.check(item)], waiter)

    def submit(self, calls: list[FakeCall]) -> None:
        self.sent.extend(calls)
        self.batches += 1

    def answer(self, call: FakeCall, exc: BaseException | None = None) -> None:
        call.answered = True
        values = [10 * item for item in call.items]
        call.waiter.settle(values if call.chunk else values[0], exc)

    def answer_all(self) -> None:
        for call in self.sent:
            if not call.answered:
                self.answer(call)

    def run(self, window: int, chunksize: int = 1, ordered: bool = True, **kw: Any) -> MapRun:
        options: dict[str, Any] = {
            "wake_later": lambda wake: wake(),
            "loop": None,
            "threaded": True,
            "stopped": lambda: False,
        }
        options.update(kw)
        return MapRun(
            window=window,
            chunksize=chunksize,
            ordered=ordered,
            one=self.one,
            check=self.check,
            chunk=lambda items, waiter: FakeCall(items, waiter, chunk=True),
            submit=self.submit,
            cancel=self.cancelled.extend,
            **options,
        )


def _counting(read: list[int]) -> Iterator[int]:
    for i in itertools.count():
        read.append(i)
        yield i


def _started(run: MapRun, source: Any, return_exceptions: bool = False) -> Iterator[Any]:
    it = results(run, iter(source), return_exceptions)
    assert next(it) is None  # primed: the first window is out
    return it


def test_an_endless_input_is_read_a_window_at_a_time_in_batches():
    fake, read = FakePool(), []
    it = _started(fake.run(window=8), _counting(read))
    assert len(read) == len(fake.sent) == 8 and fake.batches == 1
    got = []
    for _ in range(100):
        fake.answer_all()
        got.append(next(it))
        assert len(read) - len(got) <= 8  # never more than the window read and not handed over
    assert got == [10 * i for i in range(100)]
    assert fake.batches <= 100 // 2 + 1  # topped up a quarter of the window at a time
    it.close()


def test_a_consumer_about_to_wait_tops_the_window_up_first():
    fake = FakePool()
    run = fake.run(window=8)
    it = _started(run, range(100))
    fake.answer(fake.sent[0])
    assert next(it) == 0
    assert run.should_fill()  # item 1 is not in: the workers must not starve meanwhile
    fake.answer(fake.sent[1])
    assert not run.should_fill()  # a result is ready: wait for a bigger batch
    it.close()


def test_results_in_input_order_and_a_bad_item_raises_at_its_position():
    fake = FakePool()
    it = _started(fake.run(window=8), [1, "bad", 3, 4])
    assert [c.items for c in fake.sent] == [[1], [3], [4]]  # nothing sent for the bad item
    fake.answer(fake.sent[1])
    fake.answer(fake.sent[0])
    assert next(it) == 10
    with pytest.raises(ActivityInputError, match="bad item"):
        next(it)
    assert fake.cancelled == [fake.sent[2]]  # answered calls are not cancelled


def test_return_exceptions_yields_each_failure_in_its_place_and_goes_on():
    fake = FakePool()
    it = _started(fake.run(window=8), [1, "bad", 3, 4], return_exceptions=True)
    fake.answer(fake.sent[0])
    fake.answer(fake.sent[1], ValueError("boom"))
    fake.answer(fake.sent[2])
    got = list(it)
    assert got[0] == 10 and got[3] == 40
    assert isinstance(got[1], ActivityInputError) and isinstance(got[2], ValueError)
    assert fake.cancelled == []


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_the_inputs_own_exception_comes_at_its_position(return_exceptions):
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("the input broke")

    fake = FakePool()
    it = _started(fake.run(window=8), source(), return_exceptions)
    assert len(fake.sent) == 2  # read up to the failure already, kept for its place
    fake.answer_all()
    assert [next(it), next(it)] == [10, 20]
    with pytest.raises(OSError, match="the input broke"):
        next(it)


def test_a_refused_call_ends_the_map_at_its_position_and_nothing_more_is_read():
    fake, read = FakePool(), []

    def source() -> Iterator[Any]:
        for item in [1, 2, "closed", 4, 5]:
            read.append(item)
            yield item

    it = _started(fake.run(window=8), source(), return_exceptions=True)
    assert read == [1, 2, "closed"]
    fake.answer_all()
    assert [next(it), next(it)] == [10, 20]
    with pytest.raises(PoolClosedError):
        next(it)


def test_unordered_yields_index_and_outcome_as_calls_finish():
    fake = FakePool()
    it = _started(fake.run(window=4, ordered=False), ["bad", 1, 2, 3, 4, 5], True)
    index, outcome = next(it)  # the bad item needs no call: it is ready at once
    assert index == 0 and isinstance(outcome, ActivityInputError)
    fake.answer(fake.sent[2])
    fake.answer(fake.sent[0])
    assert [next(it), next(it)] == [(3, 30), (1, 10)]
    fake.answer_all()
    assert list(it) == [(2, 20), (4, 40), (5, 50)]


def test_unordered_raises_a_failure_when_it_comes_unless_asked_to_return_it():
    fake = FakePool()
    it = _started(fake.run(window=4, ordered=False), [1, 2, 3], return_exceptions=True)
    fake.answer(fake.sent[1], ValueError("boom"))
    index, outcome = next(it)
    assert index == 1 and isinstance(outcome, ValueError)
    fake = FakePool()
    it = _started(fake.run(window=4, ordered=False), [1, 2, 3])
    fake.answer(fake.sent[2], ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        next(it)
    assert set(fake.cancelled) == set(fake.sent[:2])  # the calls not answered


def test_closing_cancels_every_call_not_answered_and_reads_no_more():
    fake, read = FakePool(), []
    it = _started(fake.run(window=4), _counting(read))
    fake.answer(fake.sent[0])
    fake.answer(fake.sent[2])
    assert next(it) == 0
    it.close()
    assert fake.cancelled == [fake.sent[1], fake.sent[3]]
    assert len(read) == 4


def test_a_map_dropped_unread_cancels_its_calls():
    fake = FakePool()
    it = _started(fake.run(window=4), range(10))
    del it
    assert fake.cancelled == fake.sent and len(fake.sent) == 4


def test_chunks_count_their_items_and_a_bad_item_fails_alone():
    fake = FakePool()
    it = _started(fake.run(window=6, chunksize=3), [0, 1, "bad", 3, 4, 5, 6, 7], True)
    assert [c.items for c in fake.sent] == [[0, 1], [3, 4, 5]]  # 6 items: the window is full
    fake.answer_all()
    got = [next(it) for _ in range(6)]
    assert got[:2] == [0, 10] and isinstance(got[2], ActivityInputError)
    assert got[3:] == [30, 40, 50]
    fake.answer_all()
    assert list(it) == [60, 70]
    assert [c.items for c in fake.sent][2:] == [[6, 7]]


def test_unordered_chunks_index_their_items_around_a_bad_one():
    fake = FakePool()
    it = _started(fake.run(window=8, chunksize=3, ordered=False), [0, 1, "bad", 3, 4], True)
    index, outcome = next(it)
    assert index == 2 and isinstance(outcome, ActivityInputError)
    fake.answer(fake.sent[1])
    fake.answer(fake.sent[0])
    assert list(it) == [(3, 30), (4, 40), (0, 0), (1, 10)]


@pytest.mark.parametrize("return_exceptions", [False, True])
def test_the_inputs_exception_in_the_middle_of_a_chunk_comes_after_its_items(
    return_exceptions,
):
    def source() -> Iterator[int]:
        yield from range(4)
        raise OSError("the input broke")

    fake = FakePool()
    it = _started(fake.run(window=9, chunksize=3), source(), return_exceptions)
    assert [c.items for c in fake.sent] == [[0, 1, 2], [3]]
    fake.answer_all()
    assert [next(it) for _ in range(4)] == [0, 10, 20, 30]
    with pytest.raises(OSError, match="the input broke"):
        next(it)


def test_a_failed_chunk_is_the_outcome_of_each_of_its_items():
    fake = FakePool()
    it = _started(fake.run(window=6, chunksize=3, ordered=False), range(6), True)
    fake.answer(fake.sent[1], ValueError("chunk failed"))
    got = [next(it) for _ in range(3)]
    assert [i for i, _ in got] == [3, 4, 5]
    assert all(isinstance(e, ValueError) for _, e in got)
    fake.answer(fake.sent[0])
    assert list(it) == [(0, 0), (1, 10), (2, 20)]


def test_a_window_smaller_than_a_chunk_still_sends_one_chunk():
    fake = FakePool()
    it = _started(fake.run(window=2, chunksize=5), range(12))
    assert [c.items for c in fake.sent] == [[0, 1, 2, 3, 4]]
    fake.answer_all()
    assert [next(it) for _ in range(5)] == [0, 10, 20, 30, 40]
    it.close()


def test_a_reader_is_woken_once_for_the_unit_it_waits_on_after_the_loops_event():
    queued: list = []  # wake-ups handed to the "supervisor", run when the test says so
    fake = FakePool()
    run = fake.run(window=8, wake_later=queued.append)
    it = _started(run, [1, 2, 3])
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(it))
    reader.start()
    while run.waiting is None:  # the reader sleeps on the first item's unit
        threading.Event().wait(0.001)
    fake.answer(fake.sent[2])
    fake.answer(fake.sent[1])
    assert queued == []  # not what it waits for: no wake-up
    fake.answer(fake.sent[0])
    assert len(queued) == 1  # one wake-up, not yet run: the reader still sleeps
    reader.join(0.05)
    assert reader.is_alive() and got == []
    queued.pop()()  # the supervisor's event is over
    reader.join(5)
    assert got == [10, 20, 30]


async def test_a_task_reads_an_async_input_and_is_woken_from_another_thread():
    fake = FakePool()
    run = fake.run(window=4, threaded=False)

    async def source() -> Any:
        for i in range(10):
            await asyncio.sleep(0)
            yield i

    def answer_soon() -> None:  # as the pool's loop thread would
        while len(fake.sent) < 10 or not all(c.answered for c in fake.sent):
            fake.answer_all()
            threading.Event().wait(0.001)

    thread = threading.Thread(target=answer_soon)
    thread.start()
    got = [x async for x in aresults(run, source().__aiter__(), True, False)]
    thread.join(5)
    assert got == [10 * i for i in range(10)]


async def test_a_task_on_the_pools_loop_is_woken_directly():
    fake = FakePool()
    loop = asyncio.get_running_loop()
    run = fake.run(window=3, threaded=False, loop=loop)
    agen = aresults(run, iter(range(5)), False, False)

    def answer() -> None:
        fake.answer_all()
        if len(fake.sent) < 5 or not all(c.answered for c in fake.sent):
            loop.call_later(0.001, answer)

    loop.call_soon(answer)
    assert [x async for x in agen] == [0, 10, 20, 30, 40]


def test_buffersize_and_the_default_window():
    assert check_buffersize(None) is None and check_buffersize(5) == 5
    for bad, error in [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(error, match="buffersize must be an int >= 1"):
            check_buffersize(bad)
    assert default_window(2, 1) >= 64  # enough calls in flight for throughput
    assert default_window(2, 10) == 10 * default_window(2, 1)
    assert default_window(1000, 1) >= 4 * 1000
