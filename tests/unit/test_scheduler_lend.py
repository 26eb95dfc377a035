"""Lending an idle worker to a blocking caller's thread (pool._lane), on the fake clock."""

from __future__ import annotations

from typing import Any

from pool._scheduler import CallState, WorkerState
from tests.unit.test_scheduler import FakeEffects, Harness, crash, plain, stc, sticky


class LendingEffects(FakeEffects):
    """``unlend`` answers ``given_back`` (False: a caller took the worker already)."""

    def __init__(self) -> None:
        super().__init__()
        self.given_back = True

    def unlend(self, worker_id: int) -> bool:
        self.log.append(("unlend", worker_id))
        return self.given_back


def harness(workers: int = 1, **kw: Any) -> Harness:
    h = Harness(workers=workers, **kw)
    h.fx = h.sched.fx = LendingEffects()  # type: ignore[misc]
    return h


def test_an_idle_worker_is_lent_only_while_nothing_waits() -> None:
    h = harness(workers=1)
    running = h.submit(plain)
    assert h.sched.lend(lambda wid: True) is None  # no idle worker
    h.finish(running)
    lent = h.sched.lend(lambda wid: True)
    assert lent is not None
    wid, seq = lent
    assert h.worker(wid).state is WorkerState.LENT
    assert seq > running.seq
    assert h.sched.lend(lambda wid: True) is None  # one at a time


def test_an_adopted_call_runs_with_its_deadlines_counted_from_the_write() -> None:
    h = harness(workers=1)
    wid, seq = h.sched.lend(lambda wid: True) or (0, 0)
    call = h.call(stc)  # start_to_close 1.0
    call.seq = seq
    h.sched.adopt(call, wid, sent_at=0.0, now=0.4)
    assert call.state is CallState.RUNNING and call.attempt == 1
    assert h.fx.of("send_run") == []  # the caller wrote the RUN itself
    assert h.sched.next_deadline() == 1.0
    h.sched.advance(1.0)
    assert ("kill", wid) in h.fx.log


def test_a_queued_call_takes_the_lent_worker_back() -> None:
    h = harness(workers=1)
    wid, _ = h.sched.lend(lambda wid: True) or (0, 0)
    call = h.submit(plain)
    assert ("unlend", wid) in h.fx.log
    assert [e[1:3] for e in h.fx.of("send_run")] == [(wid, call.id)]
    assert h.sched.lent is None


def test_a_queued_call_waits_for_a_lent_worker_a_caller_took() -> None:
    h = harness(workers=1)
    wid, seq = h.sched.lend(lambda wid: True) or (0, 0)
    h.fx.given_back = False
    queued = h.submit(plain)
    assert h.fx.of("send_run") == [] and queued.state is CallState.QUEUED
    taken = h.call(plain)
    taken.seq = seq
    h.sched.adopt(taken, wid, sent_at=0.0, now=0.0)
    h.finish(taken, "done")
    assert ("resolve", taken.id, "done") in h.fx.log
    assert [e[1:3] for e in h.fx.of("send_run")] == [(wid, queued.id)]


def test_a_call_sent_to_a_lent_worker_that_died_runs_elsewhere_uncounted() -> None:
    h = harness(workers=2)
    wid, seq = h.sched.lend(lambda w: w == 1) or (0, 0)
    assert wid == 1
    h.sched.worker_exited(1, crash(1), now=0.0)
    call = h.call(plain)
    call.seq = seq
    h.sched.adopt(call, 1, sent_at=0.0, now=0.0)
    runs = h.fx.runs(call)
    assert [(r[1], r[3]) for r in runs] == [(2, 1)]  # worker 2, attempt 1


def test_closing_takes_the_lent_worker_back_and_retires_it() -> None:
    h = harness(workers=1)
    wid, _ = h.sched.lend(lambda wid: True) or (0, 0)
    h.sched.close()
    assert ("unlend", wid) in h.fx.log and ("retire", wid) in h.fx.log


def test_a_new_session_may_bind_to_the_lent_worker_which_is_taken_back() -> None:
    h = harness(workers=2)
    first = h.submit(sticky, session="a")
    bound = first.worker
    h.finish(first)
    wid, _ = h.sched.lend(lambda w: w != bound) or (0, 0)
    second = h.submit(sticky, session="b")
    assert second.worker == wid != bound  # the session with no worker took the free one
    assert ("unlend", wid) in h.fx.log
