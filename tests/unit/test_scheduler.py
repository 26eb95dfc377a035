"""Unit tests of the pure scheduler (``pool._scheduler``), driven by a fake Effects port and a
fake clock (plain floats passed as ``now``), as DESIGN.md §4 and STYLE.md item 7 describe."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any

import pytest

import sdk
from pool._prefetch import WITHDRAW_AFTER
from pool._scheduler import (
    Call,
    CallState,
    Scheduler,
    WorkerState,
)
from pool._workers import MAX_STARTUP_FAILURES
from sdk import (
    ActivityError,
    ActivityTimeoutError,
    ApplicationError,
    PoolClosedError,
    RetryPolicy,
    StickySessionLostError,
    TimeoutType,
    WorkerCrashedError,
    activity,
)

# -- activities (module level: definitions are imported by module and qualified name) ----------


@activity(name="sched_test.plain", start_to_close_timeout=None)
def plain() -> None:
    return None


@activity(name="sched_test.timed", start_to_close_timeout=10.0)
def timed() -> None:
    return None


@activity(
    name="sched_test.retrying",
    start_to_close_timeout=None,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.1,
)
def retrying() -> None:
    return None


@activity(
    name="sched_test.backoff",
    start_to_close_timeout=None,
    retry_policy_max_attempts=5,
    retry_policy_initial_interval=0.1,
    retry_policy_backoff_coefficient=3.0,
)
def backoff() -> None:
    return None


@activity(
    name="sched_test.capped",
    start_to_close_timeout=None,
    retry_policy_max_attempts=5,
    retry_policy_initial_interval=0.1,
    retry_policy_backoff_coefficient=3.0,
    retry_policy_max_interval=0.5,
)
def capped() -> None:
    return None


@activity(name="sched_test.once", start_to_close_timeout=None, retry_policy_max_attempts=1)
def once() -> None:
    return None


@activity(
    name="sched_test.typed_non_retryable",
    start_to_close_timeout=None,
    retry_policy_max_attempts=5,
    non_retryable_error_types=[KeyError],
)
def typed_non_retryable() -> None:
    return None


@activity(
    name="sched_test.stc",
    start_to_close_timeout=1.0,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.1,
)
def stc() -> None:
    return None


@activity(
    name="sched_test.hb",
    start_to_close_timeout=None,
    heartbeat_timeout=2.0,
    retry_policy_max_attempts=1,
)
def hb() -> None:
    return None


@activity(
    name="sched_test.s2c",
    start_to_close_timeout=None,
    schedule_to_close_timeout=5.0,
    retry_policy_max_attempts=10,
    retry_policy_initial_interval=10.0,
)
def s2c() -> None:
    return None


@activity(
    name="sched_test.sticky",
    start_to_close_timeout=None,
    sticky_to_worker=True,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.1,
)
def sticky() -> None:
    return None


@activity(
    name="sched_test.busy",
    start_to_close_timeout=1.0,
    heartbeat_timeout=0.5,
    schedule_to_close_timeout=100.0,
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.1,
    sticky_to_worker=True,
)
def busy() -> None:
    return None


# -- fakes ------------------------------------------------------------------------------------


class FakeEffects:
    """Records every call of the Effects port, in order.

    ``send_run`` is recorded as ``(kind, worker, call id, attempt, seq)``: a snapshot, since the
    Call object keeps changing afterwards.
    """

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self._cursor = 0

    def spawn(self, worker_id: int) -> None:
        self.log.append(("spawn", worker_id))

    def send_run(self, worker_id: int, call: Call) -> None:
        self.log.append(("send_run", worker_id, call.id, call.attempt, call.seq))

    def send_cancel(self, worker_id: int, seq: int) -> None:
        self.log.append(("send_cancel", worker_id, seq))

    def send_withdraw(self, worker_id: int, seqs: list[int]) -> None:
        self.log.append(("send_withdraw", worker_id, tuple(seqs)))

    def close_session(self, worker_id: int, session_id: str) -> None:
        self.log.append(("close_session", worker_id, session_id))

    def kill(self, worker_id: int) -> None:
        self.log.append(("kill", worker_id))

    def retire(self, worker_id: int) -> None:
        self.log.append(("retire", worker_id))

    def resolve(self, call: Call, value: Any) -> None:
        self.log.append(("resolve", call.id, value))

    def reject(self, call: Call, exc: BaseException) -> None:
        self.log.append(("reject", call.id, exc))

    def event(self, kind: str, **fields: Any) -> None:
        self.log.append(("event", kind, fields))

    # -- queries
    def new(self) -> list[tuple[Any, ...]]:
        """Entries recorded since the previous ``new()``, events left out."""
        out = [e for e in self.log[self._cursor :] if e[0] != "event"]
        self._cursor = len(self.log)
        return out

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] == kind]

    def runs(self, call: Call) -> list[tuple[Any, ...]]:
        return [e for e in self.of("send_run") if e[2] == call.id]

    def outcomes(self, call: Call) -> list[tuple[Any, ...]]:
        return [e for e in self.log if e[0] in ("resolve", "reject") and e[1] == call.id]

    def rejection(self, call: Call) -> BaseException:
        outcomes = self.outcomes(call)
        assert len(outcomes) == 1, outcomes
        assert outcomes[0][0] == "reject", outcomes
        return outcomes[0][2]

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e[2] for e in self.log if e[0] == "event" and e[1] == kind]


class Harness:
    def __init__(self, workers: int = 1, *, ready: bool = True, now: float = 0.0, **kw: Any):
        self.fx = FakeEffects()
        self.sched = Scheduler(self.fx, workers=workers, **kw)
        self._ids = itertools.count(1)
        self.sched.start(now)
        if ready:
            for wid in range(1, workers + 1):
                self.sched.worker_ready(wid, now)
        self.fx.new()

    def call(self, fn: Any = plain, session: str | None = None) -> Call:
        defn = sdk.get_definition(fn)
        policy = defn.retry_policy(RetryPolicy())
        return Call(
            next(self._ids),
            defn,
            policy,
            payload=None,
            waiter=None,
            session=session,
            start_to_close=defn.start_to_close_timeout,
            schedule_to_close=defn.schedule_to_close_timeout,
        )

    def learn(self, fn: Any = plain, took: float = 0.001) -> None:
        """Give ``fn`` a timing history (prefetch needs one): one call per worker, run from
        ``-took`` to 0, so each worker is idle again and in its first order."""
        calls = [self.submit(fn, now=-took) for _ in self.sched.workers.slots()]
        for call in calls:
            self.finish(call, None, 0.0)
        self.fx.new()

    def submit(self, fn: Any = plain, session: str | None = None, now: float = 0.0) -> Call:
        call = self.call(fn, session)
        self.sched.submit(call, now)
        return call

    def worker(self, wid: int) -> Any:
        slot = self.sched.workers.get(wid)
        assert slot is not None, f"no worker {wid}"
        return slot

    def finish(self, call: Call, value: Any = None, now: float = 0.0) -> None:
        assert call.worker is not None
        self.sched.result(call.worker, call.seq, value, now)

    def fail(self, call: Call, exc: BaseException, now: float = 0.0) -> None:
        assert call.worker is not None
        self.sched.failure(call.worker, call.seq, exc, now)

    def run_due(self) -> float:
        """Advance the clock to the next deadline and fire it; return that time."""
        when = self.sched.next_deadline()
        assert when is not None
        self.sched.advance(when)
        return when


def crash(wid: int, sig: int | None = 9) -> WorkerCrashedError:
    return WorkerCrashedError(
        f"worker {wid} died", exitcode=None, signal=sig, pid=1000 + wid, worker_id=wid
    )


def timeout_cause(exc: BaseException) -> ActivityTimeoutError:
    assert isinstance(exc, ActivityError), exc
    cause = exc.__cause__
    assert isinstance(cause, ActivityTimeoutError), cause
    return cause


# -- start, dispatch, prefetch ------------------------------------------------------------------


def test_start_spawns_the_requested_number_of_workers() -> None:
    h = Harness(workers=3, ready=False)
    assert h.fx.of("spawn") == [("spawn", 1), ("spawn", 2), ("spawn", 3)]
    assert h.sched.live_workers() == 3
    assert all(w.state is WorkerState.STARTING for w in h.sched.workers.slots())


def test_calls_wait_for_ready_workers_then_dispatch_fifo() -> None:
    h = Harness(workers=2, ready=False, prefetch=0)
    c1, c2, c3 = h.submit(), h.submit(), h.submit()
    assert h.fx.new() == []
    assert all(c.state is CallState.QUEUED for c in (c1, c2, c3))
    h.sched.worker_ready(2, 1.0)
    assert h.fx.new() == [("send_run", 2, c1.id, 1, c1.seq)]
    h.sched.worker_ready(1, 1.5)
    new = h.fx.new()
    assert new[0] == ("send_run", 1, c2.id, 1, c2.seq)
    assert c1.state is CallState.RUNNING and c2.state is CallState.RUNNING
    assert c1.started_at == 1.0 and c2.started_at == 1.5


def test_one_attempt_per_worker_and_third_call_waits_without_prefetch() -> None:
    h = Harness(workers=2, prefetch=0)
    c1, c2, c3 = h.submit(), h.submit(), h.submit()
    assert h.fx.new() == [("send_run", 1, c1.id, 1, c1.seq), ("send_run", 2, c2.id, 1, c2.seq)]
    assert c3.state is CallState.QUEUED
    assert h.sched.queued() == 1  # c3, waiting for any worker
    assert h.worker(1).running is c1 and h.worker(2).running is c2
    assert not h.worker(1).sent and not h.worker(2).sent
    h.finish(c2, "two", 1.0)
    assert h.fx.new() == [("resolve", c2.id, "two"), ("send_run", 2, c3.id, 1, c3.seq)]
    assert c3.state is CallState.RUNNING and c3.worker == 2


def test_third_call_is_prefetched_onto_a_busy_worker_with_prefetch() -> None:
    h = Harness(workers=2, prefetch=1)
    h.learn(timed)
    c1, c2, c3 = h.submit(timed), h.submit(timed), h.submit(timed)
    sends = h.fx.new()
    assert [(e[1], e[2]) for e in sends] == [(1, c1.id), (2, c2.id), (1, c3.id)]
    assert c3.state is CallState.SENT
    assert h.worker(1).running is c1
    assert h.worker(1).sent == deque([c3])
    # a fourth call does not go over the prefetch depth of either worker twice
    c4 = h.submit(timed)
    assert h.fx.new() == [("send_run", 2, c4.id, 1, c4.seq)]
    c5 = h.submit(timed)
    assert h.fx.new() == [] and c5.state is CallState.QUEUED


def test_no_prefetch_while_a_worker_is_idle() -> None:
    h = Harness(workers=2, prefetch=1)
    c1, c2 = h.submit(), h.submit()
    assert (c1.worker, c2.worker) == (1, 2)
    assert c1.state is CallState.RUNNING and c2.state is CallState.RUNNING
    assert not h.worker(1).sent and not h.worker(2).sent


def test_prefetched_call_is_promoted_and_its_start_to_close_counts_from_promotion() -> None:
    h = Harness(workers=2, prefetch=1)
    h.learn(timed)
    c1, c2, c3 = h.submit(timed), h.submit(timed), h.submit(timed)
    assert c3.state is CallState.SENT and c3.worker == 1
    # only the running attempts have a start-to-close deadline: c1's and c2's at 0 + 10
    assert h.sched.next_deadline() == pytest.approx(10.0)
    h.fx.new()
    h.finish(c1, "a", 5.0)
    # the worker answers in order: c3, already in its pipe, is now running; nothing re-sent
    assert h.fx.new() == [("resolve", c1.id, "a")]
    assert h.worker(1).running is c3 and not h.worker(1).sent
    assert c3.state is CallState.RUNNING
    assert c3.started_at == 5.0
    h.finish(c2, "b", 5.0)
    h.fx.new()
    assert h.sched.next_deadline() == pytest.approx(15.0)
    h.sched.advance(14.9)
    assert h.fx.new() == []
    h.sched.advance(15.0)
    assert ("kill", 1) in h.fx.new()


def test_prefetch_refills_the_pipe_after_a_promotion() -> None:
    """The module docstring: a busy worker keeps up to ``prefetch`` attempts in its pipe so it
    starts the next one without a round trip. After the prefetched attempt is promoted, the
    next queued call should be sent behind it at once."""
    h = Harness(workers=1, prefetch=1)
    h.learn()
    c1, c2, c3 = h.submit(), h.submit(), h.submit()
    assert c2.state is CallState.SENT and c3.state is CallState.QUEUED
    h.fx.new()
    h.finish(c1, "a", 1.0)
    assert c2.state is CallState.RUNNING
    assert h.fx.new() == [("resolve", c1.id, "a"), ("send_run", 1, c3.id, 1, c3.seq)]
    assert c3.state is CallState.SENT


def test_an_activity_without_history_is_not_prefetched() -> None:
    """Issue: map(nap_one_second, range(6)) on 2 workers ran 5 calls on one worker."""
    h = Harness(workers=2, prefetch=32)
    calls = [h.submit(timed) for _ in range(6)]
    assert [c.state for c in calls[:2]] == [CallState.RUNNING] * 2
    assert all(c.state is CallState.QUEUED for c in calls[2:])
    assert not h.worker(1).sent and not h.worker(2).sent
    # once it has a history (1 s a call), each worker gets the next in turn: 3 and 3
    h.finish(calls[0], None, 1.0)
    h.finish(calls[1], None, 1.001)
    assert [c.worker for c in calls[2:]] == [1, 1, 2, 2]
    assert calls[3].state is CallState.SENT and calls[5].state is CallState.SENT


def test_nothing_is_prefetched_behind_an_attempt_running_for_withdraw_after() -> None:
    h = Harness(workers=2, prefetch=4)
    h.learn(timed)
    slow, fast = h.submit(timed), h.submit(timed)
    h.finish(fast, None, 0.004)
    fresh = h.submit(timed, now=0.004)
    assert slow.worker == 1 and fresh.worker == 2
    q = h.submit(timed, now=WITHDRAW_AFTER + 0.001)  # slow has run longer than WITHDRAW_AFTER
    assert q.worker == 2 and q.state is CallState.SENT
    assert not h.worker(1).sent


def _long_call_with_one_behind_it(h: Harness) -> tuple[Call, Call, Call]:
    """Worker 1 runs ``slow`` with ``behind`` prefetched; worker 2 ran ``fast`` and is idle
    at 0.002 (the learnt run time is 1 ms: two calls a pipe)."""
    h.learn(timed)
    slow, fast, behind = h.submit(timed), h.submit(timed), h.submit(timed)
    assert behind.worker == 1 and behind.state is CallState.SENT
    h.finish(fast, None, 0.002)
    h.fx.new()
    return slow, fast, behind


def test_an_idle_worker_takes_back_a_call_waiting_behind_a_long_one() -> None:
    """Issue: a 1 s call held back the 50 ms calls in its worker's pipe while the other worker
    was idle. They are withdrawn once it has run WITHDRAW_AFTER, and run once, elsewhere."""
    h = Harness(workers=2, prefetch=1, events=True)
    slow, _, behind = _long_call_with_one_behind_it(h)
    assert h.worker(2).state is WorkerState.IDLE
    assert h.sched.next_deadline() == pytest.approx(WITHDRAW_AFTER)
    h.sched.advance(WITHDRAW_AFTER - 0.0001)
    assert h.fx.new() == []
    h.sched.advance(WITHDRAW_AFTER)
    assert h.fx.new() == [("send_withdraw", 1, (behind.seq,))]
    # nothing moves before the worker confirms: it may have started the call meanwhile
    assert behind.state is CallState.SENT and h.worker(1).sent == deque([behind])
    old_seq = behind.seq
    h.sched.withdrawn(1, old_seq, 0.006)
    assert h.fx.new() == [("send_run", 2, behind.id, 1, behind.seq)]
    assert behind.seq != old_seq and behind.state is CallState.RUNNING
    assert not h.worker(1).sent and h.worker(1).running is slow
    assert [e["call_id"] for e in h.fx.events("attempt_withdrawn")] == [behind.id]
    h.finish(behind, "b", 0.01)
    h.sched.result(1, old_seq, "stale", 0.02)  # not possible, and ignored if it came
    assert h.fx.outcomes(behind) == [("resolve", behind.id, "b")]


def test_a_worker_already_idle_withdraws_at_once() -> None:
    h = Harness(workers=2, prefetch=1)
    h.learn(timed)
    _, other = h.submit(timed), h.submit(timed)
    behind = h.submit(timed)
    assert behind.worker == 1
    h.fx.new()
    h.finish(other, None, 1.0)  # slow has run 1 s: withdraw now, no deadline needed
    assert h.fx.new() == [("resolve", other.id, None), ("send_withdraw", 1, (behind.seq,))]
    h.sched.advance(2.0)
    assert h.fx.of("send_withdraw") == [("send_withdraw", 1, (behind.seq,))]  # asked once


def test_a_withdrawn_call_the_worker_had_started_runs_there_once() -> None:
    h = Harness(workers=2, prefetch=1)
    slow, _, behind = _long_call_with_one_behind_it(h)
    h.sched.advance(WITHDRAW_AFTER)
    h.finish(slow, "s", 0.5)
    # the worker took the next RUN before it saw the WITHDRAW: it answers it, as usual
    assert h.worker(1).running is behind and behind.state is CallState.RUNNING
    h.sched.result(1, behind.seq, "b", 0.6)
    assert h.fx.outcomes(behind) == [("resolve", behind.id, "b")]
    assert len(h.fx.runs(behind)) == 1


def test_a_withdrawal_confirmed_after_promotion_frees_the_worker() -> None:
    """The reply to the long call came first, so the call behind it became the running one;
    then the worker says it withdrew that call unstarted. It runs once, on an idle worker."""
    h = Harness(workers=2, prefetch=1)
    slow, _, behind = _long_call_with_one_behind_it(h)
    h.sched.advance(WITHDRAW_AFTER)
    h.finish(slow, "s", 0.5)
    assert h.worker(1).running is behind
    h.fx.new()
    h.sched.withdrawn(1, behind.seq, 0.5)
    runs = h.fx.new()
    assert runs == [("send_run", runs[0][1], behind.id, 1, behind.seq)]
    assert behind.state is CallState.RUNNING and behind.attempt == 1
    h.sched.advance(1.0)  # the deadline armed for the promoted attempt is gone
    assert h.fx.new() == []


def test_no_withdrawal_when_the_running_call_ends_in_time() -> None:
    h = Harness(workers=2, prefetch=1)
    slow, _, behind = _long_call_with_one_behind_it(h)
    h.finish(slow, "s", 0.003)
    assert h.worker(1).running is behind
    h.sched.advance(1.0)
    assert h.fx.of("send_withdraw") == []


def test_a_call_behind_a_promoted_attempt_is_withdrawn_when_that_one_runs_long() -> None:
    h = Harness(workers=2, prefetch=2)
    h.learn(timed)
    c1, c2, c3, c4 = (h.submit(timed) for _ in range(4))
    assert h.worker(1).sent == deque([c3, c4])
    h.finish(c2, None, 0.001)  # worker 2 idle
    h.finish(c1, None, 0.004)  # in time: c3 runs now, c4 waits behind it
    assert h.worker(1).running is c3
    h.sched.advance(0.0089)
    assert h.fx.of("send_withdraw") == []
    h.sched.advance(0.004 + WITHDRAW_AFTER)
    assert h.fx.of("send_withdraw") == [("send_withdraw", 1, (c4.seq,))]


def test_a_call_the_worker_ran_instead_of_withdrawing_can_be_withdrawn_next_time() -> None:
    h = Harness(workers=2, prefetch=1)
    slow, _, behind = _long_call_with_one_behind_it(h)
    behind.policy = RetryPolicy(maximum_attempts=3, initial_interval=0.1)
    h.sched.advance(WITHDRAW_AFTER)
    h.finish(slow, None, 0.5)
    h.fail(behind, ValueError("ran after all, and failed"), 0.6)  # retried at 0.7
    long2, short2 = h.submit(timed, now=0.699), h.submit(timed, now=0.699)  # both busy
    assert {long2.worker, short2.worker} == {1, 2}
    h.sched.advance(0.7)  # the retry is prefetched behind one of them
    assert behind.state is CallState.SENT
    ahead = long2 if behind.worker == long2.worker else short2
    other = short2 if ahead is long2 else long2
    h.finish(other, None, 0.701)
    h.sched.advance(1.0)
    assert h.fx.of("send_withdraw")[-1] == ("send_withdraw", ahead.worker, (behind.seq,))


def test_a_cancelled_call_confirmed_withdrawn_is_not_sent_again() -> None:
    h = Harness(workers=2, prefetch=1)
    _, _, behind = _long_call_with_one_behind_it(h)
    h.sched.advance(WITHDRAW_AFTER)
    h.sched.cancel(behind.id, 0.006)
    h.sched.withdrawn(1, behind.seq, 0.007)
    assert len(h.fx.runs(behind)) == 1
    assert isinstance(h.fx.rejection(behind), asyncio.CancelledError)
    assert not h.worker(1).sent


def test_a_call_being_withdrawn_from_a_worker_that_dies_runs_once() -> None:
    h = Harness(workers=2, prefetch=1)
    _, _, behind = _long_call_with_one_behind_it(h)
    h.sched.advance(WITHDRAW_AFTER)
    h.sched.worker_exited(1, crash(1), 0.006)
    assert behind.worker == 2 and behind.attempt == 1 and len(h.fx.runs(behind)) == 2
    h.sched.withdrawn(1, behind.seq, 0.007)  # from the dead worker: ignored
    assert len(h.fx.runs(behind)) == 2 and behind.state is CallState.RUNNING


# -- results and stale replies -----------------------------------------------------------------


def test_result_resolves_the_call_and_frees_the_worker() -> None:
    h = Harness(workers=1)
    c = h.submit()
    h.fx.new()
    h.finish(c, {"v": 1}, 2.0)
    assert h.fx.new() == [("resolve", c.id, {"v": 1})]
    assert c.state is CallState.DONE
    assert h.sched.calls == {}
    assert h.worker(1).state is WorkerState.IDLE and h.worker(1).running is None
    d = h.submit(now=3.0)
    assert h.fx.new() == [("send_run", 1, d.id, 1, d.seq)]


def test_stale_replies_are_ignored() -> None:
    h = Harness(workers=2)
    c = h.submit(hb)
    seq = c.seq
    h.fx.new()
    h.sched.result(1, seq + 100, "wrong seq", 1.0)
    h.sched.failure(1, seq + 100, ValueError("wrong seq"), 1.0)
    h.sched.heartbeat(1, seq + 100, "wrong seq", 1.0)
    h.sched.result(2, seq, "wrong worker", 1.0)  # worker 2 is idle
    h.sched.result(99, seq, "unknown worker", 1.0)
    h.sched.failure(99, seq, ValueError("unknown worker"), 1.0)
    h.sched.heartbeat(99, seq, "unknown worker", 1.0)
    assert h.fx.new() == []
    assert c.state is CallState.RUNNING and c.heartbeat_details is None
    h.sched.result(1, seq, "ok", 1.5)
    assert h.fx.new() == [("resolve", c.id, "ok")]
    # a duplicate of the reply just handled is stale too
    h.sched.result(1, seq, "again", 1.6)
    h.sched.failure(1, seq, ValueError("again"), 1.6)
    assert h.fx.new() == []


# -- retries -----------------------------------------------------------------------------------


def test_failure_is_retried_after_the_backoff_delay() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    h.fx.new()
    h.fail(c, ValueError("boom"), 1.0)
    assert h.fx.new() == []  # nothing sent during the backoff
    assert c.state is CallState.BACKOFF
    assert h.sched.next_deadline() == pytest.approx(1.1)
    h.sched.advance(1.09)
    assert h.fx.new() == []
    h.sched.advance(1.1)
    assert h.fx.new() == [("send_run", 1, c.id, 2, c.seq)]
    assert c.state is CallState.RUNNING


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (backoff, [0.1, 0.3, 0.9, 2.7]),  # initial * 3 ** (n - 1)
        (capped, [0.1, 0.3, 0.5, 0.5]),  # capped by retry_policy_max_interval
    ],
)
def test_retry_delays_follow_the_policy(fn: Any, expected: list[float]) -> None:
    h = Harness(workers=1)
    c = h.submit(fn)
    now = 0.0
    delays = []
    for attempt in range(1, 5):
        assert c.attempt == attempt
        now += 1.0
        h.fail(c, ValueError(f"fail {attempt}"), now)
        due = h.sched.next_deadline()
        assert due is not None
        delays.append(due - now)
        h.sched.advance(due)
        now = due
    assert delays == pytest.approx(expected)
    assert c.attempt == 5 and c.state is CallState.RUNNING


def test_exhausted_attempts_reject_with_activity_error_caused_by_the_last_failure() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    errors = [ValueError(f"fail {n}") for n in (1, 2, 3)]
    now = 0.0
    for n, err in enumerate(errors, 1):
        assert c.attempt == n
        h.fail(c, err, now)
        if n < 3:
            now = h.run_due()
    exc = h.fx.rejection(c)
    assert isinstance(exc, ActivityError)
    assert exc.__cause__ is errors[-1]
    assert exc.attempts == 3
    assert len(h.fx.runs(c)) == 3
    assert h.sched.calls == {} and h.sched.next_deadline() is None


def test_non_retryable_application_error_is_not_retried() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    err = ApplicationError("bad input", non_retryable=True)
    h.fail(c, err, 1.0)
    exc = h.fx.rejection(c)
    assert isinstance(exc, ActivityError)
    assert exc.__cause__ is err and exc.attempts == 1
    h.sched.advance(100.0)
    assert len(h.fx.runs(c)) == 1


def test_non_retryable_error_type_of_the_definition_is_not_retried() -> None:
    h = Harness(workers=1)
    c = h.submit(typed_non_retryable)
    err = KeyError("k")
    h.fail(c, err, 1.0)
    exc = h.fx.rejection(c)
    assert exc.__cause__ is err and exc.attempts == 1


def test_next_retry_delay_overrides_the_backoff() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    h.fx.new()
    h.fail(c, ApplicationError("later", next_retry_delay=5.0), 1.0)
    assert h.sched.next_deadline() == pytest.approx(6.0)
    h.sched.advance(5.9)
    assert h.fx.new() == []
    h.sched.advance(6.0)
    assert h.fx.new() == [("send_run", 1, c.id, 2, c.seq)]


# -- start-to-close and heartbeat timeouts ------------------------------------------------------


def test_start_to_close_timeout_kills_respawns_and_retries() -> None:
    h = Harness(workers=1, events=True)
    c = h.submit(stc)
    h.fx.new()
    h.sched.heartbeat(1, c.seq, "p1", 0.5)
    h.sched.advance(0.99)
    assert h.fx.new() == []
    h.sched.advance(1.0)
    assert h.fx.new() == [("kill", 1), ("spawn", 2)]
    assert c.state is CallState.BACKOFF
    failed = h.fx.events("attempt_failed")
    assert len(failed) == 1
    assert isinstance(failed[0]["error"], ActivityTimeoutError)
    assert failed[0]["error"].type is TimeoutType.START_TO_CLOSE
    # the killed process is reaped later: nothing more happens
    h.sched.worker_exited(1, crash(1), 1.01)
    assert h.fx.new() == []
    h.sched.worker_ready(2, 1.05)
    h.sched.advance(1.1)
    assert h.fx.new() == [("send_run", 2, c.id, 2, c.seq)]


def test_start_to_close_final_error_carries_last_heartbeat_details() -> None:
    h = Harness(workers=1)
    c = h.submit(stc)
    h.sched.heartbeat(1, c.seq, {"progress": 7}, 0.5)
    wid = 1
    for attempt in (1, 2, 3):
        assert c.attempt == attempt and c.worker == wid
        h.run_due()  # start-to-close
        assert ("kill", wid) in h.fx.of("kill")
        h.sched.worker_exited(wid, crash(wid), 0.0)
        wid += 1
        h.sched.worker_ready(wid, 0.0)
        if attempt < 3:
            h.run_due()  # the retry backoff
    exc = h.fx.rejection(c)
    assert exc.attempts == 3
    cause = timeout_cause(exc)
    assert cause.type is TimeoutType.START_TO_CLOSE
    # attempts 2 and 3 sent no heartbeat: the last details known are handed on
    assert cause.last_heartbeat_details == {"progress": 7}


def test_heartbeats_push_the_heartbeat_deadline() -> None:
    h = Harness(workers=1)
    c = h.submit(hb)
    h.fx.new()
    assert h.sched.next_deadline() == pytest.approx(2.0)
    for beat in (1.0, 2.0, 3.0):
        h.sched.heartbeat(1, c.seq, f"beat@{beat}", beat)
        h.sched.advance(beat + 1.0)
        assert h.fx.new() == []
    # last beat at 3.0: the next one is due by 5.0
    h.sched.advance(4.99)
    assert h.fx.new() == []
    assert c.state is CallState.RUNNING
    h.sched.advance(5.0)
    assert h.fx.new()[:1] == [("kill", 1)]
    cause = timeout_cause(h.fx.rejection(c))
    assert cause.type is TimeoutType.HEARTBEAT
    assert cause.last_heartbeat_details == "beat@3.0"


def test_first_heartbeat_is_due_heartbeat_timeout_after_start() -> None:
    h = Harness(workers=1, ready=False)
    c = h.submit(hb, now=0.0)
    h.sched.worker_ready(1, 10.0)  # the attempt starts at 10, not at submission
    assert h.sched.next_deadline() == pytest.approx(12.0)
    h.sched.advance(11.99)
    assert h.fx.new() == [("send_run", 1, c.id, 1, c.seq)]
    h.sched.advance(12.0)
    new = h.fx.new()
    assert new[0] == ("kill", 1) and ("spawn", 2) in new
    cause = timeout_cause(h.fx.rejection(c))
    assert cause.type is TimeoutType.HEARTBEAT
    assert cause.last_heartbeat_details is None


# -- schedule-to-close --------------------------------------------------------------------------


def test_schedule_to_close_fails_a_queued_call() -> None:
    h = Harness(workers=1, prefetch=0)
    blocker = h.submit(plain)
    c = h.submit(s2c)
    assert c.state is CallState.QUEUED
    h.sched.advance(5.0)
    cause = timeout_cause(h.fx.rejection(c))
    assert cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    h.finish(blocker, "x", 6.0)
    assert h.fx.runs(c) == []
    assert h.worker(1).state is WorkerState.IDLE


def test_schedule_to_close_fails_a_call_in_backoff() -> None:
    h = Harness(workers=1)
    c = h.submit(s2c)
    h.fail(c, ValueError("boom"), 1.0)  # retry due at 11
    assert c.state is CallState.BACKOFF
    h.sched.advance(5.0)
    cause = timeout_cause(h.fx.rejection(c))
    assert cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    h.sched.advance(20.0)
    assert len(h.fx.runs(c)) == 1


def test_schedule_to_close_fails_a_running_call_and_kills_its_worker() -> None:
    h = Harness(workers=1)
    c = h.submit(s2c)
    h.fx.new()
    h.sched.advance(4.99)
    assert h.fx.new() == []
    h.sched.advance(5.0)
    new = h.fx.new()
    assert ("kill", 1) in new and ("spawn", 2) in new
    cause = timeout_cause(h.fx.rejection(c))
    assert cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    # not retried although attempts remain
    h.sched.worker_ready(2, 6.0)
    h.sched.advance(100.0)
    assert len(h.fx.runs(c)) == 1


def test_schedule_to_close_of_a_prefetched_call_completes_it_only_once() -> None:
    """A call that times out while sitting in a busy worker's pipe is over: when the worker
    later gets to it (and even answers it) the caller must not be resolved a second time."""
    h = Harness(workers=1, prefetch=1)
    h.learn(s2c)
    c1 = h.submit(plain)
    c2 = h.submit(s2c)
    assert c2.state is CallState.SENT
    h.sched.advance(5.0)
    cause = timeout_cause(h.fx.rejection(c2))
    assert cause.type is TimeoutType.SCHEDULE_TO_CLOSE
    h.finish(c1, "a", 6.0)
    # the worker reads c2 from its pipe and answers it
    h.sched.result(1, c2.seq, "late", 7.0)
    assert h.fx.outcomes(c2) == [("reject", c2.id, h.fx.rejection(c2))]
    c3 = h.submit(plain, now=8.0)
    h.sched.result(1, c3.seq, "c3", 9.0)
    assert ("resolve", c3.id, "c3") in h.fx.log


# -- crashes ------------------------------------------------------------------------------------


def test_worker_crash_fails_attempt_retries_and_requeues_prefetched_call() -> None:
    h = Harness(workers=2, prefetch=1, events=True)
    h.learn(retrying)
    c1, c2, c3 = h.submit(retrying), h.submit(retrying), h.submit(retrying)
    assert c1.worker == 1 and c2.worker == 2 and c3.worker == 1
    assert c3.state is CallState.SENT and c3.attempt == 1
    h.fx.new()
    boom = crash(1)
    h.sched.worker_exited(1, boom, 1.0)
    # c3 goes back to the head of the queue uncounted; while the replacement starts nothing is
    # prefetched (it would pile onto the busy worker), so c3 waits, still at attempt 0
    assert h.fx.new() == [("spawn", 3)]
    failed = h.fx.events("attempt_failed")
    assert [f["call_id"] for f in failed] == [c1.id] and failed[0]["error"] is boom
    assert c1.state is CallState.BACKOFF
    assert c3.state is CallState.QUEUED and c3.attempt == 0
    # the other worker's call is unaffected
    assert c2.state is CallState.RUNNING and h.worker(2).running is c2
    assert h.sched.workers.get(1) is None
    h.finish(c2, "two", 1.05)
    # worker 2 is free: it takes c3 as its first attempt
    assert h.fx.new() == [("resolve", c2.id, "two"), ("send_run", 2, c3.id, 1, c3.seq)]
    assert h.worker(2).running is c3 and c3.state is CallState.RUNNING
    h.sched.worker_ready(3, 1.06)
    h.sched.advance(1.1)
    assert h.fx.new() == [("send_run", 3, c1.id, 2, c1.seq)]


def test_worker_crash_is_the_cause_of_the_final_error() -> None:
    h = Harness(workers=1)
    c = h.submit(once)
    boom = crash(1, sig=9)
    h.sched.worker_exited(1, boom, 1.0)
    exc = h.fx.rejection(c)
    assert isinstance(exc, ActivityError) and exc.__cause__ is boom
    assert h.fx.of("spawn")[-1] == ("spawn", 2)


def test_kill_worker_fails_the_attempt_and_replaces_the_worker() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    h.fx.new()
    err = RuntimeError("protocol error")
    h.sched.kill_worker(1, err, 1.0)
    assert h.fx.new() == [("kill", 1), ("spawn", 2)]
    assert c.state is CallState.BACKOFF
    h.sched.worker_exited(1, crash(1), 1.01)
    assert h.fx.new() == []
    h.sched.worker_ready(2, 1.02)
    h.sched.advance(1.1)
    assert h.fx.new() == [("send_run", 2, c.id, 2, c.seq)]


# -- sticky sessions ----------------------------------------------------------------------------


def test_session_binds_to_an_idle_worker_first() -> None:
    h = Harness(workers=2)
    p = h.submit(plain)  # worker 1 busy
    a = h.submit(sticky, session="s1")
    assert p.worker == 1
    assert h.sched.sessions["s1"].worker == 2
    assert h.fx.runs(a) == [("send_run", 2, a.id, 1, a.seq)]
    assert h.worker(2).sessions == {"s1"}


def test_session_binds_to_the_worker_with_fewest_sessions() -> None:
    h = Harness(workers=2)
    x = h.submit(sticky, session="s1")
    assert x.worker == 1
    h.finish(x, None, 1.0)  # worker 1 hosts s1 and is idle again
    q1 = h.submit(plain, now=1.1)
    q2 = h.submit(plain, now=1.1)
    assert {q1.worker, q2.worker} == {1, 2}
    on1, q2 = (q1, q2) if q1.worker == 1 else (q2, q1)
    h.finish(on1, None, 1.2)  # worker 1 (one session) idle, worker 2 (none) busy
    y = h.submit(sticky, session="s2", now=1.3)
    assert h.sched.sessions["s2"].worker == 2  # fewest sessions beats idle
    assert y.state is CallState.QUEUED  # waits for its worker though worker 1 is idle
    assert h.fx.runs(y) == []
    h.finish(q2, None, 1.4)
    assert h.fx.runs(y) == [("send_run", 2, y.id, 1, y.seq)]


def test_two_sessions_spread_over_two_workers() -> None:
    h = Harness(workers=2)
    a = h.submit(sticky, session="s1")
    h.finish(a, None, 1.0)
    b = h.submit(sticky, session="s2", now=2.0)
    assert h.sched.sessions["s1"].worker == 1
    assert h.sched.sessions["s2"].worker == 2
    assert b.worker == 2
    assert h.worker(1).sessions == {"s1"} and h.worker(2).sessions == {"s2"}


def test_session_calls_run_on_their_worker_in_order() -> None:
    h = Harness(workers=2, prefetch=1)
    a = h.submit(sticky, session="s1")
    b = h.submit(sticky, session="s1")
    c = h.submit(sticky, session="s1")
    assert a.worker == 1
    assert b.state is CallState.QUEUED and c.state is CallState.QUEUED
    assert h.fx.runs(b) == [] and h.fx.runs(c) == []  # not prefetched, not on idle worker 2
    assert h.worker(2).state is WorkerState.IDLE
    p = h.submit(plain)
    assert p.worker == 2  # plain work takes the idle worker
    h.fx.new()
    h.finish(a, "a", 1.0)
    assert h.fx.new() == [("resolve", a.id, "a"), ("send_run", 1, b.id, 1, b.seq)]
    h.finish(p, "p", 1.5)  # worker 2 free again: still not for s1
    assert h.fx.new() == [("resolve", p.id, "p")]
    h.finish(b, "b", 2.0)
    assert h.fx.new() == [("resolve", b.id, "b"), ("send_run", 1, c.id, 1, c.seq)]
    sends = [e[1] for e in h.fx.of("send_run") if e[2] in (a.id, b.id, c.id)]
    assert sends == [1, 1, 1]


def test_crash_of_session_worker_loses_the_session_only() -> None:
    h = Harness(workers=2, prefetch=0)
    a = h.submit(sticky, session="s1")
    x = h.submit(sticky, session="s2")
    b = h.submit(sticky, session="s1")
    assert a.worker == 1 and x.worker == 2 and b.state is CallState.QUEUED
    h.fx.new()
    boom = crash(1)
    h.sched.worker_exited(1, boom, 1.0)
    for call in (a, b):
        exc = h.fx.rejection(call)
        assert isinstance(exc, StickySessionLostError)
        assert exc.__cause__ is boom
        assert exc.session_id == "s1"
    assert ("spawn", 3) in h.fx.of("spawn")
    # the other session is untouched
    assert x.state is CallState.RUNNING and h.fx.outcomes(x) == []
    assert h.sched.sessions["s2"].worker == 2
    # later calls of the lost session fail at once; no retry elsewhere
    h.sched.worker_ready(3, 1.1)
    c = h.submit(sticky, session="s1", now=1.2)
    exc = h.fx.rejection(c)
    assert isinstance(exc, StickySessionLostError) and exc.__cause__ is boom
    assert len(h.fx.runs(a)) == 1 and h.fx.runs(b) == [] and h.fx.runs(c) == []
    # the other session goes on on its worker
    y = h.submit(sticky, session="s2", now=1.3)
    h.finish(x, "x", 1.4)
    assert h.fx.runs(y) == [("send_run", 2, y.id, 1, y.seq)]


def test_ordinary_failure_of_sticky_call_retries_on_the_same_worker() -> None:
    h = Harness(workers=2)
    a = h.submit(sticky, session="s1")
    assert a.worker == 1
    h.fail(a, ValueError("transient"), 1.0)
    assert a.state is CallState.BACKOFF
    assert h.sched.sessions["s1"].worker == 1  # still pinned
    h.sched.advance(1.1)  # both workers idle: the retry still goes to worker 1
    assert h.fx.runs(a)[-1] == ("send_run", 1, a.id, 2, a.seq)
    h.finish(a, "ok", 1.2)
    assert h.fx.outcomes(a) == [("resolve", a.id, "ok")]


def test_a_sticky_call_in_backoff_keeps_its_place_in_the_session() -> None:
    """Issue: A (raises once), B, C of one session ran as A1, B, C, A2."""
    h = Harness(workers=2, prefetch=0)
    a, b, c = (h.submit(sticky, session="s1") for _ in range(3))
    h.fail(a, ValueError("transient"), 1.0)
    assert a.state is CallState.BACKOFF
    # B and C wait for A's retry; the session's worker is free for other work meanwhile
    assert h.fx.runs(b) == [] and h.fx.runs(c) == []
    p = h.submit(plain, now=1.01)
    assert p.state is CallState.RUNNING
    h.finish(p, "p", 1.02)
    assert h.fx.runs(b) == [] and h.fx.runs(c) == []
    h.sched.advance(1.1)
    assert h.fx.runs(a)[-1] == ("send_run", 1, a.id, 2, a.seq)
    assert h.fx.runs(b) == []
    h.finish(a, "a", 1.2)
    assert h.fx.runs(b) == [("send_run", 1, b.id, 1, b.seq)] and h.fx.runs(c) == []
    h.finish(b, "b", 1.3)
    h.finish(c, "c", 1.4)
    sticky_runs = [(e[2], e[3]) for e in h.fx.of("send_run") if e[2] in (a.id, b.id, c.id)]
    assert sticky_runs == [(a.id, 1), (a.id, 2), (b.id, 1), (c.id, 1)]
    assert [e[1] for e in h.fx.of("resolve") if e[1] != p.id] == [a.id, b.id, c.id]


def test_the_next_sticky_call_runs_once_the_one_before_has_failed_for_good() -> None:
    h = Harness(workers=1, prefetch=0)
    a = h.submit(once, session="s1")
    b = h.submit(sticky, session="s1")
    h.fail(a, ValueError("final"), 1.0)
    assert isinstance(h.fx.rejection(a), ActivityError)
    assert h.fx.runs(b) == [("send_run", 1, b.id, 1, b.seq)]


def test_a_cancelled_waiting_sticky_call_does_not_hold_up_the_next() -> None:
    h = Harness(workers=1, prefetch=0)
    a, b, c = (h.submit(sticky, session="s1") for _ in range(3))
    h.sched.cancel(b.id, 0.5)
    assert isinstance(h.fx.rejection(b), asyncio.CancelledError)
    h.finish(a, "a", 1.0)
    assert h.fx.runs(b) == []
    assert h.fx.runs(c) == [("send_run", 1, c.id, 1, c.seq)]


def test_sessions_on_one_worker_each_keep_their_own_order() -> None:
    h = Harness(workers=1, prefetch=0)
    a1 = h.submit(sticky, session="s1")
    b1 = h.submit(sticky, session="s2")
    a2 = h.submit(sticky, session="s1")
    b2 = h.submit(sticky, session="s2")
    h.fail(a1, ValueError("transient"), 1.0)  # s1 waits for a1's retry; s2 goes on
    assert h.worker(1).running is b1
    h.finish(b1, None, 1.05)
    assert h.worker(1).running is b2
    h.finish(b2, None, 1.08)
    h.sched.advance(1.1)  # a1's retry is due
    assert h.worker(1).running is a1 and a1.attempt == 2
    h.finish(a1, None, 1.3)
    assert h.worker(1).running is a2


def test_a_lost_session_fails_every_call_not_yet_started_at_once() -> None:
    """A in backoff, B and C waiting behind it: the worker dies. All three fail now (not when
    A's retry was due), and none is ever sent again; nor is a later call."""
    h = Harness(workers=2, prefetch=0)
    a, b, c = (h.submit(sticky, session="s1") for _ in range(3))
    h.fail(a, ValueError("transient"), 1.0)
    assert a.state is CallState.BACKOFF
    boom = crash(1)
    h.sched.worker_exited(1, boom, 1.01)
    for call in (a, b, c):
        exc = h.fx.rejection(call)
        assert isinstance(exc, StickySessionLostError) and exc.__cause__ is boom
    assert [e[1] for e in h.fx.of("reject")] == [a.id, b.id, c.id]  # in submission order
    h.sched.worker_ready(3, 1.02)
    h.sched.advance(10.0)
    d = h.submit(sticky, session="s1", now=10.0)
    assert isinstance(h.fx.rejection(d), StickySessionLostError)
    assert len(h.fx.runs(a)) == 1
    assert h.fx.runs(b) == h.fx.runs(c) == h.fx.runs(d) == []


def test_a_closing_session_is_dropped_once_its_waiting_calls_are_done() -> None:
    h = Harness(workers=1, prefetch=0)
    a, b = h.submit(sticky, session="s1"), h.submit(sticky, session="s1")
    h.sched.close_session("s1")
    h.finish(a, None, 1.0)
    assert h.fx.of("close_session") == [] and b.state is CallState.RUNNING
    h.finish(b, None, 2.0)
    assert h.fx.of("close_session") == [("close_session", 1, "s1")]


def test_close_session_sends_close_and_unpins() -> None:
    h = Harness(workers=2)
    a = h.submit(sticky, session="s1")
    h.sched.close_session("s1")  # a is still running: deferred
    assert h.fx.of("close_session") == []
    h.finish(a, None, 1.0)
    assert h.fx.of("close_session") == [("close_session", 1, "s1")]
    assert h.worker(1).sessions == set()
    assert "s1" not in h.sched.sessions
    # closing an idle session acts at once
    b = h.submit(sticky, session="s2", now=2.0)
    h.finish(b, None, 2.1)
    h.sched.close_session("s2")
    assert h.fx.of("close_session")[-1] == ("close_session", b.worker, "s2")
    assert all(not w.sessions for w in h.sched.workers.slots())


# -- cancellation -------------------------------------------------------------------------------


def test_cancel_queued_call_rejects_it_without_sending() -> None:
    h = Harness(workers=1, prefetch=0)
    c1 = h.submit(plain)
    c2 = h.submit(plain)
    h.sched.cancel(c2.id, 1.0)
    exc = h.fx.rejection(c2)
    assert isinstance(exc, asyncio.CancelledError)
    h.finish(c1, "a", 2.0)
    assert h.fx.runs(c2) == []
    assert h.worker(1).state is WorkerState.IDLE
    assert h.fx.of("send_cancel") == []


def test_cancel_running_call_sends_cancel_and_worker_answer_frees_it() -> None:
    h = Harness(workers=1)
    c = h.submit(retrying)
    h.fx.new()
    h.sched.cancel(c.id, 1.0)
    new = h.fx.new()
    assert ("send_cancel", 1, c.seq) in new
    assert ("kill", 1) not in new
    assert isinstance(h.fx.rejection(c), asyncio.CancelledError)
    # the worker stops the activity before the grace period ends
    h.sched.failure(1, c.seq, asyncio.CancelledError(), 1.5)
    h.sched.advance(10.0)
    assert h.fx.of("kill") == []
    assert len(h.fx.outcomes(c)) == 1
    d = h.submit(plain, now=11.0)
    assert d.worker == 1 and d.state is CallState.RUNNING


@pytest.mark.parametrize("fn", [retrying, once], ids=["attempts_left", "last_attempt"])
def test_cancel_running_call_kills_worker_after_grace_and_does_not_retry(fn: Any) -> None:
    h = Harness(workers=1, cancel_grace=1.0)
    c = h.submit(fn)
    h.sched.cancel(c.id, 1.0)
    assert ("send_cancel", 1, c.seq) in h.fx.of("send_cancel")
    h.sched.advance(1.99)
    assert h.fx.of("kill") == []
    h.sched.advance(2.0)
    assert h.fx.of("kill") == [("kill", 1)]
    assert ("spawn", 2) in h.fx.of("spawn")
    h.sched.worker_exited(1, crash(1), 2.01)
    h.sched.worker_ready(2, 2.1)
    for t in (3.0, 10.0, 100.0):
        h.sched.advance(t)
    # the caller got one answer (the cancellation); the cancelled call never runs again
    outcomes = h.fx.outcomes(c)
    assert len(outcomes) == 1 and isinstance(outcomes[0][2], asyncio.CancelledError)
    assert len(h.fx.runs(c)) == 1
    assert h.worker(2).state is WorkerState.IDLE


def test_cancel_sticky_running_call_kills_worker_and_loses_session() -> None:
    h = Harness(workers=2)
    a = h.submit(sticky, session="s1")
    b = h.submit(sticky, session="s1")
    h.fx.new()
    h.sched.cancel(a.id, 1.0)
    new = h.fx.new()
    assert ("kill", 1) in new and ("spawn", 3) in new
    exc = h.fx.rejection(a)
    assert isinstance(exc, StickySessionLostError)
    assert isinstance(exc.__cause__, asyncio.CancelledError)
    exc_b = h.fx.rejection(b)
    assert isinstance(exc_b, StickySessionLostError)
    c = h.submit(sticky, session="s1", now=2.0)
    assert isinstance(h.fx.rejection(c), StickySessionLostError)
    assert h.fx.runs(b) == [] and h.fx.runs(c) == []


def test_cancel_prefetched_call_never_delivers_a_result() -> None:
    h = Harness(workers=1, prefetch=1)
    h.learn()
    c1, c2 = h.submit(plain), h.submit(plain)
    assert c2.state is CallState.SENT
    h.sched.cancel(c2.id, 1.0)
    assert ("send_cancel", 1, c2.seq) in h.fx.of("send_cancel")
    h.finish(c1, "a", 2.0)
    h.sched.result(1, c2.seq, "late", 2.5)  # the worker ran it anyway
    assert len(h.fx.outcomes(c2)) == 1
    assert isinstance(h.fx.rejection(c2), asyncio.CancelledError)
    assert h.fx.of("kill") == []
    d = h.submit(plain, now=3.0)
    assert d.worker == 1 and d.state is CallState.RUNNING


# -- recycling ----------------------------------------------------------------------------------


def test_max_tasks_per_worker_recycles_the_worker() -> None:
    h = Harness(workers=1, prefetch=0, max_tasks_per_worker=2)
    c1 = h.submit()
    h.finish(c1, 1, 1.0)
    assert h.fx.of("retire") == []
    c2 = h.submit(now=1.0)
    h.fx.new()
    h.finish(c2, 2, 2.0)
    assert h.fx.new() == [("resolve", c2.id, 2), ("retire", 1), ("spawn", 2)]
    c3 = h.submit(now=2.0)
    assert c3.state is CallState.QUEUED
    h.sched.worker_ready(2, 2.5)
    assert h.fx.runs(c3) == [("send_run", 2, c3.id, 1, c3.seq)]
    h.sched.worker_exited(1, crash(1, sig=None), 2.6)  # the retired worker exits: expected
    assert h.fx.of("spawn") == [("spawn", 1), ("spawn", 2)]


def test_max_tasks_is_not_exceeded_through_prefetch() -> None:
    h = Harness(workers=1, prefetch=1, max_tasks_per_worker=1)
    c1, c2 = h.submit(), h.submit()
    h.finish(c1, 1, 1.0)
    # worker 1 has done its one task: c2 must run on the replacement, not on worker 1
    h.sched.worker_ready(2, 1.5)
    assert [e[1] for e in h.fx.runs(c2)][-1] == 2
    assert ("retire", 1) in h.fx.of("retire")


def test_max_tasks_does_not_recycle_a_worker_with_a_pinned_session() -> None:
    h = Harness(workers=1, prefetch=0, max_tasks_per_worker=1)
    a = h.submit(sticky, session="s1")
    h.finish(a, None, 1.0)
    assert h.fx.of("retire") == [] and h.fx.of("spawn") == [("spawn", 1)]
    b = h.submit(sticky, session="s1", now=2.0)
    assert h.fx.runs(b) == [("send_run", 1, b.id, 1, b.seq)]
    h.finish(b, None, 3.0)
    assert h.fx.of("retire") == []


def test_pinned_worker_over_max_tasks_is_recycled_once_its_session_closes() -> None:
    h = Harness(workers=1, prefetch=0, max_tasks_per_worker=1)
    a = h.submit(sticky, session="s1")
    h.finish(a, None, 1.0)
    h.sched.close_session("s1")
    assert ("close_session", 1, "s1") in h.fx.log
    p = h.submit(plain, now=2.0)
    # the pool must not stall: worker 1 is recycled and the replacement runs p
    assert h.fx.of("retire") == [("retire", 1)]
    assert ("spawn", 2) in h.fx.of("spawn")
    h.sched.worker_ready(2, 2.5)
    assert h.fx.runs(p) == [("send_run", 2, p.id, 1, p.seq)]


# -- close / cancel_all -------------------------------------------------------------------------


def test_close_drains_then_retires_workers() -> None:
    h = Harness(workers=2, prefetch=0)
    c1 = h.submit()
    c2 = h.submit()
    c3 = h.submit()
    h.sched.close()
    assert h.fx.of("retire") == []
    late = h.submit(now=0.5)
    assert isinstance(h.fx.rejection(late), PoolClosedError)
    h.finish(c1, 1, 1.0)
    assert h.fx.runs(c3) == [("send_run", 1, c3.id, 1, c3.seq)]  # queued work still runs
    h.finish(c2, 2, 1.5)
    assert h.fx.of("retire") == []  # retiring starts once nothing is in flight
    h.finish(c3, 3, 2.0)
    assert sorted(h.fx.of("retire")) == [("retire", 1), ("retire", 2)]
    assert h.sched.drained
    for wid in (1, 2):
        h.sched.worker_exited(wid, crash(wid, sig=None), 3.0)
    assert len(h.sched.workers) == 0
    assert h.fx.of("spawn") == [("spawn", 1), ("spawn", 2)]
    assert h.fx.of("kill") == []


def test_cancel_all_fails_everything_outstanding_with_pool_closed_error() -> None:
    h = Harness(workers=2, prefetch=0)
    running = h.submit(retrying)
    failing = h.submit(retrying)
    queued = h.submit(retrying)
    h.fail(failing, ValueError("x"), 0.5)  # worker 2 takes `queued`; `failing` backs off
    assert failing.state is CallState.BACKOFF
    waiting = h.submit(retrying, now=0.6)
    assert waiting.state is CallState.QUEUED
    h.sched.cancel_all(1.0)
    for call in (running, failing, queued, waiting):
        assert isinstance(h.fx.rejection(call), PoolClosedError)
    assert sorted(h.fx.of("kill")) == [("kill", 1), ("kill", 2)]
    assert h.fx.of("spawn") == [("spawn", 1), ("spawn", 2)]  # no replacement
    assert h.sched.calls == {} and h.sched.drained
    h.sched.advance(100.0)
    assert len(h.fx.runs(failing)) == 1 and len(h.fx.runs(waiting)) == 0
    after = h.submit(now=2.0)
    assert isinstance(h.fx.rejection(after), PoolClosedError)


def test_cancel_all_retires_idle_workers() -> None:
    h = Harness(workers=2)
    c = h.submit()
    h.sched.cancel_all(1.0)
    assert isinstance(h.fx.rejection(c), PoolClosedError)
    assert h.fx.of("kill") == [("kill", 1)]
    assert h.fx.of("retire") == [("retire", 2)]


# -- startup failures ---------------------------------------------------------------------------


def test_repeated_startup_failures_break_the_pool() -> None:
    h = Harness(workers=1, ready=False)
    c1, c2 = h.submit(), h.submit()
    for n in range(1, MAX_STARTUP_FAILURES + 1):
        assert h.sched.broken is None
        h.sched.worker_exited(n, crash(n, sig=None), float(n))
    assert h.sched.broken is not None
    assert isinstance(h.sched.broken, WorkerCrashedError)
    assert len(h.fx.of("spawn")) == MAX_STARTUP_FAILURES  # 1 + replacements, then no more
    for call in (c1, c2):
        assert isinstance(h.fx.rejection(call), WorkerCrashedError)
    c3 = h.submit(now=10.0)
    assert h.fx.rejection(c3) is h.sched.broken


def test_worker_that_never_becomes_ready_is_killed_at_start_timeout() -> None:
    h = Harness(workers=1, ready=False, start_timeout=10.0)
    c = h.submit()
    assert h.sched.next_deadline() == pytest.approx(10.0)
    h.sched.advance(9.99)
    assert h.fx.new() == []
    h.sched.advance(10.0)
    assert h.fx.new() == [("kill", 1), ("spawn", 2)]
    h.sched.worker_exited(1, crash(1), 10.01)
    assert h.fx.new() == []
    h.sched.worker_ready(2, 11.0)
    assert h.fx.runs(c) == [("send_run", 2, c.id, 1, c.seq)]
    assert h.sched.next_deadline() is None


# -- the deadline heap --------------------------------------------------------------------------


def test_deadline_heap_stays_small_over_many_calls() -> None:
    h = Harness(workers=2, prefetch=1)
    sched = h.sched
    biggest = 0
    for i in range(20_000):
        now = i * 0.001
        c = h.submit(busy, session=f"s{i % 3}", now=now)
        sched.next_deadline()  # the supervisor re-arms its timer after every event
        sched.heartbeat(c.worker, c.seq, i, now)
        h.finish(c, i, now)
        sched.next_deadline()
        biggest = max(biggest, len(sched.deadlines))
    assert len(h.fx.of("resolve")) == 20_000
    assert biggest <= 16


def test_deadline_heap_is_compacted_without_next_deadline_calls() -> None:
    h = Harness(workers=2, prefetch=1)
    sched = h.sched
    biggest = 0
    for i in range(20_000):
        c = h.submit(busy, now=0.0)
        h.finish(c, i, 0.0)
        biggest = max(biggest, len(sched.deadlines))
    assert len(h.fx.of("resolve")) == 20_000
    assert biggest <= 5000  # 3 entries per call would be 60,000 without compaction


# -- rate limits --------------------------------------------------------------------------------


@activity(rate_limit=sdk.RateLimit(time_window_in_sec=1.0, max_execution=2))
def rate_limited() -> None: ...


@activity(rate_limit=sdk.RateLimit(time_window_in_sec=1.0, max_execution=1, key="shared"))
def shared_limit_a() -> None: ...


@activity(rate_limit=sdk.RateLimit(time_window_in_sec=1.0, max_execution=1, key="shared"))
def shared_limit_b() -> None: ...


def sent_ids(fx: Any) -> list[int]:
    return [c[2] for c in fx.new() if c[0] == "send_run"]


def test_rate_limit_admits_at_most_max_execution_per_window() -> None:
    h = Harness(workers=5, prefetch=0)
    calls = [h.submit(rate_limited, now=0.0) for _ in range(5)]
    other = h.submit(plain, now=0.0)  # not limited: does not wait behind the parked ones
    assert sent_ids(h.fx) == [calls[0].id, calls[1].id, other.id]
    assert h.sched.next_deadline() == pytest.approx(1.0)
    h.sched.advance(0.99)
    assert sent_ids(h.fx) == []
    h.sched.advance(1.0)
    # the window moved on: two more start, on the two idle workers
    assert sent_ids(h.fx) == [calls[2].id, calls[3].id]
    for c in calls[:4]:
        h.finish(c, None, 1.5)
    h.fx.new()
    h.sched.advance(2.0)
    assert sent_ids(h.fx) == [calls[4].id]


def test_rate_limit_key_is_shared_and_parked_calls_can_be_cancelled() -> None:
    h = Harness(workers=3, prefetch=0)
    a = h.submit(shared_limit_a)
    b = h.submit(shared_limit_b)
    c = h.submit(shared_limit_a)
    assert sent_ids(h.fx) == [a.id]
    h.sched.cancel(b.id, 0.5)
    assert [e[0] for e in h.fx.new()] == ["reject"]
    h.sched.advance(1.0)
    assert sent_ids(h.fx) == [c.id]
    assert b.state is CallState.DONE and b.attempt == 0


@activity(
    rate_limit=sdk.RateLimit(time_window_in_sec=1.0, max_execution=2),
    retry_policy_initial_interval=0.01,
)
def rate_limited_quick_retry() -> None: ...


def test_retries_count_against_the_rate_limit() -> None:
    h = Harness(workers=2, prefetch=0)
    first = h.submit(rate_limited_quick_retry)
    second = h.submit(rate_limited_quick_retry)
    assert sent_ids(h.fx) == [first.id, second.id]
    h.fail(first, ValueError("x"), 0.1)
    h.fx.new()
    h.sched.advance(0.1 + first.policy.delay(1))  # backoff over, but the window is full
    assert sent_ids(h.fx) == []
    h.sched.advance(1.0)
    assert sent_ids(h.fx) == [first.id]


# -- spares -------------------------------------------------------------------------------------


def test_spare_is_held_back_then_replaces_a_dead_worker_at_once() -> None:
    h = Harness(workers=2, ready=False, spares=1, prefetch=0, events=True)
    # two workers and one spare were spawned
    assert sorted(w.id for w in h.sched.workers.slots()) == [1, 2, 3]
    for wid in (1, 2, 3):
        h.sched.worker_ready(wid, 0.0)
    assert h.worker(3).state is WorkerState.SPARE
    calls = [h.submit() for _ in range(3)]
    assert sent_ids(h.fx) == [calls[0].id, calls[1].id]  # the spare takes no work
    h.sched.worker_exited(1, crash(1), 0.5)
    new = h.fx.new()
    # the spare is promoted and takes the queued call before a new spare is even spawned
    sends = [c for c in new if c[0] == "send_run"]
    assert sends and sends[0][1] == 3 and sends[0][2] == calls[2].id
    assert ("spawn", 4) in new
    assert h.worker(3).state is WorkerState.BUSY
    h.sched.worker_ready(4, 0.6)
    assert h.worker(4).state is WorkerState.SPARE


def test_spares_retire_on_close() -> None:
    h = Harness(workers=1, spares=1, ready=False)
    h.sched.worker_ready(1, 0.0)
    h.sched.worker_ready(2, 0.0)
    h.fx.new()
    h.sched.close()
    assert sorted(c for c in h.fx.new() if c[0] == "retire") == [("retire", 1), ("retire", 2)]


def test_average_duration_is_a_moving_average_per_activity_from_start_to_result() -> None:
    h = Harness(workers=1, prefetch=0)
    name = sdk.get_definition(plain).name
    assert h.sched.average_duration(name) is None  # nothing finished yet
    c1 = h.submit(now=1.0)
    h.finish(c1, now=1.010)
    assert h.sched.average_duration(name) == pytest.approx(0.010)
    c2 = h.submit(now=2.0)
    h.finish(c2, now=2.110)
    # 0.010 + (0.110 - 0.010) * 0.2
    assert h.sched.average_duration(name) == pytest.approx(0.030)
    assert h.sched.average_duration("some other activity") is None


def test_cancel_all_sends_no_waiting_sticky_call_to_its_worker() -> None:
    """A in backoff, B waiting behind it, the worker idle: failing A must not let B through."""
    h = Harness(workers=1, prefetch=0)
    a, b = h.submit(sticky, session="s1"), h.submit(sticky, session="s1")
    h.fail(a, ValueError("transient"), 1.0)
    h.sched.cancel_all(1.01)
    assert all(isinstance(h.fx.rejection(x), PoolClosedError) for x in (a, b))
    assert h.fx.runs(b) == [] and h.fx.of("kill") == []


def test_a_sticky_retry_after_the_pool_broke_still_runs_on_its_worker() -> None:
    h = Harness(workers=2, prefetch=0)
    a = h.submit(sticky, session="s1")
    assert a.worker == 1
    h.sched.worker_exited(2, crash(2), 0.1)
    for wid in (3, 4, 5):  # each replacement dies before it is ready
        h.sched.worker_exited(wid, crash(wid), 0.2)
    assert h.sched.broken is not None
    h.fail(a, ValueError("transient"), 0.3)
    h.sched.advance(0.4)
    assert h.fx.runs(a)[-1] == ("send_run", 1, a.id, 2, a.seq)
