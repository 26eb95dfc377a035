"""Activities for tests/integration/test_chunked_map.py (module level: workers import them)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sdk import Depends, RateLimit, activity

FAST = {"retry_policy_initial_interval": 0.01}


@activity
def double(x: int) -> int:
    return 2 * x


@activity
async def async_double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


@activity
def where(x: int) -> tuple:
    """The item, and the process and attempt it ran in."""
    info = activity.info()
    return x, os.getpid(), info.activity_id, info.attempt, info.name


@activity
async def async_where(x: int) -> tuple:
    await asyncio.sleep(0)
    info = activity.info()
    return x, os.getpid(), info.activity_id, info.attempt, info.name


@activity(retry_policy_max_attempts=3, **FAST)
def fails_first_attempt_at(x: int) -> tuple:
    """Item 5 fails on the first attempt; the others never fail."""
    attempt = activity.info().attempt
    if x == 5 and attempt == 1:
        raise ValueError(f"item {x} fails on attempt {attempt}")
    return x, attempt


@activity(retry_policy_max_attempts=2, **FAST)
def always_fails_at(x: int) -> int:
    """Item 5 fails on every attempt."""
    if x == 5:
        raise ValueError(f"item {x} always fails")
    return x


@activity(start_to_close_timeout=0.2, retry_policy_max_attempts=1)
def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@activity(heartbeat_timeout=0.2, start_to_close_timeout=10, retry_policy_max_attempts=1)
def beats_then_sleeps(seconds: float) -> tuple:
    activity.heartbeat({"sleeping": seconds})
    time.sleep(seconds)
    info = activity.info()
    return seconds, info.heartbeat_timeout


@activity(retry_policy_max_attempts=2, **FAST)
def killable(item: tuple) -> tuple:
    """``(x, pidfile)``: on attempt 1, item 2 announces its pid in ``pidfile`` and sleeps (the
    test SIGKILLs it); every other item, and every item on a later attempt, returns at once."""
    x, pidfile = item
    attempt = activity.info().attempt
    if x == 2 and attempt == 1:
        tmp = Path(pidfile + ".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(pidfile)
        time.sleep(30)
    return x, attempt, os.getpid()


@activity(sticky_to_worker=True)
def sticky_counter(x: int) -> tuple:
    state = activity.session_state()
    state["n"] = state.get("n", 0) + 1
    return x, os.getpid(), state["n"]


def make_chunk_resource():
    yield {"pid": os.getpid()}


@activity
def uses_chunk_resource(x: int, res=Depends(make_chunk_resource)) -> tuple:
    return x, res["pid"], id(res)


@activity
def bad_result(x: int) -> int:
    return "not a number" if x == 3 else x  # type: ignore[return-value]


@activity(rate_limit=RateLimit(time_window_in_sec=1.0, max_execution=10))
def limited(x: int) -> int:
    return x


@activity
def chunk_loaded_modules():  # no annotations: nothing here makes the worker load pydantic
    return sorted(sys.modules)


@activity
def chunk_echo(x):
    return x
