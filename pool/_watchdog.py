"""The deadlines that stop attempts and workers: what each means when it falls due, and the
heartbeats that move one.

``Watchdog`` is a part of ``pool._scheduler.Scheduler``, pure like it. The scheduler owns the
deadline heap (``pool._deadlines``) and hands the watchdog every due entry that guards an
attempt or a worker: start-to-close, heartbeat, schedule-to-close, cancel grace, worker start.
(The dispatcher arms an attempt's start-to-close and heartbeat entries when it starts; the
entries that only move work along, retry, rate and withdraw, go to the dispatcher.) A timeout
of an attempt queued in a pipe answers the caller and has the worker skip it; of a running
attempt, kills the worker (``pool._loss``), the one way to stop code stuck in C.

A heartbeat does not push an entry: it moves ``call.heartbeat_deadline``, and the entry that
fires early is pushed again at the new time, so a hot heartbeat loop costs no heap work. While
the worker runs the attempt's setup (``Depends`` factories) no heartbeat is due: an entry that
fires then is parked until the worker enters the activity.
"""

from __future__ import annotations

from typing import Any

from pool._calls_state import (
    Call,
    CallState,
    Effects,
    Outcomes,
    WorkerSlot,
    WorkerState,
    final_call_error,
)
from pool._deadlines import Deadline, Deadlines
from pool._loss import WorkerLoss
from pool._timeouts import KILL_REASON, timeout_error
from pool._workers import Workers
from sdk._errors import TimeoutType


class Watchdog:
    """Acts on the due deadlines of attempts and workers (see the module docstring)."""

    def __init__(
        self,
        effects: Effects,
        outcomes: Outcomes,
        workers: Workers,
        loss: WorkerLoss,
        deadlines: Deadlines,
    ) -> None:
        self.fx = effects
        self.outcomes = outcomes
        self.workers = workers
        self.loss = loss
        self.deadlines = deadlines

    # -- deadlines falling due -----------------------------------------------------------
    def fire(self, kind: Deadline, obj: Any, gen: int, now: float) -> None:
        """A valid entry of ``kind`` (for a call, or a slot for WORKER_START) fell due."""
        if kind is Deadline.WORKER_START:
            slot: WorkerSlot = obj
            crash = self.workers.start_timed_out(slot)
            self.loss.gone(slot, now, kill=True, cause=crash, reason="start_timeout")
            return
        call: Call = obj
        if kind is Deadline.SCHEDULE_TO_CLOSE:
            self.timeout(call, TimeoutType.SCHEDULE_TO_CLOSE, now)
            return
        if kind is Deadline.CANCEL_GRACE:
            owner = self.workers.get(call.worker) if call.worker is not None else None
            if owner is not None and owner.running is call and owner.state is WorkerState.BUSY:
                self.loss.gone(owner, now, kill=True, cause=None, reason="cancel")
            return
        if call.state is not CallState.RUNNING:
            return
        if kind is Deadline.HEARTBEAT and call.heartbeat_held:
            call.heartbeat_parked = True  # entered() pushes it again
            return
        if kind is Deadline.HEARTBEAT and now < call.heartbeat_deadline:
            self.deadlines.push(call.heartbeat_deadline, Deadline.HEARTBEAT, call, gen)
            return
        self.timeout(
            call,
            TimeoutType.HEARTBEAT if kind is Deadline.HEARTBEAT else TimeoutType.START_TO_CLOSE,
            now,
        )

    def timeout(self, call: Call, type: TimeoutType, now: float) -> None:
        """``call``'s current attempt (or the call as a whole) ran out of its ``type`` time."""
        exc = timeout_error(call, type)
        finish = self.outcomes.finish
        if call.state is CallState.SENT and call.worker is not None:
            # queued in a worker's pipe: answer now, and have the worker skip it
            call.cancelled = True
            finish(call, error=final_call_error(call, exc))
            self.fx.send_cancel(call.worker, call.seq)
            return
        if call.state is CallState.RUNNING and call.worker is not None:
            slot = self.workers.get(call.worker)
            assert slot is not None  # a running attempt's worker is known until it is reaped
            if type is TimeoutType.SCHEDULE_TO_CLOSE and call.session is None:
                # the call is over whatever the policy says; the worker must stop running it
                finish(call, error=final_call_error(call, exc))
            self.loss.gone(slot, now, kill=True, cause=exc, reason=KILL_REASON[type])
            return
        finish(call, error=final_call_error(call, exc))

    # -- heartbeats ----------------------------------------------------------------------
    def heartbeat(self, wid: int, seq: int, details: Any, now: float) -> Call | None:
        """A heartbeat of the running attempt ``seq``; returns its call (None: stale)."""
        found = self.workers.current(wid, seq)
        if found is None:
            return None
        call = found[1]
        call.heartbeat_details = details
        if call.defn.heartbeat_timeout is not None:
            # the heap entry is re-pushed lazily when it fires early (see fire)
            call.heartbeat_deadline = now + call.defn.heartbeat_timeout
        return call

    def setup_started(self, wid: int, seq: int) -> None:
        """The worker is running user setup (Depends factories) before the activity: hold its
        heartbeat deadline until :meth:`entered`."""
        found = self.workers.current(wid, seq)
        if found is not None and found[1].defn.heartbeat_timeout is not None:
            found[1].heartbeat_held = True

    def entered(self, wid: int, seq: int, now: float) -> None:
        """The worker entered the activity at ``now``: the first heartbeat is due a heartbeat
        timeout later (details unchanged)."""
        found = self.workers.current(wid, seq)
        if found is None:
            return
        call = found[1]
        if call.defn.heartbeat_timeout is None:
            return
        call.heartbeat_held = False
        call.heartbeat_deadline = now + call.defn.heartbeat_timeout
        if call.heartbeat_parked:
            call.heartbeat_parked = False
            self.deadlines.push(call.heartbeat_deadline, Deadline.HEARTBEAT, call, call.gen)
