import pickle
import traceback
from datetime import timedelta

import pytest

from sdk import (
    ActivityDefinitionError,
    ActivityError,
    ActivityInputError,
    ActivityPoolError,
    ActivityTimeoutError,
    ApplicationError,
    PoolClosedError,
    RemoteTraceback,
    StickySessionLostError,
    StickyWorkerSessionMissingError,
    TimeoutType,
    WorkerCrashedError,
)


def roundtrip(e: BaseException) -> BaseException:
    return pickle.loads(pickle.dumps(e))


def test_hierarchy() -> None:
    for cls in (
        ActivityDefinitionError,
        ActivityInputError,
        ActivityError,
        ApplicationError,
        ActivityTimeoutError,
        WorkerCrashedError,
        StickySessionLostError,
        StickyWorkerSessionMissingError,
        PoolClosedError,
    ):
        assert issubclass(cls, ActivityPoolError)
    assert issubclass(ActivityPoolError, Exception)


@pytest.mark.parametrize(
    "cls",
    [
        ActivityDefinitionError,
        ActivityInputError,
        StickyWorkerSessionMissingError,
        PoolClosedError,
        ActivityPoolError,
    ],
)
def test_plain_errors_pickle(cls: type[Exception]) -> None:
    e = roundtrip(cls("boom"))
    assert type(e) is cls and str(e) == "boom"


def test_activity_error_pickles_with_cause() -> None:
    e = ActivityError("failed", attempts=3, remote_traceback="Traceback ...")
    e.__cause__ = ValueError("inner")
    r = roundtrip(e)
    assert isinstance(r, ActivityError)
    assert str(r) == "failed"
    assert r.attempts == 3
    assert r.remote_traceback == "Traceback ..."
    assert isinstance(r.cause, ValueError) and str(r.cause) == "inner"
    assert r.cause is r.__cause__


def test_application_error_fields_and_pickle() -> None:
    e = ApplicationError(
        "bad",
        1,
        {"a": 2},
        type="Mine",
        non_retryable=True,
        next_retry_delay=timedelta(milliseconds=1500),
    )
    assert e.details == (1, {"a": 2})
    assert e.next_retry_delay == 1.5
    r = roundtrip(e)
    assert isinstance(r, ApplicationError)
    assert (r.message, r.details, r.type, r.non_retryable, r.next_retry_delay) == (
        "bad",
        (1, {"a": 2}),
        "Mine",
        True,
        1.5,
    )
    assert str(r) == "bad"
    d = ApplicationError()
    assert (d.message, d.details, d.type, d.non_retryable, d.next_retry_delay) == (
        "",
        (),
        None,
        False,
        None,
    )
    assert ApplicationError("x", next_retry_delay=2).next_retry_delay == 2.0


class MyAppError(ApplicationError):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}", non_retryable=True)
        self.code = code


def test_application_error_subclass_with_own_signature_pickles() -> None:
    r = roundtrip(MyAppError(7))
    assert isinstance(r, MyAppError)
    assert r.code == 7 and r.non_retryable and str(r) == "code 7"


def test_timeout_error_pickle() -> None:
    e = ActivityTimeoutError("late", type=TimeoutType.HEARTBEAT, last_heartbeat_details=(1, 2))
    r = roundtrip(e)
    assert isinstance(r, ActivityTimeoutError)
    assert r.type is TimeoutType.HEARTBEAT and r.last_heartbeat_details == (1, 2)
    assert str(r) == "late"
    assert TimeoutType.SCHEDULE_TO_CLOSE == "SCHEDULE_TO_CLOSE"


def test_worker_crashed_pickle() -> None:
    e = WorkerCrashedError("died", exitcode=-9, signal=9, pid=123, worker_id=4)
    r = roundtrip(e)
    assert isinstance(r, WorkerCrashedError)
    assert (r.exitcode, r.signal, r.pid, r.worker_id, str(r)) == (-9, 9, 123, 4, "died")
    assert WorkerCrashedError("x", exitcode=1, signal=None, pid=None).worker_id is None


def test_session_lost_pickle() -> None:
    r = roundtrip(StickySessionLostError("gone", session_id="abc"))
    assert isinstance(r, StickySessionLostError)
    assert r.session_id == "abc" and str(r) == "gone"


def test_remote_traceback_text_and_pickle() -> None:
    tb = 'Traceback (most recent call last):\n  File "w.py", line 1\nValueError: x\n'
    rt = RemoteTraceback(tb)
    assert str(rt) == tb
    assert str(roundtrip(rt)) == tb
    err = ValueError("x")
    err.__cause__ = rt
    text = "".join(traceback.format_exception(err))
    assert 'File "w.py"' in text
