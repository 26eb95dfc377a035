"""The worker registry: every worker slot the scheduler knows, by id, and its lifecycle.

``Workers`` is a part of ``pool._scheduler.Scheduler``, pure like it. It decides when a worker is
spawned, kept as a spare, activated, recycled, retired or taken out, asks the shell for that
through ``Effects`` (spawn, retire, kill) and tells the event stream. It sets the lifecycle
states (STARTING, SPARE, IDLE on activation, RETIRING, DEAD); what an active worker runs, and
its moves between IDLE and BUSY, are the dispatcher's (``pool._dispatch``), which is handed each
slot that becomes IDLE here. It also holds the two facts about the pool as a whole that follow
from its workers: ``closed`` (no call is taken and no worker replaced any more) and ``broken``
(workers keep dying before their handshake).

The shell asks the scheduler, never this registry: ``live_workers()``, ``starting()``,
``wants_process()``.
"""

from __future__ import annotations

import itertools
from collections.abc import ValuesView

from pool._calls_state import ACTIVE, Call, Effects, WorkerSlot, WorkerState
from pool._deadlines import Deadline, Deadlines
from pool._timeouts import start_timeout_error
from sdk._errors import WorkerCrashedError

# After this many workers in a row die before their handshake, the pool stops respawning and
# fails what is queued: a broken environment must surface as an error, not a fork loop.
MAX_STARTUP_FAILURES = 3


class Workers:
    """The worker slots by id, the count still starting, and the start-failure streak."""

    def __init__(
        self,
        effects: Effects,
        deadlines: Deadlines,
        *,
        size: int,
        spares: int,
        start_timeout: float,
        max_tasks: int | None,
    ) -> None:
        self.fx = effects
        self.deadlines = deadlines  # the scheduler's heap: WORKER_START entries go there
        self.size = size
        self.spares = spares
        self.start_timeout = start_timeout
        self.max_tasks = max_tasks
        self.events = False  # kept current by Scheduler.events
        self._slots: dict[int, WorkerSlot] = {}
        self._ids = itertools.count(1)
        # spawned, handshake not done; read by the dispatcher (no prefetch until all are up)
        self.n_starting = 0
        self._start_failures = 0  # workers in a row that died before their handshake
        self.closed = False  # no more calls: no worker is replaced from now on
        self.retiring = False  # closed and no call left: every worker retires once free
        self.broken: BaseException | None = None  # set when workers keep failing to start

    # -- questions -----------------------------------------------------------------------
    def __len__(self) -> int:
        """Slots not yet removed (a dead worker's slot goes once its process is reaped)."""
        return len(self._slots)

    def get(self, wid: int) -> WorkerSlot | None:
        return self._slots.get(wid)

    def slots(self) -> ValuesView[WorkerSlot]:
        """Every slot, in the order the workers were spawned (a live view)."""
        return self._slots.values()

    def current(self, wid: int, seq: int) -> tuple[WorkerSlot, Call] | None:
        """Worker ``wid`` and its running attempt, if that attempt is ``seq`` (else a stale
        reply: None)."""
        slot = self._slots.get(wid)
        if slot is None or slot.running is None or slot.running.seq != seq:
            return None
        return slot, slot.running

    def live(self) -> int:
        return sum(1 for w in self._slots.values() if w.state is not WorkerState.DEAD)

    def starting(self) -> int:
        return sum(1 for w in self._slots.values() if w.state is WorkerState.STARTING)

    def wants_process(self, wid: int) -> bool:
        slot = self._slots.get(wid)
        return slot is not None and slot.state is WorkerState.STARTING

    # -- coming -------------------------------------------------------------------------
    def start(self, now: float) -> None:
        for _ in range(self.size + self.spares):
            self.spawn(now)

    def spawn(self, now: float) -> None:
        slot = WorkerSlot(next(self._ids))
        self._slots[slot.id] = slot
        self.n_starting += 1
        self.deadlines.push(now + self.start_timeout, Deadline.WORKER_START, slot, slot.gen)
        self.fx.spawn(slot.id)

    def ready(self, wid: int) -> WorkerSlot | None:
        """Worker ``wid`` finished its handshake. Returns its slot, now IDLE, for the
        dispatcher to give work to; None when it is kept as a spare (the pool has its size
        already) or was not expected."""
        slot = self._slots.get(wid)
        if slot is None or slot.state is not WorkerState.STARTING:
            return None
        self._start_failures = 0
        self.n_starting -= 1
        slot.gen += 1
        active = sum(1 for w in self._slots.values() if w.state in ACTIVE)
        if active >= self.size:
            slot.state = WorkerState.SPARE
            if self.events:
                self.fx.event("spare_ready", worker_id=wid)
            return None
        self._activate(slot)
        return slot

    def _activate(self, slot: WorkerSlot) -> None:
        slot.state = WorkerState.IDLE
        if self.events:
            self.fx.event("worker_started", worker_id=slot.id)

    def take_spare(self) -> WorkerSlot | None:
        """A worker is gone for good: a ready spare, if any, takes its place (now IDLE, for the
        dispatcher). The caller spawns the replacement of whichever worker left."""
        for slot in self._slots.values():
            if slot.state is WorkerState.SPARE:
                self._activate(slot)
                return slot
        return None

    # -- going --------------------------------------------------------------------------
    def request_recycle(self, wid: int, reason: str) -> WorkerSlot | None:
        """Mark worker ``wid`` to be recycled once it is free and unpinned. Returns its slot
        if it is idle (to be recycled now), else None."""
        slot = self._slots.get(wid)
        if slot is None or slot.state in (WorkerState.DEAD, WorkerState.SPARE):
            return None
        if not slot.recycle:
            slot.recycle_reason = reason
        slot.recycle = True
        return slot if slot.state is WorkerState.IDLE else None

    def recycle_due(self, slot: WorkerSlot) -> bool:
        """``slot`` is free: retire it if it is to be recycled (its task budget is spent, or it
        was asked to) and no session is pinned to it. True if it retires; the caller replaces
        it unless the pool is closed."""
        if self.max_tasks is not None and slot.tasks_done >= self.max_tasks and not slot.recycle:
            slot.recycle = True
            slot.recycle_reason = "tasks_recycle"
        if not slot.recycle or slot.sessions:
            return False
        slot.state = WorkerState.RETIRING
        slot.gen += 1
        if self.events:
            self.fx.event(
                "worker_recycled",
                worker_id=slot.id,
                tasks=slot.tasks_done,
                reason=slot.recycle_reason,
            )
        self.fx.retire(slot.id)
        return True

    def close(self) -> None:
        """No more calls: workers that leave from now on are not replaced."""
        self.closed = True

    def retire_all(self) -> None:
        """The pool is closed and no call is left: every worker not busy retires, and each
        busy one as soon as it is free (``retiring``)."""
        self.retiring = True
        for slot in self._slots.values():
            if slot.state in (WorkerState.IDLE, WorkerState.STARTING, WorkerState.SPARE):
                slot.state = WorkerState.RETIRING
                slot.gen += 1
                self.fx.retire(slot.id)

    def gone(
        self, slot: WorkerSlot, *, kill: bool, cause: BaseException | None, reason: str
    ) -> WorkerState:
        """Take ``slot`` out (killing its process if ``kill``); returns the state it was in.
        What it ran or held is the caller's to settle (``pool._loss``)."""
        was = slot.state
        if was is WorkerState.STARTING:
            self.n_starting -= 1
        slot.state = WorkerState.DEAD
        slot.gen += 1
        if kill:
            self.fx.kill(slot.id)
        if self.events:
            self.fx.event(
                "worker_killed" if kill else "worker_exited",
                worker_id=slot.id,
                cause=cause,
                reason=reason,
            )
        return was

    def exited(self, wid: int, crash: WorkerCrashedError) -> WorkerSlot | None:
        """The process of ``wid`` is gone. Expected after a retire or a kill: its slot is
        removed and None returned. Otherwise its slot, for the caller to take out and then
        ``remove``; a worker that dies before its handshake counts towards ``broken``."""
        slot = self._slots.get(wid)
        if slot is None:
            return None
        if slot.state is WorkerState.DEAD or slot.state is WorkerState.RETIRING:
            slot.state = WorkerState.DEAD
            del self._slots[wid]
            return None
        if slot.state is WorkerState.STARTING and self._start_failed():
            self.broken = WorkerCrashedError(
                f"workers keep dying before they are ready (last: {crash})",
                exitcode=crash.exitcode,
                signal=crash.signal,
                pid=crash.pid,
                worker_id=wid,
            )
        return slot

    def start_timed_out(self, slot: WorkerSlot) -> WorkerCrashedError:
        """``slot`` did not finish its handshake in time: the error to take it out with (it
        counts towards ``broken``)."""
        crash = start_timeout_error(slot, self.start_timeout)
        if self._start_failed():
            self.broken = crash
        return crash

    def _start_failed(self) -> bool:
        self._start_failures += 1
        return self._start_failures >= MAX_STARTUP_FAILURES

    def remove(self, wid: int) -> None:
        del self._slots[wid]
