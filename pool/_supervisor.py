"""The imperative shell around the scheduler: processes, pipes, the one timer, the callers.

Data flow (everything below runs on one event loop thread, the supervisor's)::

    caller ──execute/submit──▶ Supervisor.submit ──▶ Scheduler (pure: who runs what, when)
                                                        │ Effects: send_run / kill / spawn / resolve
                                                        ▼
    caller ◀──future── Supervisor.resolve ◀── Scheduler ◀── frames ◀── WorkerHandle (pipe pair)
                                                                          ▲        │ RUN
                                                                 RESULT / │        ▼
                                                               FAILURE /  worker process
                                                               HEARTBEAT  (pool._worker) ─▶ activity

Ownership: the loop thread owns every attribute here and everything in the scheduler. Other
threads reach in only through the pool's inbox (``Pool._to_loop``: one ``call_soon_threadsafe``
drains a burst) or ``call_soon_threadsafe``. The scheduler owns all deadlines; this class arms a
single loop timer for the earliest one (``_after``). Frames queued for a worker during one event
leave in one write at the end of it (``_flush``); large bodies go through shared-memory
segments (``pool._protocol.Segments``), one set per worker and direction.

Workers come from the pool's fork server (``pool._process.ForkServer``; requests answered in
``_on_forkserver``) or are spawned. Worker death is seen without polling: EOF on the reply pipe,
then the fork server's exit report, or for a spawned worker its pidfd (or a non-blocking
waitpid), gives the exit status.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import math
import os
import pickle
import select
import signal
import sys
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pool._events import PoolEvent, Stats, make_event
from pool._fds import above_stdio
from pool._output import LineSplitter
from pool._process import (
    ForkServer,
    WorkerProcess,
    caller_can_fork,
    new_pool_id,
    spawn_worker,
    worker_env,
)
from pool._protocol import (
    FailureInfo,
    Frame,
    FrameReader,
    Kind,
    PeerSegments,
    ProtocolError,
    Segments,
    decode_log,
    encode,
    encode_small,
    shm_supported,
)
from pool._scheduler import Call, Scheduler, WorkerState
from sdk._errors import (
    ApplicationError,
    RemoteTraceback,
    WorkerCrashedError,
    safe_repr,
)

log = logging.getLogger("activitypool")
# writev() takes at most this many buffers (Linux IOV_MAX)
IOV_MAX = 1024
# Bodies up to this size are copied into one bytes object with their header (one write);
# larger ones go out as separate buffers, or through shared memory.
SMALL_BODY = 64 * 1024
# A replacement worker is spawned this long after the death that calls for it (see spawn()).
SPAWN_DELAY = 0.005
# A worker's output pipe is read this much at a time (one read per loop callback)...
OUTPUT_READ = 64 * 1024
# ...and at most this much more once the worker has exited (a child of its may hold the pipe).
OUTPUT_DRAIN = 1 << 20


@dataclass(eq=False)
class WorkerHandle:
    """The supervisor's side of one worker process. Owned by the loop thread."""

    id: int
    proc: WorkerProcess
    reader: FrameReader = field(default_factory=FrameReader)
    unsent: list[bytes | memoryview] = field(default_factory=list)  # this event's frames
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)  # pipe full
    output: LineSplitter = field(default_factory=LineSplitter)  # what it printed, in lines
    eof: bool = False
    gone: bool = False  # reported to the scheduler as exited
    # (seq, activity name) of every RUN sent and not yet answered, in pipe order: the head is
    # what the worker is running now, which tags its output
    in_pipe: collections.deque[tuple[int, str]] = field(default_factory=collections.deque)

    @property
    def activity(self) -> str | None:
        return self.in_pipe[0][1] if self.in_pipe else None

    # large frames to it (None until it said at READY that it can open them)
    segments: Segments | None = None
    cancel_signal: bool = False  # SIGUSR1 owed once the queued CANCEL frame is in the pipe
    spin_poll: Any = None  # a poll object on its reply pipe, made on the first reply spin


@dataclass(eq=False)
class FaultRule:
    """Make attempt ``attempt`` (None: every attempt) of activity ``name`` misbehave."""

    name: str
    attempt: int | None
    kind: str  # hang | crash | exit | raise | oom
    arg: Any
    remaining: int | None  # None: forever


@dataclass(frozen=True)
class SupervisorConfig:
    workers: int
    prefetch: int
    cancel_grace: float
    start_timeout: float
    shutdown_timeout: float
    max_tasks_per_worker: int | None
    max_memory_per_worker: int | None
    thread_limit: int | None
    cpu_affinity: tuple[frozenset[int], ...] | None  # worker n runs on set (n - 1) % len
    preload: tuple[str, ...]
    spares: int = 0  # ready workers held back to replace one that dies
    # "forkserver": a fresh fork server; "fork": one forked from the caller (while it has one
    # thread, else a fresh one); "spawn": a fresh interpreter per worker
    start_method: str = "forkserver"
    # after sending the pool's only call, of an activity that takes less than this on average:
    # wait for its reply on the CPU (up to this long) instead of sleeping in the loop (0: never)
    reply_spin: float = 0.0
    # in the environment of every process the pool starts (pool._tree.POOL_MARKER)
    pool_id: str = field(default_factory=new_pool_id)


_LINUX = sys.platform.startswith("linux")


def worker_environment(config: SupervisorConfig) -> dict[str, str]:
    """The environment workers start with: ours, the BLAS thread limit, and this package on
    ``PYTHONPATH`` (for a spawned worker, and an activity's own subprocesses)."""
    env = worker_env(config.thread_limit, config.pool_id)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
    return env


def stdlib_imported_by(module_names: Iterable[str]) -> list[str]:
    """The standard-library top-level modules these (already imported) modules import
    directly: modules they hold, and the modules of the functions and classes they imported
    from them (``from typing import Any`` names ``typing``)."""
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    found: set[str] = set()
    for name in module_names:
        module = sys.modules.get(name)
        if module is None:
            continue
        for value in list(vars(module).values()):
            owner: object
            if isinstance(value, types.ModuleType):
                owner = value.__name__
            else:
                try:
                    owner = getattr(value, "__module__", None)
                except Exception:  # an object whose attributes are computed, and failed
                    continue
            if isinstance(owner, str):
                top = owner.partition(".")[0]
                if top in stdlib:
                    found.add(top)
    return sorted(found)


def early_forkserver(config: SupervisorConfig) -> ForkServer | None:
    """With ``start_method="fork"``: a fork server forked from the caller, if that is safe now
    (the caller has one thread); None otherwise (then a fresh one is spawned).

    A ``with`` pool calls this before it starts its loop thread (after which the process has
    two threads); an ``async with`` pool from its start, on the caller's own thread."""
    if config.start_method != "fork":
        return None
    if not caller_can_fork():
        log.warning(
            "start_method='fork': this process runs more than one thread, and forking it could "
            "deadlock the fork server on a lock another thread holds; starting a fresh one"
        )
        return None
    try:
        return ForkServer(worker_environment(config), fork_caller=True)
    except OSError as exc:
        log.warning("could not fork the fork server (%s): spawning it", exc)
        return None


class Supervisor:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: SupervisorConfig,
        on_event: Callable[[PoolEvent], None] | None = None,
        on_output: Callable[[int, str | None, str], None] | None = None,
        forkserver: ForkServer | None = None,
        early_tried: bool = False,
    ) -> None:
        """``forkserver``: one forked from the caller before the loop thread started
        (``early_forkserver``, which ``early_tried`` says was called); the supervisor owns it
        from here on."""
        self.loop = loop
        self.config = config
        self.on_event = on_event
        self.event_kinds: frozenset[str] | None = None  # None: every kind (see set_on_event)
        self.on_output = on_output
        self.handles: dict[int, WorkerHandle] = {}
        self.scheduler = Scheduler(
            self,
            workers=config.workers,
            prefetch=config.prefetch,
            cancel_grace=config.cancel_grace,
            start_timeout=config.start_timeout,
            max_tasks_per_worker=config.max_tasks_per_worker,
            events=on_event is not None,
            spares=config.spares,
        )
        self.stats = Stats()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._ready: asyncio.Future[None] = loop.create_future()
        self._all_gone: asyncio.Future[None] = loop.create_future()
        self._call_ids = itertools.count(1)
        self._env: dict[str, str] = {}
        self._init_body = b""
        self.faults: dict[str, list[FaultRule]] = {}
        self._dirty: list[WorkerHandle] = []  # handles with frames queued in this event
        self._wakes: list[Callable[[], None]] = []  # see wake_later
        self._spinning = False  # in _spin_for_reply (never nested)
        # calls handed to the loop and not yet submitted (the Pool's inbox): no spin then
        self.inbox: collections.deque[Any] | tuple[()] = ()
        self.spins_caught = 0  # replies a spin caught / spins that gave up (for tests, tuning)
        self.spins_missed = 0
        self._forkserver: ForkServer | None = forkserver  # forks workers (None: spawn them)
        self._early_tried = early_tried
        # an fd each worker must be able to open through /proc before segments are used
        self._shm_probe: int | None = None
        if shm_supported():
            with contextlib.suppress(OSError):
                probe = os.memfd_create("activitypool-probe", os.MFD_CLOEXEC)
                self._shm_probe = above_stdio(probe)

    # -- lifecycle (loop thread) -----------------------------------------------------------
    async def start(self) -> None:
        self._env = worker_environment(self.config)
        main = sys.modules.get("__main__")
        main_path = getattr(main, "__file__", None)
        self._init_body = pickle.dumps(
            {
                "sys_path": list(sys.path),
                "preload": list(self.config.preload),
                "main_path": os.path.abspath(main_path) if main_path else None,
                "log_levels": _log_levels(),
            },
            protocol=5,
        )
        fs = self._forkserver
        if fs is None and not self._early_tried and _LINUX:
            fs = early_forkserver(self.config)  # (async with: this is the caller's thread)
        if fs is None and _LINUX:
            try:  # (it needs SOCK_SEQPACKET, waitid and pidfds: Linux)
                # under spawn too: it spawns the workers, and reaps what they leave behind
                fs = ForkServer(self._env, spawn=self.config.start_method == "spawn")
            except (OSError, AttributeError) as exc:
                log.warning("no fork server (%s): workers are spawned one by one", exc)
        self._forkserver = fs
        if fs is not None:
            self.loop.add_reader(fs.fileno(), self._on_forkserver)
            if not fs.forked_caller:  # (forked from the caller, it has the caller's modules)
                # before the first fork: what the activity modules import from the standard
                # library (the first worker reports the rest, e.g. a third-party package's)
                fs.warm(stdlib_imported_by(self.config.preload))
        self.scheduler.start(time.monotonic())
        self._after()
        await self._ready

    def _check_ready(self) -> None:
        if self._ready.done():
            return
        sched = self.scheduler
        if sched.broken is not None:
            self._ready.set_exception(sched.broken)
        elif sum(1 for w in sched.workers.values() if w.state is WorkerState.STARTING) == 0:
            self._ready.set_result(None)

    async def close(self, cancel: bool = False) -> None:
        sched = self.scheduler
        if cancel:
            sched.cancel_all(time.monotonic())
        else:
            sched.close()
        self._after()
        self._check_all_gone()
        if not self._all_gone.done():
            try:
                if cancel:
                    await asyncio.wait_for(
                        asyncio.shield(self._all_gone), self.config.shutdown_timeout
                    )
                else:
                    await asyncio.shield(self._all_gone)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                self.kill_all()
                raise
        self.kill_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def kill_all(self) -> None:
        """Last resort and final sweep: no process outlives the pool."""
        for handle in list(self.handles.values()):
            handle.proc.kill_tree()
            self._forget(handle)
            handle.proc.wait()
        fs = self._forkserver
        if fs is not None:
            self._forkserver = None
            if not fs.dead:
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(fs.fileno())
            fs.close()  # it kills and reaps whatever it still has, then exits
        if self._shm_probe is not None:
            os.close(self._shm_probe)
            self._shm_probe = None

    def _check_all_gone(self) -> None:
        if not self._all_gone.done() and self.scheduler.drained and not self.handles:
            self._all_gone.set_result(None)

    # -- callers (loop thread) -------------------------------------------------------------
    def new_call(
        self, defn: Any, policy: Any, payload: Any, waiter: Any, session: str | None
    ) -> Call:
        return Call(next(self._call_ids), defn, policy, payload, waiter, session)

    def submit(self, call: Call) -> None:
        self.scheduler.submit(call, time.monotonic())
        self._after()

    def submit_many(self, calls: list[Call]) -> None:
        now = time.monotonic()
        for call in calls:
            self.scheduler.submit(call, now)
        self._after()

    def cancel(self, call: Call) -> None:
        self.scheduler.cancel(call.id, time.monotonic())
        self._after()

    def cancel_many(self, calls: list[Call]) -> None:
        now = time.monotonic()
        for call in calls:
            self.scheduler.cancel(call.id, now)
        self._after()

    def add_fault(self, rule: FaultRule) -> None:
        self.faults.setdefault(rule.name, []).append(rule)

    def clear_faults(self) -> None:
        self.faults.clear()

    def _fault_for(self, name: str, attempt: int) -> tuple[str, Any] | None:
        rules = self.faults.get(name)
        if not rules:
            return None
        for rule in rules:
            if rule.attempt is None or rule.attempt == attempt:
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        rules.remove(rule)
                return (rule.kind, rule.arg)
        return None

    def release_session(self, session_id: str) -> None:
        self.scheduler.close_session(session_id)
        self._after()

    # -- the one timer ---------------------------------------------------------------------
    def wake_later(self, wake: Callable[[], None]) -> None:
        """Run ``wake`` (it wakes a caller's thread) once this event's frames are written.

        A thread woken mid-event wants the GIL while this thread still works and then writes:
        each such hand-off costs both a switch. Woken after the writes, it runs while this
        thread waits in the loop. ``_after`` runs these; a loop callback is the safety net.
        """
        if not self._wakes:
            if self.loop.is_closed():
                wake()
                return
            self.loop.call_soon(self._run_wakes)
        self._wakes.append(wake)

    def _run_wakes(self) -> None:
        wakes, self._wakes = self._wakes, []
        for wake in wakes:
            try:
                wake()
            except Exception:
                log.exception("waking a caller failed")

    def _after(self) -> None:
        """After every event: send what it queued, wake the callers it answered, re-arm the
        timer for the next deadline; then perhaps wait for a quick reply on the CPU."""
        spin = None
        if self._dirty:
            if self.config.reply_spin and not self._spinning:
                spin = self._spin_candidate()
            self._flush()
        if self._wakes:
            self._run_wakes()
        self._arm_timer()
        if spin is not None:
            # not now: first let what is ready run (a caller woken by this event may be about
            # to submit; then two calls are in flight and spinning would only delay it)
            self.loop.call_soon(self._spin_for_reply, spin)

    def _spin_candidate(self, handle: WorkerHandle | None = None) -> WorkerHandle | None:
        """The worker whose reply to spin for: it has the pool's only call, just sent, of an
        activity whose attempts take less than ``reply_spin`` on average. Calls one after
        another (``await pool.execute`` in a loop) then cost no loop wake-up per reply: on a
        VM a sleeping thread takes ~20 µs to wake, as long as a no-op call's work."""
        if handle is None:  # (the event's only write, which is about to be flushed)
            if len(self._dirty) != 1:
                return None
            handle = self._dirty[0]
        if len(self.scheduler.calls) != 1 or self.inbox or len(handle.in_pipe) != 1:
            return None
        if handle.outbox or handle.eof or handle.gone or handle.proc.fds_closed:
            return None  # (the write is not complete, or the worker is going or gone)
        took = self.scheduler.average_duration(handle.in_pipe[0][1])
        if took is None or took >= self.config.reply_spin:
            return None
        return handle

    def _spin_for_reply(self, handle: WorkerHandle) -> None:
        """Poll ``handle``'s reply pipe without sleeping for up to ``reply_spin``; handle the
        reply here if it comes (its caller then runs in this loop iteration), else leave it
        to the loop. Bounded, and only for calls that usually answer within the bound."""
        if self._spinning or self._spin_candidate(handle) is None:
            return  # since it was sent: another call came, the reply came, or the worker died
        poller = handle.spin_poll
        if poller is None:
            poller = handle.spin_poll = select.poll()
            poller.register(handle.proc.from_worker, select.POLLIN)
        self._spinning = True
        try:
            clock = time.monotonic
            end = clock() + self.config.reply_spin
            while not poller.poll(0):
                if clock() >= end:
                    self.spins_missed += 1
                    return
            self.spins_caught += 1
            self._on_readable(handle)
        finally:
            self._spinning = False

    def _arm_timer(self) -> None:
        when = self.scheduler.next_deadline()
        if when is None:
            return  # an armed timer may fire for nothing; cheaper than cancelling per call
        timer = self._timer
        if timer is not None:
            if self._timer_at <= when:
                return  # it fires first; the callback re-arms
            timer.cancel()
        self._timer_at = when
        # the loop's timers have millisecond resolution: round up, never wake before the deadline
        delay = math.ceil(max(0.0, when - time.monotonic()) * 1000) / 1000
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.scheduler.advance(time.monotonic())
        self._after()

    # -- Effects (called by the scheduler) -------------------------------------------------
    def spawn(self, worker_id: int) -> None:
        if not self._ready.done() or self._forking():
            # starting up (no caller waits), or a request to the fork server (no wait here)
            self.loop.call_soon(self._spawn_now, worker_id)
            return
        # A replacement by posix_spawn: start it a moment later. os.posix_spawn holds the GIL
        # until the child has exec'd (milliseconds on a loaded machine), and a caller just
        # woken with the dead worker's error needs the GIL to see it (seen: 1.5 -> 6-8 ms).
        self.loop.call_later(SPAWN_DELAY, self._spawn_now, worker_id)

    def _forking(self) -> bool:
        return self._forkserver is not None and not self._forkserver.dead

    def _spawn_now(self, worker_id: int) -> None:
        slot = self.scheduler.workers.get(worker_id)
        if slot is None or slot.state is not WorkerState.STARTING:
            return  # gone before it started (pool cancelled, start timeout)
        fs = self._forkserver
        if fs is not None and not fs.dead:
            try:
                fs.request(worker_id)  # answered in _on_forkserver
                return
            except OSError as exc:
                log.warning("the fork server failed (%s): spawning workers instead", exc)
                self._drop_forkserver()
        try:
            proc = spawn_worker(self._env)
        except OSError as exc:
            self._not_started(worker_id, str(exc))
            return
        self._adopt(worker_id, proc)

    def _not_started(self, worker_id: int, why: str) -> None:
        log.error("could not start a worker: %s", why)
        crash = WorkerCrashedError(
            f"could not start worker {worker_id}: {why}",
            exitcode=None,
            signal=None,
            pid=None,
            worker_id=worker_id,
        )
        self.scheduler.worker_exited(worker_id, crash, time.monotonic())
        self._check_ready()
        self._after()

    def _on_forkserver(self) -> None:
        fs = self._forkserver
        if fs is None:
            return
        for event in fs.read():
            kind = event[0]
            if kind == "forked":
                worker_id, proc = event[1], event[2]
                slot = self.scheduler.workers.get(worker_id)
                if proc is None:
                    self._not_started(worker_id, "the fork server could not fork")
                elif slot is None or slot.state is not WorkerState.STARTING:
                    proc.kill_tree()  # not wanted any more; its exit report reaps it
                    proc.close_fds()
                else:
                    self._adopt(worker_id, proc)
            elif kind == "exited":
                proc = event[1]
                handle = next((h for h in self.handles.values() if h.proc is proc), None)
                if handle is None:
                    fs.reap(proc)  # forgotten already
                elif not handle.gone:
                    self._drain_replies(handle)  # what it wrote last, before its exit
                    self._watch_exit(handle)
            elif kind == "gone":
                self._drop_forkserver()
                for worker_id in event[1]:  # requests it never answered: spawn those instead
                    self._spawn_now(worker_id)
        self._after()

    def _drop_forkserver(self) -> None:
        """The fork server is gone or failing: its workers die with it (their own exits are
        seen by pidfd); from now on workers are spawned."""
        fs = self._forkserver
        if fs is None:
            return
        log.warning("the fork server (pid %d) is gone: spawning workers from now on", fs.pid)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(fs.fileno())
        self._forkserver = None
        unanswered = fs.lost()  # (empty if its EOF was read: then the caller spawns those)
        fs.close(timeout=1.0)
        for handle in list(self.handles.values()):
            if handle.eof and not handle.gone:
                self._watch_exit(handle)  # was waiting for the server's report
        for worker_id in unanswered:  # asked for and never forked: spawn them instead
            assert isinstance(worker_id, int)
            self._spawn_now(worker_id)

    def _drain_replies(self, handle: WorkerHandle) -> None:
        """Read a dead worker's reply pipe to the end (its last frames, then EOF)."""
        while not handle.eof and not handle.gone:
            if not self._on_readable(handle):
                return

    def _adopt(self, worker_id: int, proc: WorkerProcess) -> None:
        """A started worker process becomes the handle of slot ``worker_id``: INIT it."""
        handle = WorkerHandle(worker_id, proc)
        if self._shm_probe is not None:
            handle.reader.peer = PeerSegments(proc.pid)
        self.handles[worker_id] = handle
        cpus = self.config.cpu_affinity
        if cpus is not None:
            try:
                os.sched_setaffinity(proc.pid, cpus[(worker_id - 1) % len(cpus)])
            except OSError as exc:  # a CPU outside our cgroup: run unpinned, say so
                log.warning("worker %d: cannot pin to %s: %s", worker_id, sorted(cpus[0]), exc)
        loop = self.loop
        loop.add_reader(proc.from_worker, self._on_readable, handle)
        loop.add_reader(proc.output, self._on_output, handle)
        init = pickle.loads(self._init_body)
        init["worker_id"] = worker_id
        init["shm_probe"] = self._shm_probe
        fs = self._forkserver
        if fs is not None and fs.wants_warming():
            init["report_stdlib"] = True  # which standard modules your activities needed
        self._write(handle, encode(Kind.INIT, 0, pickle.dumps(init, protocol=5)))
        self._after()

    def send_run(self, worker_id: int, call: Call) -> None:
        handle = self.handles[worker_id]
        defn = call.defn
        now_wall = time.time()
        meta = (  # a RunMeta, as a plain tuple (see RunMeta)
            defn.module,
            defn.qualname,
            defn.name,
            str(call.id),
            call.attempt,
            call.session,
            now_wall + defn.start_to_close_timeout if defn.start_to_close_timeout else None,
            defn.heartbeat_timeout,
            call.heartbeat_details,
            self._fault_for(defn.name, call.attempt) if self.faults else None,
        )
        body, buffers = call.payload
        handle.in_pipe.append((call.seq, defn.name))
        meta_body = pickle.dumps(meta, protocol=5)
        if not buffers and len(body) < SMALL_BODY:
            self._write(handle, [encode_small(Kind.RUN, call.seq, meta_body, body)])
            return
        self._write(handle, encode(Kind.RUN, call.seq, meta_body, body, buffers, handle.segments))

    def send_cancel(self, worker_id: int, seq: int) -> None:
        handle = self.handles.get(worker_id)
        if handle is None:
            return
        self._write(handle, encode(Kind.CANCEL, seq))
        self._flush_and_signal(handle)

    def send_withdraw(self, worker_id: int, seqs: list[int]) -> None:
        handle = self.handles.get(worker_id)
        if handle is None:
            return
        self._write(handle, [encode_small(Kind.WITHDRAW, seq) for seq in seqs])
        self._flush_and_signal(handle)

    def _flush_and_signal(self, handle: WorkerHandle) -> None:
        # SIGUSR1 makes a busy worker read its pipe: the frames must be in it by then
        handle.cancel_signal = True
        self._flush()
        self._signal_if_written(handle)

    def _signal_if_written(self, handle: WorkerHandle) -> None:
        if handle.cancel_signal and not handle.outbox and not handle.unsent:
            handle.cancel_signal = False
            handle.proc.signal_worker(signal.SIGUSR1)

    def close_session(self, worker_id: int, session_id: str) -> None:
        handle = self.handles.get(worker_id)
        if handle is not None:
            self._write(handle, encode(Kind.CLOSE_SESSION, 0, pickle.dumps(session_id, protocol=5)))

    def kill(self, worker_id: int) -> None:
        handle = self.handles.get(worker_id)
        if handle is None:
            return
        handle.proc.kill_tree()
        # stop listening now: whatever it wrote last is about an attempt already decided
        self._stop_reading(handle)
        # Reap on a later turn of the loop: this runs inside the scheduler, and a process that
        # is already gone would otherwise report its exit into the scheduler re-entrantly
        # (seen under load: the pool reported ready while its replacement was not yet made).
        self.loop.call_soon(self._watch_exit, handle)

    def retire(self, worker_id: int) -> None:
        handle = self.handles.get(worker_id)
        if handle is None:
            return
        self._write(handle, encode(Kind.SHUTDOWN))
        # a worker that ignores SHUTDOWN (stuck in teardown) is killed after the grace period
        self.loop.call_later(self.config.shutdown_timeout, self._retire_overdue, handle)

    def _retire_overdue(self, handle: WorkerHandle) -> None:
        if handle.id in self.handles and not handle.proc.reaped:
            log.warning("worker %d did not exit after shutdown; killing it", handle.id)
            handle.proc.kill_tree()

    def resolve(self, call: Call, value: Any) -> None:
        self.stats.completed(time.monotonic() - call.submitted_at)
        _set_result(call.waiter, value)

    def reject(self, call: Call, exc: BaseException) -> None:
        self.stats.failed()
        _set_exception(call.waiter, exc)

    def set_on_event(
        self, on_event: Callable[[PoolEvent], None] | None, kinds: frozenset[str] | None = None
    ) -> None:
        """Start (or, with None, stop) handing events to ``on_event`` (on the loop thread);
        only those of ``kinds`` when given (no others are built)."""
        self.on_event = on_event
        self.event_kinds = kinds
        self.scheduler.events = on_event is not None

    def event(self, kind: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        if self.event_kinds is not None and kind not in self.event_kinds:
            return
        wid = fields.get("worker_id")
        handle = self.handles.get(wid) if wid is not None else None
        if handle is not None:
            fields.setdefault("pid", handle.proc.pid)
        try:
            self.on_event(make_event(kind, time.time(), fields))
        except Exception:
            log.exception("on_event callback failed")

    # -- I/O -------------------------------------------------------------------------------
    def _write(self, handle: WorkerHandle, parts: list[bytes | memoryview]) -> None:
        """Queue frames for a worker; ``_flush`` sends each worker's batch in one syscall."""
        if handle.eof:
            return
        if not handle.unsent:
            self._dirty.append(handle)
        handle.unsent.extend(parts)

    def _flush(self) -> None:
        dirty = self._dirty
        for handle in dirty:
            parts, handle.unsent = handle.unsent, []
            if handle.eof or handle.proc.fds_closed:
                continue
            if handle.outbox:  # the pipe is full already: keep the order
                handle.outbox.extend(memoryview(p).cast("B") for p in parts if len(p))
                continue
            self._send_now(handle, parts)
        dirty.clear()

    def _send_now(self, handle: WorkerHandle, parts: list[bytes | memoryview]) -> None:
        fd = handle.proc.to_worker
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
            handle.outbox.append(memoryview(data).cast("B")[n:])
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
                handle.outbox.append(v[n:])
                n = 0
            if not handle.outbox:
                return
        self.loop.add_writer(fd, self._on_writable, handle)

    def _on_writable(self, handle: WorkerHandle) -> None:
        fd = handle.proc.to_worker
        box = handle.outbox
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
        self.loop.remove_writer(fd)
        self._signal_if_written(handle)

    def _on_readable(self, handle: WorkerHandle) -> bool:
        """Read and handle what the worker wrote; False when nothing was there."""
        error: ProtocolError | None = None
        frames: list[Frame] | tuple[()] | None
        try:
            frames = handle.reader.read(handle.proc.from_worker)
        except BlockingIOError:
            return False
        except ProtocolError as exc:  # the stream lost its framing: nothing after it is sound
            frames, error = exc.frames, exc
        except OSError:
            frames = None
        if frames is None:
            self._on_eof(handle)
            return True
        peer = handle.reader.peer
        if peer is not None and peer.released:  # copied out: the worker may reuse them
            ids, peer.released = peer.released, []
            self._write(handle, [encode_small(Kind.RELEASE, seg_id) for seg_id in ids])
        now = time.monotonic()  # one clock reading for everything this read brought
        try:
            for frame in frames:
                self._on_frame(handle, frame, now)
        except ProtocolError as exc:
            error = exc
        if error is not None:
            self._malformed(handle, error)
        self._after()
        return True

    def _malformed(self, handle: WorkerHandle, exc: ProtocolError) -> None:
        """A malformed frame from a worker: kill it; its attempt fails (and is retried as a
        crash is) and a replacement starts."""
        log.error("worker %d sent a malformed frame (%s); killing it", handle.id, exc)
        crash = WorkerCrashedError(
            f"protocol error from worker {handle.id}: {exc}"
            + (f" while running {handle.activity!r}" if handle.activity else ""),
            exitcode=None,
            signal=None,
            pid=handle.proc.pid,
            worker_id=handle.id,
        )
        self.scheduler.kill_worker(handle.id, crash, time.monotonic())
        self._stop_reading(handle)  # (already, if it was killed: not if it had died before)

    def _on_frame(self, handle: WorkerHandle, frame: Frame, now: float) -> None:
        kind = frame.kind
        sched = self.scheduler
        if kind is Kind.RESULT or kind is Kind.FAILURE:
            in_pipe = handle.in_pipe
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
                sched.failure(handle.id, frame.seq, err, now)
                return
            # checked here, where it comes back, so that a worker never needs pydantic
            call = sched.running_call(handle.id, frame.seq)
            if call is not None:
                try:
                    value = call.defn.validate_result(value)
                except ApplicationError as err:
                    sched.failure(handle.id, frame.seq, err, now)
                    return
            sched.result(handle.id, frame.seq, value, now)
            if self.config.max_memory_per_worker is not None:
                self._check_memory(handle, now)
        elif kind is Kind.FAILURE:
            sched.failure(handle.id, frame.seq, _rebuild_failure(frame), now)
        elif kind is Kind.WITHDRAWN:
            for entry in handle.in_pipe:
                if entry[0] == frame.seq:
                    handle.in_pipe.remove(entry)
                    break
            sched.withdrawn(handle.id, frame.seq, now)
        elif kind is Kind.RELEASE:
            if handle.segments is None:
                raise ProtocolError("RELEASE from a worker that was sent no segment")
            handle.segments.release(frame.seq)
        elif kind is Kind.HEARTBEAT:
            try:
                beat = frame.load()
            except BaseException as exc:
                beat = (f"<heartbeat details could not be unpickled: {safe_repr(exc)}>", now)
            # (details, at): a heartbeat; (at,): the activity was entered at `at` after a slow
            # setup; (): its setup runs user code (Depends factories). See pool._worker.
            if len(beat) == 2:
                # CLOCK_MONOTONIC is one clock for every process on the machine
                call = sched.heartbeat(handle.id, frame.seq, beat[0], min(beat[1], now))
                if call is not None and call.on_heartbeat is not None:
                    try:
                        call.on_heartbeat(beat[0])
                    except Exception:
                        log.exception("on_heartbeat callback of activity %r failed", call.defn.name)
            elif len(beat) == 1:
                sched.entered(handle.id, frame.seq, min(beat[0], now))
            else:
                sched.setup_started(handle.id, frame.seq)
        elif kind is Kind.LOG:
            self._on_log(handle, frame)
        elif kind is Kind.READY:
            try:
                ready = frame.load()
                shm = bool(ready.get("shm"))
            except Exception:
                ready, shm = {}, False
            fs = self._forkserver
            if ready.get("stdlib") and fs is not None and not fs.dead:
                fs.warm(ready["stdlib"])
            if shm and handle.reader.peer is not None:
                handle.segments = Segments()
            else:
                handle.reader.peer = None
            sched.worker_ready(handle.id, now)
            self._check_ready()
        else:
            raise ProtocolError(f"unexpected frame {kind.name} from a worker")

    def _check_memory(self, handle: WorkerHandle, now: float) -> None:
        limit = self.config.max_memory_per_worker
        assert limit is not None
        try:
            import psutil

            rss = psutil.Process(handle.proc.pid).memory_info().rss
        except Exception:
            return
        if rss > limit:
            self.scheduler.request_recycle(handle.id, now)

    def _on_output(self, handle: WorkerHandle) -> None:
        # One read per callback, and the splitter's work is linear in it: a worker that prints
        # without end cannot hold up the loop, nor make us keep more than one line of it.
        try:
            data = os.read(handle.proc.output, OUTPUT_READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._emit_output(handle, handle.output.feed(data))
            return
        self.loop.remove_reader(handle.proc.output)
        last = handle.output.flush()
        if last is not None:
            self._emit_output(handle, [last])

    def _emit_output(self, handle: WorkerHandle, lines: list[bytes]) -> None:
        """Forward a worker's printed lines: to ``on_output``, or else to our stderr, tagged."""
        if not lines:
            return
        activity = handle.activity
        texts = [line.decode("utf-8", "replace") for line in lines]
        if self.on_output is not None:
            for text in texts:
                try:
                    self.on_output(handle.id, activity, text)
                except Exception:
                    log.exception("on_output callback failed")
            return
        stream = sys.stderr  # looked up each time: pytest and users swap it
        if stream is None:
            return
        tag = f"[worker {handle.id} {activity}] " if activity else f"[worker {handle.id}] "
        try:
            stream.write("".join(f"{tag}{text}\n" for text in texts))
            stream.flush()
        except Exception:  # closed, gone or broken: nowhere to show it, and the loop goes on
            pass

    def _on_log(self, handle: WorkerHandle, frame: Frame) -> None:
        """A worker's log record: handled by the logger of its name here, as if logged here,
        with ``worker_id``, ``pid``, ``activity``, ``attempt`` and ``activity_id`` on it."""
        entry = decode_log(frame.body)  # (a malformed one is a ProtocolError: the worker goes)
        name = entry.name or "root"
        logger = logging.getLogger() if name == "root" else logging.getLogger(name)
        if not logger.isEnabledFor(entry.levelno):
            return
        pathname = entry.pathname or ""
        filename = os.path.basename(pathname)
        pid = handle.proc.pid
        record = logging.makeLogRecord(
            {
                "name": name,
                "msg": entry.msg or "",
                "levelno": entry.levelno,
                "levelname": entry.levelname or logging.getLevelName(entry.levelno),
                "pathname": pathname,
                "filename": filename,
                "module": os.path.splitext(filename)[0],
                "lineno": entry.lineno,
                "funcName": entry.funcName,
                "thread": entry.thread,
                "threadName": entry.threadName,
                "process": pid,
                "processName": f"activitypool worker {handle.id}",
                "exc_text": entry.exc_text,
                "stack_info": entry.stack_info,
                "worker_id": handle.id,
                "pid": pid,
                "activity": entry.activity or handle.activity,
                "attempt": entry.attempt or None,
                "activity_id": entry.activity_id,
            }
        )
        # its time is the worker's, not ours
        record.relativeCreated += (entry.created - record.created) * 1000
        record.created = entry.created
        record.msecs = (entry.created - int(entry.created)) * 1000
        try:
            logger.handle(record)
        except Exception:
            log.exception("a log record of worker %d could not be handled", handle.id)

    def _on_eof(self, handle: WorkerHandle) -> None:
        self._stop_reading(handle)
        self._watch_exit(handle)

    def _stop_reading(self, handle: WorkerHandle) -> None:
        if not handle.eof:
            handle.eof = True
            self.loop.remove_reader(handle.proc.from_worker)
            if handle.outbox:
                handle.outbox.clear()
                self.loop.remove_writer(handle.proc.to_worker)

    def _watch_exit(self, handle: WorkerHandle) -> None:
        proc = handle.proc
        if proc.poll():
            self._exited(handle)
        elif proc.forked_by is not None and not proc.forked_by.dead:
            return  # its fork server reports the exit (_on_forkserver calls us again)
        elif proc.pidfd is not None:
            self.loop.add_reader(proc.pidfd, self._on_pidfd, handle)
        else:  # no pidfd: it closed its pipe, so it is exiting; a short blocking wait
            proc.wait()
            self._exited(handle)

    def _on_pidfd(self, handle: WorkerHandle) -> None:
        if handle.proc.poll():
            assert handle.proc.pidfd is not None
            self.loop.remove_reader(handle.proc.pidfd)
            self._exited(handle)

    def _exited(self, handle: WorkerHandle) -> None:
        if handle.gone:
            return
        handle.gone = True
        proc = handle.proc
        # what it printed last, before the fds go (bounded: a child of its may still write)
        with contextlib.suppress(OSError):
            for _ in range(OUTPUT_DRAIN // OUTPUT_READ):
                data = os.read(proc.output, OUTPUT_READ)
                if not data:
                    break
                self._emit_output(handle, handle.output.feed(data))
        last = handle.output.flush()
        if last is not None:
            self._emit_output(handle, [last])
        self._forget(handle)
        how = f"signal {proc.signal}" if proc.signal is not None else f"exit code {proc.exitcode}"
        crash = WorkerCrashedError(
            f"worker {handle.id} (pid {proc.pid}) died with {how}"
            + (f" while running {handle.activity!r}" if handle.activity else ""),
            exitcode=proc.exitcode,
            signal=proc.signal,
            pid=proc.pid,
            worker_id=handle.id,
        )
        self.scheduler.worker_exited(handle.id, crash, time.monotonic())
        self._check_ready()
        self._after()
        self._check_all_gone()

    def _forget(self, handle: WorkerHandle) -> None:
        proc = handle.proc
        if proc.fds_closed:
            self.handles.pop(handle.id, None)
            return
        loop = self.loop
        for fd in (proc.from_worker, proc.output, proc.pidfd):
            if fd is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(fd)
        with contextlib.suppress(Exception):
            loop.remove_writer(proc.to_worker)
        proc.close_fds()
        if proc.forked_by is not None and proc.reaped:
            proc.forked_by.reap(proc)  # (not reaped yet: its exit report reaps it)
        # its segments die with it; ours to it are freed here (the kernel frees any page it
        # still had mapped when it exits)
        if handle.segments is not None:
            handle.segments.close()
        if handle.reader.peer is not None:
            handle.reader.peer.close()
        self.handles.pop(handle.id, None)


def _log_levels() -> dict[str, int]:
    """The caller's logging levels a worker applies to its loggers: the root's effective
    level (under "") and every level set on a logger by name."""
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


def _rebuild_failure(frame: Frame) -> BaseException:
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
    with contextlib.suppress(Exception):
        exc_obj.remote_traceback_text = info.traceback  # type: ignore[attr-defined]
    return exc_obj


def _set_result(waiter: Any, value: Any) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            waiter.set_result(value)
    elif isinstance(waiter, concurrent.futures.Future):
        # PENDING until now, so the caller could cancel() at any time before this; one lock
        # round on the common path, the cancelled one is notified for wait()/as_completed()
        try:
            waiter.set_result(value)
        except concurrent.futures.InvalidStateError:
            _notify_cancelled(waiter)
    else:
        waiter(value, None)


def _notify_cancelled(waiter: concurrent.futures.Future[Any]) -> None:
    with contextlib.suppress(RuntimeError):  # already notified
        waiter.set_running_or_notify_cancel()


def _set_exception(waiter: Any, exc: BaseException) -> None:
    if isinstance(waiter, asyncio.Future):
        if not waiter.done():
            if isinstance(exc, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(exc)
    elif isinstance(waiter, concurrent.futures.Future):
        if isinstance(exc, asyncio.CancelledError):
            waiter.cancel()  # the canceller's own cancel() got here first in practice
            _notify_cancelled(waiter)
            return
        try:
            waiter.set_exception(exc)
        except concurrent.futures.InvalidStateError:
            _notify_cancelled(waiter)
    else:
        waiter(None, exc)
