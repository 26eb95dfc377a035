"""pool.temporal against a real Temporal dev server, with two worker hosts as OS processes."""

from __future__ import annotations

import asyncio
import collections
import signal
import time
import uuid
from datetime import timedelta

import psutil
import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import Worker

from pool import temporal
from tests.temporal import workflows as wf

pytestmark = pytest.mark.timeout(60)

WORKFLOWS = [wf.FanOut, wf.Squares, wf.StickyPredict, wf.HangOnce, wf.SessionOnDeadHost, wf.Spin]


async def _client(address: str) -> Client:
    return await Client.connect(address, data_converter=temporal.data_converter)


def _workflow_worker(client: Client, queue: str) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        workflows=WORKFLOWS,
        interceptors=[temporal.Interceptor()],
        workflow_runner=temporal.sandbox_runner("tests.temporal"),
    )


@pytest.fixture(scope="module")
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def two_hosts(temporal_address, queue, start_host):
    return [start_host(f"{temporal_address}/{queue}", name) for name in ("A", "B")]


async def _run(client: Client, queue: str, workflow, *args):
    return await client.execute_workflow(
        workflow,
        args=list(args),
        id=f"wf-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        execution_timeout=timedelta(seconds=30),
    )


async def test_fan_out_runs_on_both_hosts(temporal_address, queue, two_hosts):
    client = await _client(temporal_address)
    async with _workflow_worker(client, queue):
        results = await _run(client, queue, wf.FanOut.run, 100, 0.02)
        hosts = collections.Counter(r["host"] for r in results)
        print(f"fan-out of 100 split between hosts: {dict(hosts)}")
        assert sorted(r["i"] for r in results) == list(range(100))
        assert set(hosts) == {"A", "B"}
        # sticky session: load then predict x20 on one host and one subprocess
        loaded, *predictions = await _run(client, queue, wf.StickyPredict.run, 20)
        assert [p["y"] for p in predictions] == [3 * i for i in range(20)]
        assert {(p["host"], p["pid"]) for p in predictions} == {(loaded["host"], loaded["pid"])}


async def test_hung_activity_killed_at_heartbeat_timeout_and_resumed(
    temporal_address, queue, two_hosts, tmp_path
):
    """The first attempt hangs in C after heartbeating 3 steps: the pool kills it at its
    heartbeat timeout (1 s), and Temporal's retry resumes from step 3, on either host."""
    client = await _client(temporal_address)
    async with _workflow_worker(client, queue):
        started = time.monotonic()
        pid_file = tmp_path / "hung.pid"
        result = await _run(client, queue, wf.HangOnce.run, 3, str(pid_file))
        took = time.monotonic() - started
    print(f"hung attempt killed and retried in {took:.2f}s: {result}")
    assert result["attempt"] == 2
    assert result["resumed_from"] == 3
    assert took < 10
    # the hung subprocess is gone (killed, and reaped by its host's pool)
    assert not psutil.pid_exists(int(pid_file.read_text()))


async def test_host_killed_mid_workflow(temporal_address, start_host):
    """SIGKILL the host a session is bound to, in the middle of a fan-out: the fan-out completes
    on the other host, and the session's next call fails fast with StickySessionLostError."""
    queue = f"kill-{uuid.uuid4().hex[:8]}"
    hosts = {name: start_host(f"{temporal_address}/{queue}", name) for name in ("A", "B")}
    client = await _client(temporal_address)
    async with _workflow_worker(client, queue):
        session_wf = await client.start_workflow(
            wf.SessionOnDeadHost.run,
            2.0,
            id=f"session-{uuid.uuid4().hex[:8]}",
            task_queue=queue,
            execution_timeout=timedelta(seconds=40),
        )
        bound = await session_wf.execute_update(wf.SessionOnDeadHost.bound_to)
        doomed = hosts[str(bound["host"])]
        fan_out = asyncio.create_task(_run(client, queue, wf.FanOut.run, 20, 0.3))
        await asyncio.sleep(0.5)  # let both hosts take fan-out work, then lose one
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        results = await fan_out
        assert sorted(r["i"] for r in results) == list(range(20))
        await session_wf.signal(wf.SessionOnDeadHost.proceed)
        outcome = await session_wf.result()
    print(
        f"session on the dead host: {outcome}; fan-out hosts: "
        f"{collections.Counter(r['host'] for r in results)}"
    )
    assert outcome["outcome"] == "TemporalStickySessionLostError"
    assert outcome["waited"] < 5


async def _spinning(client: Client, queue: str, pid_file) -> tuple[object, psutil.Process]:
    handle = await client.start_workflow(
        wf.Spin.run,
        str(pid_file),
        id=f"spin-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
        execution_timeout=timedelta(seconds=30),
    )
    # the activity writes its pid first thing: a file is all another process's activity can give
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the activity never started"
        await asyncio.sleep(0.05)
    return handle, psutil.Process(int(pid_file.read_text()))


async def test_workflow_cancel_kills_the_subprocess(temporal_address, queue, two_hosts, tmp_path):
    """A cancel reaches the activity at its next heartbeat; the pool stops it (it never looks
    at is_cancelled) by killing its subprocess after cancel_grace (1 s)."""
    client = await _client(temporal_address)
    async with _workflow_worker(client, queue):
        handle, proc = await _spinning(client, queue, tmp_path / "spin.pid")
        started = time.monotonic()
        await handle.cancel()
        await asyncio.to_thread(proc.wait, 10)
        took = time.monotonic() - started
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    print(f"cancelled activity's subprocess gone after {took:.2f}s")
    assert took < 5


async def test_host_shutdown_does_not_wait_for_a_running_activity(
    temporal_address, start_host, tmp_path
):
    queue = f"stop-{uuid.uuid4().hex[:8]}"
    host = start_host(f"{temporal_address}/{queue}", "A")
    client = await _client(temporal_address)
    async with _workflow_worker(client, queue):
        handle, proc = await _spinning(client, queue, tmp_path / "spin.pid")
        started = time.monotonic()
        host.send_signal(signal.SIGINT)
        await asyncio.to_thread(host.wait, 10)
        took = time.monotonic() - started
        await asyncio.to_thread(proc.wait, 5)  # the activity's subprocess went with its host
        with pytest.raises(WorkflowFailureError):  # its one attempt failed with the host
            await handle.result()
    print(f"host with a running activity shut down in {took:.2f}s")
    assert host.returncode == 0
    assert took < 5
