"""The heartbeat clock waits while a worker runs an attempt's setup (Depends factories), and
starts when the worker enters the activity: fake clock, no processes."""

from __future__ import annotations

import pytest

from pool._scheduler import CallState
from sdk import TimeoutType, activity
from tests.unit.test_scheduler import Harness, hb, timeout_cause


@activity(
    name="sched_setup_test.hb_stc",
    start_to_close_timeout=30.0,
    heartbeat_timeout=2.0,
    retry_policy_max_attempts=1,
)
def hb_stc() -> None:
    return None


def test_setup_holds_the_heartbeat_clock_until_entry() -> None:
    h = Harness(workers=1)
    c = h.submit(hb)  # heartbeat timeout 2 s, sent at 0
    h.fx.new()
    h.sched.setup_started(1, c.seq)
    h.sched.advance(2.0)  # the entry due at 2 fires while held: parked, no kill
    h.sched.advance(60.0)
    assert h.fx.new() == [] and c.state is CallState.RUNNING
    h.sched.entered(1, c.seq, 61.0)  # the first heartbeat is due 2 s after entry
    assert h.sched.next_deadline() == pytest.approx(63.0)
    h.sched.advance(62.99)
    assert h.fx.new() == []
    h.sched.advance(63.0)
    assert h.fx.new()[:1] == [("kill", 1)]
    assert timeout_cause(h.fx.rejection(c)).type is TimeoutType.HEARTBEAT


def test_entry_before_the_first_deadline_moves_it_without_a_second_entry() -> None:
    h = Harness(workers=1)
    c = h.submit(hb)
    h.fx.new()
    h.sched.entered(1, c.seq, 0.5)  # a setup of 0.5 s: due at 2.5, not 2.0
    h.sched.advance(2.0)
    assert h.fx.new() == []
    h.sched.heartbeat(1, c.seq, "beat", 2.4)
    h.sched.advance(4.39)
    assert h.fx.new() == []
    h.sched.advance(4.4)
    assert h.fx.new()[:1] == [("kill", 1)]
    assert timeout_cause(h.fx.rejection(c)).last_heartbeat_details == "beat"


def test_setup_still_counts_against_start_to_close() -> None:
    h = Harness(workers=1)
    c = h.submit(hb_stc)
    h.fx.new()
    h.sched.setup_started(1, c.seq)
    h.sched.advance(30.0)
    assert h.fx.new()[:1] == [("kill", 1)]
    assert timeout_cause(h.fx.rejection(c)).type is TimeoutType.START_TO_CLOSE
