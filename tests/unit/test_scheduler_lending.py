"""The scheduler's side of the direct lane (``pool._lane``): a lent worker takes no work, comes
back idle, and a call handed over runs on with its deadlines counted from its start."""

from __future__ import annotations

from pool._calls_state import CallState, WorkerState
from sdk import ActivityTimeoutError, PoolClosedError, TimeoutType
from tests.unit.test_scheduler import Harness, crash, plain, s2c, stc, sticky


def test_only_an_idle_pool_lends_and_it_prefers_the_worker_named() -> None:
    h = Harness(workers=2)
    assert h.sched.lendable(2) == 2
    assert h.sched.lendable(None) == 1
    c = h.submit(plain)
    assert h.sched.lendable(None) is None  # a call not done: nothing is lent
    h.sched.result(c.worker, c.seq, None, 0.1)
    assert h.sched.lendable(None) is not None
    h.sched.events = True
    assert h.sched.lendable(None) is None  # a borrower's calls make no events


def test_a_worker_bound_to_a_session_is_not_lent() -> None:
    h = Harness(workers=1)
    c = h.submit(sticky, session="s")
    h.sched.result(c.worker, c.seq, None, 0.1)
    assert h.sched.lendable(None) is None


def test_a_lent_worker_takes_no_work_until_it_is_back() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    assert h.worker(1).state is WorkerState.LENT
    assert not h.sched.wants_lent_back()
    c = h.submit(plain, now=0.1)
    assert h.fx.runs(c) == [] and c.state is CallState.QUEUED
    assert h.sched.wants_lent_back()  # work waits
    h.sched.unlend(1, 0.2)
    assert [r[1] for r in h.fx.runs(c)] == [1] and c.state is CallState.RUNNING


def test_closing_wants_the_worker_back_and_it_retires_when_back() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    h.sched.close()
    assert h.sched.wants_lent_back()
    assert h.fx.of("retire") == []
    h.sched.unlend(1, 0.1)
    assert h.fx.of("retire") == [("retire", 1)]


def test_a_call_handed_over_runs_on_with_deadlines_from_its_start() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    c = h.call(stc)  # start_to_close 1.0, 3 attempts
    h.sched.adopt(1, c, 1 << 48, 0.5, 0.6)
    assert c.state is CallState.RUNNING and c.attempt == 1 and c.worker == 1
    assert h.sched.running_call(1, 1 << 48) is c
    h.sched.advance(1.49)
    assert h.fx.of("kill") == []
    h.sched.advance(1.5)  # 1.0 after the borrower sent it, not after the hand-over
    assert h.fx.of("kill") == [("kill", 1)]
    assert c.state is CallState.BACKOFF  # attempt 2 follows the retry policy


def test_a_handed_over_result_frees_the_worker_and_answers() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    c = h.call(plain)
    h.sched.adopt(1, c, 1 << 48, 0.0, 0.01)
    h.sched.result(1, 1 << 48, 42, 0.02)
    assert h.fx.outcomes(c) == [("resolve", c.id, 42)]
    assert h.worker(1).state is WorkerState.IDLE


def test_schedule_to_close_of_a_handed_over_call_counts_from_its_start() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    c = h.call(s2c)  # schedule_to_close 5.0
    h.sched.adopt(1, c, 1 << 48, 1.0, 1.1)
    h.sched.advance(5.99)
    assert h.fx.outcomes(c) == []
    h.sched.advance(6.0)
    exc = h.fx.rejection(c)
    assert isinstance(exc.__cause__, ActivityTimeoutError)
    assert exc.__cause__.type is TimeoutType.SCHEDULE_TO_CLOSE


def test_a_lent_worker_that_dies_is_replaced() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    h.sched.worker_exited(1, crash(1), 0.1)
    assert ("spawn", 2) in h.fx.new()


def test_a_call_handed_over_after_a_cancelling_close_is_failed_and_its_worker_killed() -> None:
    h = Harness(workers=1)
    h.sched.lend(1)
    h.sched.cancel_all(0.1)
    c = h.call(plain)
    h.sched.adopt(1, c, 1 << 48, 0.05, 0.2)
    assert isinstance(h.fx.rejection(c), PoolClosedError)
    assert ("kill", 1) in h.fx.of("kill")


def test_lending_over_and_over_keeps_the_idle_list_short() -> None:
    # a lend per blocking answer and a take-back per call that reaches the loop: the worker
    # must not pile up in the idle list (each lend then scanned it all: 60 us after 1,000)
    h = Harness(workers=2)
    for i in range(1000):
        wid = h.sched.lendable(2)
        assert wid == 2
        h.sched.lend(wid)
        h.sched.unlend(wid, float(i))
    assert len(h.sched.dispatch.idle) <= 2
