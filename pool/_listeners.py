"""Who receives a pool's events: ``on_event``, ``pool.events()`` streams, progress displays.

``Listeners`` is owned by the pool; its list of receivers is read and changed on the loop
thread only (other threads reach it through the inbox), and the supervisor is told which
event kinds anybody receives, so that none are built when nobody listens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from typing import Any

from pool._events import EventStream, PoolEvent
from sdk._errors import PoolClosedError


class Listeners:
    """The receivers of one pool's events (see the module docstring)."""

    def __init__(
        self,
        on_event: Callable[[PoolEvent], None] | None,
        *,
        on_loop: Callable[[], bool],
        closed: Callable[[], bool],
        to_loop: Callable[[Callable[[], object]], None],
        set_sink: Callable[[Callable[[PoolEvent], None] | None, frozenset[str] | None], None],
    ) -> None:
        """``on_loop()``: is this the pool's loop thread; ``to_loop(action)`` runs an action
        there in order with calls (or raises ``PoolClosedError``); ``set_sink(emit, kinds)``
        tells the supervisor where events go (None: nowhere) and which kinds to build."""
        self.on_event = on_event
        self._on_loop, self._closed, self._to_loop = on_loop, closed, to_loop
        self._set_sink = set_sink
        self._listeners: list[tuple[Callable[[PoolEvent], None], frozenset[str] | None]] = []
        self._streams: list[EventStream] = []  # to end when the pool closes

    def emit(self, event: PoolEvent) -> None:
        """On the loop thread: hand an event to on_event and every listener of its kind."""
        if self.on_event is not None:
            self.on_event(event)
        for listener, kinds in self._listeners:
            if kinds is None or event.kind in kinds:
                listener(event)

    def stream(self, maxsize: int) -> EventStream:
        stream = EventStream(maxsize)
        self.listen_soon(stream.push)
        stream.on_close = lambda: self.unlisten_soon(stream.push)
        self._streams.append(stream)
        return stream

    def end_streams(self) -> None:
        for stream in self._streams:
            stream.end()
        self._streams.clear()

    def _listen(
        self, listener: Callable[[PoolEvent], None], kinds: frozenset[str] | None = None
    ) -> None:
        """On the loop thread: ``listener`` gets every event (of ``kinds``) from now on."""
        self._listeners = [*self._listeners, (listener, kinds)]  # a copy: emit may iterate
        self._update_sink()

    def listen_soon(
        self, listener: Callable[[PoolEvent], None], kinds: frozenset[str] | None = None
    ) -> None:
        """``_listen`` before any call made after this returns: at once on the loop (where a
        call goes straight to the supervisor), else in order through the inbox."""
        if self._on_loop():
            if self._closed():
                raise PoolClosedError("the pool is closed")
            self._listen(listener, kinds)
        else:
            self._to_loop(partial(self._listen, listener, kinds))

    def _unlisten(self, listener: Callable[[PoolEvent], None]) -> None:
        # == not is: each access to a bound method (progress.on_event) is a new object
        self._listeners = [(fn, k) for fn, k in self._listeners if fn != listener]
        self._update_sink()

    def unlisten_soon(self, listener: Callable[[PoolEvent], None]) -> None:
        try:
            self._to_loop(partial(self._unlisten, listener))
        except PoolClosedError:
            pass

    def _update_sink(self) -> None:
        """Tell the supervisor which events anybody receives: none makes none (the scheduler
        then builds no events at all); a few kinds make only those."""
        listeners = self._listeners
        if self.on_event is not None or any(k is None for _, k in listeners):
            self._set_sink(self.emit, None)
        elif listeners:
            self._set_sink(self.emit, frozenset().union(*(k for _, k in listeners if k)))
        else:
            self._set_sink(None, None)

    def tracked(self, results: Iterator[Any], total: int | None, *, pairs: bool) -> Iterator[Any]:
        """``results`` of a map, counted into a progress display while they are consumed. The
        display hears the pool's events from this call on: make it before the map's first
        window goes out, or a quick crash and its retry are missed."""
        from pool import _progress

        progress = _progress.Progress(total)
        self.listen_soon(progress.on_event, _progress.KINDS)
        return self._tracking(results, progress, pairs)

    def _tracking(self, results: Iterator[Any], progress: Any, pairs: bool) -> Iterator[Any]:
        from pool import _progress

        display = _progress.Display(progress)
        display.start()
        try:
            for outcome in results:
                value = outcome[1] if pairs else outcome
                progress.item(isinstance(value, BaseException))
                yield outcome
        except Exception:
            progress.item(True)
            raise
        finally:
            display.stop()
            self.unlisten_soon(progress.on_event)

    async def atracked(
        self, results: AsyncIterator[Any], total: int | None, *, pairs: bool
    ) -> AsyncIterator[Any]:
        """``tracked`` for ``amap``."""
        from pool import _progress

        progress = _progress.Progress(total)
        display = _progress.Display(progress)
        self.listen_soon(progress.on_event, _progress.KINDS)
        display.start()
        try:
            async for outcome in results:
                value = outcome[1] if pairs else outcome
                progress.item(isinstance(value, BaseException))
                yield outcome
        except Exception:
            progress.item(True)
            raise
        finally:
            display.stop()
            self.unlisten_soon(progress.on_event)
            aclose = getattr(results, "aclose", None)
            if aclose is not None:
                await aclose()

    def unlisten_after(
        self, results: Iterator[Any], listener: Callable[[PoolEvent], None]
    ) -> Iterator[Any]:
        try:
            yield from results
        finally:
            self.unlisten_soon(listener)
