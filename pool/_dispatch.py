"""Which call runs on which worker: the queue, the idle workers, prefetch and withdrawal.

``Dispatcher`` is a part of ``pool._scheduler.Scheduler``, pure like it. It owns the queue of
calls waiting for any worker (a sticky call waits in its worker's ``slot.sticky`` instead), the
list of idle workers, the wire ids (seqs) and the rate-limit buckets (``pool._ratelimit``). It
moves an active worker between IDLE and BUSY as attempts start and end, and arms each
attempt's start-to-close and heartbeat deadlines when it starts.

Per worker it keeps what it sent and in which order: the running attempt and up to
``prefetch`` attempts queued in the worker's pipe (sent while it was busy, so the worker starts
the next one without a round trip). A worker answers every RUN exactly once, in order, so when a
reply comes the next queued attempt is the one now running. The exception is WITHDRAWN: while
another worker is idle, calls waiting behind an attempt that runs long are asked back, and the
worker confirms each one it had not started (see ``rebalance``). When a worker dies, or confirms
a withdrawal, those attempts go back to the head of the queue without counting an attempt.

This is the scheduler's hot path (submit -> dispatch -> result -> idle): a Python call more per
attempt, or per worker in a loop, shows in the pool's throughput. The tests that run on every
attempt are written inline where they are used, each saying so.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping

from pool._calls_state import (
    Call,
    CallState,
    Effects,
    Outcomes,
    WorkerSlot,
    WorkerState,
    attempt_event,
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
from pool._sessions import Sessions, choose_worker
from pool._workers import Workers
from sdk._errors import PoolClosedError


class Dispatcher:
    """The queue, the idle workers, and what each worker was sent (see the module docstring)."""

    def __init__(
        self,
        effects: Effects,
        outcomes: Outcomes,
        workers: Workers,
        sessions: Sessions,
        deadlines: Deadlines,
        durations: Mapping[str, float],
        *,
        prefetch: int,
        cancel_grace: float,
    ) -> None:
        self.fx = effects
        self.outcomes = outcomes  # a call that cannot be placed ends there
        self.workers = workers
        self._slots = workers.slots()  # a live view: iterated on the hot path
        self.sessions = sessions
        self.deadlines = deadlines
        self.durations = durations  # the scheduler's run-time averages, read for prefetch
        self.prefetch = prefetch
        self.cancel_grace = cancel_grace
        self.max_tasks = workers.max_tasks
        self.events = False  # kept current by Scheduler.events
        self.queue: deque[Call] = deque()  # non-sticky calls waiting (stale entries skipped)
        self.idle: deque[WorkerSlot] = deque()  # idle workers (stale entries skipped)
        self._seqs = itertools.count(1)
        self._rates = RateLimits()

    # -- placing calls -------------------------------------------------------------------
    def enqueue(self, call: Call, now: float, front: bool = False) -> None:
        """``call`` waits for a worker (new, or its backoff is over)."""
        call.state = CallState.QUEUED
        call.gen += 1
        call.worker = None
        self.place(call, now, front)

    def requeue_front(self, call: Call) -> None:
        """``call`` was sent but never started (its worker died, or gave it back): it goes
        first, without a pump (the caller pumps when it is done)."""
        call.state = CallState.QUEUED
        call.gen += 1
        call.worker = None
        self.queue.appendleft(call)

    def release(self, bucket: Bucket, now: float) -> None:
        """A rate limit's window moved on: parked calls go back to the head of their queues,
        in order; they are admitted (or parked again) when a worker takes them."""
        for call in reversed(bucket.release()):
            if call.state is CallState.QUEUED:  # not cancelled or timed out meanwhile
                self.place(call, now, True, pump=False)
        self.pump(now)

    def place(self, call: Call, now: float, front: bool, pump: bool = True) -> None:
        """Put a QUEUED ``call`` where a worker finds it: the queue, or its session's worker
        (binding the session to one first)."""
        if call.session is None:
            if front:
                self.queue.appendleft(call)
            else:
                self.queue.append(call)
            if pump:
                self.pump(now)
            return
        lost = self.sessions.lost_error_for(call)
        if lost is not None:
            self.outcomes.finish(call, error=lost)
            return
        session = self.sessions[call.session]
        if session.order and session.order[0] is not call:
            return  # an earlier call of the session has not ended; finishing it places this
        bound = self.workers.get(session.worker) if session.worker is not None else None
        if bound is not None:
            slot = bound
        else:
            chosen = choose_worker(self._slots)
            if chosen is None:  # every worker is gone: the pool is closing or broken
                error = self.workers.broken or PoolClosedError("no worker to bind to")
                self.outcomes.finish(call, error=error)
                return
            slot = chosen
            self.sessions.bind(session, slot)
            if self.events:
                self.fx.event("session_bound", worker_id=slot.id, session_id=session.id)
        if front:
            slot.sticky.appendleft(call)
        else:
            slot.sticky.append(call)
        if pump and slot.state is WorkerState.IDLE:
            self.pump(now)

    # -- dispatch ------------------------------------------------------------------------
    def pump(self, now: float) -> None:
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
            self.rebalance(now)
        elif self.prefetch and self.queue and not self.workers.n_starting:
            self._prefetch(now)

    def _prefetch(self, now: float) -> None:
        """Queue work in busy workers' pipes, about ``PREFETCH_HORIZON`` seconds of it each.

        Depth adapts to how long the activity at the head of the queue takes: no-op calls fill
        the pipe (the worker never waits for a round trip), long calls get one spare at most.
        An activity with no history yet is not prefetched, so that a first batch of long calls
        spreads over the workers; nor is anything queued behind an attempt that has run for
        WITHDRAW_AFTER already. What still ends up behind a long call is withdrawn when a
        worker goes idle (see rebalance).
        """
        max_tasks = self.max_tasks
        head = self.queue[0]
        if head.defn.rate_limit is not None:
            return  # rate-limited calls start only on idle workers (see _next_for)
        avg = self.durations.get(head.defn.name)
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
        # armed inline (what they mean when they fall due is pool._watchdog's): every attempt
        defn = call.defn
        if call.start_to_close is not None:
            self.deadlines.push(now + call.start_to_close, Deadline.START_TO_CLOSE, call, gen)
        if defn.heartbeat_timeout is not None:
            call.heartbeat_held = call.heartbeat_parked = False
            call.heartbeat_deadline = now + defn.heartbeat_timeout
            self.deadlines.push(call.heartbeat_deadline, Deadline.HEARTBEAT, call, gen)
        if self.events:
            attempt_event(self.fx, "attempt_started", slot.id, call, call.attempt)

    def became_idle(self, slot: WorkerSlot, now: float) -> None:
        """``slot``'s running attempt ended (or it just became active): promote what was
        prefetched, or take new work."""
        slot.running = None
        if slot.sent:
            self._running(slot, slot.sent.popleft(), now)
            if self.queue:
                self.pump(now)  # keep the pipe full: the worker should never wait for us
            elif self.idle and slot.sent:
                self.rebalance(now)  # what is left in this pipe waits behind a new attempt
            return
        # the common case tested inline: this runs after every attempt, recycling is rare
        if (slot.recycle or self.max_tasks is not None) and self.recycle(slot, now):
            return
        slot.state = WorkerState.IDLE
        if self.workers.retiring:  # closed, and this was the last call
            self.workers.retire_all()
            return
        call = self._next_for(slot, now)
        if call is not None:
            self._start(slot, call, now)
            if self.queue and self.prefetch:
                self.pump(now)
        else:
            self.idle.append(slot)
            self.rebalance(now)

    # -- lending (pool._lane) --------------------------------------------------------------
    def lendable(self, prefer: int | None) -> int | None:
        """An idle worker no session is bound to: ``prefer`` if it is one (the worker that ran
        the last call has its activity's module imported)."""
        free = [s.id for s in self.idle if s.state is WorkerState.IDLE and not s.sessions]
        if prefer in free:
            return prefer
        return free[0] if free else None

    def lend(self, wid: int) -> None:
        """Worker ``wid`` (``lendable``) is lent: nothing is sent to it until ``unlend`` or
        ``adopt``."""
        slot = self.workers.get(wid)
        assert slot is not None and slot.state is WorkerState.IDLE
        slot.state = WorkerState.LENT
        idle = self.idle  # out of the idle list now: unlend appends it again (no stale pile)
        for _ in range(len(idle)):
            entry = idle.popleft()
            if entry is not slot and entry.state is WorkerState.IDLE:
                idle.append(entry)

    def unlend(self, wid: int, now: float) -> None:
        """Worker ``wid`` is back, idle."""
        slot = self.workers.get(wid)
        if slot is not None and slot.state is WorkerState.LENT:
            self.became_idle(slot, now)

    def adopt(self, wid: int, call: Call, seq: int, started_at: float) -> None:
        """The lent worker ``wid`` runs ``call`` (its attempt 1, RUN ``seq``) since
        ``started_at``."""
        slot = self.workers.get(wid)
        assert slot is not None and slot.state is WorkerState.LENT
        call.attempt = 1
        call.seq = seq
        call.gen += 1
        call.worker = wid
        slot.state = WorkerState.BUSY
        self._running(slot, call, started_at)

    # -- workers coming and going --------------------------------------------------------
    def replace(self, now: float) -> None:
        """A worker is gone for good: a ready spare takes its place at once; start another."""
        spare = self.workers.take_spare()
        if spare is not None:
            self.became_idle(spare, now)
        self.workers.spawn(now)

    def recycle(self, slot: WorkerSlot, now: float) -> bool:
        """``slot`` is free: recycle it if it is due (``Workers.recycle_due``); True if so."""
        if not self.workers.recycle_due(slot):
            return False
        if not self.workers.closed:
            self.replace(now)
        return True

    # -- withdrawal ----------------------------------------------------------------------
    def rebalance(self, now: float) -> None:
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
            self.requeue_front(call)
            if self.events:
                attempt_event(self.fx, "attempt_withdrawn", wid, call, call.attempt + 1)
        if promoted:
            self.became_idle(slot, now)
        else:
            self.pump(now)
