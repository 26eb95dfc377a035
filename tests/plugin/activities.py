"""Activities the plugin tests run (module level: workers import them by module name)."""

from __future__ import annotations

import asyncio
import os
import time

from sdk import ApplicationError, Depends, activity

FAST = {"retry_policy_initial_interval": 0.01}


@activity
def plug_double(x: int) -> int:
    return 2 * x


@activity
def plug_pid() -> int:
    return os.getpid()


@activity
async def plug_async_pid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


@activity(retry_policy_max_attempts=3, **FAST)
def plug_attempt() -> int:
    return activity.info().attempt


@activity(retry_policy_max_attempts=1)
def plug_fails(message: str) -> None:
    print(f"about to fail: {message}")
    raise ValueError(message)


@activity(heartbeat_timeout=1.0)
def plug_count(total: int) -> dict:
    """Counts to ``total`` heartbeating progress; resumes from the previous attempt's details."""
    info = activity.info()
    start = info.heartbeat_details["next"] if info.heartbeat_details else 0
    for i in range(start, total):
        if activity.is_cancelled():
            return {"stopped_at": i, "attempt": info.attempt}
        activity.heartbeat({"next": i + 1})
    return {"started_at": start, "attempt": info.attempt}


@activity
def plug_wait_for_cancel(limit: float) -> str:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if activity.is_cancelled():
            return "cancelled"
        time.sleep(0.002)
    return "timed out"


@activity
async def plug_async_beats(n: int) -> int:
    for i in range(n):
        activity.heartbeat(i)
        await asyncio.sleep(0)
    return n


MADE: list[str] = []
TORN_DOWN: list[str] = []


def real_model():
    MADE.append("real")
    yield {"kind": "real", "weight": 3}
    TORN_DOWN.append("real")


async def async_resource() -> str:
    await asyncio.sleep(0)
    return "async-real"


@activity
def plug_predict(x: float, model=Depends(real_model)) -> float:
    return x * model["weight"]


@activity
def plug_predict_twice(x: float) -> float:
    return plug_predict(x) + plug_predict(x)  # nested: plain calls in the same attempt


@activity
async def plug_async_predict(x: float, model=Depends(real_model), res=Depends(async_resource)):
    return x * model["weight"], res


@activity(sticky_to_worker=True)
def plug_load(name: str) -> str:
    activity.session_state()["model"] = name
    return name


@activity(sticky_to_worker=True)
def plug_use() -> tuple:
    return activity.info().session_id, activity.session_state()["model"]


@activity
def plug_info() -> dict:
    info = activity.info()
    return {
        "name": info.name,
        "attempt": info.attempt,
        "details": info.heartbeat_details,
        "pid": info.pid,
        "deadline": info.deadline,
    }


@activity(retry_policy_max_attempts=1)
def plug_non_retryable() -> None:
    raise ApplicationError("no", non_retryable=True)
