"""The pieces of a chunked map, without processes: checks, chunk calls, the runners."""

from __future__ import annotations

import asyncio

import pytest

import sdk
from pool import _chunks
from pool._calls import CallMaker, check_chunksize
from pool._timeouts import chunk_limits
from sdk._context import StickyWorkerSession
from sdk._depends import ResourceCache
from sdk._retry import RetryPolicy
from tests.integration import chunked_activities as ca


def _defn(fn):
    return sdk.get_definition(fn)


@pytest.mark.parametrize("good", [1, 2, 10_000])
def test_chunksize_accepts_positive_ints(good):
    assert check_chunksize(good) == good


@pytest.mark.parametrize(
    ("bad", "error"),
    [(0, ValueError), (-1, ValueError), (2.0, TypeError), (None, TypeError), (False, TypeError)],
)
def test_chunksize_refuses_the_rest(bad, error):
    with pytest.raises(error, match="chunksize must be an int >= 1"):
        check_chunksize(bad)


def test_items_are_validated_and_coerced_like_single_calls():
    check = _defn(ca.double).item_check()
    assert check is not None
    assert [check(x) for x in ["1", 2, 3.0]] == [1, 2, 3]
    with pytest.raises(sdk.ActivityInputError, match="'x'"):
        check("nope")
    assert _defn(ca.chunk_echo).item_check() is None  # unannotated: every item as given
    no_argument = _defn(ca.chunk_loaded_modules).item_check()  # takes no argument at all
    assert no_argument is not None
    with pytest.raises(sdk.ActivityInputError, match="positional"):
        no_argument(1)


def _chunk(fn, n: int, session=None, kind: int = _chunks.ITEMS):
    maker = CallMaker(RetryPolicy(maximum_attempts=3), lambda session: None)
    return maker.chunk_call(_defn(fn), session, list(range(n)), None, kind)


def test_a_chunk_is_a_call_of_the_activity_with_its_limits_times_its_items():
    defn = _defn(ca.sleeps)  # start_to_close_timeout=0.2, no heartbeat timeout
    chunk = _chunk(ca.sleeps, 5)
    assert chunk.defn is defn and chunk.chunk == _chunks.ITEMS
    assert chunk.start_to_close == pytest.approx(1.0)
    assert chunk.schedule_to_close is None and chunk.defn.heartbeat_timeout is None
    assert chunk.policy.maximum_attempts == defn.retry_max_attempts == 1
    beats = _chunk(ca.beats_then_sleeps, 3)
    assert beats.defn.heartbeat_timeout == 0.2  # unchanged: a beat from any item counts
    assert beats.start_to_close == 30
    assert _chunk(ca.async_double, 2, kind=_chunks.SPREAD).chunk == _chunks.SPREAD
    assert chunk_limits(defn, 3) == (pytest.approx(0.6), None)
    with pytest.raises(sdk.StickyWorkerSessionMissingError):
        _chunk(ca.sticky_counter, 2)
    session = StickyWorkerSession()
    assert _chunk(ca.sticky_counter, 2, session).session == session.session_id


def test_the_runner_calls_the_function_over_the_items():
    cache = ResourceCache()
    run = _chunks.each(_chunks.ITEMS, False)
    assert run(_defn(ca.double), cache, [1, 2, 3], None) == [2, 4, 6]
    # the runner leaves results unchecked: no pydantic in a worker (see the next test)
    assert run(_defn(ca.bad_result), cache, [2, 3], None) == [2, "not a number"]
    spread = _chunks.each(_chunks.SPREAD, False)
    assert spread(_defn(ca.double), cache, [((1,), {}), ((), {"x": 4})], None) == [2, 8]
    arun = _chunks.each(_chunks.ITEMS, True)
    assert asyncio.run(arun(_defn(ca.async_double), cache, [1, 2], None)) == [2, 4]
    with pytest.raises(ValueError, match="unknown kind"):
        _chunks.each(0, False)


def test_a_chunks_results_are_checked_item_by_item_against_the_activity() -> None:
    defn = sdk.get_definition(ca.bad_result)
    assert defn.validate_results([1, "2", 4]) == [1, 2, 4]  # coerced, as one call's result is
    with pytest.raises(sdk.ApplicationError, match="'bad_result' returned an invalid result") as e:
        defn.validate_results([1, 2, "not a number"])
    assert e.value.type == "ResultValidationError" and e.value.non_retryable
    untyped = sdk.get_definition(ca.chunk_echo)
    assert untyped.validate_results(["anything"]) == ["anything"]
