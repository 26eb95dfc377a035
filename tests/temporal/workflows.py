"""Workflows of the Temporal tests (run by a workflow worker in the test process)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pool import temporal
    from sdk import StickySessionLostError, run_sticky_worker_session
    from tests.temporal import activities as acts


@workflow.defn
class FanOut:
    @workflow.run
    async def run(self, n: int, seconds: float) -> list[dict[str, int | str]]:
        return list(
            await asyncio.gather(
                *(temporal.execute_activity(acts.ran_where, i, seconds) for i in range(n))
            )
        )


@workflow.defn
class Squares:
    @workflow.run
    async def run(self, n: int) -> list[int]:
        return [await temporal.execute_activity(acts.squared, i) for i in range(n)]


@workflow.defn
class StickyPredict:
    @workflow.run
    async def run(self, n: int) -> list[dict[str, int | str]]:
        async with run_sticky_worker_session():
            loaded = await temporal.execute_activity(acts.session_load, "m")
            # seed style: awaiting an async sdk activity schedules it (Interceptor)
            predictions = [await acts.session_predict(i) for i in range(n)]
        return [loaded, *predictions]


@workflow.defn
class HangOnce:
    @workflow.run
    async def run(self, steps: int, pid_file: str) -> dict[str, int | str | None]:
        return await temporal.execute_activity(acts.hangs_once, steps, pid_file)


@workflow.defn
class SessionOnDeadHost:
    """Binds a session, waits for the test to kill its host, then calls into it again."""

    def __init__(self) -> None:
        self.bound: dict[str, int | str] | None = None
        self.go = False

    @workflow.run
    async def run(self, lost_after: float) -> dict[str, str | float]:
        async with run_sticky_worker_session():
            self.bound = await temporal.execute_activity(acts.session_load, "m")
            await workflow.wait_condition(lambda: self.go)
            started = workflow.now()
            try:
                await temporal.execute_activity(
                    acts.session_predict, 1, schedule_to_start_timeout=timedelta(seconds=lost_after)
                )
            except StickySessionLostError as exc:
                waited = (workflow.now() - started).total_seconds()
                return {"outcome": type(exc).__name__, "waited": waited}
        return {"outcome": "not lost", "waited": 0.0}

    @workflow.update
    async def bound_to(self) -> dict[str, int | str]:
        await workflow.wait_condition(lambda: self.bound is not None)
        assert self.bound is not None
        return self.bound

    @workflow.signal
    def proceed(self) -> None:
        self.go = True


@workflow.defn
class Spin:
    @workflow.run
    async def run(self, pid_file: str) -> None:
        await temporal.execute_activity(acts.spins, pid_file)
