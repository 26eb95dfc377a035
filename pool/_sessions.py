"""Sticky-session bookkeeping: each session's calls in submission order, its worker, its loss.

``Sessions`` is owned by ``pool._scheduler.Scheduler`` and is the only code that changes a
``Session``. It does no I/O and reads no clock: the scheduler and its parts tell it what
happened (a call joined, a call ended, the dispatcher bound the session, the worker was lost
(``pool._loss``), the caller closed the session) and act on what it
answers (the session's next call to place, a session to drop, the error to fail calls with).
A session's calls run one at a time: only the head of ``Session.order`` may be queued for the
worker, so a call in backoff keeps its place and the next one waits until it has ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pool._calls_state import ACTIVE_OR_STARTING, Call, Session, WorkerSlot, WorkerState
from sdk._errors import PoolClosedError, StickySessionLostError


def lost_error(session: Session) -> StickySessionLostError:
    """The error a call of ``session`` fails with once the session lost its worker."""
    err = StickySessionLostError(
        f"sticky session {session.id} lost its worker {session.worker}", session_id=session.id
    )
    err.__cause__ = session.lost
    return err


def choose_worker(workers: Iterable[WorkerSlot]) -> WorkerSlot | None:
    """The worker a new session binds to: fewest sessions, then idle, then oldest."""
    best: WorkerSlot | None = None
    best_key: tuple[int, int, int] | None = None
    for slot in workers:
        if slot.state not in ACTIVE_OR_STARTING or slot.recycle:
            continue
        key = (len(slot.sessions), 0 if slot.state is WorkerState.IDLE else 1, slot.id)
        if best_key is None or key < best_key:
            best, best_key = slot, key
    return best


class Sessions:
    """The open sticky sessions, by id."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}

    def __getitem__(self, session_id: str) -> Session:
        return self._by_id[session_id]

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._by_id

    def join(self, call: Call) -> StickySessionLostError | None:
        """A sticky call was submitted: it takes its place in its session's order. Returns the
        error to fail it with when the session has lost its worker already."""
        assert call.session is not None
        session = self._by_id.get(call.session)
        if session is None:
            session = self._by_id[call.session] = Session(call.session)
        session.active += 1
        if session.lost is not None:
            return lost_error(session)
        session.order.append(call)
        return None

    def lost_error_for(self, call: Call) -> StickySessionLostError | None:
        """The error to fail ``call`` with if its session is gone or lost, else None."""
        assert call.session is not None
        session = self._by_id.get(call.session)
        if session is None:
            return lost_error(Session(call.session, lost=PoolClosedError("session closed")))
        if session.lost is not None:
            return lost_error(session)
        return None

    def bind(self, session: Session, slot: WorkerSlot) -> None:
        session.worker = slot.id
        slot.sessions.add(session.id)

    def ended(self, call: Call) -> tuple[Call | None, Session | None]:
        """``call`` is done. Returns the session's next call, now free to run (or None), and
        the session if it was closing and has no call left (the caller drops it)."""
        if call.session is None:
            return None, None
        session = self._by_id.get(call.session)
        if session is None:
            return None, None
        after = None
        session.active -= 1
        order = session.order
        if order and order[0] is call:
            order.popleft()
            if order and session.lost is None:
                after = order[0]
        elif call in order:  # cancelled or timed out while waiting its turn
            order.remove(call)
        return after, session if session.closing and session.active <= 0 else None

    def close(self, session_id: str) -> Session | None:
        """The caller closed the session. Returns it if no call of it is left (to drop)."""
        session = self._by_id.get(session_id)
        if session is None:
            return None
        session.closing = True
        return session if session.active <= 0 else None

    def forget(self, session: Session) -> None:
        self._by_id.pop(session.id, None)

    def lose(self, slot: WorkerSlot, cause: Callable[[], BaseException]) -> list[Session]:
        """Worker ``slot`` is gone: every session bound to it is lost, each with ``cause()``."""
        lost = [self._by_id[sid] for sid in slot.sessions if sid in self._by_id]
        for session in lost:
            session.lost = cause()
        return lost

    def forget_order(self) -> None:
        """Every waiting call is about to fail: none may be let through as the one before it
        ends (it would be sent to a worker only to fail)."""
        for session in self._by_id.values():
            session.order.clear()
