"""``PoolFuture``: a ``concurrent.futures.Future`` that makes its ``Condition`` only when needed.

A plain ``Future`` builds a ``threading.Condition`` (an ``RLock``, a deque and several bound
methods kept in its ``__dict__``) and two lists as it is created. With thousands of futures in
flight (``submit`` in a loop, then wait for all) those objects survive into the collector's
oldest generation and every full collection traces them again: that, not the pool, was most of
the cost of a burst of ``submit``s. A ``PoolFuture`` is one object until somebody has to *wait*
on it: ``result()`` of a finished future, ``done()``, ``cancelled()`` and setting the outcome
take no per-future lock at all.

Correctness (the lost wake-up): the Condition is created under one module-wide lock,
``_LAZY``, and the outcome of a future that has no Condition yet is set under that same lock,
after checking again that there is still none. So either the outcome is set first (the waiter,
creating the Condition later, sees a finished future and does not sleep), or the Condition
exists first (the setter sees it and takes the ordinary locked path, which notifies). Once a
Condition exists every change of state goes through it, exactly as in the base class; whatever
this class does not override (``wait()``, ``as_completed()``, ``set_running_or_notify_cancel``)
reaches the Condition through the ``_condition`` property, which creates it. ``_LAZY`` is held
for a few stores only, never while a callback runs.

Reading the state without a lock is what the base class does under its lock, made safe by the
order of the stores: the result (or exception) is stored before the state says FINISHED.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures._base import _STATE_TO_DESCRIPTION_MAP as _DESCRIPTION
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    LOGGER,
    PENDING,
    RUNNING,
)
from functools import partial
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")

# Guards the creation of every PoolFuture's Condition, and the setting of an outcome (or of a
# cancellation, or of a done callback) on a future that has none yet. Held for a few bytecodes.
_LAZY = threading.Lock()


def _new_lock_after_fork() -> None:
    # a fork while another thread held _LAZY would leave it held for good in the child, and
    # every PoolFuture there with it
    global _LAZY
    _LAZY = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)

_CANCELLED_STATES = (CANCELLED, CANCELLED_AND_NOTIFIED)


class _LazyList:
    """A per-instance list made on first access (a non-data descriptor: the instance attribute
    it sets shadows it from then on). Only for attributes read and written under the future's
    Condition, so two threads never race to make it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value: list[Any] = []
        setattr(obj, self.name, value)
        return value


class FutureOwner(Protocol):
    """What a PoolFuture tells when it is cancelled (the pool's side of it).

    It may also have ``wake_later(wake)``, which wakes a waiting thread later, once the loop
    thread's current event is done (see Supervisor.wake_later); without it, at once.
    """

    def cancel_call(self, call: Any, /) -> object: ...


def _notify_all(cond: threading.Condition) -> None:
    with cond:
        cond.notify_all()


class PoolFuture(Future[Any]):
    """The future of one pool call. Behaves as ``concurrent.futures.Future`` in every way.

    A ``cancel()`` that succeeds also asks the pool to cancel the call
    (``owner.cancel_call(call)``), before the done callbacks run.
    """

    # made by whoever first needs them (see _LazyList); the base class reads them under the
    # Condition only: wait()/as_completed() install and remove their waiters there
    _waiters = _LazyList()
    # appended to under the lock that guards the state (the shared empty tuple is replaced by a
    # list on the first append), iterated once the state is final
    _done_callbacks: Any = ()

    def __init__(self, owner: FutureOwner | None = None, call: Any = None) -> None:
        # no super().__init__(): that is what builds the Condition and the lists
        self._cond: threading.Condition | None = None
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        # a reference to the owner, not a bound method of it: one object fewer per future,
        # and no cycle (the owner does not keep its futures)
        self._owner = owner
        self._call = call

    def bind(self, call: Any) -> None:
        """The call this future is the waiter of (made after the future, which it carries)."""
        self._call = call

    # -- the Condition, made on demand -----------------------------------------------------
    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _LAZY:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    def _locked(self, change: Callable[[threading.Condition | None], _T]) -> _T:
        """``change(cond)`` with this future's state locked: under ``_LAZY`` with ``None``
        while the future has no Condition, else under its Condition (which it may notify)."""
        if self._cond is None:
            with _LAZY:
                if self._cond is None:
                    return change(None)
        cond = self._condition
        with cond:
            return change(cond)

    # -- reading: no lock when the answer is already there --------------------------------
    def done(self) -> bool:
        return self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED)

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def running(self) -> bool:
        return self._state == RUNNING

    def result(self, timeout: float | None = None) -> Any:
        # _result and _exception are stored before _state (under a lock), so a FINISHED read
        # here sees them
        if self._state == FINISHED:
            exc = self._exception
            if exc is None:
                return self._result
            del self  # the traceback keeps this frame: no cycle through the future
            try:
                raise exc
            finally:
                del exc
        if self._state in _CANCELLED_STATES:
            raise CancelledError()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        if self._state in _CANCELLED_STATES:
            raise CancelledError()
        return super().exception(timeout)

    # -- callbacks -------------------------------------------------------------------------
    def add_done_callback(self, fn: Callable[[Future[Any]], object]) -> None:
        def append(cond: threading.Condition | None) -> bool:
            if self._state in (FINISHED, CANCELLED, CANCELLED_AND_NOTIFIED):
                return False
            if self._done_callbacks:
                self._done_callbacks.append(fn)
            else:
                self._done_callbacks = [fn]
            return True

        if self._locked(append):
            return
        try:
            fn(self)
        except Exception:
            LOGGER.exception("exception calling callback for %r", self)

    def _invoke_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:
                LOGGER.exception("exception calling callback for %r", self)

    # -- changes of state ------------------------------------------------------------------
    def cancel(self) -> bool:
        def change(cond: threading.Condition | None) -> bool | None:
            state = self._state
            if state in (RUNNING, FINISHED):
                return False
            if state in _CANCELLED_STATES:
                return True
            self._state = CANCELLED
            if cond is not None:
                cond.notify_all()
            return None  # cancelled now

        already = self._locked(change)
        if already is not None:
            return already
        owner, call = self._owner, self._call
        self._call = None
        if owner is not None:
            try:
                owner.cancel_call(call)
            except Exception:
                LOGGER.exception("could not forward the cancellation of %r", self)
        self._invoke_callbacks()
        return True

    def set_result(self, result: Any) -> None:
        # the pool's loop thread answers every call through here: the common case (nobody
        # waiting yet) is one round of the global lock and three stores, inlined
        if self._cond is None:
            with _LAZY:
                if self._cond is None:
                    state = self._state
                    if state != PENDING and state != RUNNING:
                        raise InvalidStateError(f"{state}: {self!r}")
                    self._result = result
                    self._state = FINISHED
                    self._call = None  # answered: no cycle left between it and its call
                    done = True
                else:
                    done = False
            if done:
                if self._done_callbacks:
                    self._invoke_callbacks()
                return
        self._locked(lambda cond: self._finish(cond, result, None))
        self._call = None
        self._invoke_callbacks()

    def set_exception(self, exception: BaseException | None) -> None:
        self._locked(lambda cond: self._finish(cond, None, exception))
        self._call = None
        self._invoke_callbacks()

    def settle(self, value: Any, exc: BaseException | None, /) -> None:
        """The pool's answer (the ``Waiter`` protocol; on the loop thread). The future stayed
        PENDING until now, so its owner may have cancelled it at any time before: then the
        answer is dropped and the cancellation is notified for ``wait()``/``as_completed()``."""
        if exc is None:
            try:
                self.set_result(value)  # one lock round on the common path
            except InvalidStateError:
                self._notify_cancelled()
            return
        if isinstance(exc, asyncio.CancelledError):
            self.cancel()  # the canceller's own cancel() got here first in practice
            self._notify_cancelled()
            return
        try:
            self.set_exception(exc)
        except InvalidStateError:
            self._notify_cancelled()

    def _notify_cancelled(self) -> None:
        with contextlib.suppress(RuntimeError):  # already notified
            self.set_running_or_notify_cancel()

    def _finish(
        self, cond: threading.Condition | None, result: Any, exception: BaseException | None
    ) -> None:
        state = self._state
        if state != PENDING and state != RUNNING:
            raise InvalidStateError(f"{state}: {self!r}")
        self._result = result
        self._exception = exception
        self._state = FINISHED
        if cond is not None:  # wait() and as_completed() install their waiters under it
            if exception is None:
                for waiter in self._waiters:
                    waiter.add_result(self)
            else:
                for waiter in self._waiters:
                    waiter.add_exception(self)
            owner = self._owner
            wake_later = getattr(owner, "wake_later", None)
            if wake_later is None:
                cond.notify_all()
            else:  # a thread waits on this one: wake it when the loop thread lets go
                wake_later(partial(_notify_all, cond))

    def __repr__(self) -> str:
        # as the base class's, without taking the Condition (or making one) for a snapshot
        state = self._state
        text = f"<{type(self).__name__} at {id(self):#x} state={_DESCRIPTION.get(state, state)}"
        if state == FINISHED:
            if self._exception:
                return f"{text} raised {type(self._exception).__name__}>"
            return f"{text} returned {type(self._result).__name__}>"
        return text + ">"
