"""The lazy ``map``: its input read a window at a time, its outcomes handed over as they come.

::

    consumer (its thread, or its task)            the pool's loop thread
    ----------------------------------            ----------------------
    MapRun.fill: read items, validate, pickle
        -> calls ----------- submit ----------->  scheduler -> worker -> ...
    MapRun.take: the next unit, if it is done  <-  _Unit.settle(value, exc): each call's waiter
        else sleep until a delivery wakes it       (wakes the consumer only if it waits on it)

The input is only ever touched by the consumer, in its own thread or task: an iterator that is
not thread-safe is fine, and an exception it raises is kept for the position it came at. At
most ``window`` items are read and not yet handed over (a chunk counts its items; at least one
chunk is always allowed), so an endless input works in bounded memory. Reading tops the window
up when a quarter of it is free, or at once when the consumer is about to sleep: a trip to the
loop carries many calls, and the workers never starve while the consumer waits.

A unit is one call (one item, or a chunk of items) or an item that failed before it was sent
(validation, pickling). The consumer owns ``MapRun``; the loop thread only calls a unit, which
stores the outcome, then (unordered) queues the unit, then wakes the consumer if it sleeps on
that unit (ordered) or on any (unordered). The stores come before the check of ``waiting``, and
the consumer sets ``waiting`` before it checks for an outcome, so no wake-up is lost.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from sdk._errors import ActivityInputError

# Calls a window holds by default, when the caller gives no buffersize: enough that a no-op map
# costs the caller no more than when it sent every item at once (about 15 us of CPU per item at
# 64 calls and up; 24 us at 16, when each top-up is a trip to the loop for a few calls), and few
# enough to bound the memory of an endless input. A chunk counts its k items: the window in
# items is this times chunksize.
DEFAULT_CALLS = 256
# ... and per worker, so that a large pool still has a few calls queued for each worker
CALLS_PER_WORKER = 4


def default_window(workers: int, chunksize: int) -> int:
    """The default ``buffersize`` (items) of a map over ``workers`` workers."""
    return max(DEFAULT_CALLS, CALLS_PER_WORKER * workers) * chunksize


def check_buffersize(buffersize: Any) -> int | None:
    if buffersize is None:
        return None
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError(f"buffersize must be an int >= 1 or None, got {buffersize!r}")
    if buffersize < 1:
        raise ValueError(f"buffersize must be an int >= 1 or None, got {buffersize!r}")
    return buffersize


class _Unit:
    """One call of a map (an item or a chunk of items), or an item that failed before it was
    sent; the call's waiter (``pool._waiters.Waiter``): the loop thread settles it once."""

    __slots__ = ("call", "count", "done", "exc", "run", "start", "value")

    def __init__(self, run: MapRun, start: int, count: int) -> None:
        self.run = run
        self.start = start  # index of its first item in the input
        self.count = count  # items it stands for
        self.call: Any = None  # the call, until it is answered (to cancel it); None: not sent
        self.value: Any = None
        self.exc: BaseException | None = None
        self.done = False

    def settle(self, value: Any, exc: BaseException | None, /) -> None:
        self.value, self.exc, self.call = value, exc, None
        self.done = True
        run = self.run
        completed = run.completed
        if completed is not None:
            completed.append(self)
        waiting = run.waiting
        if waiting is self or waiting is run:
            run.waiting = None  # one wake-up per sleep
            run.wake()


class MapRun:
    """The state of one map, owned by its consumer (see the module docstring).

    ``one(item, waiter)`` makes the call of one item; ``check(item)`` validates an item of a
    chunk (None: items are taken as they are) and ``chunk(items, waiter)`` makes a chunk's
    call (each raises ``ActivityInputError`` for a bad item, which becomes that item's
    outcome, unless ``stopped()`` says nothing can be sent any more (a sticky session
    closed); any other error ends the input there). ``submit`` and ``cancel`` hand lists of
    calls to the loop; ``wake_later`` is ``Supervisor.wake_later``.
    """

    def __init__(
        self,
        *,
        window: int,
        chunksize: int,
        ordered: bool,
        one: Callable[[Any, _Unit], Any],
        check: Callable[[Any], Any] | None,
        chunk: Callable[[list[Any], _Unit], Any],
        stopped: Callable[[], bool],
        submit: Callable[[list[Any]], None],
        cancel: Callable[[list[Any]], None],
        wake_later: Callable[[Callable[[], None]], None],
        loop: asyncio.AbstractEventLoop | None,
        threaded: bool,
    ) -> None:
        self.window = window
        self.chunksize = chunksize
        self.step = max(chunksize, window // 4)  # top up when this much of the window is free
        self.one, self.check, self.chunk = one, check, chunk
        self.stopped = stopped
        self.submit, self.cancel = submit, cancel
        self.wake_later = wake_later
        self.pool_loop = loop
        self.threaded = threaded  # consumed by a thread (map), else by a task (amap)
        self.ordered = ordered
        # ordered: every unit not yet handed over, in input order
        self.units: collections.deque[_Unit] = collections.deque()
        # unordered: the units sent and not yet handed over (done or not), and the queue of
        # those done (None once the map is closed: late answers of cancelled calls are dropped)
        self.flying: set[_Unit] = set()
        self.completed: collections.deque[_Unit] | None = None if ordered else collections.deque()
        self.inflight = 0  # items read and not yet handed over
        self.read = 0  # items read so far: the index of the next one
        self.buf: list[Any] = []  # the chunk being read (validated items)
        self.buf_start = 0  # the index of its first item
        self.calls: list[Any] = []  # made, not yet submitted
        self.over = False  # the input is finished (or failed, or the map was closed)
        self.error: BaseException | None = None  # what ended the input, raised at its place
        # who the consumer sleeps on: None, a unit (ordered), or this run (unordered: any)
        self.waiting: object = None
        self.cond = threading.Condition() if threaded else None  # a thread sleeps on it
        self.fut: asyncio.Future[None] | None = None  # a task consumer awaits it
        self.fut_loop: asyncio.AbstractEventLoop | None = None

    # -- reading the input (consumer) ------------------------------------------------------
    def should_fill(self) -> bool:
        if self.over:
            return False
        if self.inflight == 0:
            return True
        free = self.window - self.inflight
        if free < self.chunksize:
            return False
        return free >= self.step or not self.ready()

    def room(self) -> bool:
        """May another item be read now? (A chunk once started is read to its end.)"""
        if self.over:
            return False
        if self.buf:
            return True
        return self.window - self.inflight >= self.chunksize or self.inflight == 0

    def fill(self, it: Iterator[Any]) -> None:
        """Read what the window has room for (call when ``should_fill()``)."""
        try:
            if self.chunksize == 1:
                self._fill_items(it)
            else:
                self._fill_chunks(it)
        finally:
            self.flush()

    def _fill_chunks(self, it: Iterator[Any]) -> None:
        """``fill`` of a chunked map: a chunk at a time, its items checked in one pass (a bad
        one sends the chunk through ``add``, item by item, to cut it around the bad item)."""
        k, check = self.chunksize, self.check
        while self.room():
            start = self.read
            items: list[Any] = []
            error = None
            try:
                items.extend(itertools.islice(it, k))  # keeps what was read before a failure
            except Exception as exc:  # the input's own failure: raised at its place
                error = exc
            self.read = start + len(items)
            if items:
                try:
                    checked = items if check is None else [check(item) for item in items]
                except ActivityInputError:
                    self.read = start
                    for item in items:
                        self.add(item)
                    self._close_chunk()
                else:
                    self.buf, self.buf_start = checked, start
                    self._close_chunk()
            if error is not None or len(items) < k:
                self.end(error)
                return

    def _fill_items(self, it: Iterator[Any]) -> None:
        """``fill`` of a map of single items: ``add`` inlined (the hot path of a map)."""
        start = index = self.read
        n = max(self.window - self.inflight, 1)
        one, calls = self.one, self.calls
        keep = self.units.append if self.ordered else self.flying.add
        try:
            for item in itertools.islice(it, n):
                unit = _Unit(self, index, 1)
                try:
                    unit.call = call = one(item, unit)
                except ActivityInputError as exc:
                    if self.stopped():
                        self.over, self.error = True, exc
                        return
                    self._failed(index, 1, exc)
                    index += 1
                    continue
                except Exception as exc:  # e.g. the pool closed: nothing from here on is sent
                    self.over, self.error = True, exc
                    return
                calls.append(call)
                keep(unit)
                self.inflight += 1
                index += 1
        except Exception as exc:  # the input's own failure (the loop's body catches its own)
            self.over, self.error = True, exc
        else:
            if index - start < n:
                self.over = True
        finally:
            self.read = index

    async def afill(self, ait: Any) -> None:
        """``fill`` from an async iterator; stops early once an outcome is ready to hand over
        (a slow source does not hold back results that are in)."""
        try:
            while self.room():
                try:
                    item = await ait.__anext__()
                except StopAsyncIteration:
                    self.end(None)
                    break
                except Exception as exc:
                    self.end(exc)
                    break
                self.add(item)
                if not self.buf and self.ready():
                    break
        finally:
            self.flush()

    def add(self, item: Any) -> None:
        """Take one item of the input: make its call, or add it to the chunk being read."""
        index = self.read
        self.read = index + 1
        if self.chunksize == 1:
            unit = _Unit(self, index, 1)
            try:
                unit.call = self.one(item, unit)
            except ActivityInputError as exc:
                if self.stopped():
                    self.end(exc)
                else:
                    self._failed(index, 1, exc)
            except Exception as exc:  # e.g. the pool closed: nothing from here on is sent
                self.end(exc)
            else:
                self._sent(unit)
            return
        try:
            if self.check is not None:
                item = self.check(item)
        except ActivityInputError as exc:
            self._close_chunk()
            self._failed(index, 1, exc)
            return
        if not self.buf:
            self.buf_start = index
        self.buf.append(item)
        if len(self.buf) >= self.chunksize:
            self._close_chunk()

    def end(self, error: BaseException | None) -> None:
        """The input is over (``error``: it failed, here); the chunk being read goes first."""
        self._close_chunk()
        if not self.over:
            self.over = True
            self.error = error

    def _close_chunk(self) -> None:
        items = self.buf
        if not items:
            return
        self.buf = []
        start = self.buf_start
        unit = _Unit(self, start, len(items))
        try:
            unit.call = self.chunk(items, unit)
        except ActivityInputError as exc:  # cannot be pickled: each of its items fails
            if self.stopped():
                self.over, self.error = True, exc
            else:
                self._failed(start, len(items), exc)
        except Exception as exc:  # e.g. the pool closed: nothing from here on is sent
            self.over, self.error = True, exc
        else:
            self._sent(unit)

    def _sent(self, unit: _Unit) -> None:
        self.calls.append(unit.call)
        self.inflight += unit.count
        if self.ordered:
            self.units.append(unit)
        else:
            self.flying.add(unit)

    def _failed(self, start: int, count: int, exc: BaseException) -> None:
        unit = _Unit(self, start, count)
        unit.exc, unit.done = exc, True
        self.inflight += count
        if self.ordered:
            self.units.append(unit)
        elif self.completed is not None:
            self.completed.append(unit)

    def flush(self) -> None:
        """Hand the calls made to the loop, in one batch."""
        calls = self.calls
        if calls:
            self.calls = []
            self.submit(calls)

    # -- handing over (consumer) -----------------------------------------------------------
    def ready(self) -> bool:
        """Is an outcome ready to hand over?"""
        if self.ordered:
            units = self.units
            return bool(units) and units[0].done
        return bool(self.completed)

    def take(self) -> _Unit | None:
        """The next unit to hand over, or None (wait, or the end: see ``finished``)."""
        if self.ordered:
            units = self.units
            if units and units[0].done:
                unit = units.popleft()
                self.inflight -= unit.count
                return unit
            return None
        completed = self.completed
        if completed:
            unit = completed.popleft()
            self.flying.discard(unit)
            self.inflight -= unit.count
            return unit
        return None

    def finished(self) -> bool:
        """Nothing more will come (then ``error``, if set, is raised)."""
        return self.over and not self.units and not self.flying and not self.completed

    def close(self) -> None:
        """The consumer is done (or gone): read no more, cancel every call not answered."""
        self.over = True
        units = self.units if self.ordered else self.flying
        calls = [call for unit in units if (call := unit.call) is not None]
        self.units.clear()
        self.flying.clear()
        self.completed = None
        if calls:
            self.cancel(calls)

    # -- sleeping and waking ---------------------------------------------------------------
    def _target(self) -> object:
        return self.units[0] if self.ordered else self

    def wait(self) -> None:
        """Sleep (a thread) until ``ready()``."""
        cond = self.cond
        assert cond is not None
        with cond:
            self.waiting = self._target()
            while not self.ready():
                cond.wait()
            self.waiting = None

    async def await_ready(self) -> None:
        """Sleep (a task) until ``ready()``."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.fut, self.fut_loop = fut, loop
        self.waiting = self._target()
        try:
            if not self.ready():
                await fut
        finally:
            self.waiting = None
            self.fut = None

    def wake(self) -> None:
        """On the loop thread: a unit the consumer sleeps on is done."""
        if self.threaded:
            # after this event's writes, so the woken thread does not fight the loop for the GIL
            self.wake_later(self._notify)
            return
        fut, loop = self.fut, self.fut_loop
        if fut is None or loop is None:
            return
        if loop is self.pool_loop:
            if not fut.done():
                fut.set_result(None)
            return
        try:
            loop.call_soon_threadsafe(_settle, fut)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass

    def _notify(self) -> None:
        cond = self.cond
        assert cond is not None
        with cond:
            cond.notify()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def results(run: MapRun, it: Iterator[Any], return_exceptions: bool) -> Iterator[Any]:
    """The outcomes of ``run`` for a thread, in input order or as they finish.

    A generator, primed by the caller: its first ``next()`` reads the first window and yields
    None, so the work starts at the call of ``map`` and the ``finally`` runs even if the
    iterator is dropped unread. The loop inlines ``take`` (the hot path of a map).
    """
    ordered = run.ordered
    single = run.chunksize == 1
    queue = run.units if ordered else run.completed
    assert queue is not None
    window, step = run.window, run.step
    try:
        if run.should_fill():
            run.fill(it)
        yield None
        while True:
            if queue and (not ordered or queue[0].done):
                unit = queue.popleft()
                if not ordered:
                    run.flying.discard(unit)
                run.inflight -= unit.count
                if unit.exc is not None:
                    yield from _failures(unit, ordered, return_exceptions)
                elif single:
                    yield unit.value if ordered else (unit.start, unit.value)
                elif ordered:
                    yield from unit.value  # a chunk's results
                else:
                    yield from enumerate(unit.value, unit.start)
                if window - run.inflight >= step and not run.over:
                    run.fill(it)
            elif run.should_fill():  # about to wait: top the window up first
                run.fill(it)
            elif run.finished():
                error = run.error
                if error is not None:
                    run.error = None
                    raise error
                return
            else:
                run.wait()
    finally:
        run.close()


async def aresults(
    run: MapRun, source: Any, is_async: bool, return_exceptions: bool
) -> AsyncIterator[Any]:
    """``results`` for a task: the input may be an async iterator (``is_async``)."""
    ordered = run.ordered
    single = run.chunksize == 1
    try:
        while True:
            if run.should_fill():
                if is_async:
                    await run.afill(source)
                else:
                    run.fill(source)
            unit = run.take()
            if unit is not None:
                if unit.exc is not None:
                    for outcome in _failures(unit, ordered, return_exceptions):
                        yield outcome
                elif single:
                    yield unit.value if ordered else (unit.start, unit.value)
                else:
                    for outcome in unit.value if ordered else enumerate(unit.value, unit.start):
                        yield outcome
            elif run.finished():
                error = run.error
                if error is not None:
                    run.error = None
                    raise error
                return
            else:
                await run.await_ready()
    finally:
        run.close()


def _failures(unit: _Unit, ordered: bool, return_exceptions: bool) -> Iterator[Any]:
    """The outcome of each item of a failed unit: its error, raised unless returned."""
    exc = unit.exc
    assert exc is not None
    unit.exc = None  # the consumer has it: no cycle through its traceback
    if not return_exceptions:
        raise exc
    if ordered:
        yield from [exc] * unit.count
    else:
        yield from ((index, exc) for index in range(unit.start, unit.start + unit.count))
