"""The supervisor's event loop: its thread, the way in (the inbox), the way out (wakes), its timer.

``LoopThread`` runs a private (uvloop) loop on the ``activitypool-supervisor`` thread for a
``with Pool`` block. ``Inbox`` is the one way other threads hand work to the loop thread: calls
and actions wait in a deque, and a single loop callback drains everything that arrived
meanwhile, in order. ``Wakes`` holds the callers' threads to wake once the loop thread's event
is done, and ``DeadlineTimer`` is the one loop timer, armed for the earliest deadline. All
three are the supervisor's, made and run on the loop thread; any thread may ``Inbox.put``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from pool._calls_state import Call
from pool._fds import StdioReserved

log = logging.getLogger("activitypool")


def new_loop() -> asyncio.AbstractEventLoop:
    with StdioReserved():  # the loop's own fds (epoll, wake-up) are the pool's, never stdio
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()


def on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Is this code running on ``loop``'s thread, inside it?"""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class LoopThread:
    """A private event loop running on its own daemon thread until ``stop``."""

    def __init__(self) -> None:
        self.loop = new_loop()
        started = threading.Event()
        loop = self.loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self.thread = threading.Thread(target=run, name="activitypool-supervisor", daemon=True)
        self.thread.start()
        started.wait()

    def stop(self) -> None:
        """Stop the loop, join the thread, close the loop (from any other thread)."""
        loop = self.loop
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        self.thread.join()
        loop.close()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop thread and return what it returns (from another thread).
        A loop that is going away cannot answer: ``fn`` then runs here."""
        loop = self.loop
        if not loop.is_running():
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(call)
            return fut.result(timeout=5.0)
        except (RuntimeError, concurrent.futures.TimeoutError):  # the loop is going away
            return fn()


class Submitter(Protocol):
    """Where the inbox delivers calls (the supervisor)."""

    def submit_many(self, calls: list[Call], /) -> None: ...


class Inbox:
    """Calls and actions on their way to the loop thread, in the order they were put.

    One loop callback drains all that arrived meanwhile, so a burst of submissions costs one
    wake-up of the loop and one batch, not one of each per call. Lock-free: the flag is
    cleared before draining, so an item put after the drain's last pop always finds it
    cleared and schedules another drain.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sink: Submitter) -> None:
        self._loop = loop
        self._sink = sink
        self._items: collections.deque[Call | Callable[[], object]] = collections.deque()
        self._armed = False
        self._draining = False  # in drain (see pending)
        self._soon = loop.call_soon_threadsafe

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Call | Callable[[], object]) -> None:
        """Hand a call (or an action) to the loop thread (from any thread, the loop's too)."""
        self._items.append(item)
        if self._armed:
            return
        self._armed = True
        try:
            if on_loop(self._loop):
                # never straight into the scheduler: we may be inside it (a Future's done
                # callback runs while the scheduler answers a call)
                self._loop.call_soon(self.drain)
            else:
                self._soon(self.drain)
        except RuntimeError:  # the loop is closed: nothing will run it
            self._armed = False

    @property
    def pending(self) -> bool:
        """Whether anything put is not yet delivered (any thread may ask): a call that
        bypasses the inbox (``pool._lane``) must wait for what its thread put before."""
        return bool(self._items) or self._draining

    def drain(self) -> None:
        """On the loop thread: deliver what other threads handed over, in their order."""
        self._armed = False
        self._draining = True  # before the first pop: ``pending`` stays true throughout
        items, sink = self._items, self._sink
        batch: list[Call] = []
        try:
            while items:
                item = items.popleft()
                if isinstance(item, Call):
                    batch.append(item)
                    continue
                if batch:
                    sink.submit_many(batch)
                    batch = []
                item()
            if batch:
                sink.submit_many(batch)
        finally:
            self._draining = False


class Wakes:
    """Callers' threads to wake once the loop thread's current event is done (``later``).

    A thread woken mid-event wants the GIL while the loop thread still works and then writes:
    each such hand-off costs both a switch. Woken after the writes, it runs while the loop
    thread waits in the loop. The supervisor ``run``s them at the end of each event, once its
    frames are written; a loop callback is the safety net.
    """

    __slots__ = ("_loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.pending: list[Callable[[], None]] = []

    def later(self, wake: Callable[[], None]) -> None:
        """Run ``wake`` (it wakes a caller's thread) at the end of this event."""
        if not self.pending:
            if self._loop.is_closed():
                wake()
                return
            self._loop.call_soon(self.run)
        self.pending.append(wake)

    def run(self) -> None:
        wakes, self.pending = self.pending, []
        for wake in wakes:
            try:
                wake()
            except Exception:
                log.exception("waking a caller failed")


class DeadlineTimer:
    """The one loop timer, armed for the earliest deadline; ``on_due`` runs when it fires."""

    __slots__ = ("_at", "_handle", "_loop", "_on_due")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_due: Callable[[], None]) -> None:
        self._loop = loop
        self._on_due = on_due
        self._handle: asyncio.TimerHandle | None = None
        self._at = 0.0  # when the armed timer fires

    def arm(self, when: float | None) -> None:
        """Fire at ``when`` (monotonic clock) at the latest; None: nothing is due."""
        if when is None:
            return  # an armed timer may fire for nothing; cheaper than cancelling per call
        handle = self._handle
        if handle is not None:
            if self._at <= when:
                return  # it fires first; on_due re-arms
            handle.cancel()
        self._at = when
        # the loop's timers have millisecond resolution: round up, never wake before the deadline
        delay = math.ceil(max(0.0, when - time.monotonic()) * 1000) / 1000
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._on_due()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
