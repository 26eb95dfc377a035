"""The pool's decisions, as a pure state machine: no I/O, no clock of its own, no threads.

The supervisor feeds it events (a call submitted, a worker ready, a result, a heartbeat, a worker
gone, the clock reaching the next deadline) with the current monotonic time, and it answers
through the narrow ``Effects`` port (send this attempt to that worker, kill that worker, resolve
that call...). Unit tests drive it with a fake port and a fake clock.

``Scheduler`` is the one object the shell talks to. It owns the table of calls not yet done and
ends them (``finish``, and the retry decision in ``attempt_failed``), and composes parts that
each own one piece of state or one path:

- ``pool._workers.Workers``: the worker slots and their lifecycle (spawn, spare, recycle,
  retire, gone), ``closed`` and ``broken``;
- ``pool._dispatch.Dispatcher``: which call runs where (the queue, the idle workers, prefetch,
  withdrawal, rate limits): the hot path;
- ``pool._loss.WorkerLoss``: what becomes of a lost worker's attempts and sessions;
- ``pool._watchdog.Watchdog``: the deadlines that stop attempts and workers, and heartbeats;
- ``pool._sessions.Sessions`` and ``pool._deadlines.Deadlines`` (the pool's only deadline
  structure; the supervisor arms one timer for ``next_deadline()``).

The parts end calls through the ``Outcomes`` port the scheduler implements, and call each other
only downwards (dispatcher, then loss, then watchdog). The shell asks questions (``ready()``,
``starting()``, ``wants_process()``, ``in_flight()``...) rather than reading state.

A sticky session's calls run one at a time in submission order: only the first of them that has
not ended is queued for the session's worker (``Session.order``).
"""

from __future__ import annotations

from asyncio import CancelledError
from typing import Any

from pool._calls_state import (
    Call,
    CallState,
    Effects,
    Session,
    WorkerState,
    attempt_event,
    final_call_error,
)
from pool._deadlines import Deadline, Deadlines
from pool._dispatch import Dispatcher
from pool._loss import WorkerLoss
from pool._sessions import Sessions
from pool._timeouts import still_valid
from pool._watchdog import Watchdog
from pool._workers import Workers
from sdk._errors import PoolClosedError, WorkerCrashedError


class Scheduler:
    """The pool's decisions: the shell's events in, ``Effects`` out (see the module docstring).

    Each public method is an event or a question of the shell; ``finish``, ``attempt_failed``
    and ``fail_waiting`` are the ``Outcomes`` port its parts end calls through.
    """

    def __init__(
        self,
        effects: Effects,
        *,
        workers: int,
        prefetch: int = 1,
        cancel_grace: float = 1.0,
        start_timeout: float = 60.0,
        max_tasks_per_worker: int | None = None,
        events: bool = False,
        spares: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if spares < 0:
            raise ValueError("spares must be >= 0")
        self.fx = effects
        self.cancel_grace = cancel_grace
        self.sessions = Sessions()  # sticky sessions: order, binding, loss (pool._sessions)
        self.calls: dict[int, Call] = {}  # every call not yet DONE
        # every timeout, backoff and grace period (see pool._deadlines)
        self.deadlines = Deadlines(still_valid, lambda: len(self.calls) + len(self.workers))
        # the worker slots and their lifecycle; closed and broken (pool._workers)
        self.workers = Workers(
            effects,
            self.deadlines,
            size=workers,
            spares=spares,
            start_timeout=start_timeout,
            max_tasks=max_tasks_per_worker,
        )
        self._durations: dict[str, float] = {}  # moving average run time per activity name
        # which call runs where: the queue, idle workers, prefetch, withdrawal (pool._dispatch)
        self.dispatch = Dispatcher(
            effects,
            self,
            self.workers,
            self.sessions,
            self.deadlines,
            self._durations,
            prefetch=prefetch,
            cancel_grace=cancel_grace,
        )
        # a worker leaving against the pool's will (pool._loss)
        self.loss = WorkerLoss(effects, self, self.workers, self.dispatch, self.sessions)
        # the deadlines that stop attempts and workers, and heartbeats (pool._watchdog)
        self.watchdog = Watchdog(effects, self, self.workers, self.loss, self.deadlines)
        self._now = 0.0  # the time of the event being handled, for paths that need it
        self.cancelling = False  # closed with cancel_all
        self.events = events

    @property
    def events(self) -> bool:
        """Whether the scheduler tells the event stream (``Effects.event``) what happens; the
        supervisor turns it on and off. Its parts keep a copy, for their hot paths."""
        return self._events

    @events.setter
    def events(self, on: bool) -> None:
        self._events = self.workers.events = self.dispatch.events = self.loss.events = on

    @property
    def broken(self) -> BaseException | None:
        """Why the pool cannot start workers (then every call fails with it), or None."""
        return self.workers.broken

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, now: float) -> None:
        self.workers.start(now)

    # -- questions (the supervisor asks; nothing outside reads the state itself) ---------
    def live_workers(self) -> int:
        return self.workers.live()

    def starting(self) -> int:
        """Workers spawned that have not finished their handshake yet."""
        return self.workers.starting()

    def ready(self) -> bool:
        """Is every worker started so far ready (or gone)?"""
        return self.starting() == 0

    def wants_process(self, wid: int) -> bool:
        """Is worker ``wid`` still starting, so that a process made for it is wanted?"""
        return self.workers.wants_process(wid)

    def in_flight(self) -> int:
        """Calls submitted and not yet answered."""
        return len(self.calls)

    def worker_ready(self, wid: int, now: float) -> None:
        self._now = now
        slot = self.workers.ready(wid)
        if slot is not None:
            self.dispatch.became_idle(slot, now)

    def close(self) -> None:
        """No more submissions; workers retire once everything in flight is done."""
        self.workers.close()
        self._maybe_retire_all()

    def cancel_all(self, now: float) -> None:
        """Close and fail everything outstanding with PoolClosedError; kill busy workers."""
        self.workers.close()
        self.cancelling = True
        self.sessions.forget_order()
        for call in list(self.calls.values()):
            self.finish(
                call, error=PoolClosedError("the pool was closed before this call finished")
            )
        for slot in list(self.workers.slots()):
            if slot.state in (WorkerState.BUSY, WorkerState.STARTING):
                self.loss.gone(slot, now, kill=True, cause=None, respawn=False, reason="shutdown")
        self._maybe_retire_all()

    def _maybe_retire_all(self) -> None:
        if self.workers.closed and not self.calls:
            self.workers.retire_all()

    def queued(self) -> int:
        """Calls waiting for a worker (not running, not in a pipe, not in backoff)."""
        return sum(1 for call in self.calls.values() if call.state is CallState.QUEUED)

    @property
    def drained(self) -> bool:
        return self.workers.closed and not self.calls

    # -- submissions ---------------------------------------------------------------------
    def submit(self, call: Call, now: float) -> None:
        self._now = now
        workers = self.workers
        if workers.closed:
            self.fx.reject(call, PoolClosedError("the pool is closed"))
            return
        if workers.broken is not None:
            self.fx.reject(call, workers.broken)
            return
        call.submitted_at = now
        self.calls[call.id] = call
        if call.schedule_to_close is not None:
            call.schedule_deadline = now + call.schedule_to_close
            self.deadlines.push(call.schedule_deadline, Deadline.SCHEDULE_TO_CLOSE, call, -1)
        if call.session is not None:
            lost = self.sessions.join(call)
            if lost is not None:
                self.finish(call, error=lost)
                return
        self.dispatch.enqueue(call, now)

    # -- lending (pool._lane) --------------------------------------------------------------
    def lendable(self, prefer: int | None) -> int | None:
        """An idle worker a calling thread may borrow now, or None: only a pool with nothing
        else to do lends (see ``Dispatcher.lendable``)."""
        workers = self.workers
        if workers.closed or workers.broken is not None or self.calls or self._events:
            return None
        return self.dispatch.lendable(prefer)

    def wants_lent_back(self) -> bool:
        """Whether a lent worker should come back: work waits, the pool closes, or events are
        on (a borrower's calls make none)."""
        return self.workers.closed or bool(self.dispatch.queue) or self._events

    def lend(self, wid: int) -> None:
        self.dispatch.lend(wid)

    def unlend(self, wid: int, now: float) -> None:
        self._now = now
        self.dispatch.unlend(wid, now)

    def adopt(self, wid: int, call: Call, seq: int, started_at: float, now: float) -> None:
        """A borrower of worker ``wid`` sent attempt 1 of ``call`` as RUN ``seq`` at
        ``started_at`` and hands it over unanswered: it is submitted and runs on as if
        dispatched then, so a deadline already past fires at once."""
        self._now = now
        call.submitted_at = started_at
        self.calls[call.id] = call
        if call.schedule_to_close is not None:
            call.schedule_deadline = started_at + call.schedule_to_close
            self.deadlines.push(call.schedule_deadline, Deadline.SCHEDULE_TO_CLOSE, call, -1)
        self.dispatch.adopt(wid, call, seq, started_at)
        if self.cancelling:  # the pool closed with cancel while the borrower ran it
            self.cancel_all(now)

    # -- replies -------------------------------------------------------------------------
    def average_duration(self, name: str) -> float | None:
        """Moving average of how long attempts of activity ``name`` took, from the RUN being
        sent (or its worker starting it, when prefetched) to the result; None before one."""
        return self._durations.get(name)

    def running_call(self, wid: int, seq: int) -> Call | None:
        """The call whose attempt ``seq`` worker ``wid`` runs now, or None (a stale reply)."""
        found = self.workers.current(wid, seq)
        return found[1] if found is not None else None

    def result(self, wid: int, seq: int, value: Any, now: float) -> None:
        self._now = now
        found = self.workers.current(wid, seq)
        if found is None:
            return
        slot, call = found
        slot.tasks_done += 1
        name = call.defn.name
        took = now - call.started_at
        avg = self._durations.get(name)
        self._durations[name] = took if avg is None else avg + (took - avg) * 0.2
        if self._events:
            attempt_event(
                self.fx,
                "attempt_completed",
                wid,
                call,
                call.attempt,
                duration=now - call.started_at,
                latency=now - call.submitted_at,
            )
        if not call.cancelled:
            self.finish(call, value=value)
        else:
            call.gen += 1
        self.dispatch.became_idle(slot, now)

    def failure(self, wid: int, seq: int, exc: BaseException, now: float) -> None:
        self._now = now
        found = self.workers.current(wid, seq)
        if found is None:
            return
        slot, call = found
        slot.tasks_done += 1
        if call.cancelled:
            call.gen += 1
        else:
            # an ordinary exception keeps a sticky session on its worker: retry there
            self.attempt_failed(call, exc, now)
        self.dispatch.became_idle(slot, now)

    def withdrawn(self, wid: int, seq: int, now: float) -> None:
        """The worker confirms it dropped RUN ``seq`` unstarted: the call may go elsewhere."""
        self._now = now
        self.dispatch.withdrawn(wid, seq, now)

    def heartbeat(self, wid: int, seq: int, details: Any, now: float) -> Call | None:
        """A heartbeat of the running attempt ``seq``; returns its call (None: stale)."""
        return self.watchdog.heartbeat(wid, seq, details, now)

    def setup_started(self, wid: int, seq: int) -> None:
        """The worker is running user setup (Depends factories) before the activity: hold its
        heartbeat deadline until :meth:`entered`."""
        self.watchdog.setup_started(wid, seq)

    def entered(self, wid: int, seq: int, now: float) -> None:
        """The worker entered the activity at ``now``: the first heartbeat is due a heartbeat
        timeout later."""
        self.watchdog.entered(wid, seq, now)

    # -- outcomes (the Outcomes port: the parts end calls here) ---------------------------
    def attempt_failed(self, call: Call, exc: BaseException, now: float) -> None:
        """The running attempt of ``call`` failed with ``exc``: the retry decision (the call's
        ``RetryPolicy``) puts it in backoff until a RETRY deadline, or finishes it."""
        if self._events:
            attempt_event(self.fx, "attempt_failed", call.worker, call, call.attempt, error=exc)
        delay = call.policy.next_delay(exc, call.attempt)
        if delay is None:
            self.finish(call, error=final_call_error(call, exc))
            return
        call.state = CallState.BACKOFF
        call.gen += 1
        call.worker = None
        if self._events:
            self.fx.event(
                "retry_scheduled",
                activity=call.defn.name,
                call_id=call.id,
                attempt=call.attempt + 1,
                delay=delay,
            )
        self.deadlines.push(now + delay, Deadline.RETRY, call, call.gen)

    def finish(self, call: Call, value: Any = None, error: BaseException | None = None) -> None:
        """Answer the caller, once: ``call`` leaves the table, its session lets the next call
        through, and the last call of a closed pool retires the workers."""
        if call.state is CallState.DONE:
            return
        call.state = CallState.DONE
        call.gen += 1
        self.calls.pop(call.id, None)
        after: Call | None = None  # the session's next call, now free to run
        if call.session is not None:
            after, done = self.sessions.ended(call)
            if done is not None:
                self._drop_session(done)
        if error is not None:
            self.fx.reject(call, error)
        else:
            self.fx.resolve(call, value)
        if after is not None and after.state is CallState.QUEUED:
            self.dispatch.place(after, self._now, True)
        if not self.calls and self.workers.closed:
            self._maybe_retire_all()

    def fail_waiting(self, exc: BaseException) -> None:
        """Fail every call not running anywhere (queued or in backoff): the pool is broken."""
        self.sessions.forget_order()
        for call in list(self.calls.values()):
            if call.state in (CallState.QUEUED, CallState.BACKOFF):
                self.finish(call, error=exc)

    # -- cancellation --------------------------------------------------------------------
    def cancel(self, call_id: int, now: float) -> None:
        """The caller gave up on this call: stop it, and kill its worker if it will not stop."""
        self._now = now
        call = self.calls.get(call_id)
        if call is None or call.state is CallState.DONE:
            return
        cause = CancelledError("the caller cancelled this call")
        state = call.state
        call.cancelled = True
        if state in (CallState.QUEUED, CallState.BACKOFF):
            self.finish(call, error=cause)
            return
        slot = self.workers.get(call.worker) if call.worker is not None else None
        if call.session is not None and slot is not None and state is CallState.RUNNING:
            # sticky: the session's state in that worker is now unknown; the worker goes
            self.loss.gone(slot, now, kill=True, cause=cause, reason="cancel")
            return
        # The caller is answered now. The call stays the worker's running (or prefetched)
        # attempt in slot.running / slot.sent until the worker answers or is killed.
        self.finish(call, error=cause)
        if slot is not None:
            self.fx.send_cancel(slot.id, call.seq)
            if state is CallState.RUNNING:
                self.deadlines.push(now + self.cancel_grace, Deadline.CANCEL_GRACE, call, call.gen)

    # -- sessions ------------------------------------------------------------------------
    def close_session(self, session_id: str) -> None:
        session = self.sessions.close(session_id)
        if session is not None:
            self._drop_session(session)

    def _drop_session(self, session: Session) -> None:
        self.sessions.forget(session)
        if session.worker is None:
            return
        slot = self.workers.get(session.worker)
        if slot is not None and slot.state is not WorkerState.DEAD:
            slot.sessions.discard(session.id)
            self.fx.close_session(slot.id, session.id)
            if self._events:
                self.fx.event("session_closed", worker_id=slot.id, session_id=session.id)
            if slot.recycle and slot.state is WorkerState.IDLE:
                self.dispatch.recycle(slot, self._now)

    # -- workers leaving -----------------------------------------------------------------
    def worker_exited(self, wid: int, crash: WorkerCrashedError, now: float) -> None:
        """The process is gone (pipe EOF and reaped). Expected after retire/kill; else a crash."""
        self._now = now
        self.loss.exited(wid, crash, now)

    def kill_worker(
        self, wid: int, cause: BaseException, now: float, reason: str = "protocol_error"
    ) -> None:
        """The shell found the worker unusable (a protocol error): kill it, fail its attempt."""
        self.loss.kill(wid, cause, now, reason)

    def request_recycle(self, wid: int, now: float, reason: str = "memory_recycle") -> None:
        """Recycle a worker (e.g. over its memory limit) as soon as it is free and unpinned."""
        slot = self.workers.request_recycle(wid, reason)
        if slot is not None:
            self.dispatch.recycle(slot, now)

    # -- deadlines -----------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the supervisor's one timer must fire next (None: no deadline pending)."""
        return self.deadlines.next()

    def advance(self, now: float) -> None:
        """The clock reached ``now``: fire every deadline due."""
        self._now = now
        dispatch = self.dispatch
        for kind, obj, gen in self.deadlines.due(now):
            if kind is Deadline.RATE:
                dispatch.release(obj, now)
            elif kind is Deadline.WITHDRAW:
                dispatch.rebalance(now)
            elif kind is Deadline.RETRY:
                if obj.state is CallState.BACKOFF:
                    dispatch.enqueue(obj, now)
            else:  # the deadlines that stop attempts and workers
                self.watchdog.fire(kind, obj, gen, now)
