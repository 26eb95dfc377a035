"""pool.temporal against a real Temporal dev server, with two worker hosts as OS processes."""

from __future__ import annotations

import collections
import uuid
from datetime import timedelta

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

from temporalio.client import Client
from temporalio.worker import Worker

from pool import temporal
from tests.temporal import workflows as wf

pytestmark = pytest.mark.timeout(60)

WORKFLOWS = [wf.FanOut, wf.Squares, wf.StickyPredict, wf.HangOnce, wf.SessionOnDeadHost]


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
