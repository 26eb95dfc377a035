"""A worker's heartbeat coalescing: at most one HEARTBEAT frame per window for the running
attempt, the latest details on the wire at most a window after they were given.

Owned by ``pool._worker.Worker`` (one per worker process). The main thread calls
:meth:`Heartbeats.beat` (the activity's ``heartbeat``) and :meth:`Heartbeats.flush`; a flusher
thread, started on the first beat that had to wait, sends the trailing beat of a window. Both
write the worker's channel under the worker's write lock. Light on purpose, as the worker is
(tests/integration/test_worker_light.py): no typing, no dataclasses.
"""

from __future__ import annotations

import threading
import time

from pool._protocol import Kind, dumps, encode, write_all
from sdk._errors import safe_repr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# Coalescing window for heartbeats: at most one HEARTBEAT frame per window, and the latest
# details are on the wire at most this long after they were given (the contract says 100 ms).
HEARTBEAT_WINDOW = 0.05


class Heartbeats:
    """The coalescing state (main thread writes; the flusher reads it under ``write_lock``)."""

    def __init__(
        self, wfd: int, write_lock: threading.Lock, send: Callable[[list[Any]], None]
    ) -> None:
        self._wfd = wfd
        self._write_lock = write_lock
        self._send = send
        self.seq = 0  # the running attempt's, set by the worker with its current_seq
        self.details: Any = None
        self.pending = False
        self.next = 0.0
        self.window = HEARTBEAT_WINDOW
        self.pending_seq = 0
        self.time = 0.0  # time.monotonic() of the latest beat() call
        self._flusher: threading.Thread | None = None
        self._flush_event = threading.Event()

    def start(self, heartbeat_timeout: float | None) -> None:
        """A new attempt is about to be entered: a fresh window, sized to its timeout."""
        self.pending = False
        self.next = 0.0
        self.window = (
            min(HEARTBEAT_WINDOW, heartbeat_timeout / 4) if heartbeat_timeout else HEARTBEAT_WINDOW
        )

    def beat(self, details: Any) -> None:
        # Hot path: store, and put on the wire at most once per window. The first beat of a
        # window goes inline so that an activity which then blocks in C holding the GIL has
        # still delivered recent details; the trailing one is sent by the flusher thread.
        self.details = details
        self.time = now = time.monotonic()
        if now >= self.next:
            self.next = now + self.window
            self.pending = False
            self._send_details(self.seq, details, now)
        elif not self.pending:
            self.pending_seq = self.seq
            self.pending = True
            if self._flusher is None:
                self._flusher = threading.Thread(
                    target=self._flush_loop, name="activitypool-heartbeat", daemon=True
                )
                self._flusher.start()
            self._flush_event.set()

    def flush(self) -> None:
        """Before RESULT/FAILURE: deliver details the window held back."""
        if self.pending:
            self.pending = False
            self._send_details(self.seq, self.details, self.time)

    def _send_details(self, seq: int, details: Any, at: float) -> None:
        body, buffers = _dump_details(details, at)
        self._send(encode(Kind.HEARTBEAT, seq, body, buffers=buffers))

    def _flush_loop(self) -> None:
        while True:
            self._flush_event.wait()
            self._flush_event.clear()
            delay = self.next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            with self._write_lock:
                if not self.pending:
                    continue
                self.pending = False
                seq, details, at = self.pending_seq, self.details, self.time
                self.next = time.monotonic() + self.window
                body, buffers = _dump_details(details, at)
                write_all(self._wfd, encode(Kind.HEARTBEAT, seq, body, buffers=buffers))


def _dump_details(details: Any, at: float) -> tuple[bytes, list[Any]]:
    """A HEARTBEAT body: the details and the CLOCK_MONOTONIC time they were given at, so that
    the supervisor's heartbeat deadline counts from the beat, not from when it arrived."""
    try:
        return dumps((details, at))
    except Exception:
        # details that cannot be pickled still prove liveness; keep their repr
        return dumps((f"<unpicklable heartbeat details: {safe_repr(details)}>", at))
