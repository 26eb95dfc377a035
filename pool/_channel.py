"""One worker's pipes, as the supervisor sees them: frames in, batched writes out, output lines.

A ``Channel`` owns everything that touches one worker's fds on the supervisor's side: the
``FrameReader`` and the segments of the reply pipe, the frames queued for the request pipe and
what a full pipe holds back, and the worker's ``WorkerOutput`` (``pool._output``: its output
pipe cut into tagged lines, and the LOG records it sends). It decodes what arrives and reports
it upward through ``ChannelListener`` (the supervisor), the mirror of the scheduler's
``Effects``: the channel knows no scheduler, no other worker and no process control beyond
signalling its worker. Loop thread only.

Writes are batched: ``write`` queues frames and puts the channel on the supervisor's batch list
once per event; the supervisor calls ``flush`` on each at the end of the event, so the frames
one event queued for a worker leave in one syscall.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import pickle
import signal
import time
from typing import Any, Protocol

from pool._output import OutputCallback, WorkerOutput
from pool._process import WorkerProcess
from pool._protocol import (
    FailureInfo,
    Frame,
    FrameReader,
    Kind,
    ProtocolError,
    encode,
    encode_small,
)
from pool._segments import PeerSegments, Segments
from sdk._errors import ApplicationError, RemoteTraceback, WorkerCrashedError, safe_repr

# writev() takes at most this many buffers (Linux IOV_MAX)
IOV_MAX = 1024
# Bodies up to this size are copied into one bytes object with their header (one write);
# larger ones go out as separate buffers, or through shared memory.
SMALL_BODY = 64 * 1024


class ChannelListener(Protocol):
    """What a channel reports, on the loop thread (the supervisor implements it). ``seq``
    names the attempt; ``now`` is the monotonic clock read once for the whole read."""

    def on_result(self, channel: Channel, seq: int, value: Any, now: float) -> None: ...
    def on_failure(self, channel: Channel, seq: int, exc: BaseException, now: float) -> None: ...
    def on_withdrawn(self, channel: Channel, seq: int, now: float) -> None: ...
    def on_heartbeat(self, channel: Channel, seq: int, details: Any, at: float) -> None: ...
    def on_entered(self, channel: Channel, seq: int, at: float) -> None:
        """The activity was entered at ``at``, after a slow setup."""

    def on_setup_started(self, channel: Channel, seq: int) -> None:
        """The attempt's setup runs user code (Depends factories)."""

    def on_ready(self, channel: Channel, stdlib: list[str], now: float) -> None:
        """READY: ``stdlib`` the standard modules it was asked to report (else empty)."""

    def on_malformed(self, channel: Channel, exc: ProtocolError) -> None: ...
    def on_eof(self, channel: Channel) -> None:
        """The worker closed its reply pipe: it is exiting."""

    def after(self) -> None:
        """An event is handled: send what it queued, re-arm the timer."""


class Channel:
    """The supervisor's side of one worker's pipes. Owned by the loop thread."""

    __slots__ = (
        "_batch",
        "_listener",
        "_loop",
        "_peer",
        "cancel_signal",
        "eof",
        "gone",
        "id",
        "in_pipe",
        "lent_run",
        "outbox",
        "output",
        "proc",
        "reader",
        "segments",
        "unsent",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        worker_id: int,
        proc: WorkerProcess,
        listener: ChannelListener,
        batch: list[Channel],
        on_output: OutputCallback | None,
        shm: bool,
    ) -> None:
        """``batch``: the supervisor's list of channels with frames queued in this event;
        ``shm``: the worker may be offered shared-memory segments (it says at READY)."""
        self._loop = loop
        self.id = worker_id
        self.proc = proc
        self._listener = listener
        self._batch = batch
        self._peer = PeerSegments(proc.pid) if shm else None  # its segments, mapped here
        self.reader = FrameReader(self._peer)
        self.unsent: list[bytes | memoryview] = []  # this event's frames
        self.outbox: collections.deque[memoryview] = collections.deque()  # the pipe is full
        self.eof = False  # its reply pipe is closed (or no longer read)
        self.gone = False  # its exit is reported upward
        # (seq, activity name) of every RUN sent and not yet answered, in pipe order: the head
        # is what the worker is running now, which tags its output
        self.in_pipe: collections.deque[tuple[int, str]] = collections.deque()
        # (seq, activity name) of the RUN a calling thread sent while the worker is lent to
        # it (see pool._lane): set and cleared by that thread, only read here
        self.lent_run: tuple[int, str] | None = None
        self.output = WorkerOutput(loop, worker_id, proc.pid, proc.output, self.running, on_output)
        # large frames to it (None until it said at READY that it can open them)
        self.segments: Segments | None = None
        self.cancel_signal = False  # SIGUSR1 owed once the queued CANCEL frame is in the pipe

    def running(self) -> tuple[int, str] | None:
        """(seq, activity) of what it runs now: the oldest RUN it has not answered (from the
        loop thread, or from a thread it is lent to)."""
        in_pipe = self.in_pipe
        return in_pipe[0] if in_pipe else self.lent_run

    @property
    def activity(self) -> str | None:
        """The activity it runs now (the oldest RUN it has not answered)."""
        head = self.running()
        return head[1] if head is not None else None

    @property
    def running_seq(self) -> int | None:
        """The seq of the attempt it runs now (the oldest RUN it has not answered)."""
        head = self.running()
        return head[0] if head is not None else None

    def crash(self, message: str, *, exited: bool = False) -> WorkerCrashedError:
        """The error that ends the attempt it runs: ``message``, naming the activity; with
        ``exited``, the worker's exit status."""
        proc = self.proc
        return WorkerCrashedError(
            message + (f" while running {self.activity!r}" if self.activity else ""),
            exitcode=proc.exitcode if exited else None,
            signal=proc.signal if exited else None,
            pid=proc.pid,
            worker_id=self.id,
        )

    def start_reading(self) -> None:
        self._loop.add_reader(self.proc.from_worker, self.on_readable)
        self.output.start()

    def lend(self) -> None:
        """Stop reading its reply pipe: a calling thread reads it now (see ``pool._lane``)."""
        self._loop.remove_reader(self.proc.from_worker)

    def take_back(self, frames: list[Frame], error: ProtocolError | None, now: float) -> None:
        """Read its reply pipe again, first handling what the borrower read of it (the frames
        after its RUN, and a framing error it met)."""
        run, self.lent_run = self.lent_run, None
        if run is not None:
            self.in_pipe.append(run)
        if not self.eof:
            self._loop.add_reader(self.proc.from_worker, self.on_readable)
        if frames or error is not None:
            self._handle(frames, error, now)

    # -- frames out ------------------------------------------------------------------------
    def send_init(self, body: bytes) -> None:
        self.write(encode(Kind.INIT, 0, body))

    def send_run(self, seq: int, name: str, meta: bytes, payload: tuple[bytes, list]) -> None:
        body, buffers = payload
        self.in_pipe.append((seq, name))
        if not buffers and len(body) < SMALL_BODY:
            self.write([encode_small(Kind.RUN, seq, meta, body)])
        else:
            self.write(encode(Kind.RUN, seq, meta, body, buffers, self.segments))

    def send_cancel(self, seq: int) -> None:
        self.write(encode(Kind.CANCEL, seq))
        self._flush_and_signal()

    def send_withdraw(self, seqs: list[int]) -> None:
        self.write([encode_small(Kind.WITHDRAW, seq) for seq in seqs])
        self._flush_and_signal()

    def send_close_session(self, session_id: str) -> None:
        self.write(encode(Kind.CLOSE_SESSION, 0, pickle.dumps(session_id, protocol=5)))

    def send_shutdown(self) -> None:
        self.write(encode(Kind.SHUTDOWN))

    def write(self, parts: list[bytes | memoryview]) -> None:
        """Queue frames; the supervisor's ``flush`` of this event's batch sends them."""
        if self.eof:
            return
        if not self.unsent:
            self._batch.append(self)
        self.unsent.extend(parts)

    def _flush_and_signal(self) -> None:
        # SIGUSR1 makes a busy worker read its pipe: the frames must be in it by then
        self.cancel_signal = True
        self.flush()
        self._signal_if_written()

    def _signal_if_written(self) -> None:
        if self.cancel_signal and not self.outbox and not self.unsent:
            self.cancel_signal = False
            self.proc.signal_worker(signal.SIGUSR1)

    def flush(self) -> None:
        """Send what is queued: one write (or writev) now, the rest when the pipe has room."""
        parts, self.unsent = self.unsent, []
        if not parts or self.eof or self.proc.fds_closed:
            return
        if self.outbox:  # the pipe is full already: keep the order
            self.outbox.extend(memoryview(p).cast("B") for p in parts if len(p))
            return
        fd = self.proc.to_worker
        if len(parts) == 1:
            data = parts[0]
        elif len(parts) < 4096 and all(type(p) is bytes for p in parts):
            data = b"".join(parts) if sum(map(len, parts)) <= SMALL_BODY else b""
        else:
            data = b""
        if data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            except OSError:
                return  # it is dying; EOF on its reply pipe reports that
            if n == len(data):
                return
            self.outbox.append(memoryview(data).cast("B")[n:])
        else:
            views = [memoryview(p).cast("B") for p in parts if len(p)]
            try:
                n = os.writev(fd, views[:IOV_MAX])
            except BlockingIOError:
                n = 0
            except OSError:
                return
            for v in views:
                if n >= v.nbytes:
                    n -= v.nbytes
                    continue
                self.outbox.append(v[n:])
                n = 0
            if not self.outbox:
                return
        self._loop.add_writer(fd, self._on_writable)

    def _on_writable(self) -> None:
        fd = self.proc.to_worker
        box = self.outbox
        try:
            while box:
                n = os.writev(fd, list(itertools.islice(box, IOV_MAX)))
                while n:
                    head = box[0]
                    if n >= head.nbytes:
                        n -= head.nbytes
                        box.popleft()
                    else:
                        box[0] = head[n:]
                        n = 0
        except BlockingIOError:
            return
        except OSError:
            box.clear()
        self._loop.remove_writer(fd)
        self._signal_if_written()

    @property
    def writing(self) -> bool:
        """Whether frames wait for room in its pipe."""
        return bool(self.outbox)

    # -- frames in -------------------------------------------------------------------------
    def on_readable(self) -> bool:
        """Read and handle what the worker wrote; False when nothing was there."""
        error: ProtocolError | None = None
        frames: list[Frame] | tuple[()] | None
        try:
            frames = self.reader.read(self.proc.from_worker)
        except BlockingIOError:
            return False
        except ProtocolError as exc:  # the stream lost its framing: nothing after it is sound
            frames, error = exc.frames, exc
        except OSError:
            frames = None
        if frames is None:
            self._listener.on_eof(self)
            return True
        # one clock reading for everything this read brought
        self._handle(frames, error, time.monotonic())
        return True

    def _handle(
        self, frames: list[Frame] | tuple[()], error: ProtocolError | None, now: float
    ) -> None:
        peer = self.reader.peer
        if peer is not None and peer.released:  # copied out: the worker may reuse them
            ids, peer.released = peer.released, []
            self.write([encode_small(Kind.RELEASE, seg_id) for seg_id in ids])
        try:
            for frame in frames:
                self._on_frame(frame, now)
        except ProtocolError as exc:
            error = exc
        if error is not None:
            self._listener.on_malformed(self, error)
        self._listener.after()

    def _on_frame(self, frame: Frame, now: float) -> None:
        kind = frame.kind
        listener = self._listener
        if kind is Kind.FAILURE:
            self.output.catch_up()
        if kind is Kind.RESULT or kind is Kind.FAILURE:
            in_pipe = self.in_pipe
            while in_pipe and in_pipe[0][0] <= frame.seq:
                in_pipe.popleft()
        if kind is Kind.RESULT:
            try:
                value = frame.load()
            except BaseException as exc:
                err = ApplicationError(
                    f"the result could not be unpickled in the supervisor: {safe_repr(exc)}",
                    type=type(exc).__name__,
                    non_retryable=True,
                )
                listener.on_failure(self, frame.seq, err, now)
                return
            listener.on_result(self, frame.seq, value, now)
        elif kind is Kind.FAILURE:
            listener.on_failure(self, frame.seq, rebuild_failure(frame), now)
        elif kind is Kind.WITHDRAWN:
            for entry in self.in_pipe:
                if entry[0] == frame.seq:
                    self.in_pipe.remove(entry)
                    break
            listener.on_withdrawn(self, frame.seq, now)
        elif kind is Kind.RELEASE:
            if self.segments is None:
                raise ProtocolError("RELEASE from a worker that was sent no segment")
            self.segments.release(frame.seq)
        elif kind is Kind.HEARTBEAT:
            try:
                beat = frame.load()
            except BaseException as exc:
                beat = (f"<heartbeat details could not be unpickled: {safe_repr(exc)}>", now)
            # (details, at): a heartbeat; (at,): the activity was entered at `at` after a slow
            # setup; (): its setup runs user code (Depends factories). See pool._worker.
            # CLOCK_MONOTONIC is one clock for every process on the machine.
            if len(beat) == 2:
                listener.on_heartbeat(self, frame.seq, beat[0], min(beat[1], now))
            elif len(beat) == 1:
                listener.on_entered(self, frame.seq, min(beat[0], now))
            else:
                listener.on_setup_started(self, frame.seq)
        elif kind is Kind.LOG:
            self.output.log(frame.body)
        elif kind is Kind.READY:
            try:
                ready = frame.load()
                shm = bool(ready.get("shm"))
            except Exception:
                ready, shm = {}, False
            if shm and self.reader.peer is not None:
                self.segments = Segments()
            else:
                self.reader.peer = None
            listener.on_ready(self, list(ready.get("stdlib") or ()), now)
        else:
            raise ProtocolError(f"unexpected frame {kind.name} from a worker")

    def drain_replies(self) -> None:
        """Read a dead worker's reply pipe to the end (its last frames, then EOF)."""
        while not self.eof and not self.gone:
            if not self.on_readable():
                return

    def stop_reading(self) -> None:
        """Ignore whatever it writes from now on (it is killed, or its pipe is closed)."""
        if not self.eof:
            self.eof = True
            self._loop.remove_reader(self.proc.from_worker)
            if self.outbox:
                self.outbox.clear()
                self._loop.remove_writer(self.proc.to_worker)

    def close(self) -> None:
        """Stop watching its fds and free its segments (before the fds are closed). Its own
        segments die with it; ours to it are freed here (the kernel frees any page it still
        had mapped when it exits)."""
        proc = self.proc
        if not proc.fds_closed:
            self.output.stop()
            with contextlib.suppress(Exception):  # (the loop is closing)
                self._loop.remove_reader(proc.from_worker)
            with contextlib.suppress(Exception):
                self._loop.remove_writer(proc.to_worker)
        if self.segments is not None:
            self.segments.close()
        if self._peer is not None:
            self._peer.close()


def rebuild_failure(frame: Frame) -> BaseException:
    """The exception a worker reported, with the remote traceback attached."""
    try:
        info: FailureInfo = frame.load()
    except BaseException as exc:
        return ApplicationError(
            f"a failure report could not be unpickled: {safe_repr(exc)}", non_retryable=True
        )
    exc_obj: BaseException | None = None
    if info.exc is not None:
        try:
            exc_obj = pickle.loads(info.exc)
        except BaseException:
            exc_obj = None
    if not isinstance(exc_obj, BaseException):
        # the exception itself could not cross: keep its type name, message and traceback
        exc_obj = ApplicationError(
            f"{info.type_name}: {info.message}",
            type=info.type_name,
            non_retryable=info.non_retryable,
        )
        exc_obj.__cause__ = RemoteTraceback(info.traceback)
    elif info.non_retryable and not (
        isinstance(exc_obj, ApplicationError) and exc_obj.non_retryable
    ):
        inner = exc_obj
        inner.__cause__ = RemoteTraceback(info.traceback)
        exc_obj = ApplicationError(info.message, type=info.type_name, non_retryable=True)
        exc_obj.__cause__ = inner
    else:
        exc_obj.__cause__ = RemoteTraceback(info.traceback)
    try:
        exc_obj.remote_traceback_text = info.traceback  # type: ignore[attr-defined]
    except Exception:
        pass
    return exc_obj
