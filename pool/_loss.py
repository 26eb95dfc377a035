"""A worker leaves against the pool's will: what becomes of its attempts and its sessions.

``WorkerLoss`` is a part of ``pool._scheduler.Scheduler``, pure like it, and holds no state of
its own: it settles what a lost worker held. The worker's running attempt fails (and is retried
or ends, as its policy says); what was prefetched into its pipe never started, so it goes back
to the head of the queue without counting an attempt; every sticky session bound to it is lost,
and each of their calls not yet ended fails. Then a spare takes the worker's place, or a new one
is spawned, unless the pool is closing or broken (then every waiting call fails).

It is reached from a process that exited (``exited``), from the shell finding a worker unusable
(``kill``), and from the scheduler's own decisions to stop one (``gone``: a timeout, a cancel
that must not wait, a start that never finished, shutdown).
"""

from __future__ import annotations

from pool._calls_state import (
    CallState,
    Effects,
    Outcomes,
    WorkerSlot,
    WorkerState,
    attempt_event,
)
from pool._dispatch import Dispatcher
from pool._sessions import Sessions, lost_error
from pool._timeouts import stopped
from pool._workers import Workers
from sdk._errors import WorkerCrashedError


class WorkerLoss:
    """Settles what a worker held when it leaves (see the module docstring)."""

    def __init__(
        self,
        effects: Effects,
        outcomes: Outcomes,
        workers: Workers,
        dispatch: Dispatcher,
        sessions: Sessions,
    ) -> None:
        self.fx = effects
        self.outcomes = outcomes
        self.workers = workers
        self.dispatch = dispatch
        self.sessions = sessions
        self.events = False  # kept current by Scheduler.events

    def exited(self, wid: int, crash: WorkerCrashedError, now: float) -> None:
        """The process is gone (pipe EOF and reaped). Expected after retire/kill; else a crash."""
        slot = self.workers.exited(wid, crash)
        if slot is not None:
            self.gone(slot, now, kill=False, cause=crash, reason="crash")
            self.workers.remove(wid)

    def kill(self, wid: int, cause: BaseException, now: float, reason: str) -> None:
        """Kill worker ``wid`` if it is still there; its attempt fails with ``cause``."""
        slot = self.workers.get(wid)
        if slot is not None and slot.state is not WorkerState.DEAD:
            self.gone(slot, now, kill=True, cause=cause, reason=reason)

    def gone(
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
        finish = self.outcomes.finish
        lost = self.sessions.lose(slot, lambda: cause or stopped(slot))
        # Every call of a lost session that has not ended fails now, in submission order: the
        # running one, those waiting their turn, one in backoff. None of them runs anywhere.
        for session in lost:
            for call in list(session.order):
                finish(call, error=lost_error(session))
        # prefetched attempts never started: back to the head of the queue, attempt not counted
        for call in reversed(slot.sent):
            call.attempt -= 1
            if call.state is not CallState.DONE:
                self.dispatch.requeue_front(call)
                if self.events:
                    attempt_event(self.fx, "attempt_requeued", slot.id, call, call.attempt + 1)
        slot.sent.clear()
        slot.sticky.clear()  # each was its session's next call: failed with the session above
        if running is not None and running.state is not CallState.DONE:
            self.outcomes.attempt_failed(running, cause or stopped(slot), now)
        if self.events:
            for sid in slot.sessions:
                self.fx.event("session_lost", worker_id=slot.id, session_id=sid, cause=cause)
        slot.sessions.clear()
        workers = self.workers
        if respawn and not workers.closed and workers.broken is None:
            if was is WorkerState.SPARE:
                workers.spawn(now)
            elif was is not WorkerState.RETIRING:
                self.dispatch.replace(now)
        elif workers.broken is not None:
            self.outcomes.fail_waiting(workers.broken)
        self.dispatch.pump(now)
