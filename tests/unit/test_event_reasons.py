"""Every event that ends a worker names why (``PoolEvent.reason``): the scheduler, driven by the
fake Effects port and fake clock of ``test_scheduler``."""

from __future__ import annotations

from typing import Any

from sdk import activity
from tests.unit.test_scheduler import Harness, crash, hb, plain, retrying, s2c, stc, sticky


@activity(name="reason_test.slow_cancel", start_to_close_timeout=None)
def slow_cancel() -> None:
    return None


def _ends(h: Harness) -> list[tuple[str, Any]]:
    kinds = ("worker_killed", "worker_exited", "worker_recycled")
    return [(e[1], e[2].get("reason")) for e in h.fx.log if e[0] == "event" and e[1] in kinds]


def test_timeouts_name_their_kind() -> None:
    h = Harness(workers=1, events=True)
    h.submit(stc)
    h.sched.advance(1.0)
    assert _ends(h) == [("worker_killed", "deadline")]

    h = Harness(workers=1, events=True)
    h.submit(hb)
    h.sched.advance(2.0)
    assert _ends(h) == [("worker_killed", "heartbeat")]

    h = Harness(workers=1, events=True)
    h.submit(s2c)
    h.sched.advance(5.0)
    assert _ends(h) == [("worker_killed", "schedule_to_close")]


def test_a_crash_and_a_protocol_error() -> None:
    h = Harness(workers=2, events=True)
    h.submit(retrying)
    h.sched.worker_exited(1, crash(1), 1.0)
    h.sched.kill_worker(2, RuntimeError("bad frame"), 1.0)
    assert _ends(h) == [("worker_exited", "crash"), ("worker_killed", "protocol_error")]


def test_cancellation_kills_name_cancel() -> None:
    h = Harness(workers=1, events=True, cancel_grace=1.0)
    c = h.submit(slow_cancel)
    h.sched.cancel(c.id, 0.0)
    h.sched.advance(1.0)  # the grace is over and the worker still runs it
    assert _ends(h) == [("worker_killed", "cancel")]

    h = Harness(workers=1, events=True)
    c = h.submit(sticky, session="s1")
    h.sched.cancel(c.id, 0.0)
    assert _ends(h) == [("worker_killed", "cancel")]


def test_shutdown_and_start_timeout() -> None:
    h = Harness(workers=1, events=True)
    h.submit(plain)
    h.sched.cancel_all(0.0)
    assert _ends(h) == [("worker_killed", "shutdown")]

    h = Harness(workers=1, ready=False, events=True, start_timeout=3.0)
    h.sched.advance(3.0)
    assert ("worker_killed", "start_timeout") in _ends(h)


def test_recycles_say_tasks_or_memory() -> None:
    h = Harness(workers=1, prefetch=0, events=True, max_tasks_per_worker=1)
    h.finish(h.submit(), None, 1.0)
    assert _ends(h) == [("worker_recycled", "tasks_recycle")]

    h = Harness(workers=1, prefetch=0, events=True)
    c = h.submit()
    h.sched.request_recycle(1, 0.5)
    h.finish(c, None, 1.0)
    assert _ends(h) == [("worker_recycled", "memory_recycle")]


def test_attempt_completed_carries_the_calls_latency_from_submission() -> None:
    h = Harness(workers=1, events=True)
    c = h.submit(plain, now=0.5)
    h.finish(c, None, 2.0)
    (done,) = h.fx.events("attempt_completed")
    assert done["latency"] == 1.5
