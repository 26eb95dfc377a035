"""The imperative shell around the scheduler: it implements ``Effects`` and routes events.

Data flow (everything below runs on one event loop thread, the supervisor's)::

    caller ──execute/submit──▶ Supervisor.submit ──▶ Scheduler (pure: who runs what, when)
                                                        │ Effects: send_run / kill / spawn / resolve
                                                        ▼
    caller ◀──waiter── Supervisor.resolve ◀── Scheduler ◀── ChannelListener ◀── Channel (pipes)
                                                                          ▲        │ RUN
                                                                 RESULT / │        ▼
                                                               FAILURE /  worker process
                                                               HEARTBEAT  (pool._worker) ─▶ activity
                              Spawner (fork server, spawn, exit watch) ──▶ SpawnerListener ─┘

Ownership: the loop thread owns everything here. This class owns the worker handles (one
``pool._channel.Channel`` per live worker, by worker id), the batch of channels with frames
queued in the current event (``_batch``, flushed in ``after``), and the objects that do one job
each for it: the one loop timer armed for the scheduler's earliest deadline and the callers to
wake at the end of the event (``pool._loop``: ``DeadlineTimer``, ``Wakes``), the reply spin
(``pool._spin``), where events go (``pool._events.EventSink``), the fault rules
(``pool._faults``) and the counters. The scheduler owns all call, worker and session state and
every deadline; a channel owns one worker's pipes, segments and output; the spawner owns the
fork server and sees exits. Other threads reach in only through the inbox
(``pool._loop.Inbox``, which this class owns: one ``call_soon_threadsafe`` drains a burst) or
``call_soon_threadsafe``.

One exception, the direct lane (``pool._lane``): while the pool has nothing else to do, this
class lends one idle worker to the threads blocked in ``pool.run``. Then the thread holding
``Lane``'s lock owns that worker's request writes, reply pipe and ``FrameReader``, and runs a
quick call there without this thread; the loop keeps the worker's output pipe and its exit, and
gets the worker back (``Lender``) before anything else needs it, or with the call in hand when
it is more than a quick RESULT.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from pool._calls_state import Call, run_meta
from pool._channel import Channel
from pool._config import PoolConfig
from pool._events import EventSink, PoolEvent, PoolStats, Stats
from pool._faults import FaultRule, FaultRules
from pool._lane import Lender
from pool._loop import DeadlineTimer, Inbox, Wakes
from pool._output import OutputCallback
from pool._process import ForkServer, WorkerProcess
from pool._protocol import ProtocolError
from pool._scheduler import Scheduler
from pool._spawner import Spawner
from pool._spin import ReplySpin
from sdk._errors import ApplicationError, WorkerCrashedError

log = logging.getLogger("activitypool")


class Supervisor:
    """Implements the scheduler's ``Effects``, ``ChannelListener`` and ``SpawnerListener``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        config: PoolConfig,
        on_event: Callable[[PoolEvent], None] | None = None,
        on_output: OutputCallback | None = None,
        forkserver: ForkServer | None = None,
        early_tried: bool = False,
    ) -> None:
        """``forkserver``: one forked from the caller before the loop thread started
        (``pool._spawner.early_forkserver``, which ``early_tried`` says was called)."""
        self.loop = loop
        self.config = config
        self.events = EventSink(on_event, self._pid_of)
        self.on_output = on_output
        self.handles: dict[int, Channel] = {}
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
        self.spawner = Spawner(loop, config, self, forkserver, early_tried)
        self.stats = Stats()
        self._timer = DeadlineTimer(loop, self._on_timer)  # armed for the next deadline
        self._ready: asyncio.Future[None] = loop.create_future()
        self._all_gone: asyncio.Future[None] = loop.create_future()
        self.faults: FaultRules | None = None  # made by the first inject_fault
        self._batch: list[Channel] = []  # channels with frames queued in this event
        self._wakes = Wakes(loop)  # callers to wake at the end of the event
        self.wake_later = self._wakes.later
        self.inbox = Inbox(loop, self)  # calls and actions other threads hand to the loop
        self.reply_spin = ReplySpin(config.reply_spin, self.scheduler, self.inbox)
        # an idle worker lent to threads blocked in pool.run (pool._lane)
        self.lender = Lender(self.scheduler, self.handles, config, self.inbox, self)
        self.lane = self.lender.lane

    # -- lifecycle (loop thread) -----------------------------------------------------------
    async def start(self) -> None:
        self.spawner.start()
        self.scheduler.start(time.monotonic())
        self.after()
        await self._ready

    def _check_ready(self) -> None:
        if self._ready.done():
            return
        sched = self.scheduler
        if sched.broken is not None:
            self._ready.set_exception(sched.broken)
        elif sched.ready():
            self._ready.set_result(None)

    async def close(self, cancel: bool = False) -> None:
        sched = self.scheduler
        if cancel:
            sched.cancel_all(time.monotonic())
        else:
            sched.close()
        self.after()
        self._check_all_gone()
        if not self._all_gone.done():
            gone = asyncio.shield(self._all_gone)
            try:  # a cancelling close waits for the workers at most shutdown_timeout
                await (asyncio.wait_for(gone, self.config.shutdown_timeout) if cancel else gone)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                self.kill_all()
                raise
        self.kill_all()
        self._timer.cancel()

    def kill_all(self) -> None:
        """Last resort and final sweep: no process outlives the pool."""
        for channel in list(self.handles.values()):
            channel.proc.kill_tree()
            self._forget(channel)
            channel.proc.wait()
        self.spawner.close()  # the fork server kills and reaps whatever it still has

    def _check_all_gone(self) -> None:
        if not self._all_gone.done() and self.scheduler.drained and not self.handles:
            self._all_gone.set_result(None)

    # -- what the pool asks (any thread: through Lifecycle.ask) ----------------------------
    def worker_pids(self) -> list[int]:
        """Pids of the live workers."""
        return [ch.proc.pid for ch in self.handles.values() if not ch.proc.reaped and not ch.eof]

    def process_pids(self) -> list[int]:
        """The live workers' pids and the fork server's (for leak checks)."""
        pids = self.worker_pids()
        server = self.spawner.forkserver_pid()
        if server is not None:
            pids.append(server)
        return pids

    def stats_snapshot(self) -> PoolStats:
        n, latencies = self.lane.drain_stats()
        self.stats.add(n, latencies)
        return self.stats.snapshot(self.scheduler.live_workers(), self.scheduler.queued())

    # -- callers (loop thread) -------------------------------------------------------------
    def submit(self, call: Call) -> None:
        if self.lender.lent is not None:  # (inline: every awaited call passes here)
            self.lender.reclaim()  # the scheduler places calls knowing every worker
        self.scheduler.submit(call, time.monotonic())
        self.after()

    def submit_many(self, calls: list[Call]) -> None:
        self.lender.reclaim()
        now = time.monotonic()
        for call in calls:
            self.scheduler.submit(call, now)
        self.after()

    def cancel(self, call: Call) -> None:
        self.scheduler.cancel(call.id, time.monotonic())
        self.after()

    def cancel_many(self, calls: list[Call]) -> None:
        now = time.monotonic()
        for call in calls:
            self.scheduler.cancel(call.id, now)
        self.after()

    def add_fault(self, rule: FaultRule) -> None:
        if self.faults is None:
            self.faults = FaultRules()
        self.faults.add(rule)
        self.lender.reclaim()  # a lent worker would run calls without the rule

    def clear_faults(self) -> None:
        if self.faults is not None:
            self.faults.clear()

    def release_session(self, session_id: str) -> None:
        self.scheduler.close_session(session_id)
        self.after()

    # -- the end of every event ------------------------------------------------------------
    def wake_blocking(self, wake: Callable[[], None]) -> None:
        """``wake_later`` for a thread blocked in ``pool.run``: the pool may lend it a worker
        for its next call (see ``pool._lane``)."""
        self.lender.hint = True
        self.wake_later(wake)

    def replay_exit(self, channel: Channel) -> None:
        """The exit of a worker reported while it was lent, now that it is back."""
        self.exit_reported(channel.proc)

    def after(self) -> None:
        """After every event (a call, a read, a timer, a fork server report): send what it
        queued, wake the callers it answered, re-arm the timer for the next deadline; then
        perhaps wait for a quick reply on the CPU."""
        lender = self.lender
        if lender.lent is not None or lender.hint:
            lender.review()  # lend, or take back (its own ``after`` sends what that starts)
        spin = None
        batch = self._batch
        if batch:
            spinner = self.reply_spin
            if spinner.seconds and not spinner.spinning and len(batch) == 1:
                spin = spinner.candidate(batch[0])
            for channel in batch:
                channel.flush()
            batch.clear()
        wakes = self._wakes
        if wakes.pending:
            wakes.run()
        self._timer.arm(self.scheduler.next_deadline())
        if spin is not None:  # on the next turn (see pool._spin)
            self.loop.call_soon(self.reply_spin.spin, spin)

    def _on_timer(self) -> None:
        self.scheduler.advance(time.monotonic())
        self.after()

    # -- Effects (called by the scheduler) -------------------------------------------------
    def spawn(self, worker_id: int) -> None:
        self.spawner.spawn(worker_id, now=not self._ready.done())

    def send_run(self, worker_id: int, call: Call) -> None:
        channel = self.handles[worker_id]
        defn = call.defn
        meta = run_meta(call)
        fault = None
        if self.faults is not None:
            fault = self.faults.match(defn.name, call.attempt)
        if call.trace is not None or call.chunk:
            trace = None
            if call.trace is not None:  # one span per attempt, ended by the attempt events
                self.scheduler.events = True
                trace = self.events.begin_span(call, worker_id, channel.proc.pid)
            meta += (fault, trace, call.chunk)
        elif fault is not None:
            meta += (fault,)
        meta_body = pickle.dumps(meta, protocol=5)
        channel.send_run(call.seq, defn.name, meta_body, call.payload)

    def send_cancel(self, worker_id: int, seq: int) -> None:
        channel = self.handles.get(worker_id)
        if channel is not None:
            channel.send_cancel(seq)

    def send_withdraw(self, worker_id: int, seqs: list[int]) -> None:
        channel = self.handles.get(worker_id)
        if channel is not None:
            channel.send_withdraw(seqs)

    def close_session(self, worker_id: int, session_id: str) -> None:
        channel = self.handles.get(worker_id)
        if channel is not None:
            channel.send_close_session(session_id)

    def kill(self, worker_id: int) -> None:
        channel = self.handles.get(worker_id)
        if channel is None:
            return
        channel.proc.kill_tree()
        channel.output.catch_up()
        self._keep_output(channel, channel.running_seq)
        # stop listening now: whatever it wrote last is about an attempt already decided
        channel.stop_reading()
        # Reap on a later turn of the loop: this runs inside the scheduler, and a process that
        # is already gone would otherwise report its exit into the scheduler re-entrantly
        # (then the pool could report ready while the replacement is not yet asked for).
        self.loop.call_soon(self._watch_exit, channel)

    def retire(self, worker_id: int) -> None:
        channel = self.handles.get(worker_id)
        if channel is None:
            return
        channel.send_shutdown()
        # a worker that ignores SHUTDOWN (stuck in teardown) is killed after the grace period
        self.loop.call_later(self.config.shutdown_timeout, self._retire_overdue, channel)

    def _retire_overdue(self, channel: Channel) -> None:
        if channel.id in self.handles and not channel.proc.reaped:
            log.warning("worker %d did not exit after shutdown; killing it", channel.id)
            channel.proc.kill_tree()

    def resolve(self, call: Call, value: Any) -> None:
        self.stats.completed(time.monotonic() - call.submitted_at)
        self.lender.last_worker = call.worker
        call.waiter.settle(value, None)

    def reject(self, call: Call, exc: BaseException) -> None:
        self.stats.failed()
        self.events.call_failed(call.id, exc)
        call.waiter.settle(None, exc)

    def set_on_event(
        self, on_event: Callable[[PoolEvent], None] | None, kinds: frozenset[str] | None = None
    ) -> None:
        """Start (or, with None, stop) handing events to ``on_event`` (on the loop thread);
        only those of ``kinds`` when given (no others are built)."""
        events = self.events
        events.on_event, events.kinds = on_event, kinds
        self.scheduler.events = events.wanted
        self.lender.reclaim()  # a lent worker's calls make no events

    def event(self, kind: str, **fields: Any) -> None:
        self.events.emit(kind, fields)

    def _pid_of(self, worker_id: int) -> int | None:
        channel = self.handles.get(worker_id)
        return channel.proc.pid if channel is not None else None

    # -- ChannelListener: what a worker sent -----------------------------------------------
    def on_result(self, channel: Channel, seq: int, value: Any, now: float) -> None:
        sched = self.scheduler
        # checked here, where it comes back, so that a worker never needs pydantic
        call = sched.running_call(channel.id, seq)
        if call is not None:
            try:
                defn = call.defn
                value = defn.validate_results(value) if call.chunk else defn.validate_result(value)
            except ApplicationError as err:
                call.output = channel.output.tail(seq)
                sched.failure(channel.id, seq, err, now)
                return
        sched.result(channel.id, seq, value, now)
        limit = self.config.max_memory_per_worker
        if limit is not None:
            rss = channel.proc.rss()
            if rss is not None and rss > limit:
                sched.request_recycle(channel.id, now)

    def on_failure(self, channel: Channel, seq: int, exc: BaseException, now: float) -> None:
        self._keep_output(channel, seq)
        self.scheduler.failure(channel.id, seq, exc, now)

    def _keep_output(self, channel: Channel, seq: int | None) -> None:
        """The attempt ``seq`` ends in failure: the last lines it printed go with its call, for
        the error that may end the call (``ActivityError.output``)."""
        if seq is None:
            return
        call = self.scheduler.running_call(channel.id, seq)
        if call is not None:
            call.output = channel.output.tail(seq)

    def on_withdrawn(self, channel: Channel, seq: int, now: float) -> None:
        self.scheduler.withdrawn(channel.id, seq, now)

    def on_heartbeat(self, channel: Channel, seq: int, details: Any, at: float) -> None:
        call = self.scheduler.heartbeat(channel.id, seq, details, at)
        if call is not None and call.on_heartbeat is not None:
            try:
                call.on_heartbeat(details)
            except Exception:
                log.exception("on_heartbeat callback of activity %r failed", call.defn.name)

    def on_entered(self, channel: Channel, seq: int, at: float) -> None:
        self.scheduler.entered(channel.id, seq, at)

    def on_setup_started(self, channel: Channel, seq: int) -> None:
        self.scheduler.setup_started(channel.id, seq)

    def on_ready(self, channel: Channel, stdlib: list[str], now: float) -> None:
        self.spawner.warm(stdlib)
        self.scheduler.worker_ready(channel.id, now)
        self._check_ready()

    def on_malformed(self, channel: Channel, exc: ProtocolError) -> None:
        """A malformed frame from a worker: kill it; its attempt fails (and is retried as a
        crash is) and a replacement starts."""
        log.error("worker %d sent a malformed frame (%s); killing it", channel.id, exc)
        crash = channel.crash(f"protocol error from worker {channel.id}: {exc}")
        self.scheduler.kill_worker(channel.id, crash, time.monotonic())
        channel.stop_reading()  # (already, if it was killed: not if it had died before)

    def on_eof(self, channel: Channel) -> None:
        channel.stop_reading()
        self._watch_exit(channel)

    # -- SpawnerListener: processes --------------------------------------------------------
    def wanted(self, worker_id: int) -> bool:
        return self.scheduler.wants_process(worker_id)

    def started(self, worker_id: int, proc: WorkerProcess) -> None:
        """A started worker process becomes the handle of slot ``worker_id``: INIT it."""
        shm = self.spawner.shm_probe is not None
        channel = Channel(self.loop, worker_id, proc, self, self._batch, self.on_output, shm)
        self.handles[worker_id] = channel
        channel.start_reading()
        channel.send_init(self.spawner.init_settings(worker_id))
        self.after()

    def not_started(self, worker_id: int, why: str) -> None:
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
        self.after()

    def exit_reported(self, proc: WorkerProcess) -> None:
        channel = next((ch for ch in self.handles.values() if ch.proc is proc), None)
        if channel is None:
            self.spawner.reap_unclaimed(proc)  # forgotten already
        elif self.lender.exited(channel):
            return  # a calling thread still reads its reply pipe: replay_exit, once it is back
        elif not channel.gone:
            channel.drain_replies()  # what it wrote last, before its exit
            self._watch_exit(channel)

    def _watch_exit(self, channel: Channel) -> None:
        self.spawner.watch_exit(channel.proc, partial(self._exited, channel))

    def _exited(self, channel: Channel) -> None:
        if channel.gone:
            return
        channel.gone = True
        channel.output.drain()
        self._keep_output(channel, channel.running_seq)
        self._forget(channel)
        proc = channel.proc
        how = f"signal {proc.signal}" if proc.signal is not None else f"exit code {proc.exitcode}"
        crash = channel.crash(f"worker {channel.id} (pid {proc.pid}) died with {how}", exited=True)
        self.scheduler.worker_exited(channel.id, crash, time.monotonic())
        self._check_ready()
        self.after()
        self._check_all_gone()

    def _forget(self, channel: Channel) -> None:
        channel.close()
        self.spawner.release(channel.proc)
        self.handles.pop(channel.id, None)
