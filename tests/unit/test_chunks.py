"""The pieces of a chunked map, without processes: checks, chunk definitions, the runner."""

from __future__ import annotations

import pytest

import sdk
from pool import _chunks
from pool._pool import _check_chunksize, _chunk_definition, _item_check
from tests.integration import chunked_activities as ca


def _defn(fn):
    return sdk.get_definition(fn)


@pytest.mark.parametrize("good", [1, 2, 10_000])
def test_chunksize_accepts_positive_ints(good):
    assert _check_chunksize(good) == good


@pytest.mark.parametrize(
    ("bad", "error"),
    [(0, ValueError), (-1, ValueError), (2.0, TypeError), (None, TypeError), (False, TypeError)],
)
def test_chunksize_refuses_the_rest(bad, error):
    with pytest.raises(error, match="chunksize must be an int >= 1"):
        _check_chunksize(bad)


def test_items_are_validated_and_coerced_like_single_calls():
    check = _item_check(_defn(ca.double))
    assert check is not None
    assert [check(x) for x in ["1", 2, 3.0]] == [1, 2, 3]
    with pytest.raises(sdk.ActivityInputError, match="'x'"):
        check("nope")
    assert _item_check(_defn(ca.chunk_echo)) is None  # unannotated: every item as given
    no_argument = _item_check(_defn(ca.chunk_loaded_modules))  # takes no argument at all
    assert no_argument is not None
    with pytest.raises(sdk.ActivityInputError, match="positional"):
        no_argument(1)


def test_a_chunk_definition_keeps_the_activity_but_runs_the_runner():
    defn = _defn(ca.sleeps)  # start_to_close_timeout=0.2, no heartbeat timeout
    chunk = _chunk_definition(defn, 5)
    assert (chunk.module, chunk.qualname) == ("pool._chunks", "run_chunk")
    assert chunk.name == defn.name and chunk.is_async is False
    assert chunk.start_to_close_timeout == pytest.approx(1.0)
    assert chunk.schedule_to_close_timeout is None and chunk.heartbeat_timeout is None
    assert chunk.retry_max_attempts == defn.retry_max_attempts
    beats = _chunk_definition(_defn(ca.beats_then_sleeps), 3)
    assert beats.heartbeat_timeout == 0.2  # unchanged: a beat from any item counts
    assert beats.start_to_close_timeout == 30
    asynchronous = _chunk_definition(_defn(ca.async_double), 2)
    assert (asynchronous.qualname, asynchronous.is_async) == ("run_chunk_async", True)
    sticky = _chunk_definition(_defn(ca.sticky_counter), 2)
    assert sticky.sticky_to_worker is True


def test_the_runner_calls_the_function_over_the_items():
    assert _chunks.run_chunk(ca.double.__module__, "double", [1, 2, 3]) == [2, 4, 6]
    # the runner leaves results unchecked: no pydantic in a worker (see the next test)
    assert _chunks.run_chunk(ca.bad_result.__module__, "bad_result", [2, 3]) == [2, "not a number"]
    with pytest.raises(sdk.ApplicationError, match="could not load") as info:
        _chunks.run_chunk("tests.integration.chunked_activities", "no_such_thing", [1])
    assert info.value.non_retryable
    assert _chunks.run_chunk.__activity_definition__.module == "pool._chunks"


def test_a_chunks_results_are_checked_item_by_item_against_the_activity() -> None:
    chunk = _chunk_definition(sdk.get_definition(ca.bad_result), 3)
    assert chunk.validate_result([1, "2", 4]) == [1, 2, 4]  # coerced, as one call's result is
    with pytest.raises(sdk.ApplicationError, match="'bad_result' returned an invalid result") as e:
        chunk.validate_result([1, 2, "not a number"])
    assert e.value.type == "ResultValidationError" and e.value.non_retryable
    untyped = _chunk_definition(sdk.get_definition(ca.chunk_echo), 3)
    assert untyped.validate_result(["anything"]) == ["anything"]
