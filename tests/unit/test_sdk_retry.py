import pytest

from sdk import (
    ActivityInputError,
    ActivityTimeoutError,
    ApplicationError,
    RetryPolicy,
    TimeoutType,
    WorkerCrashedError,
    backoff_delay,
)
from sdk._retry import final_error


@pytest.mark.parametrize(
    ("attempt", "initial", "coefficient", "maximum", "expected"),
    [
        (1, 1.0, 2.0, 100.0, 1.0),
        (2, 1.0, 2.0, 100.0, 2.0),
        (3, 1.0, 2.0, 100.0, 4.0),
        (8, 1.0, 2.0, 100.0, 100.0),
        (3, 0.5, 1.0, 10.0, 0.5),
        (4, 0.1, 3.0, 10.0, 2.7),
        (10_000, 1.0, 2.0, 60.0, 60.0),
    ],
)
def test_backoff_table(
    attempt: int, initial: float, coefficient: float, maximum: float, expected: float
) -> None:
    assert backoff_delay(attempt, initial, coefficient, maximum) == pytest.approx(expected)


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, 1.0, 2.0, 10.0)


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.initial_interval, p.backoff_coefficient, p.maximum_attempts) == (1.0, 2.0, 3)
    assert p.maximum_interval is None
    assert p.delay(1) == 1.0 and p.delay(2) == 2.0 and p.delay(20) == 100.0
    assert RetryPolicy(initial_interval=0.5).delay(30) == 50.0
    assert RetryPolicy(maximum_interval=3).delay(5) == 3


def test_exhausted() -> None:
    p = RetryPolicy(maximum_attempts=3)
    assert [p.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy(maximum_attempts=1).exhausted(1)
    assert not RetryPolicy(maximum_attempts=0).exhausted(10_000)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": 0},
        {"initial_interval": -1},
        {"backoff_coefficient": 0.5},
        {"maximum_interval": 0.5},
        {"maximum_attempts": -1},
        {"maximum_attempts": 1.5},
        {"maximum_attempts": True},
        {"non_retryable_error_types": "ValueError"},
        {"non_retryable_error_types": (ValueError,)},
    ],
)
def test_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


class BaseCustom(Exception):
    pass


class DerivedCustom(BaseCustom):
    pass


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("x"), True),
        (ApplicationError("x"), True),
        (ApplicationError("x", non_retryable=True), False),
        (ApplicationError("x", type="Fatal"), False),
        (ApplicationError("x", type="Other"), True),
        (ActivityInputError("x"), False),
        (ActivityTimeoutError("x", type=TimeoutType.START_TO_CLOSE), True),
        (ActivityTimeoutError("x", type=TimeoutType.HEARTBEAT), True),
        (ActivityTimeoutError("x", type=TimeoutType.SCHEDULE_TO_CLOSE), False),
        (WorkerCrashedError("x", exitcode=1, signal=None, pid=1), True),
        (KeyError("x"), False),  # listed by name
        (DerivedCustom(), False),  # a base class is listed
        (BaseCustom(), False),
        (RuntimeError(), True),
    ],
)
def test_is_retryable_matrix(exc: BaseException, expected: bool) -> None:
    p = RetryPolicy(non_retryable_error_types=("KeyError", "BaseCustom", "Fatal"))
    assert p.is_retryable(exc) is expected


def test_lookup_error_is_listed_base_of_key_error() -> None:
    p = RetryPolicy(non_retryable_error_types=("LookupError",))
    assert not p.is_retryable(KeyError("k"))
    assert p.is_retryable(ValueError())


# -- the one retry decision: RetryPolicy.next_delay(exc, attempt) ----------------------------

_POLICY = RetryPolicy(
    initial_interval=1.0,
    backoff_coefficient=2.0,
    maximum_interval=5.0,
    maximum_attempts=4,
    non_retryable_error_types=("KeyError", "Fatal"),
)


class _RetryDelayLookalike(Exception):
    """Not an ApplicationError: an attribute of that name is no instruction."""

    next_retry_delay = 0.25


@pytest.mark.parametrize(
    ("exc", "attempt", "expected"),
    [
        (ValueError("x"), 1, 1.0),
        (ValueError("x"), 2, 2.0),
        (ValueError("x"), 3, 4.0),
        (ValueError("x"), 4, None),  # the last of 4 attempts
        (ApplicationError("x", next_retry_delay=0.5), 1, 0.5),
        (ApplicationError("x", next_retry_delay=0.5), 4, None),
        (ApplicationError("x", non_retryable=True), 1, None),
        (ApplicationError("x", type="Fatal"), 1, None),
        (ApplicationError("x", type="Other"), 1, 1.0),
        (KeyError("k"), 1, None),  # a non-retryable type by name
        (ActivityInputError("bad"), 1, None),
        (ActivityTimeoutError("t", type=TimeoutType.START_TO_CLOSE), 2, 2.0),
        (ActivityTimeoutError("t", type=TimeoutType.SCHEDULE_TO_CLOSE), 1, None),
        (_RetryDelayLookalike(), 1, 1.0),
    ],
)
def test_next_delay_table(exc: BaseException, attempt: int, expected: float | None) -> None:
    assert _POLICY.next_delay(exc, attempt) == expected


def test_next_delay_is_capped_and_unlimited_attempts_never_run_out() -> None:
    policy = RetryPolicy(initial_interval=1.0, maximum_interval=5.0, maximum_attempts=0)
    assert policy.next_delay(ValueError(), 10) == 5.0
    assert policy.next_delay(ValueError(), 10_000) == 5.0


def test_final_error_names_the_activity_and_keeps_the_cause() -> None:
    cause = ValueError("boom")
    err = final_error("act", 1, cause, "Traceback: here")
    assert str(err) == "activity 'act' failed after 1 attempt: ValueError: boom"
    assert err.__cause__ is cause and err.attempts == 1
    assert err.remote_traceback == "Traceback: here"
    assert str(final_error("act", 3, cause, None)).startswith(
        "activity 'act' failed after 3 attempts"
    )
