"""``activity_env``: one activity in-process, as if inside a worker, without a pool."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import sdk
from pool.pytest_plugin import ActivityEnvironment
from sdk import activity
from tests.plugin import activities as acts

pytestmark = pytest.mark.timeout(10)


def test_captures_every_heartbeat_and_sets_info(activity_env: ActivityEnvironment):
    assert activity_env.run(acts.plug_count, 3) == {"started_at": 0, "attempt": 1}
    assert activity_env.heartbeats == [{"next": 1}, {"next": 2}, {"next": 3}]
    info = activity_env.info
    assert info is not None and info.name == "plug_count" and info.pid == os.getpid()
    assert info.heartbeat_timeout == 1.0


def test_attempt_and_previous_heartbeat_details_let_a_retry_resume(
    activity_env: ActivityEnvironment,
):
    activity_env.attempt = 2
    activity_env.heartbeat_details = {"next": 7}
    assert activity_env.run(acts.plug_count, 10) == {"started_at": 7, "attempt": 2}
    assert activity_env.heartbeats == [{"next": 8}, {"next": 9}, {"next": 10}]
    assert activity_env.run(acts.plug_info)["details"] == {"next": 7}


def test_heartbeat_spellings_are_recorded_exactly(activity_env: ActivityEnvironment):
    activity_env.run(acts.plug_double, 1)  # no heartbeat at all
    assert activity_env.heartbeats == []
    with pytest.raises(RuntimeError, match="outside an activity"):
        activity.heartbeat("after the run")  # the context was removed again


def test_cancel_from_a_heartbeat_callback(activity_env: ActivityEnvironment):
    def on_heartbeat(details: dict) -> None:
        if details["next"] == 4:
            activity_env.cancel()

    activity_env.on_heartbeat = on_heartbeat
    assert activity_env.run(acts.plug_count, 100) == {"stopped_at": 4, "attempt": 1}
    assert activity_env.cancelled
    assert len(activity_env.heartbeats) == 4


def test_cancel_from_another_thread(activity_env: ActivityEnvironment):
    timer = threading.Timer(0.02, activity_env.cancel)
    timer.start()
    try:
        assert activity_env.run(acts.plug_wait_for_cancel, 5.0) == "cancelled"
    finally:
        timer.cancel()


def test_cancel_reaches_an_async_activity_as_cancelled_error(activity_env: ActivityEnvironment):
    activity_env.on_heartbeat = lambda i: activity_env.cancel() if i == 2 else None
    with pytest.raises(asyncio.CancelledError):
        activity_env.run(acts.plug_async_beats, 10)
    assert activity_env.heartbeats == [0, 1, 2]


def test_async_activity_runs_to_completion(activity_env: ActivityEnvironment):
    assert activity_env.run(acts.plug_async_beats, 3) == 3
    assert activity_env.heartbeats == [0, 1, 2]


def test_depends_override_replaces_the_factory(activity_env: ActivityEnvironment):
    acts.MADE.clear()
    activity_env.override(acts.real_model, {"kind": "fake", "weight": 10})
    assert activity_env.run(acts.plug_predict, 2.0) == 20.0
    assert activity_env.run(acts.plug_predict_twice, 1.0) == 20.0  # nested calls see it too
    assert acts.MADE == []  # the real factory never ran


def test_depends_without_override_is_made_once_and_torn_down():
    acts.MADE.clear()
    acts.TORN_DOWN.clear()
    env = ActivityEnvironment()
    assert env.run(acts.plug_predict, 1.0) == 3.0
    assert env.run(acts.plug_predict, 2.0) == 6.0
    assert acts.MADE == ["real"]
    env.close()
    assert acts.TORN_DOWN == ["real"]


def test_explicit_argument_wins_over_depends(activity_env: ActivityEnvironment):
    assert activity_env.run(acts.plug_predict, 2.0, model={"weight": 0.5}) == 1.0


def test_async_depends_and_overrides(activity_env: ActivityEnvironment):
    activity_env.overrides[acts.real_model] = {"weight": 2}
    assert activity_env.run(acts.plug_async_predict, 3.0) == (6.0, "async-real")


def test_session_state_is_kept_across_runs(activity_env: ActivityEnvironment):
    activity_env.session_id = "s-1"
    activity_env.run(acts.plug_load, "tiny")
    assert activity_env.run(acts.plug_use) == ("s-1", "tiny")


def test_arguments_are_validated_as_a_pool_validates_them(activity_env: ActivityEnvironment):
    assert activity_env.run(acts.plug_double, "4") == 8  # lax mode coerces
    with pytest.raises(sdk.ActivityInputError):
        activity_env.run(acts.plug_double, "four")


def test_exceptions_propagate_unchanged(activity_env: ActivityEnvironment):
    with pytest.raises(ValueError, match="boom"):
        activity_env.run(acts.plug_fails, "boom")
    with pytest.raises(sdk.ApplicationError) as info:
        activity_env.run(acts.plug_non_retryable)
    assert info.value.non_retryable


async def test_arun_in_an_async_test(activity_env: ActivityEnvironment):
    assert await activity_env.arun(acts.plug_async_beats, 2) == 2
    assert await activity_env.arun(acts.plug_count, 2) == {"started_at": 0, "attempt": 1}
    assert activity_env.heartbeats == [0, 1, {"next": 1}, {"next": 2}]


async def test_arun_cancel_from_the_test_reaches_a_sync_activity(
    activity_env: ActivityEnvironment,
):
    running = asyncio.ensure_future(activity_env.arun(acts.plug_wait_for_cancel, 5.0))
    await asyncio.sleep(0.02)
    activity_env.cancel()
    assert await running == "cancelled"
