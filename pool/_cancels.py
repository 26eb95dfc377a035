"""A worker's cancel and withdraw handling: the SIGUSR1 handler and what it does to the channel.

``CancelSignals`` is a part of ``pool._worker.Worker`` (a base class, so that the signal handler
works on the worker's own state with no indirection): the supervisor sends CANCEL or WITHDRAW
frames, then SIGUSR1. While an activity runs the handler drains the pipe now (the main thread is
not reading then); between attempts it only leaves a note that the main loop acts on before its
next attempt. The handler never waits for the write lock: the main thread it interrupted may
hold it mid-frame. Light, as the worker is (tests/integration/test_worker_light.py).
"""

from __future__ import annotations

import os
import threading
from collections import deque

from pool._protocol import Frame, Kind, ProtocolError, encode_small, write_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pool._protocol import FrameReader


class CancelSignals:
    """The Worker's cancel handling. The state it reads and writes is the Worker's (made in
    ``Worker.__init__``); these are its types."""

    rfd: int
    wfd: int
    reader: FrameReader
    pending: deque[Frame]  # frames read but not yet handled
    cancelled_seqs: set[int]
    withdraw_seqs: set[int]
    running: bool
    current_seq: int
    cancel_requested: bool
    cancel_signalled: bool
    task: Any
    loop: Any
    _absorbing: bool
    _write_lock: threading.Lock

    def send(self, parts: list[bytes | memoryview]) -> None:
        raise NotImplementedError  # the Worker's

    def _drain_nonblocking(self) -> None:
        """Read what is in the pipe now into ``pending``. A malformed frame ends the process
        here and now: this runs in the SIGUSR1 handler, or under an attempt's error handling,
        where an exception would reach the activity (which might catch it) or its caller."""
        os.set_blocking(self.rfd, False)
        try:
            while True:
                try:
                    frames = self.reader.read(self.rfd)
                except BlockingIOError:
                    return
                except ProtocolError as exc:
                    _protocol_exit(exc)
                if frames is None:
                    return
                self.pending.extend(frames)
        finally:
            os.set_blocking(self.rfd, True)

    def _on_cancel_signal(self, signum: int, frame: Any) -> None:
        if not self.running or self._absorbing:
            # between attempts the main thread may be inside a read: only leave a note; it
            # absorbs the CANCEL frames before starting its next attempt (or on running)
            self.cancel_signalled = True
            return
        self.cancel_signalled = True
        while self.cancel_signalled and self.running:  # again if a signal came meanwhile
            self._absorb_cancels(in_handler=True)

    def _absorb_cancels(self, in_handler: bool = False) -> None:
        """Read what is in the pipe now and act on every CANCEL and WITHDRAW frame in it."""
        self._absorbing = True
        try:
            self.cancel_signalled = False
            self._drain_nonblocking()
            keep: deque[Frame] = deque()
            withdraw: set[int] = set()
            for f in self.pending:
                if f.kind is Kind.CANCEL:
                    self._note_cancel(f.seq)
                elif f.kind is Kind.WITHDRAW:
                    withdraw.add(f.seq)
                else:
                    keep.append(f)
            if withdraw:
                # a RUN precedes its WITHDRAW in the pipe: one not in `keep` was taken already
                dropped = [f.seq for f in keep if f.kind is Kind.RUN and f.seq in withdraw]
                keep = deque(f for f in keep if f.kind is not Kind.RUN or f.seq not in withdraw)
                self.withdraw_seqs.update(withdraw.difference(dropped))
                if dropped:
                    self._confirm_withdrawn(dropped, in_handler)
            self.pending = keep
        finally:
            self._absorbing = False

    def _confirm_withdrawn(self, seqs: list[int], in_handler: bool) -> None:
        data = b"".join(encode_small(Kind.WITHDRAWN, seq) for seq in seqs)
        if not in_handler:
            self.send([data])
            return
        # The handler interrupted the main thread, which may hold the write lock mid-frame:
        # never wait for it here. If it is taken, a short-lived thread waits instead.
        if self._write_lock.acquire(blocking=False):
            try:
                write_all(self.wfd, [data])
            finally:
                self._write_lock.release()
        else:
            threading.Thread(
                target=self.send, args=([data],), name="activitypool-withdrawn", daemon=True
            ).start()

    def _note_cancel(self, seq: int) -> None:
        if self.running and seq == self.current_seq:
            self.cancel_requested = True
            task, loop = self.task, self.loop
            if task is not None and loop is not None:
                loop.call_soon_threadsafe(task.cancel)
        else:
            self.cancelled_seqs.add(seq)

    def _withdrawn_at_start(self, seq: int) -> bool:
        """Whether RUN ``seq``, about to start, was withdrawn (and is now confirmed so)."""
        withdrawn = seq in self.withdraw_seqs
        # seqs rise in pipe order: the WITHDRAWs of earlier RUNs came too late for them
        self.withdraw_seqs = {s for s in self.withdraw_seqs if s > seq}
        if withdrawn:
            self._confirm_withdrawn([seq], in_handler=False)
        return withdrawn


# The exit code of a worker that received a malformed frame from the supervisor.
PROTOCOL_ERROR_EXIT = 3


def report_protocol_error(exc: ProtocolError) -> None:
    message = f"activitypool worker: malformed frame from the supervisor ({exc}); exiting\n"
    try:
        os.write(2, message.encode("utf-8", "replace"))
    except OSError:  # stderr closed by an activity: the exit code still says it
        pass


def _protocol_exit(exc: ProtocolError) -> None:
    report_protocol_error(exc)
    os._exit(PROTOCOL_ERROR_EXIT)
