"""The records the scheduler keeps, the port it talks to the world through, and the one its
parts end calls through.

``Call`` (one caller's request across its attempts), ``WorkerSlot`` (what the scheduler sent to
one worker and in which order) and ``Session`` (a sticky session's binding and call order) are
owned by ``pool._scheduler.Scheduler`` and changed only by it and its parts (``pool._workers``,
``pool._dispatch``, ``pool._loss``, ``pool._watchdog``, ``pool._sessions``). The shell holds
``Call`` objects it submitted (to reach the caller when the scheduler resolves them) and reads
the fields the scheduler documents for it; it never changes their state. ``Effects`` is the
narrow port through which the scheduler asks the shell for I/O; ``Outcomes`` is how its parts
hand a call's or an attempt's end to the scheduler, which owns the table of calls.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdk._definition import ActivityDefinition
from sdk._retry import RetryPolicy, final_error


class CallState(enum.Enum):
    QUEUED = "queued"  # waiting for a worker (in the queue or a session's queue)
    SENT = "sent"  # in a worker's pipe behind its running attempt
    RUNNING = "running"
    BACKOFF = "backoff"  # failed, waiting to retry
    DONE = "done"


class WorkerState(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RETIRING = "retiring"  # asked to shut down gracefully
    LENT = "lent"  # idle, lent to threads that run calls on it themselves (pool._lane)
    SPARE = "spare"  # ready, held back to replace a worker that dies (Pool(spares=...))
    DEAD = "dead"


@dataclass(eq=False, slots=True)
class Call:
    """One caller's request across all its attempts. Owned by the scheduler."""

    id: int
    defn: ActivityDefinition
    policy: RetryPolicy
    payload: Any  # opaque to the scheduler: the pickled arguments (a chunk's: its items)
    waiter: Any  # opaque: how the supervisor reaches the caller
    session: str | None = None  # sticky session id; None for non-sticky calls
    # its time limits (seconds; None: none): the activity's, times the items of a chunk
    start_to_close: float | None = None
    schedule_to_close: float | None = None
    # 0: one call of the activity; else a chunk of a map, its payload the items and this how
    # each is passed (pool._chunks.ITEMS, SPREAD): one attempt runs them all in one worker
    chunk: int = 0
    state: CallState = CallState.QUEUED
    attempt: int = 0  # attempts dispatched so far (the running one included)
    seq: int = 0  # the wire id of the current dispatch; replies for older seqs are stale
    gen: int = 0  # bumped on every state change; deadline entries of older gens are stale
    worker: int | None = None
    heartbeat_details: Any = None
    on_heartbeat: Any = None  # opaque: the supervisor hands it each heartbeat's details
    heartbeat_deadline: float = 0.0
    # The worker runs the attempt's setup (Depends factories: user code, timed by start-to-close
    # only), so no heartbeat is due until it enters the activity; parked: its heap entry dropped.
    heartbeat_held: bool = False
    heartbeat_parked: bool = False
    schedule_deadline: float | None = None
    cancelled: bool = False
    withdrawing: bool = False  # asked back from the pipe it waits in; no answer yet
    submitted_at: float = 0.0
    started_at: float = 0.0
    # set by the shell when an attempt ends: the last lines it printed (for the final error)
    output: tuple[str, ...] = ()
    trace: Any = None  # opaque: the caller's trace context (pool._otel), or None


def run_meta(call: Call, attempt: int | None = None) -> tuple[Any, ...]:
    """What the worker needs to run ``call``'s current attempt (or attempt ``attempt``)
    besides its arguments: a ``pool._protocol.RunMeta`` as a plain tuple (fault and trace
    left off)."""
    defn = call.defn
    timeout = call.start_to_close
    return (
        defn.module,
        defn.qualname,
        defn.name,
        str(call.id),
        call.attempt if attempt is None else attempt,
        call.session,
        time.time() + timeout if timeout else None,
        defn.heartbeat_timeout,
        call.heartbeat_details,
    )


@dataclass(eq=False, slots=True)
class WorkerSlot:
    """What the scheduler sent to one worker, in pipe order, and its lifecycle state.

    The registry (``pool._workers``) sets the lifecycle states; the dispatcher
    (``pool._dispatch``) moves an active worker between IDLE and BUSY and fills ``running``,
    ``sent`` and ``sticky``; the loss path (``pool._loss``) empties them when the worker goes.
    """

    id: int
    state: WorkerState = WorkerState.STARTING
    running: Call | None = None
    sent: deque[Call] = field(default_factory=deque)  # prefetched, in pipe order
    sticky: deque[Call] = field(default_factory=deque)  # sticky calls waiting for this worker
    sessions: set[str] = field(default_factory=set)
    tasks_done: int = 0
    recycle: bool = False
    recycle_reason: str = "tasks_recycle"  # why it is to be recycled (see PoolEvent.reason)
    gen: int = 0
    withdraw_armed: int = 0  # seq of the running attempt a WITHDRAW deadline is armed for


@dataclass(eq=False, slots=True)
class Session:
    """A sticky session: the worker it is bound to and its calls not yet done."""

    id: str
    worker: int | None = None
    lost: BaseException | None = None
    closing: bool = False
    active: int = 0  # calls of this session not yet done
    # its calls not yet done, in submission order: only the head may be queued for the worker,
    # so a call in backoff keeps its place and the next waits until it has ended
    order: deque[Call] = field(default_factory=deque)


class Effects(Protocol):
    """What the scheduler asks of the outside world. Never called re-entrantly into it."""

    def spawn(self, worker_id: int) -> None: ...
    def send_run(self, worker_id: int, call: Call) -> None: ...
    def send_cancel(self, worker_id: int, seq: int) -> None: ...
    def send_withdraw(self, worker_id: int, seqs: list[int]) -> None: ...
    def close_session(self, worker_id: int, session_id: str) -> None: ...
    def kill(self, worker_id: int) -> None: ...
    def retire(self, worker_id: int) -> None: ...
    def resolve(self, call: Call, value: Any) -> None: ...
    def reject(self, call: Call, exc: BaseException) -> None: ...
    def event(self, kind: str, **fields: Any) -> None: ...


class Outcomes(Protocol):
    """How the scheduler's parts end a call or an attempt (``pool._scheduler.Scheduler``)."""

    def finish(self, call: Call, value: Any = None, error: BaseException | None = None) -> None:
        """Answer the caller (once): ``call`` is done."""
        ...

    def attempt_failed(self, call: Call, exc: BaseException, now: float) -> None:
        """The running attempt of ``call`` failed with ``exc``: retry it later, or finish."""
        ...

    def fail_waiting(self, exc: BaseException) -> None:
        """Finish every call not running anywhere (queued or in backoff) with ``exc``."""
        ...


def attempt_event(
    fx: Effects, kind: str, worker_id: int | None, call: Call, attempt: int, **more: Any
) -> None:
    """Tell the event stream about an attempt of ``call`` (called only with events on)."""
    fx.event(
        kind,
        worker_id=worker_id,
        activity=call.defn.name,
        call_id=call.id,
        attempt=attempt,
        **more,
    )


def final_call_error(call: Call, exc: BaseException) -> BaseException:
    """What the caller of ``call`` gets when the failure ``exc`` of its current attempt ends
    it (``sdk._retry.final_error``: the attempts, the remote traceback, the last output)."""
    text = getattr(exc, "remote_traceback_text", None)
    return final_error(call.defn.name, call.attempt, exc, text, call.output)


# worker states that take work (and, with STARTING, that a session may bind to)
ACTIVE = (WorkerState.IDLE, WorkerState.BUSY)
ACTIVE_OR_STARTING = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.STARTING)
