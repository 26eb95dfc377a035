"""A fresh worker answers its first typed call about as fast as a warm one, and nothing the
library does before the activity is entered counts against the activity's heartbeat."""

from __future__ import annotations

import threading
import time

import pytest

from pool import Pool
from sdk import ActivityError, ApplicationError
from tests.integration import typed_activities as acts

pytestmark = pytest.mark.timeout(60)


def test_heartbeat_first_thing_on_fresh_workers_is_never_killed():
    # every call lands on a fresh worker; a 50 ms heartbeat timeout leaves no room for the
    # library's own first-call costs (an import of pydantic in the worker took 80-180 ms)
    with Pool([acts], workers=1, max_tasks_per_worker=1) as pool:
        assert [pool.run(acts.beat_first, i) for i in range(30)] == list(range(30))


def test_first_typed_call_on_a_fresh_worker_is_fast():
    ready = threading.Event()

    def on_event(event):
        if event.kind == "worker_started":
            ready.set()

    with Pool([acts], workers=1, max_tasks_per_worker=1, on_event=on_event) as pool:
        assert pool.run(acts.typed_noop, 0) == 0  # the caller has checked a typed call once
        took = []
        for i in range(3):
            ready.clear()
            assert ready.wait(10)  # the replacement is up: what follows is its first call
            t0 = time.perf_counter()
            assert pool.run(acts.typed_noop, i) == i
            took.append(time.perf_counter() - t0)
    # a warm call takes ~0.1 ms and a fresh worker's untyped first call a few ms; importing
    # pydantic in the worker made it 80-180 ms
    assert min(took) < 0.030, took


def test_result_is_checked_in_the_caller_and_fails_the_call():
    with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            pool.run(acts.returns_wrong_type, 1)
        assert info.value.attempts == 1  # not retried
        cause = info.value.__cause__
        assert isinstance(cause, ApplicationError)
        assert cause.type == "ResultValidationError" and cause.non_retryable
        assert "returned an invalid result" in str(cause)
        assert pool.run(acts.typed_noop, 2) == 2


def test_slow_depends_factory_does_not_count_against_the_heartbeat():
    with Pool([acts], workers=1) as pool:
        assert pool.run(acts.beat_after_slow_setup, 1) == "loaded"
        # async: the worker's first async call also sets up its event loop (imports asyncio)
        assert pool.run(acts.async_beat_after_slow_setup, 1) == "loaded async"


def test_importing_the_activity_module_does_not_count_against_the_heartbeat():
    from tests.integration import slow_import_activities as slow

    with Pool([], workers=1) as pool:  # nothing preloaded: the first call imports the module
        assert pool.run(slow.beat_after_slow_import, 3) == 3


def test_in_a_chunk_neither_a_slow_import_nor_a_slow_factory_counts_against_the_heartbeat():
    from tests.integration import slow_import_activities as slow

    with Pool([], workers=1) as pool:  # nothing preloaded: the first chunk imports the modules
        assert list(pool.map(slow.beat_after_slow_import, [1, 2], chunksize=2)) == [1, 2]
        got = list(pool.map(acts.beat_after_slow_setup, [1, 2, 3], chunksize=3))
        assert got == ["loaded"] * 3
        got = list(pool.map(acts.async_beat_after_slow_setup, [1, 2], chunksize=2))
        assert got == ["loaded async"] * 2
