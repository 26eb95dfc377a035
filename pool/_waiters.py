"""How the loop thread reaches a caller: one ``Waiter`` protocol for every kind of caller.

A ``Call`` carries its waiter from the moment it is made (``Pool`` passes it to the call's
constructor, one path for every kind). The scheduler answers a call exactly once, through the
supervisor's ``resolve``/``reject``, which call ``waiter.settle(value, exc)`` on the loop thread.
``exc`` is None for a result; an ``asyncio.CancelledError`` means the call was cancelled.

The kinds:

- ``AsyncWaiter``: ``await pool.execute()`` on the pool's own loop (an ``asyncio.Future``);
- ``BlockingWaiter``: ``pool.run()`` from another thread (a lock the caller sleeps on);
- ``pool._futures.PoolFuture``: ``pool.submit()`` (a ``concurrent.futures.Future``);
- ``pool._map._Unit``: one call of a ``map`` (stores the outcome, wakes the consumer).

``settle`` runs on the loop thread, inside the scheduler's answer: it must not call back into
the scheduler. A waiter that wakes another thread does so through ``wake_later`` (see
``Supervisor.wake_later``), once the event's frames are written, so the woken thread does not
fight the loop thread for the GIL while that thread still works.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Protocol


class Waiter(Protocol):
    """The caller's end of one call. ``settle`` is called once, on the loop thread."""

    def settle(self, value: Any, exc: BaseException | None, /) -> None: ...


class AsyncWaiter:
    """A caller awaiting on the pool's own loop: settles its ``asyncio.Future``."""

    __slots__ = ("fut",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.fut: asyncio.Future[Any] = loop.create_future()

    def settle(self, value: Any, exc: BaseException | None, /) -> None:
        fut = self.fut
        if fut.done():  # the awaiting task was cancelled first
            return
        if exc is None:
            fut.set_result(value)
        elif isinstance(exc, asyncio.CancelledError):
            fut.cancel()
        else:
            fut.set_exception(exc)


class BlockingWaiter:
    """A thread blocked in ``pool.run()``: it sleeps on a lock that ``settle`` releases.

    A bare lock, not an ``Event`` (a ``Condition``, a lock and a deque): one futex to sleep
    on and one to wake. The release is deferred to ``wake_later``: the woken thread then
    finds the GIL free instead of waking only to wait for it.
    """

    __slots__ = ("done", "exc", "lock", "value", "wake_later")

    def __init__(self, wake_later: Callable[[Callable[[], None]], None]) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.done = False
        self.value: Any = None
        self.exc: BaseException | None = None
        self.wake_later = wake_later

    def settle(self, value: Any, exc: BaseException | None, /) -> None:
        if self.done:
            return
        self.value, self.exc, self.done = value, exc, True
        self.wake_later(self.lock.release)

    def wait(self) -> Any:
        """Sleep until settled; return the value or raise the error."""
        self.lock.acquire()
        exc = self.exc
        if exc is not None:
            self.exc = None  # no cycle through the traceback's frame
            try:
                raise exc
            finally:
                del exc
        return self.value
