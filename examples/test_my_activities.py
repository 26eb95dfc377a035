"""Testing your activities: a test file to copy next to your own tests.

Three levels, fastest first: ``activity_env`` runs one activity in this process (heartbeats,
retries and cancellation simulated), ``activity_pool`` runs it in real worker processes, and
fault injection makes a chosen attempt crash or hang so your retry logic is tested for real.
The fixtures come with activitypool (a pytest plugin); nothing to import or register.

Run: pytest examples/test_my_activities.py
"""

from __future__ import annotations

from datetime import timedelta

import pytest

import sdk
from sdk import Depends, activity


def load_tokenizer():
    """An expensive resource in real life (a model, a connection); made once per worker."""
    return str.split


@activity(
    heartbeat_timeout=timedelta(milliseconds=200),
    retry_policy_max_attempts=3,
    retry_policy_initial_interval=0.01,
)
def count_words(texts: list[str], tokenize=Depends(load_tokenizer)) -> int:
    """Counts words, heartbeating how many texts are done so that a retry resumes."""
    done, total = activity.info().heartbeat_details or (0, 0)
    for i in range(done, len(texts)):
        if activity.is_cancelled():
            break
        total += len(tokenize(texts[i]))
        activity.heartbeat((i + 1, total))
    return total


# -- in-process: fast, no workers ------------------------------------------------------------


def test_counts_and_heartbeats(activity_env):
    assert activity_env.run(count_words, ["a b", "c"]) == 3
    assert activity_env.heartbeats == [(1, 2), (2, 3)]


def test_a_retry_resumes_from_the_last_heartbeat(activity_env):
    activity_env.attempt = 2
    activity_env.heartbeat_details = (1, 2)  # attempt 1 got through the first text
    assert activity_env.run(count_words, ["a b", "c d e"]) == 5
    assert activity_env.heartbeats == [(2, 5)]


def test_stops_when_cancelled(activity_env):
    activity_env.on_heartbeat = lambda details: activity_env.cancel()
    assert activity_env.run(count_words, ["a", "b", "c"]) == 1


def test_with_a_fake_resource(activity_env):
    activity_env.override(load_tokenizer, lambda text: text.split(","))
    assert activity_env.run(count_words, ["a,b,c"]) == 3


# -- real worker processes -------------------------------------------------------------------


@pytest.mark.activity_pool(workers=2)
def test_in_real_workers(activity_pool):
    assert list(activity_pool.map(count_words, [["a b"], ["c"], []])) == [2, 1, 0]


async def test_from_async_code(activity_pool):
    assert await activity_pool.execute(count_words, ["x y"]) == 2


@pytest.mark.activity_fault(count_words, "crash", attempt=1)
def test_survives_a_worker_crash(activity_pool):
    assert activity_pool.run(count_words, ["a b c"]) == 3


def test_gives_up_when_every_attempt_hangs(activity_pool):
    activity_pool.inject_fault(count_words, "hang", attempt=None, times=None)
    with pytest.raises(sdk.ActivityError) as info:
        activity_pool.run(count_words, ["never"])
    assert info.value.attempts == 3
    assert isinstance(info.value.__cause__, sdk.ActivityTimeoutError)
    assert info.value.__cause__.type == sdk.TimeoutType.HEARTBEAT
