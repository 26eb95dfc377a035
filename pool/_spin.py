"""The reply spin: wait on the CPU, without sleeping, for the reply to the pool's only call.

Calls one after another (``await pool.execute`` in a loop) then cost no loop wake-up per reply:
on a VM a sleeping thread takes ~20 µs to wake, as long as a no-op call's work. The spin is
bounded by ``reply_spin`` and only tried for calls of an activity whose attempts usually take
less. It changes nothing but latency: a reply it catches is handled as the loop would handle it.

``ReplySpin`` is owned by the supervisor, loop thread only. At the end of an event that wrote to
one worker the supervisor asks ``candidate``; if there is one, it runs ``spin`` on the next turn
of the loop (first let what is ready run: a caller woken by that event may be about to submit,
and with two calls in flight spinning would only delay it).
"""

from __future__ import annotations

import select
import time
from collections.abc import Sized
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pool._channel import Channel
    from pool._scheduler import Scheduler


class ReplySpin:
    """The supervisor's reply spin (see the module docstring). Loop thread only."""

    __slots__ = (
        "_inbox",
        "_poll",
        "_polled",
        "_scheduler",
        "caught",
        "missed",
        "seconds",
        "spinning",
    )

    def __init__(self, seconds: float, scheduler: Scheduler, inbox: Sized) -> None:
        """``seconds``: the longest spin (0: never spin); ``inbox``: calls other threads
        handed over and the loop has not taken yet (no spin while it holds any)."""
        self.seconds = seconds
        self._scheduler = scheduler
        self._inbox = inbox
        self.spinning = False  # in spin (never nested)
        self.caught = 0  # replies a spin caught / spins that gave up (for tests, tuning)
        self.missed = 0
        self._poll = select.poll()
        self._polled: int | None = None  # the reply pipe registered with _poll

    def candidate(self, channel: Channel) -> Channel | None:
        """``channel`` if its reply is worth a spin: it has the pool's only call, just sent,
        of an activity whose attempts take less than ``seconds`` on average."""
        sched = self._scheduler
        if sched.in_flight() != 1 or self._inbox or len(channel.in_pipe) != 1:
            return None
        if channel.outbox or channel.eof or channel.gone or channel.proc.fds_closed:
            return None  # (the write is not complete, or the worker is going or gone)
        took = sched.average_duration(channel.in_pipe[0][1])
        if took is None or took >= self.seconds:
            return None
        return channel

    def spin(self, channel: Channel) -> None:
        """Spin for ``channel``'s reply (its caller then runs in this loop iteration), else
        leave it to the loop."""
        if self.spinning or self.candidate(channel) is None:
            return  # since it was sent: another call came, the reply came, or the worker died
        poller, fd = self._poll, channel.proc.from_worker
        if self._polled != fd:
            if self._polled is not None:
                poller.unregister(self._polled)
            poller.register(fd, select.POLLIN)
            self._polled = fd
        self.spinning = True
        try:
            if not poll_until(poller, time.monotonic() + self.seconds):
                self.missed += 1
                return
            channel.on_readable()
            self.caught += 1
        finally:
            self.spinning = False


def poll_until(poller: select.poll, end: float) -> bool:
    """Poll without sleeping until ``poller`` has an event (True) or the monotonic clock
    reaches ``end`` (False). Each ``poll(0)`` lets go of the GIL."""
    clock = time.monotonic
    while not poller.poll(0):
        if clock() >= end:
            return False
    return True
