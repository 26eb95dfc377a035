"""A map's result board wakes its reader once per awaited result, after the loop's event."""

from __future__ import annotations

import threading

import pytest

from pool._pool import _MapBatch

pytestmark = pytest.mark.timeout(10)


def test_reader_is_woken_only_for_the_index_it_waits_on_and_only_when_asked():
    queued: list = []  # wake-ups handed to the "supervisor", run when the test says so
    batch = _MapBatch(3, queued.append)
    got: list = []
    reader = threading.Thread(target=lambda: got.extend(batch.results_in_order(lambda: None)))
    reader.start()
    while batch.waiting != 0:  # the reader sleeps on index 0
        threading.Event().wait(0.001)
    batch.deliver(2, "c", None)
    batch.deliver(1, "b", None)
    assert queued == []  # not what it waits for: no wake-up
    batch.deliver(0, "a", None)
    assert len(queued) == 1  # one wake-up, not yet run: the reader still sleeps
    reader.join(0.05)
    assert reader.is_alive() and got == []
    queued.pop()()  # the supervisor's event is over
    reader.join(5)
    assert got == ["a", "b", "c"]


def test_an_error_is_raised_at_its_index_and_the_rest_is_cancelled():
    cancelled = []
    batch = _MapBatch(3, lambda wake: wake())
    batch.deliver(0, 1, None)
    batch.deliver(1, None, ValueError("bad item"))
    results = batch.results_in_order(lambda: cancelled.append(True))
    assert next(results) == 1
    with pytest.raises(ValueError, match="bad item"):
        next(results)
    assert cancelled == [True]  # index 2 never came: it is cancelled
