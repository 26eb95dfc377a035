"""The direct lane: an idle worker lent to the threads that block in ``pool.run``.

Why. A blocking call through the loop thread waits on three wake-ups in series: the caller
wakes the loop, the loop wakes the worker, and the reply wakes the loop, which wakes the caller
(the reply spin saves one of them). When the pool has nothing else to do, the loop lends one
idle worker instead: a calling thread writes its RUN frame and reads the reply itself, two
wake-ups like a raw pipe ping-pong, while the loop thread sleeps.

Who owns what:

- ``Lane`` is shared by the loop thread and the calling threads. Its lock is held by the one
  calling thread that runs a call on the lent worker, or briefly by the loop thread to lend or
  take the worker back. While the worker is lent, the writes to its request pipe and the reads
  of its reply pipe (its ``FrameReader``) are the lock holder's: the loop thread does not read
  the reply pipe (``Channel.lend``), and sends nothing to the worker, which the scheduler holds
  as ``LENT``. Its output pipe stays the loop's.
- A call is the borrower's only while it waits up to ``window`` for a plain RESULT. Anything
  else (a failure, a heartbeat or log frame, a crash, a malformed frame, Ctrl-C, the window
  running out) and the borrower hands the call, the worker and what it read to the loop
  (``Lender.adopt``), which runs the call on as if it had dispatched it at that start time:
  deadlines, heartbeats, retries, cancellation and output capture as for any call.
- ``Lender`` is the loop's side (loop thread only): when to lend, taking back, adopting, and
  the exit of a lent worker, which waits until the worker is back.

What the lane does not take, so the loop keeps every feature: sticky, rate-limited and traced
calls, payloads over one atomic pipe write, and an activity that once ran past the window. The
loop lends only while it has no call, no session on that worker, no events, no fault rules and
no per-worker limit (task count or memory); it takes the worker back as soon as any of that
changes (``Supervisor.after``), at once when no caller holds it, else when that caller's call
ends, which ``window`` bounds.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from pool._calls_state import Call, run_meta
from pool._protocol import Frame, Kind, ProtocolError, encode_small
from pool._spin import poll_until

if TYPE_CHECKING:
    from pool._channel import Channel
    from pool._config import PoolConfig
    from pool._faults import FaultRules
    from pool._loop import Inbox
    from pool._scheduler import Scheduler

# The lane's RUN seqs: above any seq the scheduler hands out, so a stale reply is never
# mistaken for one of its attempts.
LANE_SEQ0 = 1 << 48

NOT_TAKEN: Any = object()  # the lane did not take the call: submit it as usual
HANDED_OVER: Any = object()  # the loop has the call now: wait for its waiter


class Lane:
    """A worker lent to the calling threads (or none), and what they did with it."""

    def __init__(
        self,
        window: float,
        spin: float,
        inbox: Inbox,
        adopt: Callable[..., None],
        give_back: Callable[[], None],
    ) -> None:
        """``window``: seconds a borrower waits for a reply before it hands the call to the
        loop; ``spin``: how long it waits on the CPU first, for an activity that usually
        answers within that (``reply_spin``); ``inbox``: how it hands things to the loop
        thread, in order; ``adopt`` and ``give_back``: what it posts there (``Lender``'s)."""
        self.window = window
        self.spin = spin
        self._took: dict[str, float] = {}  # moving average of a lane call's time, by activity
        self._inbox = inbox
        self._post = inbox.put
        self._lock = threading.Lock()
        self.channel: Channel | None = None  # the lent worker
        self.wanted = False  # the loop wants it back (set by the loop, read by borrowers)
        self._adopt = adopt
        self._give_back = give_back
        self._poll: Any = None  # a poll object on the lent worker's reply pipe
        self._seqs = itertools.count(LANE_SEQ0)
        # activities that ran past the window: they go through the loop. One miss per worker
        # is forgiven (a first call on a worker imports the activity's module).
        self.slow: set[str] = set()
        self._missed: set[tuple[int, str]] = set()
        # calls the lane answered, for the pool's stats (Lender.drain_stats)
        self.n_completed = 0
        self.latencies: deque[float] = deque(maxlen=10_000)

    # -- calling threads -----------------------------------------------------------------
    def run(self, call: Call) -> Any:
        """Run ``call`` (one that ``fits``) on the lent worker: its value, ``NOT_TAKEN`` or
        ``HANDED_OVER``."""
        lock = self._lock
        if not lock.acquire(False):
            return NOT_TAKEN  # another thread runs a call on it
        try:
            channel = self.channel
            if channel is None or self.wanted or self._inbox.pending:
                return NOT_TAKEN
            return self._run(channel, call)
        finally:
            lock.release()
            if self.wanted and self.channel is not None:
                self._post(self._give_back)  # the loop asked while we held it

    def fits(self, call: Call) -> bool:
        """Whether the lane takes calls like ``call`` (asked before ``run``): not sticky,
        rate-limited or traced, no out-of-band buffers, an activity that did not miss the
        window twice on one worker."""
        defn = call.defn
        return (
            call.session is None
            and call.trace is None
            and defn.rate_limit is None
            and defn.name not in self.slow
            and not call.payload[1]
        )

    def _run(self, channel: Channel, call: Call) -> Any:
        defn = call.defn
        body = call.payload[0]
        seq = next(self._seqs)
        meta = pickle.dumps(run_meta(call, attempt=1), protocol=5)
        frame = encode_small(Kind.RUN, seq, meta, body)
        if len(frame) > select.PIPE_BUF:
            return NOT_TAKEN  # more than one atomic write: the loop's batched writes do it
        started = time.monotonic()
        channel.lent_run = (seq, defn.name)
        try:
            written = os.write(channel.proc.to_worker, frame)
        except OSError:  # (full: it cannot be; gone: the loop sees its exit)
            written = 0
        except BaseException:  # Ctrl-C: perhaps sent; the loop cancels it as a running call
            self._hand_over(channel, call, seq, started, (), None)
            raise
        if written != len(frame):  # all or nothing (PIPE_BUF): nothing was sent
            channel.lent_run = None
            return NOT_TAKEN
        limit = min(
            self.window,
            call.start_to_close or math.inf,
            call.schedule_to_close or math.inf,
            defn.heartbeat_timeout or math.inf,
        )
        frames: list[Frame] | tuple[()] | None = ()
        error: ProtocolError | None = None
        took = self._took.get(defn.name)
        spin = self.spin if took is not None and took < self.spin else 0.0
        try:
            frames = self._wait(channel, started + limit, started + spin)
        except ProtocolError as exc:
            frames, error = exc.frames, exc
        except BaseException:  # Ctrl-C: the loop cancels it as any call (see Pool.run_call)
            self._hand_over(channel, call, seq, started, (), None)
            raise
        if frames is None:  # its reply pipe ended: the loop sees it exit
            frames = ()
        elif error is None and len(frames) == 1:
            reply = frames[0]
            if reply.kind is Kind.RESULT and reply.seq == seq and not _released(channel):
                try:
                    value = defn.validate_result(reply.load())
                except BaseException:  # the loop fails it, with the same error, as usual
                    pass
                else:
                    channel.lent_run = None
                    self.n_completed += 1
                    latency = time.monotonic() - started
                    self.latencies.append(latency)
                    self._took[defn.name] = (
                        latency if took is None else took + (latency - took) * 0.2
                    )
                    return value
        elif not frames and error is None:  # no answer within the window
            key = (channel.id, defn.name)
            if key in self._missed:
                self.slow.add(defn.name)
            self._missed.add(key)
        self._hand_over(channel, call, seq, started, frames, error)
        return HANDED_OVER

    def _wait(
        self, channel: Channel, end: float, spin_until: float
    ) -> list[Frame] | tuple[()] | None:
        """The frames the worker sent, once it sent any; () when ``end`` passed, None when its
        reply pipe ended. Until ``spin_until`` it polls without sleeping: a quick reply then
        costs this thread no wake-up (the loop's reply spin does the same, ``pool._spin``)."""
        poller = self._poll
        fd = channel.proc.from_worker
        reader = channel.reader
        poll_until(poller, spin_until)
        while True:
            left = end - time.monotonic()
            if left <= 0 or not poller.poll(math.ceil(left * 1000)):
                if time.monotonic() < end:
                    continue
                return ()
            try:
                frames = reader.read(fd)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if frames is None:
                return None
            if frames:
                return frames

    def _hand_over(
        self,
        channel: Channel,
        call: Call,
        seq: int,
        started: float,
        frames: list[Frame] | tuple[()],
        error: ProtocolError | None,
    ) -> None:
        self.channel = None
        self._post(partial(self._adopt, channel, call, seq, started, list(frames), error))

    # -- the loop thread -----------------------------------------------------------------
    def lend(self, channel: Channel) -> None:
        poller = select.poll()
        poller.register(channel.proc.from_worker, select.POLLIN)
        with self._lock:
            self._poll = poller
            self.wanted = False
            self.channel = channel

    def take_back(self) -> Channel | None:
        """The lent worker, if no caller holds it now; else None, and its holder will post
        ``give_back`` when its call ends (or hand the call over)."""
        self.wanted = True
        if not self._lock.acquire(False):
            return None
        try:
            channel, self.channel = self.channel, None
            self.wanted = False
            self._poll = None
            return channel
        finally:
            self._lock.release()

    def drain_stats(self) -> tuple[int, list[float]]:
        """The calls answered since the last drain, and their latencies."""
        with self._lock:
            n, self.n_completed = self.n_completed, 0
            lat = list(self.latencies)
            self.latencies.clear()
        return n, lat


def _released(channel: Channel) -> bool:
    """Whether reading the reply copied segments out that the worker must be told of (then
    the loop sends the RELEASE)."""
    peer = channel.reader.peer
    return peer is not None and bool(peer.released)


class LenderHost(Protocol):
    """What the lender needs of the supervisor (loop thread)."""

    faults: FaultRules | None

    def after(self) -> None: ...
    def replay_exit(self, channel: Channel) -> None: ...


class Lender:
    """The loop's side of the lane: lends, takes back, adopts; defers a lent worker's exit."""

    def __init__(
        self,
        scheduler: Scheduler,
        handles: dict[int, Channel],
        config: PoolConfig,
        inbox: Inbox,
        host: LenderHost,
    ) -> None:
        # (a borrower hands its call back well within a cancelling close's wait for workers)
        window = min(config.direct_run, config.shutdown_timeout / 2)
        self.lane = Lane(window, config.reply_spin, inbox, self.adopt, self.reclaim)
        self._sched = scheduler
        self._handles = handles
        self._host = host
        # what never changes of the pool and rules lending out
        self._enabled = (
            config.direct_run > 0
            and hasattr(select, "poll")  # (not on every platform: then the loop does it all)
            and config.max_tasks_per_worker is None
            and config.max_memory_per_worker is None
        )
        self.hint = False  # an event answered a thread blocked in pool.run: lend after it
        self.lent: Channel | None = None  # the worker out on loan (until back or adopted)
        self._exited: Channel | None = None  # its exit, reported while it was out
        self.last_worker: int | None = None  # the worker of the last call answered

    def allowed(self) -> bool:
        """Whether a worker may be lent (or stay lent) now."""
        return self._enabled and self._host.faults is None and not self._sched.wants_lent_back()

    def review(self) -> None:
        """At the end of an event: take the lent worker back if lending is now wrong, or lend
        one if the event answered a thread blocked in ``pool.run``."""
        if self.lent is not None:
            if not self.allowed():
                self.reclaim()
        elif self.hint:
            self.hint = False
            self.maybe_lend()

    def maybe_lend(self) -> None:
        """Lend an idle worker, if the pool has nothing else to do."""
        if self.lent is not None or not self.allowed():
            return
        wid = self._sched.lendable(self.last_worker)
        if wid is None:
            return
        channel = self._handles.get(wid)
        if channel is None or channel.eof or channel.gone or channel.writing or channel.in_pipe:
            return
        self._sched.lend(wid)
        channel.lend()
        self.lent = channel
        self.lane.lend(channel)

    def reclaim(self) -> None:
        """Take the lent worker back now if no caller holds it (else its holder gives it
        back when its call ends)."""
        if self.lent is None:
            return
        channel = self.lane.take_back()
        if channel is None:
            return
        self.lent = None
        channel.take_back([], None, time.monotonic())
        self._sched.unlend(channel.id, time.monotonic())
        self._replay(channel)
        self._host.after()

    def adopt(
        self,
        channel: Channel,
        call: Call,
        seq: int,
        started: float,
        frames: list[Frame],
        error: ProtocolError | None,
    ) -> None:
        """A borrower hands over ``call`` (RUN ``seq`` sent at ``started``) with its worker."""
        self.lent = None
        now = time.monotonic()
        self._sched.adopt(channel.id, call, seq, started, now)
        channel.take_back(frames, error, now)
        self._replay(channel)
        self._host.after()

    def exited(self, channel: Channel) -> bool:
        """``channel``'s worker exited: True if that waits until it is back from loan."""
        if channel is not self.lent:
            return False
        self.reclaim()
        if self.lent is None:
            return False
        self._exited = channel
        return True

    def _replay(self, channel: Channel) -> None:
        if self._exited is channel:
            self._exited = None
            self._host.replay_exit(channel)
