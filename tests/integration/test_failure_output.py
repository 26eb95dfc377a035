"""``ActivityError.output``: the last lines the failing attempt printed go with the error that
ends the call, whatever ended it (an exception, a crash, a timeout)."""

from __future__ import annotations

import pickle

import pytest

from pool import Pool
from sdk import ActivityError, ActivityTimeoutError, WorkerCrashedError
from tests.integration import failure_output_activities as acts

pytestmark = pytest.mark.timeout(60)


def test_the_error_holds_the_last_lines_of_the_last_attempt(capfd):
    with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            pool.run(acts.chatty_fail, 30)
    err = info.value
    assert err.attempts == 2
    # the last 20 lines of attempt 2, stdout and stderr in the order printed; none of attempt 1
    assert err.output == tuple(f"attempt 2 line {i}" for i in range(10, 30))
    again = pickle.loads(pickle.dumps(err))
    assert again.output == err.output
    # still shown on the caller's stderr as before
    assert "[worker 1 chatty_fail] attempt 1 line 0" in capfd.readouterr().err.splitlines()


def test_lines_of_an_earlier_attempt_are_not_the_last_attempts(capfd):
    with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            pool.run(acts.loud_then_quiet)
        assert pool.run(acts.quiet) == 1
    assert info.value.attempts == 2
    assert info.value.output == ()


async def test_an_async_caller_gets_it_too(capfd):
    async with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            await pool.execute(acts.chatty_fail, 3)
    assert info.value.output == ("attempt 2 line 0", "attempt 2 line 1", "attempt 2 line 2")


def test_a_crash_keeps_what_the_attempt_printed(capfd):
    with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            pool.run(acts.print_then_crash)
    assert isinstance(info.value.cause, WorkerCrashedError)
    assert info.value.output == ("about to die",)


def test_a_timeout_keeps_what_the_attempt_printed(capfd):
    with Pool([acts], workers=1) as pool:
        with pytest.raises(ActivityError) as info:
            pool.run(acts.print_then_hang)
    assert isinstance(info.value.cause, ActivityTimeoutError)
    assert info.value.output == ("stuck from here",)
