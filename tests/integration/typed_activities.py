"""Typed activities for tests/integration/test_first_call.py (module level: workers import
them). Nothing heavy is imported here, so a worker's first call pays only for what the pool does."""

from __future__ import annotations

import time

from sdk import Depends, activity


@activity(heartbeat_timeout=0.05, retry_policy_max_attempts=1)
def beat_first(x: int) -> int:
    activity.heartbeat(x)
    return x


@activity
def typed_noop(x: int) -> int:
    return x


@activity
def returns_wrong_type(x: int) -> int:
    return "not an int"  # type: ignore[return-value]


def slow_resource() -> str:
    time.sleep(0.4)  # user code that takes far longer than the heartbeat timeout
    return "loaded"


@activity(heartbeat_timeout=0.1, retry_policy_max_attempts=1, start_to_close_timeout=5)
def beat_after_slow_setup(x: int, resource: str = Depends(slow_resource)) -> str:
    activity.heartbeat(x)
    return resource


def slow_resource_for_async() -> str:
    time.sleep(0.4)
    return "loaded async"


@activity(heartbeat_timeout=0.1, retry_policy_max_attempts=1, start_to_close_timeout=5)
async def async_beat_after_slow_setup(
    x: int, resource: str = Depends(slow_resource_for_async)
) -> str:
    activity.heartbeat(x)
    return resource
