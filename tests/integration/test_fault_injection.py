"""Pool.inject_fault: deterministic misbehaviour for users' tests of their retry logic."""

from __future__ import annotations

import signal

import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pool():
    with Pool([acts], workers=1) as p:
        yield p


def test_crash_on_first_attempt_then_success(pool):
    pool.inject_fault(acts.flaky, "crash", attempt=1)
    assert pool.run(acts.flaky, 0) == 2


def test_exit_code_reaches_the_error():
    errors = []

    def on_event(event):
        if event.kind == "attempt_failed":
            errors.append(event.error)

    with Pool([acts], workers=1, on_event=on_event) as pool:
        pool.inject_fault(acts.flaky, "exit", exit_code=9)
        assert pool.run(acts.flaky, 0) == 2
    assert len(errors) == 1
    assert isinstance(errors[0], sdk.WorkerCrashedError) and errors[0].exitcode == 9


def test_hang_every_attempt_is_caught_by_the_deadline(pool):
    pool.inject_fault(acts.hang_sleep, "hang", attempt=None, times=None)
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.hang_sleep)
    assert isinstance(info.value.__cause__, sdk.ActivityTimeoutError)
    pool.clear_faults()


def test_raise_given_exception(pool):
    pool.inject_fault(acts.add, "raise", exception=sdk.ApplicationError("nope", non_retryable=True))
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.add, 1, 1)
    assert info.value.attempts == 1 and "nope" in str(info.value.__cause__)
    assert pool.run(acts.add, 1, 1) == 2  # used once


def test_oom_dies_by_sigkill(pool):
    pool.inject_fault(acts.kill_self, "oom", memory=32 << 20)  # kill_self has 1 attempt
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.kill_self)
    crash = info.value.__cause__
    assert isinstance(crash, sdk.WorkerCrashedError) and crash.signal == signal.SIGKILL


def test_bad_fault_arguments(pool):
    with pytest.raises(ValueError):
        pool.inject_fault(acts.add, "explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pool.inject_fault(acts.add, "raise")
    with pytest.raises(sdk.ActivityInputError):
        pool.inject_fault("no_such_activity", "hang")
