"""What the pool tells its user about itself: events as they happen, and counters."""

from __future__ import annotations

import asyncio
import collections
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sdk._errors import ActivityError

if TYPE_CHECKING:
    from pool._calls_state import Call
    from pool._otel import AttemptSpans

log = logging.getLogger("activitypool")
# The events that end an attempt's span, and the outcome they give it (None: from the error).
_ATTEMPT_ENDS: dict[str, str | None] = {
    "attempt_completed": None,
    "attempt_failed": None,
    "attempt_requeued": "withdrawn",
    "attempt_withdrawn": "withdrawn",
}


@dataclass(frozen=True)
class PoolEvent:
    """One thing that happened in the pool, passed to ``Pool(on_event=...)``.

    ``kind`` is one of: worker_started, spare_ready, worker_exited, worker_killed, worker_recycled,
    attempt_started, attempt_completed, attempt_failed, attempt_requeued (prefetched onto a worker
    that died; back in the queue, attempt not counted), attempt_withdrawn (taken back unstarted
    from a busy worker's pipe for an idle worker; attempt not counted), retry_scheduled,
    session_bound, session_lost, session_closed.

    ``reason`` says why a worker ended, on every worker_killed, worker_exited and
    worker_recycled event: ``deadline`` (start-to-close timeout), ``heartbeat``,
    ``schedule_to_close``, ``cancel`` (a cancelled call the worker did not give up in time, or
    a cancelled sticky call), ``start_timeout`` (not ready in time), ``protocol_error``,
    ``crash`` (it died: exit, signal, the kernel's OOM killer), ``shutdown`` (the pool closed
    with cancel), ``memory_recycle`` or ``tasks_recycle``. Other events have None.
    """

    kind: str
    time: float
    worker_id: int | None = None
    pid: int | None = None
    activity: str | None = None
    call_id: int | None = None
    attempt: int | None = None
    session_id: str | None = None
    cause: BaseException | None = None
    error: BaseException | None = None
    delay: float | None = None
    duration: float | None = None
    tasks: int | None = None
    reason: str | None = None
    # attempt_completed: seconds from the call's submission to this result (as pool.stats())
    latency: float | None = None


_DEFAULTS = {
    name: f.default for name, f in PoolEvent.__dataclass_fields__.items() if name != "kind"
}


def make_event(kind: str, time: float, fields: dict[str, Any]) -> PoolEvent:
    """``PoolEvent(kind=kind, time=time, **fields)`` at a quarter of the cost: a frozen
    dataclass sets each field through ``object.__setattr__``; this fills its ``__dict__``
    at once (the supervisor makes one or two per call when events are on)."""
    event = object.__new__(PoolEvent)
    d = event.__dict__
    d.update(_DEFAULTS)
    d["kind"] = kind
    d["time"] = time
    d.update(fields)
    return event


class EventSink:
    """Where the scheduler's events go: ``on_event`` (only the ``kinds`` asked for; None: every
    kind) and the spans of traced attempts (``pool._otel``: made by the first traced call,
    ended by the attempt events). Owned by the supervisor; loop thread only."""

    __slots__ = ("_pid_of", "kinds", "on_event", "spans")

    def __init__(
        self,
        on_event: Callable[[PoolEvent], None] | None,
        pid_of: Callable[[int], int | None],
    ) -> None:
        """``pid_of(worker_id)``: the pid of that worker (None: it has none now)."""
        self.on_event = on_event
        self.kinds: frozenset[str] | None = None
        self.spans: AttemptSpans | None = None
        self._pid_of = pid_of

    @property
    def wanted(self) -> bool:
        """Whether anything takes events (else the scheduler builds none)."""
        return self.on_event is not None or self.spans is not None

    def emit(self, kind: str, fields: dict[str, Any]) -> None:
        """An event of the scheduler's, ``fields`` being ``PoolEvent``'s."""
        if self.spans is not None and kind in _ATTEMPT_ENDS:
            self.spans.end(fields["call_id"], fields.get("error"), _ATTEMPT_ENDS[kind])
        on_event = self.on_event
        if on_event is None or (self.kinds is not None and kind not in self.kinds):
            return
        wid = fields.get("worker_id")
        if wid is not None and "pid" not in fields:
            pid = self._pid_of(wid)
            if pid is not None:
                fields["pid"] = pid
        try:
            on_event(make_event(kind, time.time(), fields))
        except Exception:
            log.exception("on_event callback failed")

    def begin_span(self, call: Call, worker_id: int, pid: int) -> dict[str, str]:
        """Start the span of ``call``'s attempt being sent; its context, for the worker."""
        spans = self.spans
        if spans is None:
            from pool._otel import AttemptSpans

            spans = self.spans = AttemptSpans()
        defn = call.defn
        return spans.begin(
            call.id, defn.name, call.trace, call.attempt, worker_id, pid, call.session
        )

    def call_failed(self, call_id: int, exc: BaseException) -> None:
        """Call ``call_id`` failed for good: the span of an attempt still open ends with it."""
        if self.spans is not None:
            self.spans.end(call_id, exc.__cause__ if type(exc) is ActivityError else exc)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot from ``pool.stats()``. Latencies are submit-to-result, in seconds."""

    completed: int
    failed: int
    workers: int
    queued: int
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None


@dataclass
class Stats:
    """Counters kept by the supervisor (loop thread)."""

    n_completed: int = 0
    n_failed: int = 0
    # a bounded window keeps percentiles about recent calls and memory flat
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=10_000)
    )

    def completed(self, latency: float) -> None:
        self.n_completed += 1
        self.latencies.append(latency)

    def failed(self) -> None:
        self.n_failed += 1

    def add(self, n_completed: int, latencies: list[float]) -> None:
        """Calls completed elsewhere (the direct lane, ``pool._lane``)."""
        self.n_completed += n_completed
        self.latencies.extend(latencies)

    def snapshot(self, workers: int, queued: int) -> PoolStats:
        lat = sorted(self.latencies)
        p50 = p90 = p99 = None
        if len(lat) >= 2:
            q = statistics.quantiles(lat, n=100, method="inclusive")
            p50, p90, p99 = q[49], q[89], q[98]
        elif lat:
            p50 = p90 = p99 = lat[0]
        return PoolStats(self.n_completed, self.n_failed, workers, queued, p50, p90, p99)


class EventStream:
    """``pool.events()``: an async iterator of ``PoolEvent``, ending when the pool closes.

    The loop thread pushes (``push``, ``end``); one consumer, on any event loop, iterates. The
    consumer publishes its waiter before it checks the queue again, and the pusher appends
    before it looks for a waiter, so no wake-up is lost.
    """

    def __init__(self, maxsize: int) -> None:
        self._items: collections.deque[PoolEvent] = collections.deque()
        self._maxsize = maxsize
        self.dropped = 0  # events left out because the queue was full
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self.on_close: Callable[[], None] | None = None  # stops the pushes (set by the pool)

    # -- the loop thread -------------------------------------------------------------------
    def push(self, event: PoolEvent) -> None:
        if self._ended:
            return
        if len(self._items) >= self._maxsize:
            self.dropped += 1
            return
        self._items.append(event)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        loop = waiter.get_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            _settle(waiter)
        else:
            try:
                loop.call_soon_threadsafe(_settle, waiter)
            except RuntimeError:  # the consumer's loop is closed: nobody waits any more
                pass

    # -- the consumer ----------------------------------------------------------------------
    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> PoolEvent:
        while True:
            if self._items:
                return self._items.popleft()
            if self._ended:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            if self._items or self._ended:
                self._waiter = None
                continue
            try:
                await waiter
            finally:
                self._waiter = None

    async def aclose(self) -> None:
        """Stop receiving events; the iteration ends."""
        if self._ended and self.on_close is None:
            return
        self._ended = True
        self._items.clear()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
