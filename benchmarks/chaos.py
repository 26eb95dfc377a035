"""Chaos: calls under random SIGKILLs, hangs, raises and exits; nothing lost or duplicated.

    python -m benchmarks.chaos --calls 10000 [--workers 2] [--seed 0] [--kill-every 50]
                               [--start-method forkserver|fork|spawn] [--seconds S]

A thread SIGKILLs a random ready worker every ``--kill-every`` ms (uniformly between half and
one and a half times that). Meanwhile many concurrent callers make the calls: sync and async
activities, plain calls and sticky sessions of 2-8 calls submitted together, payloads of a few
bytes and of 1-4 MiB (both ways), awaited (``execute``) or through a ``concurrent.futures``
future (``submit``). On its first attempt a call may raise (retried), ``os._exit`` (the worker
crashes), hang without heartbeats (on its first three attempts: the heartbeat timeout kills the
worker, unless a random kill comes first), run slowly with heartbeats, or fail for good (a
non-retryable error: the caller must get exactly that error).

Every result names its call (see ``benchmarks/_chaos_activities.py``), and the workers log
every execution. At the end one line sums up, and the exit status is 1 if any of these is
non-zero:

- ``lost``: a call that got no outcome, or a wrong one (a plain call that failed although its
  retries are unlimited, an error other than the planned one).
- ``duplicated``: an outcome delivered twice (the pool's count of delivered outcomes exceeds the
  calls), or a result that belongs to another call.
- ``corrupt``: a result with the right call's name but wrong bytes.
- ``out_of_order``: a sticky call that started before an earlier call of its session had
  returned, that ran after its session was lost, or that ran on a second worker.

Counted, not failures: ``kills`` (SIGKILLs sent), ``retries`` (retries scheduled), ``repeated``
(executions beyond one per call: at-least-once after a kill), ``sessions_lost`` (a session
whose worker died: its in-flight and later calls fail with ``StickySessionLostError``, which is
the correct outcome).

``run_chaos`` is the core, also run (short) by ``tests/integration/test_chaos.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks import _chaos_activities as acts
from pool import Pool, PoolEvent
from sdk import ActivityError, ApplicationError, StickySessionLostError

# Per call, the fault of its first attempt(s) (weights). A hang costs a worker a heartbeat timeout,
# so hangs are rare; "fail" only for plain calls (a session must be able to run to its end).
PLAIN_FAULTS = {"none": 800, "raise": 60, "exit": 30, "hang": 5, "slow": 60, "fail": 45}
STICKY_FAULTS = {"none": 850, "raise": 60, "exit": 10, "hang": 3, "slow": 77}
SESSION_SHARE = 0.25  # of jobs; a job is one plain call or one session
SESSION_LEN = (2, 8)
LARGE_SHARE = 0.03
LARGE_SIZE = (1 << 20, 4 << 20)
SMALL_SIZE = (0, 256)
FUTURE_SHARE = 0.3  # callers that use submit() (a concurrent.futures future), not execute()
ASYNC_SHARE = 0.5
# Callers per worker: enough that queues are deep, prefetch happens and sessions interleave.
CALLERS_PER_WORKER = 8
# With calls outstanding and no outcome for this long, the run stops and counts them lost.
STALL = 60.0
# Failures described per kind (the counts are complete).
EXAMPLES_PER_KIND = 5


class RandomKiller:
    """SIGKILLs a random ready worker of a pool every ``gap`` seconds (uniform in the range).

    Pass ``on_event`` to the pool, then run the work inside ``killing(pool)``. ``kills=None``
    keeps killing until the block ends. Only workers that are up are killed: a pool gives up on
    workers that keep dying before they are ready (a loaded machine starts them slowly), which
    is another test.
    """

    def __init__(
        self,
        seed: int,
        kills: int | None,
        gap: tuple[float, float],
        delay: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.kills, self.gap, self.delay = kills, gap, delay
        self.counts: collections.Counter[str] = collections.Counter()
        self.ready: set[int] = set()
        self.sent = 0  # SIGKILLs delivered
        self._stop = threading.Event()

    def on_event(self, event: PoolEvent) -> None:
        self.counts[event.kind] += 1
        if event.kind == "worker_started" and event.pid is not None:
            self.ready.add(event.pid)

    def count(self, kind: str) -> int:
        return self.counts[kind]

    @contextlib.contextmanager
    def killing(self, pool: Pool) -> Iterator[None]:
        thread = threading.Thread(target=self._run, args=(pool,), name="random-killer")
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()

    def _run(self, pool: Pool) -> None:
        if self.delay and self._stop.wait(self.delay):
            return
        n = 0
        while self.kills is None or n < self.kills:
            n += 1
            if self._stop.wait(self.rng.uniform(*self.gap)):
                return
            try:
                pids = sorted(self.ready.intersection(pool.worker_pids()))
            except RuntimeError:
                # an ``async with`` pool answers worker_pids() from this thread, reading the
                # supervisor's dict while its loop changes it: skip this round
                continue
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.sent += 1


@dataclass(frozen=True)
class Planned:
    """One call of the run: what it sends and does."""

    key: int
    seq: int  # place in its session, -1 for a plain call
    fault: str
    size: int
    is_async: bool


@dataclass(frozen=True)
class Job:
    """One plain call, or a sticky session's calls (submitted together, in order)."""

    calls: tuple[Planned, ...]
    session: bool
    use_future: bool


def plan(calls: int, seed: int) -> list[Job]:
    """The run's jobs, the same for the same ``calls`` and ``seed``."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    key = 0

    def pick(faults: dict[str, int]) -> str:
        return rng.choices(list(faults), weights=list(faults.values()))[0]

    def one(seq: int, faults: dict[str, int]) -> Planned:
        nonlocal key
        size = rng.randint(*LARGE_SIZE) if rng.random() < LARGE_SHARE else rng.randint(*SMALL_SIZE)
        call = Planned(key, seq, pick(faults), size, rng.random() < ASYNC_SHARE)
        key += 1
        return call

    while key < calls:
        use_future = rng.random() < FUTURE_SHARE
        if rng.random() < SESSION_SHARE and calls - key >= SESSION_LEN[0]:
            n = min(rng.randint(*SESSION_LEN), calls - key)
            jobs.append(Job(tuple(one(i, STICKY_FAULTS) for i in range(n)), True, use_future))
        else:
            jobs.append(Job((one(-1, PLAIN_FAULTS),), False, use_future))
    return jobs


@dataclass
class Summary:
    """What a chaos run saw. ``failures`` counts what must never happen."""

    calls: int = 0
    ok: int = 0
    failed_as_planned: int = 0
    sessions: int = 0
    sessions_lost: int = 0
    session_calls_lost: int = 0
    kills: int = 0
    deadline_kills: int = 0
    worker_exits: int = 0
    retries: int = 0
    executions: int = 0
    repeated: int = 0
    lost: int = 0
    duplicated: int = 0
    corrupt: int = 0
    out_of_order: int = 0
    seconds: float = 0.0
    start_method: str = ""
    workers: int = 0
    seed: int = 0
    problems: list[str] = field(default_factory=list)
    _kinds: collections.Counter[str] = field(default_factory=collections.Counter, repr=False)

    @property
    def failures(self) -> int:
        return self.lost + self.duplicated + self.corrupt + self.out_of_order

    def problem(self, kind: str, text: str) -> None:
        """Describe a failure: the first few of each kind (the counts are complete)."""
        self._kinds[kind] += 1
        if self._kinds[kind] <= EXAMPLES_PER_KIND:
            self.problems.append(text)

    def check_deliveries(self, delivered: int, unanswered: int) -> None:
        """The pool's count of outcomes it delivered, against the calls that got one: more
        means some caller was answered twice (a future ignores the second answer)."""
        answered = self.calls - unanswered
        if delivered > answered:
            self.duplicated += delivered - answered
            self.problem("delivered twice", f"{delivered} outcomes delivered for {answered} calls")

    def line(self) -> str:
        return (
            f"chaos: calls={self.calls} kills={self.kills} retries={self.retries} "
            f"lost={self.lost} duplicated={self.duplicated} out_of_order={self.out_of_order} "
            f"corrupt={self.corrupt} | ok={self.ok} failed_as_planned={self.failed_as_planned} "
            f"sessions={self.sessions} sessions_lost={self.sessions_lost} "
            f"session_calls_lost={self.session_calls_lost} deadline_kills={self.deadline_kills} "
            f"worker_exits={self.worker_exits} executions={self.executions} "
            f"repeated={self.repeated} | {self.start_method} workers={self.workers} "
            f"seed={self.seed} {self.seconds:.1f} s"
        )


class ChaosRun:
    """One run's callers and checks (on the pool's loop)."""

    def __init__(self, pool: Pool, summary: Summary, log: str) -> None:
        self.pool, self.summary, self.log = pool, summary, log
        self.outstanding: dict[int, Planned] = {}
        self.last_outcome = time.monotonic()
        self.sticky_keys: set[int] = set()

    def spec(self, call: Planned) -> acts.Spec:
        return acts.Spec(
            call.key, call.seq, call.fault, acts.payload(call.key, call.size), self.log
        )

    async def call(self, target: Any, call: Planned, use_future: bool) -> tuple[Any, Any]:
        """(value, None) or (None, exception): the one outcome the caller got."""
        if call.seq >= 0:
            fn: Any = acts.sticky_async if call.is_async else acts.sticky
        else:
            fn = acts.plain_async if call.is_async else acts.plain
        self.outstanding[call.key] = call
        try:
            if use_future:
                value = await asyncio.wrap_future(target.submit(fn, self.spec(call)))
            else:
                value = await target.execute(fn, self.spec(call))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return None, exc
        finally:
            self.outstanding.pop(call.key, None)
            self.last_outcome = time.monotonic()
        return value, None

    def check_value(self, call: Planned, value: Any) -> int | None:
        """The worker's pid when ``value`` is this call's right result; else counts why not."""
        s = self.summary
        if not isinstance(value, acts.Outcome) or value.key != call.key:
            s.duplicated += 1
            s.problem(
                "foreign", f"call {call.key} got a result that is not its own: {_short(value)}"
            )
            return None
        expected = acts.payload(call.key, call.size)
        if value.digest != acts.digest(expected) or value.echo != expected[::-1]:
            s.corrupt += 1
            s.problem("corrupt", f"call {call.key} ({call.size} bytes): wrong bytes in its result")
            return None
        return value.pid

    async def plain(self, call: Planned, use_future: bool) -> None:
        s = self.summary
        value, exc = await self.call(self.pool, call, use_future)
        if exc is None:
            if self.check_value(call, value) is not None:
                if call.fault == "fail":
                    s.lost += 1
                    s.problem(
                        "wrong outcome", f"call {call.key} succeeded but raises non-retryably"
                    )
                else:
                    s.ok += 1
        elif call.fault == "fail" and is_planned_failure(exc, call.key):
            s.failed_as_planned += 1
        else:
            s.lost += 1
            s.problem(
                "wrong outcome", f"call {call.key} ({call.fault}) got a wrong error: {_short(exc)}"
            )

    async def session(self, job: Job) -> None:
        s = self.summary
        s.sessions += 1
        self.sticky_keys.update(c.key for c in job.calls)
        with self.pool.sticky_session() as session:
            outcomes = await asyncio.gather(
                *(self.call(session, call, job.use_future) for call in job.calls)
            )
        lost_at: int | None = None
        pids: set[int] = set()
        for call, (value, exc) in zip(job.calls, outcomes, strict=True):
            if exc is None:
                pid = self.check_value(call, value)
                if pid is None:
                    continue
                pids.add(pid)
                if lost_at is not None:
                    s.out_of_order += 1
                    s.problem(
                        "after loss",
                        f"sticky call {call.key} (#{call.seq}) ran after its session was lost "
                        f"at #{lost_at}",
                    )
                else:
                    s.ok += 1
            elif isinstance(exc, StickySessionLostError):
                s.session_calls_lost += 1
                if lost_at is None:
                    lost_at = call.seq
                    s.sessions_lost += 1
            else:
                s.lost += 1
                s.problem(
                    "wrong outcome",
                    f"sticky call {call.key} ({call.fault}) got a wrong error: {_short(exc)}",
                )
        if len(pids) > 1:
            s.out_of_order += 1
            s.problem(
                "two workers",
                f"session of calls {job.calls[0].key}.. ran on workers {sorted(pids)}",
            )

    async def caller(self, jobs: collections.deque[Job], stop_at: float | None) -> None:
        while jobs and (stop_at is None or time.monotonic() < stop_at):
            job = jobs.popleft()
            self.summary.calls += len(job.calls)
            if job.session:
                await self.session(job)
            else:
                await self.plain(job.calls[0], job.use_future)

    def read_log(self) -> None:
        """Executions, repeats, and what the workers saw of the sessions' order."""
        s = self.summary
        per_key: collections.Counter[int] = collections.Counter()
        pids: dict[int, set[int]] = collections.defaultdict(set)
        unordered: set[int] = set()
        with contextlib.suppress(FileNotFoundError), open(self.log) as f:
            for line in f:
                key, _attempt, pid, in_order = (int(x) for x in line.split())
                per_key[key] += 1
                if key in self.sticky_keys:
                    pids[key].add(pid)
                if not in_order:
                    unordered.add(key)
        s.executions = sum(per_key.values())
        s.repeated = s.executions - len(per_key)
        for key in sorted(unordered):
            s.out_of_order += 1
            s.problem(
                "unordered",
                f"sticky call {key} started before an earlier call of its session returned",
            )
        for key, seen in sorted(pids.items()):
            if len(seen) > 1:
                s.out_of_order += 1
                s.problem(
                    "two workers", f"sticky call {key} ran on more than one worker: {sorted(seen)}"
                )


async def run_chaos(
    calls: int = 10_000,
    *,
    workers: int = 2,
    seed: int = 0,
    kill_every: float = 0.05,
    start_method: Literal["forkserver", "fork", "spawn"] = "forkserver",
    seconds: float | None = None,
    stall: float = STALL,
    log_dir: str | Path | None = None,
) -> Summary:
    """Make ``calls`` calls (fewer if ``seconds`` runs out first) while a thread SIGKILLs a
    random worker every ~``kill_every`` seconds; return what was seen (see the module doc)."""
    jobs = collections.deque(plan(calls, seed))
    summary = Summary(start_method=start_method, workers=workers, seed=seed)
    killer = RandomKiller(seed, None, (kill_every * 0.5, kill_every * 1.5))
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-"))
        log = str(Path(log_dir) / f"executions-{seed}.log")
        Path(log).unlink(missing_ok=True)
        t0 = time.monotonic()
        pool = Pool(
            [acts],
            workers=workers,
            start_method=start_method,
            on_event=killer.on_event,
        )
        async with pool:
            run = ChaosRun(pool, summary, log)
            stop_at = None if seconds is None else t0 + seconds
            n_callers = min(CALLERS_PER_WORKER * workers, len(jobs)) or 1
            with killer.killing(pool):
                tasks = [asyncio.ensure_future(run.caller(jobs, stop_at)) for _ in range(n_callers)]
                await _watch(tasks, run, stall)
            if run.outstanding:
                summary.lost += len(run.outstanding)
                summary.problem(
                    "no outcome",
                    f"no outcome within {stall:.0f} s for calls {sorted(run.outstanding)[:10]}",
                )
                await pool.aclose(cancel=True)
            stats = pool.stats()
        summary.check_deliveries(stats.completed + stats.failed, len(run.outstanding))
        run.read_log()
    summary.kills = killer.sent
    summary.deadline_kills = killer.count("worker_killed")
    summary.worker_exits = killer.count("worker_exited")
    summary.retries = killer.count("retry_scheduled")
    summary.seconds = time.monotonic() - t0
    return summary


async def _watch(tasks: list[asyncio.Future[None]], run: ChaosRun, stall: float) -> None:
    """Wait for the callers; stop them if no call has had an outcome for ``stall`` seconds."""
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=min(stall, 1.0))
        if pending and run.outstanding and time.monotonic() - run.last_outcome > stall:
            break
    # a stalled run: keep the callers' outstanding calls on the books, then stop them
    stalled = dict(run.outstanding)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    run.outstanding = stalled


def is_planned_failure(exc: BaseException, key: int) -> bool:
    cause = exc.__cause__
    return (
        isinstance(exc, ActivityError)
        and isinstance(cause, ApplicationError)
        and cause.non_retryable
        and cause.message == f"fail {key}"
    )


def _short(obj: Any) -> str:
    text = repr(obj)
    if isinstance(obj, BaseException) and obj.__cause__ is not None:
        text += f" <- {obj.__cause__!r}"
    return text if len(text) <= 300 else text[:300] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chaos",
        description="Calls under random worker kills, hangs, raises and exits: nothing lost, "
        "nothing duplicated, sessions in order.",
    )
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kill-every", type=float, default=50.0, help="ms between SIGKILLs (mean; default 50)"
    )
    parser.add_argument(
        "--start-method", choices=("forkserver", "fork", "spawn"), default="forkserver"
    )
    parser.add_argument(
        "--seconds", type=float, help="stop making new calls after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.calls < 1 or args.workers < 1 or args.kill_every <= 0:
        parser.error("--calls and --workers must be >= 1, --kill-every > 0")
    summary = asyncio.run(
        run_chaos(
            args.calls,
            workers=args.workers,
            seed=args.seed,
            kill_every=args.kill_every / 1000,
            start_method=args.start_method,
            seconds=args.seconds,
        )
    )
    for text in summary.problems:
        print(f"  {text}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failures else 0


if __name__ == "__main__":
    sys.exit(main())
