"""activitypool beside ProcessPoolExecutor, multiprocessing.Pool, loky and pebble, in one run.

    python -m benchmarks.bench [--quick] [--json OUT] [--only ROWS] [--compare OLD.json]

Every pool has 2 workers. Each figure is the median and [min..max] over repetitions (3 by
default); "ap/this" is activitypool's median divided by that contender's (below 1 means
activitypool is lower, which for a time is better and for a rate is worse). A contender that
cannot do a row is printed "n/a (reason)" and the run goes on. Every process started is gone
when a cell ends: a leftover is killed and reported as a problem. Results go to
benchmarks/results/latest.json (or --json), which a later run can --compare against.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from benchmarks import _activities, _contenders
from benchmarks._contenders import (
    PEERS,
    ActivityPool,
    Broken,
    Contender,
    RawPipe,
    sweep,
)
from benchmarks._measure import (
    Metric,
    NotAvailable,
    RowResult,
    Summary,
    percentile,
    render,
    repeat,
    rows_to_json,
    summarize,
)

MiB = 1 << 20
RESULTS = Path(__file__).parent / "results" / "latest.json"
AP = "activitypool"
# BLAS/OpenMP thread-count variables: set by hand, they make the thread_limit row moot.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class Config:
    reps: int = 3
    noop_calls: int = 2000
    warmup: int = 200
    tasks: int = 20_000
    # (key, label, bytes, "bytes" | "numpy", round trips per repetition)
    payloads: tuple[tuple[str, str, int, str, int], ...] = (
        ("bytes_1m", "1 MiB bytes", MiB, "bytes", 30),
        ("bytes_10m", "10 MiB bytes", 10 * MiB, "bytes", 8),
        ("numpy_10m", "10 MiB numpy array", 10 * MiB, "numpy", 8),
        ("numpy_100m", "100 MiB numpy array", 100 * MiB, "numpy", 2),
    )
    heartbeats: int = 1_000_000
    numpy_items: int = 200
    error_wait: float = 5.0  # how long an in-flight error may take before "it never came"
    replace_wait: float = 3.0  # how long a replacement worker may take before "none came"
    settle: float = 0.3  # pause before each repetition that kills a worker: pools refill
    close_limit: float = 5.0  # a peer's close taking longer counts as hung


FULL = Config()
QUICK = replace(
    FULL,
    noop_calls=300,
    warmup=30,
    tasks=2_000,
    payloads=tuple((k, label, n, kind, 1) for k, label, n, kind, _ in FULL.payloads),
    heartbeats=100_000,
    numpy_items=20,
    error_wait=1.0,
    replace_wait=0.5,
    settle=0.2,
    close_limit=1.0,
)

# -- cells -------------------------------------------------------------------------------------


@dataclass
class Notes:
    """What a cell's body says beside its figures: notes, and why a metric is missing."""

    notes: dict[str, list[str]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def add(self, text: str, metric: str = "*") -> None:
        bucket = self.notes.setdefault(metric, [])
        if text and text not in bucket:
            bucket.append(text)

    def lack(self, metric: str, reason: str) -> None:
        self.missing.setdefault(metric, reason)


Body = Callable[[Notes], Mapping[str, Summary]]


def cell(row: RowResult, name: str, body: Body) -> None:
    """Run one contender's part of a row; whatever happens, the row gets a cell per metric."""
    notes = Notes()
    problems_before = len(_contenders.problems)
    t0 = time.perf_counter()
    failure = ""
    try:
        got = dict(body(notes))
    except Exception as exc:
        got, failure = {}, _describe(exc, detail=True)
    finally:
        strays = sweep()
        if strays:
            _contenders.problems.append(f"{name}: {len(strays)} stray process(es) after the cell")
    for problem in _contenders.problems[problems_before:]:
        notes.add(f"PROBLEM: {problem}")
    cells: dict[str, Summary | NotAvailable] = {}
    for metric in row.metrics:
        summary = got.get(metric.key)
        if summary is None:
            cells[metric.key] = NotAvailable(
                notes.missing.get(metric.key) or failure or "not measured"
            )
            continue
        summary.note = "; ".join(notes.notes.get(metric.key, []) + notes.notes.get("*", []))
        cells[metric.key] = summary
    row.cells[name] = cells
    status = f"n/a: {failure}" if failure else "ok"
    print(f"  [{row.key}] {name:<34} {time.perf_counter() - t0:6.1f} s  {status}", file=sys.stderr)


def not_available(row: RowResult, name: str, reason: str) -> None:
    row.cells[name] = {m.key: NotAvailable(reason) for m in row.metrics}


def _describe(exc: BaseException, detail: bool = False) -> str:
    """``Outer <- Cause`` type names (``Broken``, this script's own wrapper, left out)."""
    if isinstance(exc, Broken) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = type(exc).__name__
    if exc.__cause__ is not None:
        text += f" <- {type(exc.__cause__).__name__}"
    message = str(exc).strip()
    if detail and message and message != type(exc).__name__:
        text += f": {message.splitlines()[0][:100]}"
    return text


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _contenders_for() -> Iterator[Contender]:
    yield ActivityPool()
    for peer in PEERS:
        yield peer()


# -- 1. sequential no-op round trip ------------------------------------------------------------


def _latency_sample(latencies_ns: list[int]) -> dict[str, float]:
    latencies_ns.sort()
    return {
        "median": statistics.median(latencies_ns) / 1e3,
        "p99": percentile(latencies_ns, 99) / 1e3,
    }


def _sequential(cfg: Config, call: Callable[[int], Any]) -> dict[str, Summary]:
    for i in range(cfg.warmup):
        if call(i) != i:
            raise AssertionError("no-op returned something else")

    def once() -> dict[str, float]:
        clock = time.perf_counter_ns
        latencies = []
        for i in range(cfg.noop_calls):
            t0 = clock()
            call(i)
            latencies.append(clock() - t0)
        return _latency_sample(latencies)

    return repeat(cfg.reps, once)


def _sequential_async(cfg: Config) -> dict[str, Summary]:
    import uvloop

    from pool import Pool

    async def main() -> list[dict[str, float]]:
        async with Pool([_activities], workers=2) as pool:
            noop = _activities.ap_noop
            for i in range(cfg.warmup):
                if await pool.execute(noop, i) != i:
                    raise AssertionError("no-op returned something else")
            samples = []
            clock = time.perf_counter_ns
            for _ in range(cfg.reps):
                latencies = []
                for i in range(cfg.noop_calls):
                    t0 = clock()
                    await pool.execute(noop, i)
                    latencies.append(clock() - t0)
                samples.append(_latency_sample(latencies))
            return samples

    return summarize(uvloop.run(main()))


def row_noop(cfg: Config, row: RowResult) -> None:
    for contender in _contenders_for():

        def body(notes: Notes, c: Contender = contender) -> Mapping[str, Summary]:
            with c:
                if isinstance(c, ActivityPool):
                    notes.add("pool.run() from the main thread, `with Pool`")
                    pool, noop = c.pool, c.fn("noop")
                    return _sequential(cfg, lambda i: pool.run(noop, i))
                fn = c.fn("noop")
                return _sequential(cfg, lambda i: c.call(fn, i))

        cell(row, contender.name, body)
        if isinstance(contender, ActivityPool):

            def body_async(notes: Notes) -> Mapping[str, Summary]:
                notes.add("await pool.execute() under `async with Pool` on uvloop.run()")
                return _sequential_async(cfg)

            cell(row, f"{AP} async", body_async)

    def body_raw(notes: Notes) -> Mapping[str, Summary]:
        notes.add("8-byte ping-pong over os.pipe with a forked child")
        with RawPipe() as raw:
            return _sequential(cfg, lambda i: raw.ping() or i)

    cell(row, RawPipe.name, body_raw)


# -- 2. throughput -----------------------------------------------------------------------------


def _check(results: list[Any], n: int) -> None:
    if len(results) != n or results[-1] != n - 1:
        raise AssertionError(f"expected {n} results in order, got {len(results)}")


def _map_chunked(
    cfg: Config, c: ActivityPool | _contenders.MultiprocessingPool, chunksize: int, notes: Notes
) -> dict[str, Summary]:
    """Only the map metric, with ``chunksize`` items per call."""
    n = cfg.tasks
    notes.lack("submit", "map only")
    notes.add(f"{-(-n // chunksize)} calls of {chunksize} items" if chunksize > 1 else "", "map")
    with c:
        noop = c.fn("noop")
        c.submit_all(noop, range(cfg.warmup))

        def once() -> dict[str, float]:
            t0 = time.perf_counter()
            _check(c.map(noop, range(n), chunksize=chunksize), n)
            return {"map": n / (time.perf_counter() - t0)}

        return repeat(cfg.reps, once)


def row_throughput(cfg: Config, row: RowResult) -> None:
    n = cfg.tasks
    # multiprocessing.Pool.map's default chunksize: ceil(len / (4 * workers))
    mp_chunk = -(-n // (4 * Contender.workers))
    for contender in _contenders_for():

        def body(notes: Notes, c: Contender = contender) -> Mapping[str, Summary]:
            if c.name == "multiprocessing.Pool":
                notes.add(f"map batches by default (chunksize {mp_chunk})", "map")
            with c:
                noop = c.fn("noop")
                c.submit_all(noop, range(cfg.warmup))

                def once() -> dict[str, float]:
                    t0 = time.perf_counter()
                    _check(c.map(noop, range(n)), n)
                    t1 = time.perf_counter()
                    _check(c.submit_all(noop, range(n)), n)
                    t2 = time.perf_counter()
                    return {"map": n / (t1 - t0), "submit": n / (t2 - t1)}

                return repeat(cfg.reps, once)

        cell(row, contender.name, body)
        # the same map with the other's batching: activitypool in chunks as large as
        # multiprocessing.Pool's default, multiprocessing.Pool one task per item
        if isinstance(contender, ActivityPool):
            cell(
                row,
                f"{AP} map chunksize={mp_chunk}",
                lambda notes: _map_chunked(cfg, ActivityPool(), mp_chunk, notes),
            )
        elif contender.name == "multiprocessing.Pool":
            cell(
                row,
                "multiprocessing.Pool map chunksize=1",
                lambda notes: _map_chunked(cfg, _contenders.MultiprocessingPool(), 1, notes),
            )


# -- 3. payload round trip ---------------------------------------------------------------------


def _payloads(cfg: Config) -> dict[str, Any]:
    import numpy as np

    made: dict[str, Any] = {}
    for key, _, size, kind, _ in cfg.payloads:
        made[key] = bytes(size) if kind == "bytes" else np.ones(size // 8, dtype=np.float64)
    return made


def _nbytes(value: Any) -> int:
    return value if isinstance(value, int) else memoryview(value).nbytes


def _round_trips(
    cfg: Config, data: dict[str, Any], echo: Callable[[Any], Any]
) -> dict[str, Summary]:
    def checked(value: Any) -> None:
        if _nbytes(echo(value)) != memoryview(value).nbytes:
            raise AssertionError("the payload came back with another size")

    checked(data[cfg.payloads[0][0]])  # warm-up

    def once() -> dict[str, float]:
        sample = {}
        for key, _, size, _, calls in cfg.payloads:
            t0 = time.perf_counter()
            for _ in range(calls):
                checked(data[key])
            sample[key] = size * calls / (time.perf_counter() - t0) / 1e6
        return sample

    return repeat(cfg.reps, once)


def row_payload(cfg: Config, row: RowResult) -> None:
    data = _payloads(cfg)
    try:
        for contender in _contenders_for():

            def body(notes: Notes, c: Contender = contender) -> Mapping[str, Summary]:
                with c:
                    fn = c.fn("echo")
                    return _round_trips(cfg, data, lambda value: c.call(fn, value))

            cell(row, contender.name, body)

        def body_raw(notes: Notes) -> Mapping[str, Summary]:
            notes.add("the same bytes through os.pipe, no pickling")
            with RawPipe() as raw:
                return _round_trips(cfg, data, raw.echo)

        cell(row, RawPipe.name, body_raw)
    finally:
        data.clear()


# -- 4. recovery after SIGKILL -----------------------------------------------------------------


def _wait_pid_file(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text())
        time.sleep(0.0005)
    raise TimeoutError("the task never started")


def _next_task(c: Contender, notes: Notes, metric: str) -> None:
    """One no-op done on the same pool; a pool that broke is rebuilt first (and says so)."""
    noop = c.fn("noop")
    try:
        c.call(noop, 1)
    except (Broken, concurrent.futures.BrokenExecutor) as exc:
        notes.add(f"{c.rebuild()} ({_describe(exc)})", metric)
        c.call(noop, 1)


def row_recovery(cfg: Config, row: RowResult) -> None:
    for contender in _contenders_for():

        def body(notes: Notes, c: Contender = contender) -> Mapping[str, Summary]:
            tmp = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
            try:
                with c:
                    c.call(c.fn("noop"), 0)
                    sleeper = c.fn("pid_then_sleep")
                    counter = iter(range(1_000_000))

                    def once() -> dict[str, float]:
                        time.sleep(cfg.settle)
                        sample = {}
                        path = tmp / f"pid-{next(counter)}"
                        fut = c.submit(sleeper, str(path), 60.0)
                        pid = _wait_pid_file(path, 10.0)
                        t_kill = time.perf_counter()
                        os.kill(pid, signal.SIGKILL)
                        try:
                            fut.result(cfg.error_wait)
                        except TimeoutError:
                            lost = f"no error: the task is lost (waited {cfg.error_wait:g} s)"
                            notes.lack("error", lost)
                            notes.add("next task sent after giving up on the lost one", "next")
                        except Exception as exc:
                            sample["error"] = _ms(time.perf_counter() - t_kill)
                            notes.add(_describe(exc), "error")
                        else:
                            notes.lack("error", "the killed task returned a result")
                        t_next = time.perf_counter()
                        _next_task(c, notes, "next")
                        sample["next"] = _ms(time.perf_counter() - t_next)
                        return sample

                    return repeat(cfg.reps, once)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        cell(row, contender.name, body)


# -- 5. start-to-close timeout -----------------------------------------------------------------


def row_timeout(cfg: Config, row: RowResult) -> None:
    for contender in _contenders_for():
        if not (contender.activitypool or contender.has_task_timeout):
            not_available(row, contender.name, "no per-task timeout: the worker stays busy")
            continue

        def body(notes: Notes, c: Contender = contender) -> Mapping[str, Summary]:
            if isinstance(c, ActivityPool):
                notes.add("@activity(start_to_close_timeout=0.2)", "late")
            else:
                notes.add("schedule(..., timeout=0.2)", "late")
            with c:
                c.call(c.fn("noop"), 0)
                forever = c.fn("sleep_forever")

                def once() -> dict[str, float]:
                    time.sleep(cfg.settle)
                    t0 = time.perf_counter()
                    exc = c.submit_with_timeout(forever, 0.2).exception(10.0)
                    elapsed = time.perf_counter() - t0
                    if exc is None:
                        raise AssertionError("sleep_forever returned")
                    notes.add(_describe(exc), "late")
                    t_next = time.perf_counter()
                    _next_task(c, notes, "next")
                    return {
                        "late": _ms(elapsed - 0.2),
                        "next": _ms(time.perf_counter() - t_next),
                    }

                return repeat(cfg.reps, once)

        cell(row, contender.name, body)


# -- 6. heartbeat timeout ----------------------------------------------------------------------


def row_heartbeat(cfg: Config, row: RowResult) -> None:
    def body(notes: Notes) -> Mapping[str, Summary]:
        notes.add("heartbeat_timeout=0.1; beat time sent as the heartbeat details")
        with ActivityPool() as c:
            c.call(c.fn("noop"), 0)

            def once() -> dict[str, float]:
                time.sleep(cfg.settle)
                exc = c.submit(_activities.ap_stop_beating).exception(10.0)
                seen = time.monotonic()
                if exc is None:
                    raise AssertionError("stop_beating returned")
                beat = getattr(exc.__cause__, "last_heartbeat_details", None)
                if not isinstance(beat, float):
                    raise AssertionError(f"no heartbeat details on {_describe(exc)}")
                notes.add(_describe(exc))
                return {"late": _ms(seen - (beat + 0.1))}

            return repeat(cfg.reps, once)

    cell(row, AP, body)


# -- 7. cold start and replacement -------------------------------------------------------------


def _wait_new_child(old: set[int], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(_contenders.child_pids()) - old:
            return time.perf_counter()
        time.sleep(0.001)
    return None


def _why_no_replacement(c: Contender) -> str:
    try:
        c.submit(c.fn("noop"), 1).result(2.0)
    except TimeoutError:
        return "no replacement, and the pool hangs"
    except Exception as exc:
        return f"the kill broke the pool ({_describe(exc, detail=True)})"
    return "no new worker process"


def _ap_with_events() -> Contender:
    return ActivityPool(events=True)


def _ap_with_spare() -> Contender:
    return ActivityPool(name="activitypool spares=1", spares=1, events=True)


def _ap_fork(events: bool = True) -> Contender:
    """The fork server forked from this (single-threaded) caller, as the fork peers fork it."""
    return ActivityPool(name="activitypool start_method=fork", events=events, start_method="fork")


FRESH = "ACTIVITYPOOL_BENCH_FRESH"  # set in the fresh interpreter such a row runs in


def _row_in_fresh_interpreter(cfg: Config, row: RowResult) -> None:
    """Run this row in a fresh interpreter and take its cells.

    Cold start and worker memory depend on the caller: with ``start_method="fork"`` activitypool
    forks its fork server from the caller (if it has one thread), and the fork peers fork the
    caller whatever it runs, so their speed and memory follow its size. By the time these rows
    run, this interpreter holds numpy, the payloads' garbage and maybe BLAS threads; every
    contender is measured instead from a caller that has imported only the pools and the
    activities, the same in every run.
    """
    why = "measured in a fresh interpreter (the caller: the pools and the activities imported)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{row.key}.json"
        argv = [sys.executable, "-m", "benchmarks.bench", "--only", row.key, "--json", str(out)]
        if cfg == QUICK:
            argv.append("--quick")
        env = {**os.environ, FRESH: "1"}
        proc = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=600, env=env)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"the fresh interpreter failed (exit {proc.returncode})")
        doc = json.loads(out.read_text())
    for key, metric in doc["rows"][row.key]["metrics"].items():
        for name, got in metric["results"].items():
            cells = row.cells.setdefault(name, {})
            if "na" in got:
                cells[key] = NotAvailable(got["na"])
            else:
                note = "; ".join(filter(None, [got["note"], why]))
                cells[key] = Summary(list(got["values"]), note)


def _moved_to_fresh_interpreter(cfg: Config, row: RowResult) -> bool:
    """For rows that depend on the caller (cold start, memory): run the row in a fresh
    interpreter, unless this is it."""
    if os.environ.get(FRESH) == "1":
        return False
    _row_in_fresh_interpreter(cfg, row)
    return True


def row_coldstart(cfg: Config, row: RowResult) -> None:
    if _moved_to_fresh_interpreter(cfg, row):
        return
    for make in (_ap_with_events, _ap_fork, _ap_with_spare, *PEERS):
        name = make().name

        def body(notes: Notes, make: Callable[[], Contender] = make) -> Mapping[str, Summary]:
            def once() -> dict[str, float]:
                sample = {}
                t0 = time.perf_counter()
                with make() as c:
                    noop = c.fn("noop")
                    c.call(noop, 1)
                    sample["cold"] = _ms(time.perf_counter() - t0)
                    c.submit_all(noop, range(4))  # a lazy pool has both workers up by now
                    pids = c.worker_pids()
                    if len(pids) < 2:
                        raise AssertionError(f"expected 2 worker processes, found {pids}")
                    # a worker that runs tasks (not a held-back spare)
                    victim = c.call(c.fn("pid")) if isinstance(c, ActivityPool) else pids[0]
                    t_kill = time.perf_counter()
                    os.kill(victim, signal.SIGKILL)
                    if isinstance(c, ActivityPool):
                        notes.add("worker_started event (worker ready)", "replace")
                        ready = c.wait_event("worker_started", t_kill, cfg.replace_wait)
                        sample["replace"] = _ms(ready - t_kill)
                    else:
                        notes.add("new process seen by psutil (not ready-checked)", "replace")
                        seen = _wait_new_child(set(pids), cfg.replace_wait)
                        if seen is None:
                            notes.lack("replace", _why_no_replacement(c))
                        else:
                            sample["replace"] = _ms(seen - t_kill)
                # a second pool whose first call has type hints, as most real activities do
                t0 = time.perf_counter()
                with make() as c:
                    c.call(c.fn("typed_noop"), 1)
                    sample["typed"] = _ms(time.perf_counter() - t0)
                return sample

            return repeat(cfg.reps, once)

        cell(row, name, body)


# -- 8. cost of activity.heartbeat() -----------------------------------------------------------


def row_hbcost(cfg: Config, row: RowResult) -> None:
    def body(notes: Notes) -> Mapping[str, Summary]:
        turns: list[float] = []
        with ActivityPool() as c:

            def once() -> dict[str, float]:
                per_beat, per_turn = c.call(_activities.ap_heartbeat_cost, cfg.heartbeats)
                turns.append(per_turn)
                return {"ns": per_beat}

            got = repeat(cfg.reps, once)
        loop = statistics.median(turns)
        notes.add(f"{cfg.heartbeats:,} calls in one activity; includes a loop turn ({loop:.0f} ns)")
        return got

    cell(row, AP, body)


# -- 9. idle worker memory ---------------------------------------------------------------------


def _memory(pids: list[int]) -> dict[str, float]:
    infos = [psutil.Process(pid).memory_full_info() for pid in pids]
    return {
        "rss": statistics.fmean(i.rss for i in infos) / MiB,
        "uss": statistics.fmean(i.uss for i in infos) / MiB,
    }


def row_memory(cfg: Config, row: RowResult) -> None:
    if _moved_to_fresh_interpreter(cfg, row):
        return
    for make in (ActivityPool, _ap_fork, *PEERS):
        name = make().name

        def body(notes: Notes, make: Callable[[], Contender] = make) -> Mapping[str, Summary]:
            def once() -> dict[str, float]:
                with make() as c:
                    c.submit_all(c.fn("noop"), range(4))
                    time.sleep(cfg.settle)
                    pids = c.worker_pids()
                    if len(pids) != 2:
                        raise AssertionError(f"expected 2 worker processes, found {pids}")
                    if not isinstance(c, ActivityPool):
                        method = _start_method(pids[0])
                        notes.add(f"workers by {method}" if method else "")
                    else:
                        helpers = sorted(set(c.pool._process_pids()) - set(pids))
                        if helpers:  # a cost per pool, not per worker: said, not averaged in
                            server = _memory(helpers)
                            how = "forked from this caller" if _forked_caller(c) else "spawned"
                            notes.add(
                                f"workers forked by a fork server, {how} (one per pool: RSS "
                                f"{server['rss']:.1f}, USS {server['uss']:.1f} MiB)"
                            )
                    return _memory(pids)

            return repeat(cfg.reps, once)

        cell(row, name, body)

    def body_bare(notes: Notes) -> Mapping[str, Summary]:
        notes.add("python -c 'import time; time.sleep(30)'")

        def once() -> dict[str, float]:
            proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
            try:
                time.sleep(0.2 + cfg.settle)
                return _memory([proc.pid])
            finally:
                proc.kill()
                proc.wait()

        return repeat(cfg.reps, once)

    cell(row, "bare python", body_bare)


def _forked_caller(c: ActivityPool) -> bool:
    sup = c.pool._sup
    return bool(sup and sup.spawner.forked_caller())


def _start_method(pid: int) -> str:
    """fork children share the parent's pages: their RSS counts this script's imports."""
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return ""
    return "fork (RSS shares this parent's pages)" if cmd == psutil.Process().cmdline() else "spawn"


# -- 10. numpy-heavy map, with and without the thread limit ------------------------------------


def row_numpy(cfg: Config, row: RowResult) -> None:
    preset = [v for v in THREAD_VARS if v in os.environ]
    for limit, name in ((None, f"{AP} thread_limit=None"), ("auto", row.base)):

        def body(
            notes: Notes, limit: str | None = limit, name: str = name
        ) -> Mapping[str, Summary]:
            notes.add(f"{cfg.numpy_items} items of 8 matmuls 256x256")
            if preset:
                notes.add(f"{', '.join(preset)} set in the environment: both runs are limited")
            with ActivityPool(thread_limit=limit, name=name) as c:
                work = c.fn("matmul_work")
                c.submit_all(work, range(2))

                def once() -> dict[str, float]:
                    t0 = time.perf_counter()
                    results = c.map(work, range(cfg.numpy_items))
                    if len(results) != cfg.numpy_items:
                        raise AssertionError("results missing")
                    return {"rate": cfg.numpy_items / (time.perf_counter() - t0)}

                return repeat(cfg.reps, once)

        cell(row, name, body)


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    key: str
    number: int
    title: str
    metrics: tuple[Metric, ...]
    run: Callable[[Config, RowResult], None]
    base: str = AP


ROWS: tuple[RowSpec, ...] = (
    RowSpec(
        "noop",
        1,
        "sequential no-op round trip (submit one, wait, repeat)",
        (Metric("median", "round trip, median", "us"), Metric("p99", "round trip, p99", "us")),
        row_noop,
    ),
    RowSpec(
        "throughput",
        2,
        "throughput: no-op tasks all at once",
        (
            Metric("map", "map()", "tasks/s", higher_is_better=True),
            Metric("submit", "submit all, then wait all", "tasks/s", higher_is_better=True),
        ),
        row_throughput,
    ),
    RowSpec(
        "payload",
        3,
        "payload round trip (echo; payload size / round-trip time)",
        tuple(
            Metric(key, label, "MB/s", higher_is_better=True)
            for key, label, _, _, _ in FULL.payloads
        ),
        row_payload,
    ),
    RowSpec(
        "recovery",
        4,
        "recovery: SIGKILL a worker mid-task",
        (
            Metric("error", "kill -> in-flight error", "ms"),
            Metric("next", "then: next task done on the same pool", "ms"),
        ),
        row_recovery,
    ),
    RowSpec(
        "timeout",
        5,
        "timeout: a task sleeping forever, 200 ms deadline",
        (
            Metric("late", "error lateness (submit -> error, minus 200 ms)", "ms"),
            Metric("next", "then: next task done", "ms"),
        ),
        row_timeout,
    ),
    RowSpec(
        "heartbeat",
        6,
        "heartbeat timeout: the task stops beating, heartbeat_timeout 100 ms",
        (Metric("late", "missed beat (last beat + 100 ms) -> error", "ms"),),
        row_heartbeat,
    ),
    RowSpec(
        "coldstart",
        7,
        "cold start and replacement",
        (
            Metric("cold", "pool with 2 workers + first task done", "ms"),
            Metric("replace", "SIGKILL an idle worker -> replacement up", "ms"),
            Metric("typed", "cold start + first typed call (x: int) -> int done", "ms"),
        ),
        row_coldstart,
    ),
    RowSpec(
        "hbcost",
        8,
        "cost of activity.heartbeat() in a hot loop",
        (Metric("ns", "per call", "ns"),),
        row_hbcost,
    ),
    RowSpec(
        "memory",
        9,
        "idle worker memory (mean of the 2 workers)",
        (Metric("rss", "RSS", "MiB"), Metric("uss", "USS", "MiB")),
        row_memory,
    ),
    RowSpec(
        "numpy",
        10,
        "numpy-heavy map, with and without the BLAS thread limit",
        (Metric("rate", "map over matmul items", "items/s", higher_is_better=True),),
        row_numpy,
        base=f"{AP} thread_limit=auto (default)",
    ),
)


def select(only: str | None) -> list[RowSpec]:
    if not only:
        return list(ROWS)
    wanted = {w.strip() for w in only.split(",") if w.strip()}
    chosen = [r for r in ROWS if r.key in wanted or str(r.number) in wanted]
    unknown = wanted - {r.key for r in chosen} - {str(r.number) for r in chosen}
    if unknown:
        keys = ", ".join(f"{r.number}={r.key}" for r in ROWS)
        raise SystemExit(f"unknown rows {sorted(unknown)}; choose from {keys}")
    return chosen


def _meta(args: argparse.Namespace, cfg: Config, seconds: float) -> dict[str, Any]:
    versions = {}
    for module in ("numpy", "loky", "pebble", "uvloop", "psutil"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = None
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
        check=False,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "quick": args.quick,
        "config": {k: v for k, v in cfg.__dict__.items() if k != "payloads"},
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "commit": commit or None,
        "versions": versions,
        "seconds": seconds,
        "problems": list(_contenders.problems),
    }


def _on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _compile_bytecode() -> None:
    """Compile this checkout's packages, as a regular install (and the peers') has them.

    An editable install under ``PYTHONDONTWRITEBYTECODE=1`` (as on these machines) never caches
    bytecode, so every fresh interpreter, the fork server included, would compile ``pool`` and
    ``sdk`` from source (~15 ms) while the peers load theirs compiled by pip."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("pool", "sdk", "benchmarks"):
        compileall.compile_dir(root / package, quiet=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts (whole run < 60 s)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"default {RESULTS}")
    parser.add_argument(
        "--only", help="comma-separated rows, by key or number: " + ", ".join(r.key for r in ROWS)
    )
    parser.add_argument("--compare", type=Path, help="an earlier JSON file: add now/before")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    _contenders.CLOSE_LIMIT = cfg.close_limit
    specs = select(args.only)
    previous = json.loads(args.compare.read_text()) if args.compare else None
    signal.signal(signal.SIGTERM, _on_sigterm)
    _compile_bytecode()

    t_start = time.perf_counter()
    rows: list[RowResult] = []
    interrupted = False
    try:
        for spec in specs:
            print(f"{spec.number}. {spec.title}", file=sys.stderr)
            row = RowResult(spec.key, spec.number, spec.title, list(spec.metrics), spec.base)
            t0 = time.perf_counter()
            try:
                spec.run(cfg, row)
            finally:
                row.seconds = time.perf_counter() - t0
                rows.append(row)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: printing what was measured", file=sys.stderr)
    finally:
        for leak in sweep(grace=1.0):
            _contenders.problems.append(f"at exit: stray process killed: {leak}")
        sweep(grace=0.0, helpers=True)  # the libraries' resource trackers, kept per interpreter
    seconds = time.perf_counter() - t_start

    print()
    print(render(rows, previous))
    print()
    if _contenders.problems:
        print("Problems seen (and cleaned up):")
        for problem, count in collections.Counter(_contenders.problems).items():
            print(f"  - {problem}" + (f" (x{count})" if count > 1 else ""))
    mode = "quick" if args.quick else "full"
    print(f"Total: {seconds:.1f} s ({mode} run, {cfg.reps} repetitions, 2 workers each)")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": _meta(args, cfg, seconds), "rows": rows_to_json(rows)}
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"JSON: {args.json}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
