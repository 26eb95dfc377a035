"""The worker process: read RUN frames, run activities, answer each with RESULT or FAILURE.

Kept light on purpose: it imports the protocol and the sdk, never uvloop, psutil or supervisor
code (tests/integration/test_worker_light.py checks). Started by ``pool._process.spawn_worker``
as ``main([RFD, WFD, PARENT_PID])``; stdout and stderr are a pipe the supervisor reads, so
``print`` never touches the protocol channel.

Threads: the main thread runs activities and owns the read side of the channel. A heartbeat
flusher thread (``pool._heartbeats``) exists only after the first coalesced heartbeat; it
shares the write side under ``_write_lock``. Cancellation arrives as a CANCEL frame followed
by SIGUSR1, whose handler drains the channel while an activity runs (the main thread is not
reading then). A WITHDRAW frame comes the same way: the RUN it names is dropped if it has not
started, and WITHDRAWN says so; a RUN already started is answered as usual, so a call never
runs in two places.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque

from pool._cancels import PROTOCOL_ERROR_EXIT, CancelSignals, report_protocol_error
from pool._fds import StdioReserved
from pool._heartbeats import Heartbeats
from pool._log_hook import watch_logging
from pool._main_script import ModuleLoader, refuse_pool_while_importing_main
from pool._protocol import (
    FailureInfo,
    Frame,
    FrameReader,
    Kind,
    ProtocolError,
    RunMeta,
    dumps,
    encode,
    encode_small,
    lift_bytes,
    write_all,
)
from pool._segments import PeerSegments, Segments, can_open_peer_fd, shm_supported
from sdk import _context
from sdk._attempt import Host, attempt_info, run_attempt
from sdk._definition import ActivityDefinition
from sdk._depends import ResourceCache
from sdk._errors import ApplicationError, safe_repr, safe_str

# Not typing (~7 ms), nor pickle.py and signal.py: both are thin wrappers over the C modules
# used here, and importing them costs a worker ~4 ms (pickle imports re, and re and signal
# import enum). Their functions and constants are the C modules' own.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import pickle
    import signal
    from typing import Any
else:
    import _signal as signal

    try:
        import _pickle as pickle
    except ImportError:  # pragma: no cover - an interpreter without the C accelerator
        import pickle

CANCEL_SIGNAL = signal.SIGUSR1
# Setup (loading the arguments, making Depends resources) longer than this before the activity
# is entered is reported, so that the supervisor's heartbeat clock starts at the entry. Shorter
# setup is not worth a frame: the hot path sends none.
SETUP_NOTICE = 0.001
# A pipe write up to PIPE_BUF is atomic and, with a reader draining, completes in one call.
SMALL_WRITE = 4096
# How long a log record waits for the channel: past it the record is dropped (and logging
# says so on stderr), as it could be a signal handler's, waiting for the write it interrupted.
LOG_WRITE_WAIT = 10.0


class _WorkerContext(_context.ActivityContext):
    """The running attempt's context; ``info`` is built only if the activity asks for it."""

    def __init__(self, worker: Worker, meta: RunMeta) -> None:  # no super(): nothing to copy
        self._worker = worker
        self._meta = meta
        self._info: _context.ActivityInfo | None = None
        self._started_at = time.time()
        self.heartbeat = worker.beats.beat
        self.is_cancelled = worker.is_cancelled
        self.resources = worker.resources
        self.extra = {}
        sid = meta.session_id
        self.session_state = worker.sessions.setdefault(sid, {}) if sid is not None else {}

    @property
    def info(self) -> _context.ActivityInfo:  # type: ignore[override]
        if self._info is None:
            meta = self._meta
            self._info = attempt_info(
                meta.activity_id,
                meta.name,
                meta.attempt,
                self._started_at,
                deadline=meta.deadline,
                worker_id=self._worker.worker_id,
                session_id=meta.session_id,
                heartbeat_timeout=meta.heartbeat_timeout,
                heartbeat_details=meta.heartbeat_details,
            )
        return self._info


_prctl: Any = None  # libc's prctl, loaded once and inherited by whatever forks from here


def load_prctl() -> Any:
    """libc's ``prctl`` through ctypes (Linux), loaded once per process and kept."""
    global _prctl
    if _prctl is None and sys.platform.startswith("linux"):
        try:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            _prctl = False
    return _prctl


def _stdlib_imported() -> list[str]:
    """The standard library's top-level modules imported here (by the activity modules too)."""
    names = getattr(sys, "stdlib_module_names", ())
    return sorted({name.partition(".")[0] for name in sys.modules} & set(names))


def _set_parent_death_signal(parent: int) -> None:
    """Die with the supervisor: PR_SET_PDEATHSIG, then close the race with getppid()."""
    prctl = load_prctl()
    if prctl:
        PR_SET_PDEATHSIG = 1
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # the supervisor died before we could register


def _adopt_orphans() -> None:
    """Be the subreaper of what our activities start: a daemon that double-forks stays under
    this worker, so it goes with the worker (see pool._forkserver) instead of to init."""
    prctl = load_prctl()
    if prctl:
        PR_SET_CHILD_SUBREAPER = 36
        prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


class Worker(CancelSignals, Host):
    """One worker process's state; the main thread runs attempts through sdk._attempt, with
    this worker as their Host."""

    def __init__(self, rfd: int, wfd: int, supervisor: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.supervisor = supervisor  # its pid: where our segments' peer lives
        self.reader = FrameReader()
        self.pending: deque[Frame] = deque()  # frames read but not yet handled
        self.cancelled_seqs: set[int] = set()  # CANCELs for RUNs not yet started
        # WITHDRAWs whose RUN was no longer in ``pending``: taken by the main loop, maybe not
        # yet started (then it is withdrawn at the start), else it runs here
        self.withdraw_seqs: set[int] = set()
        self._absorbing = False
        self.worker_id: int | None = None
        # where large results go (None: through the pipe); main thread only
        self.segments: Segments | None = None
        self.modules = ModuleLoader()  # activity modules, the caller's main script among them
        self.functions: dict[tuple[str, str], ActivityDefinition] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.loop: Any = None  # asyncio loop, made on the first async activity
        self.resources = ResourceCache(run_coroutine=self._run_coroutine)
        self._write_lock = threading.Lock()
        # state of the attempt being run (main thread; the signal handler reads it)
        self.current_seq = 0
        self.current_heartbeat_timeout: float | None = None
        self.running = False
        self.cancel_requested = False
        self.cancel_signalled = False  # SIGUSR1 came while no attempt was running
        self.task: Any = None
        self.began = 0.0  # time.monotonic() when the attempt's setup began
        self.held = False  # the heartbeat clock is held (user code prepares the attempt)
        self.fault: tuple[str, Any] | None = None  # Pool.inject_fault's, for this attempt
        self.beats = Heartbeats(wfd, self._write_lock, self.send)  # heartbeat coalescing
        self._unmapper: threading.Thread | None = None
        self._unmap_queue: Any = None

    # -- channel -------------------------------------------------------------------------
    def send(self, parts: list[bytes | memoryview]) -> None:
        with self._write_lock:
            write_all(self.wfd, parts)

    def send_log(self, frame: bytes) -> None:
        """Write a LOG frame, from any thread (the worker's logging handler calls this)."""
        if not self._write_lock.acquire(timeout=LOG_WRITE_WAIT):
            raise TimeoutError("the channel to the supervisor stayed busy: record dropped")
        try:
            write_all(self.wfd, [frame])
        finally:
            self._write_lock.release()

    def next_frame(self) -> Frame | None:
        while not self.pending:
            frames = self.reader.read(self.rfd)
            if frames is None:
                return None
            self.pending.extend(frames)
        self._send_releases()
        return self.pending.popleft()

    def _send_releases(self) -> None:
        """Give the supervisor back the segments of frames copied out (main thread only:
        the SIGUSR1 handler also reads frames, but must not take the write lock)."""
        peer = self.reader.peer
        if peer is not None and peer.released:
            ids, peer.released = peer.released, []
            self.send([encode_small(Kind.RELEASE, seg_id) for seg_id in ids])

    def _unmap_later(self, box: list[Frame]) -> None:
        """Free a frame (its one-off mapping: tens of ms per 100 MiB) on a helper thread;
        ``munmap`` runs without the GIL. ``box`` holds the only reference left here."""
        if self._unmapper is None:
            import queue

            self._unmap_queue = queue.SimpleQueue()
            self._unmapper = threading.Thread(
                target=_unmap_forever, args=(self._unmap_queue,), name="activitypool-unmap"
            )
            self._unmapper.daemon = True
            self._unmapper.start()
        self._unmap_queue.put(box)

    def _reclaim_segments(self) -> None:
        """Apply RELEASE frames already read (they queue behind prefetched RUNs), so that a
        result reuses a kept segment instead of paying for a new one."""
        assert self.segments is not None
        self._drain_nonblocking()
        if any(f.kind is Kind.RELEASE for f in self.pending):
            keep: deque[Frame] = deque()
            for f in self.pending:
                if f.kind is Kind.RELEASE:
                    self.segments.release(f.seq)
                else:
                    keep.append(f)
            self.pending = keep

    # -- main loop -----------------------------------------------------------------------
    def serve(self) -> int:
        init = self.next_frame()
        if init is None:
            return 0
        if init.kind is not Kind.INIT:
            raise ProtocolError(f"expected INIT, got {init.kind.name}")
        settings = init.load()
        shm = self.setup(settings)
        ready: dict[str, Any] = {"pid": os.getpid(), "shm": shm}
        if settings.get("report_stdlib"):
            ready["stdlib"] = _stdlib_imported()
        # before READY: SIGUSR1 (cancel, withdraw) may come as soon as a RUN has been sent
        signal.signal(CANCEL_SIGNAL, self._on_cancel_signal)
        self.send(encode(Kind.READY, 0, dumps(ready)[0]))
        try:
            while True:
                frame = self.next_frame()
                if frame is None or frame.kind is Kind.SHUTDOWN:
                    return 0
                kind = frame.kind
                if kind is Kind.RUN:
                    while self.cancel_signalled:
                        self._absorb_cancels()
                    withdrawn = self.withdraw_seqs and self._withdrawn_at_start(frame.seq)
                    if withdrawn:  # confirmed WITHDRAWN: the supervisor runs it elsewhere
                        self.cancelled_seqs.discard(frame.seq)
                    elif frame.seq in self.cancelled_seqs:
                        self.cancelled_seqs.discard(frame.seq)
                        self.fail(frame.seq, _cancelled_error(), non_retryable=True)
                    else:
                        self.run(frame)
                    # let go of its arguments now, not when the next frame comes; a large one
                    # is unmapped off this thread, so the next call need not wait for that
                    if frame.mapped:
                        self._unmap_later([frame])
                    frame = None
                elif kind is Kind.CANCEL:
                    self._note_cancel(frame.seq)
                elif kind is Kind.WITHDRAW:
                    self.withdraw_seqs.discard(frame.seq)  # its RUN was answered already
                elif kind is Kind.RELEASE and self.segments is not None:
                    self.segments.release(frame.seq)
                elif kind is Kind.CLOSE_SESSION:
                    self.sessions.pop(frame.load(), None)
                else:
                    raise ProtocolError(f"unexpected frame {kind.name} in a worker")
        finally:
            self.resources.close()
            if self.segments is not None:
                self.segments.close()

    def setup(self, init: dict[str, Any]) -> bool:
        """Apply the INIT settings; whether large frames can go through shared memory."""
        self.worker_id = init["worker_id"]
        probe = init.get("shm_probe")  # an fd of the supervisor's that we must be able to open
        shm = probe is not None and shm_supported() and can_open_peer_fd(self.supervisor, probe)
        if shm:
            self.segments = Segments()
            self.reader.peer = PeerSegments(self.supervisor)
        sys.path[:] = init["sys_path"]
        self.modules.main_path = init.get("main_path")
        # before any activity module runs: its records go to the caller's logging
        watch_logging(self.send_log, init.get("log_levels") or {})
        for name in init.get("preload", ()):
            try:
                self.modules.import_module(name)
            except BaseException:
                import traceback  # lazily, as in fail()

                # reported on the first call that needs it, where it is that call's error
                print(f"activitypool: worker could not preload {name!r}", file=sys.stderr)
                traceback.print_exc()
        return shm

    def lookup(self, module: str, qualname: str) -> ActivityDefinition:
        key = (module, qualname)
        defn = self.functions.get(key)
        if defn is None:
            obj: Any = self.modules.import_module(module)
            for part in qualname.split("."):
                obj = getattr(obj, part)
            defn = obj.__activity_definition__
            self.functions[key] = defn
        return defn

    def run(self, frame: Frame) -> None:
        seq = frame.seq
        self.began = time.monotonic()  # the library's setup of the attempt starts here
        try:
            meta = RunMeta(*frame.load())
            args, kwargs = frame.load2()
        except BaseException as exc:
            self.fail(seq, exc, non_retryable=True)
            return
        hb_timeout = meta.heartbeat_timeout
        self.current_seq = self.beats.seq = seq
        self.current_heartbeat_timeout = hb_timeout
        self.held = False
        # Importing the activity's module (not preloaded) and Depends factories run user code
        # that may take minutes: start-to-close times it, while the heartbeat clock waits until
        # the activity is entered. Each happens once per worker: the hot path sends nothing.
        if hb_timeout and (meta.module, meta.qualname) not in self.functions:
            self.hold()
        try:
            defn = self.lookup(meta.module, meta.qualname)
        except BaseException as exc:
            self.fail(seq, exc, non_retryable=True, note=f"worker could not load {meta.name!r}")
            return
        self.cancel_requested = False
        self.beats.start(hb_timeout)
        self.fault = meta.fault
        # the attempt's span (made by the supervisor) is current while the activity runs
        traced = _otel_attach(meta.trace) if meta.trace is not None else None
        try:
            if defn.is_async and self.loop is None:
                self._ensure_loop()  # imports asyncio: the library's setup, not the activity's
            ctx = _WorkerContext(self, meta)
            if meta.chunk:  # a chunk of a map: the activity over the items in ``args``
                each = _chunk_runner(meta.chunk, defn.is_async)
                result = run_attempt(defn, ctx, args, kwargs, self, each)
            else:
                result = run_attempt(defn, ctx, args, kwargs, self)
            self.running = False
        except SystemExit:
            raise
        except BaseException as exc:
            self.running = False
            self.task = None
            self.beats.flush()
            self.fail(seq, exc)
            return
        finally:
            self.running = False
            if traced is not None:
                _otel_detach(traced)
        if self.beats.pending:
            self.beats.flush()
        try:
            body, buffers = dumps(lift_bytes(result))
        except BaseException as exc:
            self.fail(
                seq, exc, non_retryable=True, note=f"result of {meta.name!r} cannot be pickled"
            )
            return
        if buffers or len(body) > SMALL_WRITE:
            if self.segments is not None and self.segments.lent:
                self._reclaim_segments()
            self.send(encode(Kind.RESULT, seq, body, buffers=buffers, segments=self.segments))
        else:
            data = encode_small(Kind.RESULT, seq, body)
            with self._write_lock:
                if len(data) <= SMALL_WRITE:
                    os.write(self.wfd, data)
                else:
                    write_all(self.wfd, [data])

    # -- the Host of sdk._attempt: what run_attempt tells this worker ------------------------
    def enter(self) -> None:
        """The activity is entered: cancellable from now on, and its heartbeat clock starts."""
        self.running = True
        while self.cancel_signalled:  # a SIGUSR1 that came just before we were running
            self._absorb_cancels()
        if self.current_heartbeat_timeout:
            entered = time.monotonic()
            if self.held or entered - self.began > SETUP_NOTICE:
                self.held = False
                self._send_beat(self.current_seq, (entered,))  # the heartbeat clock starts here
        if self.fault is not None:
            _inject_fault(*self.fault)

    def hold(self) -> None:
        """User code prepares the running attempt (the activity's module imported, its Depends
        factories): hold the heartbeat clock until the activity is entered or resume()."""
        if self.current_heartbeat_timeout and not self.held:
            self.held = True
            self._send_beat(self.current_seq, ())

    def resume(self) -> None:
        """The preparation is over; before the entry, enter() starts the clock instead."""
        if self.running and self.held:
            self.held = False
            self._send_beat(self.current_seq, (time.monotonic(),))

    def run_task(self, coro: Any) -> Any:
        """Run an async activity on this worker's loop as a task a CANCEL can reach."""
        loop = self._ensure_loop()
        self.task = loop.create_task(coro)
        if self.cancel_requested:  # cancelled before the task existed
            self.task.cancel()
        try:
            return loop.run_until_complete(self.task)
        finally:
            self.task = None

    def _ensure_loop(self) -> Any:
        if self.loop is None:
            import asyncio

            with StdioReserved():  # its epoll fd and self-pipe are ours, not stdio
                self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
        return self.loop

    def _run_coroutine(self, coro: Any) -> Any:
        return self._ensure_loop().run_until_complete(coro)

    def is_cancelled(self) -> bool:
        return self.cancel_requested

    def fail(
        self, seq: int, exc: BaseException, *, non_retryable: bool = False, note: str | None = None
    ) -> None:
        try:
            info = _failure_info(exc, non_retryable, note)
        except BaseException as err:  # the exception fought being reported: report that
            info = FailureInfo(
                None,
                type(exc).__qualname__,
                f"the failure could not be reported: {safe_repr(err)}",
                "",
                non_retryable,
            )
        self.send(encode(Kind.FAILURE, seq, pickle.dumps(info, protocol=5)))

    # -- heartbeats (the coalescing is pool._heartbeats') ------------------------------------
    def _send_beat(self, seq: int, body: tuple[float, ...]) -> None:
        """A HEARTBEAT without details: ``()`` the setup runs user code, ``(at,)`` the
        activity was entered at ``at``."""
        self.send([encode_small(Kind.HEARTBEAT, seq, dumps(body)[0])])


def _unmap_forever(boxes: Any) -> None:
    while True:
        boxes.get().clear()  # the last reference: the frame's mapping is freed here


def _chunk_runner(kind: int, is_async: bool) -> Any:
    from pool._chunks import each  # only when a chunk comes (test_chunked_map.py checks)

    return each(kind, is_async)


def _otel_attach(headers: Any) -> Any:
    from pool._otel import attach  # only when a call came with a trace context

    return attach(headers)


def _otel_detach(token: Any) -> None:
    from pool._otel import detach

    detach(token)


def _inject_fault(kind: str, arg: Any) -> None:
    """Misbehave on purpose (Pool.inject_fault), exactly as a real activity could."""
    if kind == "hang":
        while True:
            time.sleep(3600)
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit":
        sys.stdout.flush()
        os._exit(arg)
    if kind == "raise":
        raise arg
    if kind == "oom":
        # grow to the given size, then die as the kernel's OOM killer would make us die;
        # bounded so that a test never takes the machine's memory
        hog = []
        for _ in range(max(1, arg // (16 << 20))):
            hog.append(bytearray(16 << 20))
        os.kill(os.getpid(), signal.SIGKILL)
    raise ValueError(f"unknown fault {kind!r}")


def _failure_info(exc: BaseException, non_retryable: bool, note: str | None) -> FailureInfo:
    import traceback  # lazily: a worker whose activities never fail never loads it

    tb = "".join(traceback.format_exception(exc))
    if note:
        tb = f"{note}\n{tb}"
    try:
        raw: bytes | None = pickle.dumps(exc, protocol=5)
    except BaseException:
        raw = None
    if isinstance(exc, ApplicationError) and exc.non_retryable:
        non_retryable = True
    message = safe_str(exc)  # user code: its __str__ may raise
    if note:
        message = f"{note}: {type(exc).__name__}: {message}"
    return FailureInfo(raw, type(exc).__qualname__, message, tb, non_retryable)


def _cancelled_error() -> BaseException:
    import asyncio

    return asyncio.CancelledError("cancelled before it started")


__all__ = [
    "IN_WORKER",
    "PROTOCOL_ERROR_EXIT",
    "load_prctl",
    "main",
    "refuse_pool_while_importing_main",
]

# True in a worker process (set by main): code that must tell a worker from the supervisor, or
# from a process that merely imported this module, reads it.
IN_WORKER = False


def main(argv: list[str]) -> int:
    """``argv``: request fd, reply fd, parent pid (the supervisor, or the fork server that
    forked us), and the supervisor's pid when it is not the parent."""
    rfd, wfd, parent = (int(a) for a in argv[:3])
    supervisor = int(argv[3]) if len(argv) > 3 else parent
    global IN_WORKER
    IN_WORKER = True
    _set_parent_death_signal(parent)
    _adopt_orphans()
    # Ctrl-C goes to the supervisor, which stops workers in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except AttributeError:  # pragma: no cover
        pass
    try:
        return Worker(rfd, wfd, supervisor).serve()
    except ProtocolError as exc:  # the channel lost its framing: nothing on it can be trusted
        report_protocol_error(exc)
        return PROTOCOL_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
