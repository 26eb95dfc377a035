"""Deadlines, crashes and retries against real worker processes."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

import sdk
from pool import Pool
from tests.integration import activities as acts

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pool():
    with Pool([acts], workers=2) as p:
        yield p


@pytest.mark.parametrize("fn", [acts.hang_sleep, acts.hang_busy, acts.hang_in_c_holding_gil])
def test_start_to_close_kills_stuck_code(pool, fn):
    before = set(pool.worker_pids())
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(fn)
    elapsed = time.monotonic() - t0
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.START_TO_CLOSE
    assert info.value.attempts == 1
    assert 0.1 <= elapsed < 2.0
    # the stuck worker is gone and replaced; the pool keeps working
    assert pool.run(acts.add, 1, 2) == 3
    # (the call may come back, on the other worker, before the replacement has been forked)
    deadline = time.monotonic() + 2.0
    while len(after := set(pool.worker_pids())) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(after) == 2 and after != before


@pytest.mark.parametrize("own_session", [False, True], ids=["same-group", "setsid-child"])
def test_timeout_kills_the_activitys_own_children(pool, tmp_path, own_session):
    pidfile = tmp_path / "child.pid"
    with pytest.raises(sdk.ActivityError):
        pool.run(acts.spawn_child_and_hang, str(pidfile), own_session)
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 2
    while psutil.pid_exists(child) and time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.01)
    alive = psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    assert not alive


def test_heartbeat_timeout_carries_last_details(pool):
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.beat_then_stall, 3)
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.HEARTBEAT
    assert cause.last_heartbeat_details == {"done": 3}


def test_first_heartbeat_is_due_heartbeat_timeout_after_start(pool):
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.never_beats)
    assert info.value.__cause__.type is sdk.TimeoutType.HEARTBEAT
    assert 0.1 <= time.monotonic() - t0 < 1.5


def test_steady_heartbeats_keep_a_long_activity_alive(pool):
    # 0.6 s of work, more than twice the 0.25 s heartbeat timeout
    assert pool.run(acts.beats_steadily, 0.6) == "finished"


def test_heartbeat_details_survive_a_gil_holding_stall(pool):
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.beat_then_hold_gil)
    assert info.value.__cause__.last_heartbeat_details == "latest"


def test_crash_is_noticed_and_replaced(pool):
    before = set(pool.worker_pids())
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.exit_with, 7)
    cause = info.value.__cause__
    assert isinstance(cause, sdk.WorkerCrashedError)
    assert cause.exitcode == 7 and cause.signal is None and cause.pid in before
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.kill_self)
    cause = info.value.__cause__
    assert isinstance(cause, sdk.WorkerCrashedError)
    assert cause.signal == signal.SIGKILL and cause.exitcode is None
    assert pool.run(acts.add, 2, 3) == 5
    assert len(pool.worker_pids()) == 2


def test_external_sigkill_mid_activity_affects_only_that_call(pool, tmp_path):
    pidfile = tmp_path / "pid"
    victim = pool.submit(acts.write_pid_and_sleep, str(pidfile), 30)
    bystander = pool.submit(acts.sleep_for, 0.3)
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    victim_pid = int(pidfile.read_text())
    t0 = time.monotonic()
    os.kill(victim_pid, signal.SIGKILL)
    with pytest.raises(sdk.ActivityError) as info:
        victim.result(timeout=5)
    assert time.monotonic() - t0 < 1
    cause = info.value.__cause__
    assert isinstance(cause, sdk.WorkerCrashedError)
    assert cause.pid == victim_pid and cause.signal == signal.SIGKILL
    assert bystander.result(timeout=5) != victim_pid
    assert pool.run(acts.add, 1, 1) == 2
    assert victim_pid not in pool.worker_pids() and len(pool.worker_pids()) == 2


def test_crash_then_retry_succeeds(pool):
    assert pool.run(acts.kill_self_first_attempt) == 2


def test_retries_with_backoff_until_success(pool):
    assert pool.run(acts.flaky, 2) == 3


def test_retries_exhausted_gives_activity_error_with_attempts(pool):
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.always_fails)
    elapsed = time.monotonic() - t0
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, ValueError)
    assert "always" in info.value.remote_traceback
    assert elapsed >= 0.05 + 0.1  # initial 0.05 s, then 0.1 s


def test_non_retryable_application_error(pool):
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.not_retryable)
    assert info.value.attempts == 1
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ApplicationError)
    assert cause.non_retryable and cause.details == ("detail",)


def test_non_retryable_error_types(pool):
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.key_error)
    assert info.value.attempts == 1


def test_next_retry_delay_overrides_backoff(pool):
    t0 = time.monotonic()
    assert pool.run(acts.explicit_delay) == 2
    assert time.monotonic() - t0 < 5  # not the 10 s initial interval


def test_heartbeat_details_reach_the_next_attempt(pool):
    result = pool.run(acts.resumable, 10)
    assert result["attempt"] == 2
    assert result["started_at"] == 6  # resumed after item 5, not from 0


def test_schedule_to_close_is_final(pool):
    t0 = time.monotonic()
    with pytest.raises(sdk.ActivityError) as info:
        pool.run(acts.schedule_limited)
    cause = info.value.__cause__
    assert isinstance(cause, sdk.ActivityTimeoutError)
    assert cause.type is sdk.TimeoutType.SCHEDULE_TO_CLOSE
    assert 0.3 <= time.monotonic() - t0 < 2


def test_other_calls_unaffected_by_a_timeout(pool):
    ok = [pool.submit(acts.sleep_for, 0.05) for _ in range(6)]
    with pytest.raises(sdk.ActivityError):
        pool.run(acts.hang_sleep)
    assert all(f.result(timeout=5) for f in ok)


def test_a_spare_replaces_a_crashed_worker_at_once():
    events = []
    with Pool([acts], workers=1, spares=1, on_event=events.append) as pool:
        before = pool.worker_pids()
        assert len(before) == 2  # the worker and its spare
        first = pool.run(acts.pid_of)
        with pytest.raises(sdk.ActivityError):
            pool.run(acts.kill_self)
        second = pool.run(acts.pid_of)
        # the spare, already running before the crash, took over: no process start in between
        assert second != first and second in before
        deadline = time.monotonic() + 5
        while sum(e.kind == "spare_ready" for e in events) < 2:  # a new spare is started
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(pool.worker_pids()) == 2
    kinds = [e.kind for e in events]
    assert kinds.count("spare_ready") >= 2  # the first spare, then its own replacement
