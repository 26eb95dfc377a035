"""The pool's decisions, as a pure state machine: no I/O, no clock of its own, no threads.

The supervisor feeds it events (a call submitted, a worker ready, a result, a heartbeat, a worker
gone, the clock reaching the next deadline) with the current monotonic time, and it answers
through the narrow ``Effects`` port (send this attempt to that worker, kill that worker, resolve
that call...). Unit tests drive it with a fake port and a fake clock.

It owns the only deadline structure of the pool (``pool._deadlines``: start-to-close,
heartbeat, schedule-to-close, retry-backoff, cancel-grace, worker-start, rate-limit and
withdraw deadlines, with generation numbers) and the rate-limit buckets (``pool._ratelimit``).
The supervisor arms one timer for ``next_deadline()``. The shell asks questions (``ready()``,
``starting()``, ``wants_process()``, ``in_flight()``...) rather than reading the dicts.

Per worker the scheduler keeps what it sent and in which order: the running attempt and up to
``prefetch`` attempts queued in the worker's pipe (sent while it was busy, so the worker starts
the next one without a round trip). A worker answers every RUN exactly once, in order, so when a
reply comes the next queued attempt is the one now running. The exception is WITHDRAWN: while
another worker is idle, calls waiting behind an attempt that runs long are asked back, and the
worker confirms each one it had not started (see _rebalance). When a worker dies, or confirms a
withdrawal, those attempts go back to the head of the queue without counting an attempt.

A sticky session's calls run one at a time in submission order: only the first of them that has
not ended is queued for the session's worker (``Session.order``).
"""

from __future__ import annotations

import itertools
from asyncio import CancelledError
from collections import deque
from typing import Any

from pool._calls_state import (
    Call,
    CallState,
    Effects,
    Session,
    WorkerSlot,
    WorkerState,
)
from pool._deadlines import Deadline, Deadlines
from pool._prefetch import (
    PREFETCH_HORIZON,
    WITHDRAW_AFTER,
    take_back,
    to_withdraw,
    withdraw_due,
)
from pool._ratelimit import Bucket, RateLimits
from pool._sessions import Sessions, choose_worker, lost_error
from pool._timeouts import (
    KILL_REASON,
    still_valid,
    stopped,
    timeout_error,
)
from pool._workers import Workers
from sdk._errors import (
    PoolClosedError,
    TimeoutType,
    WorkerCrashedError,
)
from sdk._retry import final_error


class Scheduler:
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
        self.prefetch = prefetch
        self.cancel_grace = cancel_grace
        self.max_tasks = max_tasks_per_worker
        self.idle: deque[WorkerSlot] = deque()
        self.queue: deque[Call] = deque()
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
        self._slots = self.workers.slots()  # a live view: iterated on the hot path
        self.events = events
        self._seqs = itertools.count(1)
        self._now = 0.0  # the time of the event being handled, for paths that need it
        self._durations: dict[str, float] = {}  # moving average run time per activity name
        self._rates = RateLimits()

    @property
    def events(self) -> bool:
        """Whether the scheduler tells the event stream (``Effects.event``) what happens; the
        supervisor turns it on and off. Its parts keep a copy, for their hot paths."""
        return self._events

    @events.setter
    def events(self, on: bool) -> None:
        self._events = self.workers.events = on

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
            self._became_idle(slot, now)

    def _replace(self, now: float) -> None:
        """A worker is gone for good: a ready spare takes its place at once; start another."""
        spare = self.workers.take_spare()
        if spare is not None:
            self._became_idle(spare, now)
        self.workers.spawn(now)

    def close(self) -> None:
        """No more submissions; workers retire once everything in flight is done."""
        self.workers.close()
        self._maybe_retire_all()

    def cancel_all(self, now: float) -> None:
        """Close and fail everything outstanding with PoolClosedError; kill busy workers."""
        self.workers.close()
        self.sessions.forget_order()
        for call in list(self.calls.values()):
            self._finish(
                call, error=PoolClosedError("the pool was closed before this call finished")
            )
        for slot in list(self.workers.slots()):
            if slot.state in (WorkerState.BUSY, WorkerState.STARTING):
                self._worker_gone(
                    slot, now, kill=True, cause=None, respawn=False, reason="shutdown"
                )
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
        if call.defn.schedule_to_close_timeout is not None:
            call.schedule_deadline = now + call.defn.schedule_to_close_timeout
            self.deadlines.push(call.schedule_deadline, Deadline.SCHEDULE_TO_CLOSE, call, -1)
        if call.session is not None:
            lost = self.sessions.join(call)
            if lost is not None:
                self._finish(call, error=lost)
                return
        self._enqueue(call, now)

    def _enqueue(self, call: Call, now: float, front: bool = False) -> None:
        call.state = CallState.QUEUED
        call.gen += 1
        call.worker = None
        self._place(call, now, front)

    def _release(self, bucket: Bucket, now: float) -> None:
        """A rate limit's window moved on: parked calls go back to the head of their queues,
        in order; they are admitted (or parked again) when a worker takes them."""
        for call in reversed(bucket.release()):
            if call.state is CallState.QUEUED:  # not cancelled or timed out meanwhile
                self._place(call, now, True, pump=False)
        self._pump(now)

    def _place(self, call: Call, now: float, front: bool, pump: bool = True) -> None:
        if call.session is None:
            if front:
                self.queue.appendleft(call)
            else:
                self.queue.append(call)
            if pump:
                self._pump(now)
            return
        lost = self.sessions.lost_error_for(call)
        if lost is not None:
            self._finish(call, error=lost)
            return
        session = self.sessions[call.session]
        if session.order and session.order[0] is not call:
            return  # an earlier call of the session has not ended; _finish places this one
        bound = self.workers.get(session.worker) if session.worker is not None else None
        if bound is not None:
            slot = bound
        else:
            chosen = choose_worker(self.workers.slots())
            if chosen is None:  # every worker is gone: the pool is closing or broken
                error = self.workers.broken or PoolClosedError("no worker to bind to")
                self._finish(call, error=error)
                return
            slot = chosen
            self.sessions.bind(session, slot)
            if self._events:
                self.fx.event("session_bound", worker_id=slot.id, session_id=session.id)
        if front:
            slot.sticky.appendleft(call)
        else:
            slot.sticky.append(call)
        if pump and slot.state is WorkerState.IDLE:
            self._pump(now)

    # -- dispatch ------------------------------------------------------------------------
    def _pump(self, now: float) -> None:
        """Give work to idle workers, then prefetch onto busy ones."""
        idle = self.idle
        for _ in range(len(idle)):
            slot = idle.popleft()
            if slot.state is not WorkerState.IDLE:
                continue  # stale entry
            call = self._next_for(slot, now)
            if call is None:
                idle.append(slot)
                continue
            self._start(slot, call, now)
        if idle:
            self._rebalance(now)
        elif self.prefetch and self.queue and not self.workers.n_starting:
            self._prefetch(now)

    def _prefetch(self, now: float) -> None:
        """Queue work in busy workers' pipes, about ``PREFETCH_HORIZON`` seconds of it each.

        Depth adapts to how long the activity at the head of the queue takes: no-op calls fill
        the pipe (the worker never waits for a round trip), long calls get one spare at most.
        An activity with no history yet is not prefetched, so that a first batch of long calls
        spreads over the workers; nor is anything queued behind an attempt that has run for
        WITHDRAW_AFTER already. What still ends up behind a long call is withdrawn when a
        worker goes idle (see _rebalance).
        """
        max_tasks = self.max_tasks
        head = self.queue[0]
        if head.defn.rate_limit is not None:
            return  # rate-limited calls start only on idle workers (see _next_for)
        avg = self._durations.get(head.defn.name)
        if avg is None:
            return
        # inline rather than a call per worker: this runs on every submission and result
        depth = max(1, min(self.prefetch, int(PREFETCH_HORIZON / max(avg, 1e-6))))
        fresh = now - WITHDRAW_AFTER
        slots = self._slots
        progress = True
        while progress and self.queue:
            progress = False
            for slot in slots:
                if (
                    slot.state is WorkerState.BUSY
                    and len(slot.sent) < depth
                    and not slot.recycle
                    and not slot.sticky
                    and (max_tasks is None or slot.tasks_done + 1 + len(slot.sent) < max_tasks)
                    and (slot.running is None or slot.running.started_at > fresh)
                ):
                    if self.queue and self.queue[0].defn.rate_limit is not None:
                        return
                    call = self._pop_queue()
                    if call is None:
                        return
                    self._dispatch(slot, call)
                    call.state = CallState.SENT
                    slot.sent.append(call)
                    progress = True

    def _pop_queue(self) -> Call | None:
        queue = self.queue
        while queue:
            call = queue.popleft()
            if call.state is CallState.QUEUED:
                return call
        return None

    def _next_for(self, slot: WorkerSlot, now: float) -> Call | None:
        while True:
            while slot.sticky and slot.sticky[0].state is not CallState.QUEUED:
                slot.sticky.popleft()
            while self.queue and self.queue[0].state is not CallState.QUEUED:
                self.queue.popleft()
            sticky = slot.sticky[0] if slot.sticky else None
            plain = self.queue[0] if self.queue else None
            if sticky is not None and (plain is None or sticky.id < plain.id):
                call = slot.sticky.popleft()
            elif plain is not None:
                call = self.queue.popleft()
            else:
                return None
            limit = call.defn.rate_limit
            if limit is None:
                return call
            parked = self._rates.admit(call, call.defn.name, limit, now)
            if parked is None:
                return call
            if len(parked.waiting) == 1:  # the first parked: wake up when the window has room
                self.deadlines.push(parked.reopens, Deadline.RATE, parked, -1)

    def _dispatch(self, slot: WorkerSlot, call: Call) -> None:
        call.attempt += 1
        call.seq = next(self._seqs)
        call.gen += 1
        call.worker = slot.id
        call.withdrawing = False  # a WITHDRAW is about one dispatch (seq)
        self.fx.send_run(slot.id, call)

    def _start(self, slot: WorkerSlot, call: Call, now: float) -> None:
        """``call`` becomes the running attempt of an idle worker."""
        self._dispatch(slot, call)
        slot.state = WorkerState.BUSY
        self._running(slot, call, now)

    def _running(self, slot: WorkerSlot, call: Call, now: float) -> None:
        slot.running = call
        call.started_at = now
        gen = call.gen
        if call.cancelled:  # already answered; it only occupies the worker until it stops
            self.deadlines.push(now + self.cancel_grace, Deadline.CANCEL_GRACE, call, gen)
            return
        call.state = CallState.RUNNING
        defn = call.defn
        if defn.start_to_close_timeout is not None:
            self.deadlines.push(
                now + defn.start_to_close_timeout, Deadline.START_TO_CLOSE, call, gen
            )
        if defn.heartbeat_timeout is not None:
            call.heartbeat_held = call.heartbeat_parked = False
            call.heartbeat_deadline = now + defn.heartbeat_timeout
            self.deadlines.push(call.heartbeat_deadline, Deadline.HEARTBEAT, call, gen)
        if self._events:
            self._attempt_event("attempt_started", slot.id, call, call.attempt)

    def _attempt_event(
        self, kind: str, worker_id: int | None, call: Call, attempt: int, **more: Any
    ) -> None:
        """Tell the event stream about an attempt of ``call`` (called only with events on)."""
        self.fx.event(
            kind,
            worker_id=worker_id,
            activity=call.defn.name,
            call_id=call.id,
            attempt=attempt,
            **more,
        )

    def _became_idle(self, slot: WorkerSlot, now: float) -> None:
        """The running attempt ended; promote what was prefetched or take new work."""
        slot.running = None
        if slot.sent:
            self._running(slot, slot.sent.popleft(), now)
            if self.queue:
                self._pump(now)  # keep the pipe full: the worker should never wait for us
            elif self.idle and slot.sent:
                self._rebalance(now)  # what is left in this pipe waits behind a new attempt
            return
        # the common case tested inline: this runs after every attempt, recycling is rare
        if (slot.recycle or self.max_tasks is not None) and self._recycle(slot, now):
            return
        slot.state = WorkerState.IDLE
        if self.workers.retiring:  # closed, and this was the last call
            self.workers.retire_all()
            return
        call = self._next_for(slot, now)
        if call is not None:
            self._start(slot, call, now)
            if self.queue and self.prefetch:
                self._pump(now)
        else:
            self.idle.append(slot)
            self._rebalance(now)

    # -- withdrawal ----------------------------------------------------------------------
    def _rebalance(self, now: float) -> None:
        """A worker is idle: take back what waits in the pipes of workers whose running attempt
        has run WITHDRAW_AFTER, or arm a deadline for when it will have.

        So a call never waits behind a running one for more than WITHDRAW_AFTER (plus a round
        trip) while another worker is idle, however long that running call turns out to take.
        """
        if not any(s.state is WorkerState.IDLE for s in self.idle):
            return
        for slot in self._slots:
            due = withdraw_due(slot)
            if due is None:
                continue
            running = slot.running
            assert running is not None
            if now >= due:
                seqs = to_withdraw(slot)
                if seqs:
                    self.fx.send_withdraw(slot.id, seqs)
            elif slot.withdraw_armed != running.seq:
                slot.withdraw_armed = running.seq
                self.deadlines.push(due, Deadline.WITHDRAW, running, running.gen)

    def withdrawn(self, wid: int, seq: int, now: float) -> None:
        """The worker confirms it dropped RUN ``seq`` unstarted: the call may go elsewhere."""
        self._now = now
        slot = self.workers.get(wid)
        if slot is None or slot.state is WorkerState.DEAD:
            return
        found = take_back(slot, seq)
        if found is None:
            return
        call, promoted = found
        call.withdrawing = False
        call.attempt -= 1
        if call.state is not CallState.DONE:
            self._requeue_front(call, now)
            if self._events:
                self._attempt_event("attempt_withdrawn", wid, call, call.attempt + 1)
        if promoted:
            self._became_idle(slot, now)
        else:
            self._pump(now)

    def _recycle(self, slot: WorkerSlot, now: float) -> bool:
        """``slot`` is free: recycle it if it is due (see ``Workers.recycle_due``)."""
        if not self.workers.recycle_due(slot):
            return False
        if not self.workers.closed:
            self._replace(now)
        return True

    def request_recycle(self, wid: int, now: float, reason: str = "memory_recycle") -> None:
        """Recycle a worker (e.g. over its memory limit) as soon as it is free and unpinned."""
        slot = self.workers.request_recycle(wid, reason)
        if slot is not None:
            self._recycle(slot, now)

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
            self._attempt_event(
                "attempt_completed",
                wid,
                call,
                call.attempt,
                duration=now - call.started_at,
                latency=now - call.submitted_at,
            )
        if not call.cancelled:
            self._finish(call, value=value)
        else:
            call.gen += 1
        self._became_idle(slot, now)

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
            self._attempt_failed(call, exc, now)
        self._became_idle(slot, now)

    def heartbeat(self, wid: int, seq: int, details: Any, now: float) -> Call | None:
        """A heartbeat of the running attempt ``seq``; returns its call (None: stale)."""
        found = self.workers.current(wid, seq)
        if found is None:
            return None
        call = found[1]
        call.heartbeat_details = details
        if call.defn.heartbeat_timeout is not None:
            # the heap entry is re-pushed lazily when it fires early (see _fire)
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

    def _attempt_failed(self, call: Call, exc: BaseException, now: float) -> None:
        if self._events:
            self._attempt_event("attempt_failed", call.worker, call, call.attempt, error=exc)
        delay = call.policy.next_delay(exc, call.attempt)
        if delay is None:
            self._finish(call, error=self._final_error(call, exc))
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

    def _final_error(self, call: Call, exc: BaseException) -> BaseException:
        text = getattr(exc, "remote_traceback_text", None)
        return final_error(call.defn.name, call.attempt, exc, text, call.output)

    def _finish(self, call: Call, value: Any = None, error: BaseException | None = None) -> None:
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
            self._place(after, self._now, True)
        if not self.calls and self.workers.closed:
            self._maybe_retire_all()

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
            self._finish(call, error=cause)
            return
        slot = self.workers.get(call.worker) if call.worker is not None else None
        if call.session is not None and slot is not None and state is CallState.RUNNING:
            # sticky: the session's state in that worker is now unknown; the worker goes
            self._worker_gone(slot, now, kill=True, cause=cause, reason="cancel")
            return
        # The caller is answered now. The call stays the worker's running (or prefetched)
        # attempt in slot.running / slot.sent until the worker answers or is killed.
        self._finish(call, error=cause)
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
                self._recycle(slot, self._now)

    # -- workers leaving -----------------------------------------------------------------
    def worker_exited(self, wid: int, crash: WorkerCrashedError, now: float) -> None:
        """The process is gone (pipe EOF and reaped). Expected after retire/kill; else a crash."""
        self._now = now
        slot = self.workers.exited(wid, crash)
        if slot is not None:
            self._worker_gone(slot, now, kill=False, cause=crash, reason="crash")
            self.workers.remove(wid)

    def kill_worker(
        self, wid: int, cause: BaseException, now: float, reason: str = "protocol_error"
    ) -> None:
        """The shell found the worker unusable (a protocol error): kill it, fail its attempt."""
        slot = self.workers.get(wid)
        if slot is not None and slot.state is not WorkerState.DEAD:
            self._worker_gone(slot, now, kill=True, cause=cause, reason=reason)

    def _worker_gone(
        self,
        slot: WorkerSlot,
        now: float,
        *,
        kill: bool,
        cause: BaseException | None,
        reason: str,
        respawn: bool = True,
    ) -> None:
        """Take a worker out: its attempt fails with ``cause``; prefetched work goes back.
        ``reason`` names why in the event (see ``PoolEvent``)."""
        was = self.workers.gone(slot, kill=kill, cause=cause, reason=reason)
        running, slot.running = slot.running, None
        lost = self.sessions.lose(slot, lambda: cause or stopped(slot))
        # Every call of a lost session that has not ended fails now, in submission order: the
        # running one, those waiting their turn, one in backoff. None of them runs anywhere.
        for session in lost:
            for call in list(session.order):
                self._finish(call, error=lost_error(session))
        # prefetched attempts never started: back to the head of the queue, attempt not counted
        for call in reversed(slot.sent):
            call.attempt -= 1
            if call.state is not CallState.DONE:
                self._requeue_front(call, now)
                if self._events:
                    self._attempt_event("attempt_requeued", slot.id, call, call.attempt + 1)
        slot.sent.clear()
        slot.sticky.clear()  # each was its session's next call: failed with the session above
        if running is not None and running.state is not CallState.DONE:
            self._attempt_failed(running, cause or stopped(slot), now)
        if self._events:
            for sid in slot.sessions:
                self.fx.event("session_lost", worker_id=slot.id, session_id=sid, cause=cause)
        slot.sessions.clear()
        workers = self.workers
        if respawn and not workers.closed and workers.broken is None:
            if was is WorkerState.SPARE:
                workers.spawn(now)
            elif was is not WorkerState.RETIRING:
                self._replace(now)
        elif workers.broken is not None:
            self._fail_queue(workers.broken)
        self._pump(now)

    def _requeue_front(self, call: Call, now: float) -> None:
        call.state = CallState.QUEUED
        call.gen += 1
        call.worker = None
        self.queue.appendleft(call)

    def _fail_queue(self, exc: BaseException) -> None:
        self.sessions.forget_order()
        for call in list(self.calls.values()):
            if call.state in (CallState.QUEUED, CallState.BACKOFF):
                self._finish(call, error=exc)

    # -- deadlines -----------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When the supervisor's one timer must fire next (None: no deadline pending)."""
        return self.deadlines.next()

    def advance(self, now: float) -> None:
        """The clock reached ``now``: fire every deadline due."""
        self._now = now
        for kind, obj, gen in self.deadlines.due(now):
            self._fire(kind, obj, gen, now)

    def _fire(self, kind: Deadline, obj: Any, gen: int, now: float) -> None:
        if kind is Deadline.RATE:
            self._release(obj, now)
            return
        if kind is Deadline.WITHDRAW:
            self._rebalance(now)
            return
        if kind is Deadline.RETRY:
            if obj.state is CallState.BACKOFF:
                self._enqueue(obj, now)
            return
        if kind is Deadline.WORKER_START:
            slot: WorkerSlot = obj
            crash = self.workers.start_timed_out(slot)
            self._worker_gone(slot, now, kill=True, cause=crash, reason="start_timeout")
            return
        call: Call = obj
        if kind is Deadline.SCHEDULE_TO_CLOSE:
            self._timeout(call, TimeoutType.SCHEDULE_TO_CLOSE, now)
            return
        if kind is Deadline.CANCEL_GRACE:
            owner = self.workers.get(call.worker) if call.worker is not None else None
            if owner is not None and owner.running is call and owner.state is WorkerState.BUSY:
                self._worker_gone(owner, now, kill=True, cause=None, reason="cancel")
            return
        if call.state is not CallState.RUNNING:
            return
        if kind is Deadline.HEARTBEAT and call.heartbeat_held:
            call.heartbeat_parked = True  # entered() pushes it again
            return
        if kind is Deadline.HEARTBEAT and now < call.heartbeat_deadline:
            self.deadlines.push(call.heartbeat_deadline, Deadline.HEARTBEAT, call, gen)
            return
        self._timeout(
            call,
            TimeoutType.HEARTBEAT if kind is Deadline.HEARTBEAT else TimeoutType.START_TO_CLOSE,
            now,
        )

    def _timeout(self, call: Call, type: TimeoutType, now: float) -> None:
        exc = timeout_error(call, type)
        if call.state is CallState.SENT and call.worker is not None:
            # queued in a worker's pipe: answer now, and have the worker skip it
            call.cancelled = True
            self._finish(call, error=self._final_error(call, exc))
            self.fx.send_cancel(call.worker, call.seq)
            return
        if call.state is CallState.RUNNING and call.worker is not None:
            slot = self.workers.get(call.worker)
            assert slot is not None  # a running attempt's worker is known until it is reaped
            if type is TimeoutType.SCHEDULE_TO_CLOSE and call.session is None:
                # the call is over whatever the policy says; the worker must stop running it
                self._finish(call, error=self._final_error(call, exc))
            self._worker_gone(slot, now, kill=True, cause=exc, reason=KILL_REASON[type])
            return
        self._finish(call, error=self._final_error(call, exc))
