"""The chaos command's checks see what they are there to see (no processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from benchmarks import _chaos_activities as acts
from benchmarks.chaos import (
    PLAIN_FAULTS,
    STICKY_FAULTS,
    ChaosRun,
    Job,
    Planned,
    Summary,
    is_planned_failure,
    plan,
)
from sdk import ActivityError, ApplicationError, StickySessionLostError


def _run(tmp_path: Path, pool: Any = None) -> ChaosRun:
    return ChaosRun(pool, Summary(), str(tmp_path / "executions.log"))


def _outcome(call: Planned, *, key: int | None = None, echo: bytes | None = None) -> acts.Outcome:
    data = acts.payload(call.key, call.size)
    return acts.Outcome(
        call.key if key is None else key,
        4242,
        acts.digest(data),
        data[::-1] if echo is None else echo,
    )


def test_plan_is_reproducible_and_covers_every_kind_of_call():
    jobs = plan(3000, seed=5)
    assert jobs == plan(3000, seed=5) and jobs != plan(3000, seed=6)
    calls = [c for job in jobs for c in job.calls]
    assert [c.key for c in calls] == list(range(3000))
    assert {c.fault for c in calls} == set(PLAIN_FAULTS) | set(STICKY_FAULTS)
    assert any(job.session for job in jobs) and any(not job.session for job in jobs)
    assert all(c.fault != "fail" for job in jobs if job.session for c in job.calls)
    assert any(c.size >= 1 << 20 for c in calls) and any(c.size < 1024 for c in calls)
    assert {c.is_async for c in calls} == {True, False}
    assert {job.use_future for job in jobs} == {True, False}


def test_a_result_of_another_call_counts_as_duplicated(tmp_path):
    run = _run(tmp_path)
    call = Planned(7, -1, "none", 100, False)
    assert run.check_value(call, _outcome(call, key=8)) is None
    assert run.check_value(call, "not an outcome") is None
    assert run.summary.duplicated == 2 and run.summary.failures == 2


def test_wrong_bytes_count_as_corrupt_and_the_right_result_passes(tmp_path):
    run = _run(tmp_path)
    call = Planned(7, -1, "none", 3 << 20, False)
    assert run.check_value(call, _outcome(call)) == 4242
    assert run.summary.failures == 0
    assert run.check_value(call, _outcome(call, echo=acts.payload(8, 3 << 20))) is None
    assert run.summary.corrupt == 1


def test_only_the_planned_error_is_a_correct_failure():
    err = ActivityError("failed", attempts=1)
    err.__cause__ = ApplicationError("fail 3", non_retryable=True)
    assert is_planned_failure(err, 3)
    assert not is_planned_failure(err, 4)  # another call's error
    other = ActivityError("failed", attempts=3)
    other.__cause__ = ValueError("raise 3")
    assert not is_planned_failure(other, 3)


class _FakeSession:
    """Answers a session's calls from a table: key -> value or exception."""

    def __init__(self, answers: dict[int, Any]) -> None:
        self.answers = answers

    def __enter__(self) -> _FakeSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    async def execute(self, fn: Any, spec: acts.Spec) -> Any:
        answer = self.answers[spec.key]
        if isinstance(answer, BaseException):
            raise answer
        return answer


class _FakePool:
    def __init__(self, answers: dict[int, Any]) -> None:
        self.answers = answers

    def sticky_session(self) -> _FakeSession:
        return _FakeSession(self.answers)


def _session_job(n: int) -> Job:
    return Job(tuple(Planned(k, k, "none", 8, False) for k in range(n)), True, False)


def test_a_session_call_that_succeeds_after_its_session_was_lost_is_out_of_order(tmp_path):
    job = _session_job(3)
    lost = StickySessionLostError("gone")
    answers = {0: _outcome(job.calls[0]), 1: lost, 2: _outcome(job.calls[2])}
    run = _run(tmp_path, _FakePool(answers))
    asyncio.run(run.session(job))
    s = run.summary
    assert (s.ok, s.sessions_lost, s.session_calls_lost, s.out_of_order) == (1, 1, 1, 1)


def test_a_lost_session_is_a_correct_outcome(tmp_path):
    job = _session_job(3)
    lost = StickySessionLostError("gone")
    run = _run(tmp_path, _FakePool({0: _outcome(job.calls[0]), 1: lost, 2: lost}))
    asyncio.run(run.session(job))
    s = run.summary
    assert (s.ok, s.sessions_lost, s.session_calls_lost, s.failures) == (1, 1, 2, 0)


def test_the_execution_log_gives_repeats_and_the_order_the_worker_saw(tmp_path):
    run = _run(tmp_path)
    run.sticky_keys = {10, 11, 12}
    Path(run.log).write_text(
        "1 1 100 1\n"
        "1 2 101 1\n"  # repeated after a kill: counted, not a failure
        "10 1 200 1\n"
        "11 1 200 0\n"  # started before 10 returned
        "12 1 200 1\n"
        "12 2 201 1\n"  # a sticky call on a second worker
    )
    run.read_log()
    s = run.summary
    assert (s.executions, s.repeated, s.out_of_order) == (6, 2, 2)


def test_more_outcomes_delivered_than_calls_answered_counts_as_duplicated():
    s = Summary(calls=10)
    s.check_deliveries(10, unanswered=0)
    assert s.duplicated == 0
    s.check_deliveries(11, unanswered=1)
    assert s.duplicated == 2
