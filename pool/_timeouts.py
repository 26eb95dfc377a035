"""What the scheduler's deadlines mean, as pure functions: the time limits of a chunk of a map,
whether an entry still guards the state it was armed for, and the errors a timeout or a
stopped worker is reported with.

``pool._scheduler.Scheduler`` owns the deadline heap (``pool._deadlines``) and, with its
``pool._watchdog``, acts on a due entry; this module only answers questions about their records
and builds exceptions.
"""

from __future__ import annotations

from typing import Any

from pool._calls_state import Call, CallState, WorkerSlot, WorkerState
from pool._deadlines import Deadline
from sdk._definition import ActivityDefinition
from sdk._errors import ActivityTimeoutError, TimeoutType, WorkerCrashedError

# why a timeout killed a worker, as PoolEvent.reason names it
KILL_REASON = {
    TimeoutType.START_TO_CLOSE: "deadline",
    TimeoutType.HEARTBEAT: "heartbeat",
    TimeoutType.SCHEDULE_TO_CLOSE: "schedule_to_close",
}


def chunk_limits(defn: ActivityDefinition, size: int) -> tuple[float | None, float | None]:
    """The start-to-close and schedule-to-close timeouts of a chunk of ``size`` items of
    ``defn``: the activity's, times ``size``, as one attempt runs the items one after the
    other. (Its heartbeat timeout is the activity's: a beat from any item counts.)"""
    s2c, s2close = defn.start_to_close_timeout, defn.schedule_to_close_timeout
    return (None if s2c is None else s2c * size, None if s2close is None else s2close * size)


def still_valid(kind: Deadline, obj: Any, gen: int) -> bool:
    """Does a deadline entry of ``kind`` armed at generation ``gen`` still guard ``obj``?"""
    if kind is Deadline.WORKER_START:
        return bool(obj.gen == gen and obj.state is WorkerState.STARTING)
    if kind is Deadline.SCHEDULE_TO_CLOSE:
        return bool(obj.state is not CallState.DONE)
    if kind is Deadline.CANCEL_GRACE:
        return bool(obj.gen == gen)  # the call is DONE: the caller was answered already
    if kind is Deadline.RATE:
        return bool(obj.waiting)
    if kind is Deadline.WITHDRAW:
        return bool(obj.gen == gen)  # the attempt is still the one the calls wait behind
    return bool(obj.gen == gen and obj.state is not CallState.DONE)


def timeout_error(call: Call, type: TimeoutType) -> ActivityTimeoutError:
    """The error of ``call``'s current attempt running out of its ``type`` timeout."""
    limit = {
        TimeoutType.START_TO_CLOSE: call.start_to_close,
        TimeoutType.HEARTBEAT: call.defn.heartbeat_timeout,
        TimeoutType.SCHEDULE_TO_CLOSE: call.schedule_to_close,
    }[type]
    return ActivityTimeoutError(
        f"activity {call.defn.name!r} attempt {call.attempt}: "
        f"{type.value.lower().replace('_', '-')} timeout of {limit:g}s",
        type=type,
        last_heartbeat_details=call.heartbeat_details,
    )


def start_timeout_error(slot: WorkerSlot, start_timeout: float) -> WorkerCrashedError:
    """The error of a worker that did not finish its handshake in ``start_timeout``."""
    return WorkerCrashedError(
        f"worker {slot.id} did not become ready in {start_timeout:g}s",
        exitcode=None,
        signal=None,
        pid=None,
        worker_id=slot.id,
    )


def stopped(slot: WorkerSlot) -> WorkerCrashedError:
    """Why an attempt or session ended when its worker was stopped for no error of its own."""
    return WorkerCrashedError(
        "the worker was stopped", exitcode=None, signal=None, pid=None, worker_id=slot.id
    )
