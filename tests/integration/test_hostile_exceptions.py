"""User objects whose ``__str__``/``__repr__`` raise: the attempt fails like any other raise,
follows the retry policy, and the worker keeps serving."""

from __future__ import annotations

import pytest

from pool import Pool
from sdk import ActivityError, ActivityInputError, ApplicationError
from sdk._errors import safe_repr, safe_str
from tests.integration import hostile_activities as acts

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pool():
    with Pool([acts], workers=1) as p:
        yield p


@pytest.mark.parametrize("kind", ["str", "repr"])
def test_exception_whose_str_raises_fails_the_attempt_and_keeps_its_type(pool, kind):
    pid = pool.run(acts.pid_of)
    with pytest.raises(ActivityError) as info:
        pool.run(acts.raise_bad_str, kind)
    err = info.value
    assert err.attempts == 2  # the retry policy applied, as for any raise
    assert isinstance(err.__cause__, acts.BadStr)  # rebuilt with its type
    assert "BadStr" in str(err) and "str() of" in str(err) and "failed" in str(err)
    assert "no str for you" in str(err)
    assert "<exception str() failed>" in (err.remote_traceback or "")
    assert pool.run(acts.pid_of) == pid  # the same worker, still serving
    assert pool.worker_pids() == [pid]


def test_unpicklable_exception_whose_str_raises(pool):
    pid = pool.run(acts.pid_of)
    with pytest.raises(ActivityError) as info:
        pool.run(acts.raise_bad_str, "unpicklable")
    cause = info.value.__cause__
    assert isinstance(cause, ApplicationError) and cause.type == "UnpicklableBadStr"
    assert "str() of UnpicklableBadStr failed" in str(cause)
    assert info.value.attempts == 2
    assert pool.run(acts.pid_of) == pid


def test_heartbeat_details_whose_repr_raises(pool):
    pid = pool.run(acts.pid_of)
    details = pool.run(acts.heartbeat_bad_repr)
    assert "repr() of BadRepr failed" in details
    assert pool.run(acts.pid_of) == pid


def test_safe_str_and_repr():
    assert safe_str(acts.BadStr()) == "<str() of BadStr failed: ValueError: no str for you>"
    assert safe_repr(acts.BadStrAndRepr()) == (
        "<repr() of BadStrAndRepr failed: ValueError: no repr for you>"
    )
    assert safe_str(1) == "1" and safe_repr("a") == "'a'"

    class Worse(Exception):  # even the exception raised by __str__ cannot be printed
        def __str__(self) -> str:
            raise acts.BadStr()

    assert safe_str(Worse()) == "<str() of Worse failed: BadStr>"


def test_argument_whose_pickling_error_cannot_be_printed(pool):
    with pytest.raises(ActivityInputError, match=r"cannot be pickled: <repr\(\) of BadStrAndRepr"):
        pool.run(acts.echo, acts.HostileArgument())
    with pytest.raises(ActivityInputError, match="cannot be pickled"):
        list(pool.map(acts.echo, [1, acts.HostileArgument()]))
    assert pool.run(acts.echo, 3) == 3
