"""The direct lane: a blocking caller's thread writes its RUN frame to an idle worker itself.

``pool.run()`` from a plain thread would otherwise hand its call to the loop thread (a wake-up
of the loop, and the two threads passing the GIL), and only then would the loop write the RUN:
two hand-offs in series before the worker even starts. When the pool is quiet, the loop thread
instead *lends* one idle worker to the lane (``Scheduler.lend``: the slot is ``LENT``, its
next ``seq`` reserved) and puts an ``Offer`` here. The first blocking caller to come takes it
and, under the lane's lock, leaves a ``Taken`` note here and writes the RUN to that worker's
request pipe. The loop adopts the call from the note (``Scheduler.adopt``: it becomes the
worker's running attempt, deadlines counted from the write) when it next reads from that
worker, before it reads the reply: so in the common case nothing wakes the loop but the
reply itself. A call not answered within ``LANE_NUDGE`` is handed to the loop through the
inbox as well (``Pool.run_call``), so that its deadlines are armed however long it runs.

Ownership. The loop thread owns the worker, its pipes and the scheduler as everywhere else; it
lends exactly one thing, the right to write one RUN frame to one idle worker's request pipe,
and only while the offer stands. Offering, taking and revoking happen under ``lock``, and so
does the caller's write: the loop revokes the offer (``revoke``) before it closes that worker's
fds, kills it or gives the worker other work, so a caller never writes to a pipe the loop has
let go of. The RUN is small (at most ``PIPE_BUF``, one atomic write) and the worker's pipe is
empty while it is idle, so the write never blocks and never interleaves with the loop's own.
Once the note is left, the call is the loop's.

Only plain calls take the lane: no sticky session, no rate limit, no fault rule in force, a
small argument pickle with no out-of-band buffers. Anything else goes through the inbox.
"""

from __future__ import annotations

import os
import pickle
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pool._protocol import Kind, encode_small
from pool._scheduler import Call

# The largest RUN frame a caller writes itself: a pipe write up to this size is atomic.
LANE_MAX_FRAME = select.PIPE_BUF
# A caller whose call is not answered this soon wakes the loop to adopt it (its deadlines are
# counted from the write all the same): short enough that a hung call's timeout is armed at
# once for any timeout worth setting, long enough that a no-op call never pays for it.
LANE_NUDGE = 0.001


def run_meta(call: Call, fault: Any) -> tuple[Any, ...]:
    """A RUN frame's ``RunMeta``, as the plain tuple the worker reads (see ``RunMeta``); the
    fault a rule injects, if any, is its tenth field (absent from every other RUN)."""
    defn = call.defn
    s2c = defn.start_to_close_timeout
    meta: tuple[Any, ...] = (
        defn.module,
        defn.qualname,
        defn.name,
        str(call.id),
        call.attempt,
        call.session,
        time.time() + s2c if s2c else None,
        defn.heartbeat_timeout,
        call.heartbeat_details,
    )
    return meta if fault is None else (*meta, fault)


@dataclass(frozen=True, slots=True)
class Offer:
    """An idle worker lent to the lane: where its RUN goes and the ``seq`` it must carry."""

    worker_id: int
    fd: int  # the write end of the worker's request pipe (owned by the loop thread)
    seq: int


class Lane:
    """The offer, the notes of calls sent and not yet adopted, and their lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.offer: Offer | None = None
        self.wanted = False  # no lending (and no cost) until somebody calls pool.run()
        # calls whose RUN a caller wrote, not yet adopted by the loop, in the order written
        self.notes: list[Taken] = []
        self.sent = 0  # calls that took the lane (for tests and tuning)
        # set (by any thread) before a fault rule is handed to the loop: a RUN written here
        # carries no fault, and a call made after inject_fault() returns must see the rule
        self.held = False

    def hold(self) -> None:
        """No call takes the lane from now on (the pool injects faults)."""
        with self.lock:
            self.held = True

    def put(self, offer: Offer) -> None:
        """The loop thread lends a worker."""
        with self.lock:
            self.offer = offer

    def revoke(self) -> Offer | None:
        """The loop thread takes its offer back; None: there was none, or a caller took it
        (then its note is in ``notes``, or adopted already)."""
        if self.offer is None:
            return None
        with self.lock:
            offer, self.offer = self.offer, None
        return offer

    def take_notes(self) -> list[Taken]:
        """The loop thread: every note left so far, to adopt."""
        if not self.notes:
            return []
        with self.lock:
            notes, self.notes = self.notes, []
        return notes

    def send(self, call: Call, failed: Callable[[Taken], None]) -> Taken | None:
        """A caller's thread: write ``call``'s first RUN to the lent worker, if there is one
        and the call may take the lane. The note is left first (a reply can come the moment
        the RUN is written, and the loop adopts the notes before it reads a reply);
        ``failed(taken)`` tells the loop the write failed (the worker is going).
        None: nothing was taken, hand the call over as usual."""
        if self.offer is None or call.session is not None or call.defn.rate_limit is not None:
            return None
        body, buffers = call.payload
        if buffers or len(body) > LANE_MAX_FRAME:
            return None
        with self.lock:
            offer = self.offer
            if offer is None or self.held:
                return None
            call.attempt, call.seq = 1, offer.seq
            meta = pickle.dumps(run_meta(call, None), protocol=5)
            call.attempt = 0  # counted by the loop when it adopts the call
            frame = encode_small(Kind.RUN, offer.seq, meta, body)
            if len(frame) > LANE_MAX_FRAME:
                return None
            taken = Taken(call, offer, time.monotonic())
            self.notes.append(taken)
            self.sent += 1
            try:
                os.write(offer.fd, frame)  # atomic (<= PIPE_BUF) into an idle worker's empty pipe
            except OSError:  # the worker is going (EPIPE): the loop fails the attempt
                failed(taken)
            # only now: the loop, seeing the offer up, waits for this lock before it closes fd
            self.offer = None
        return taken

    def unadopted(self, taken: Taken) -> bool:
        """Is ``taken`` still waiting for the loop to adopt it?"""
        return taken in self.notes


@dataclass(frozen=True, slots=True)
class Taken:
    """The note a caller leaves for the loop: ``call``'s RUN went to the lent worker of
    ``offer`` at ``sent_at`` (monotonic)."""

    call: Call
    offer: Offer
    sent_at: float
