"""The plugin's pool fixtures used directly, as a user's test suite uses them."""

from __future__ import annotations

import os

import pytest

import sdk
from pool import Pool
from tests.plugin import activities as acts

pytestmark = pytest.mark.timeout(30)


def test_activity_pool_defaults_to_the_ini_worker_count(activity_pool: Pool):
    assert len(activity_pool.worker_pids()) == 2  # activity_pool_workers defaults to 2
    assert activity_pool.run(acts.plug_double, 21) == 42
    assert list(activity_pool.map(acts.plug_double, range(5))) == [0, 2, 4, 6, 8]
    assert activity_pool.submit(acts.plug_pid).result() in activity_pool.worker_pids()


@pytest.mark.activity_pool(acts, workers=1, retry_policy=sdk.RetryPolicy(maximum_attempts=2))
def test_marker_passes_pool_keywords(activity_pool: Pool):
    assert len(activity_pool.worker_pids()) == 1
    assert activity_pool.run("plug_double", 4) == 8  # by name: the module was preloaded


async def test_async_test_awaits_the_pool(activity_pool: Pool):
    pid = await activity_pool.execute(acts.plug_pid)
    assert pid in activity_pool.worker_pids() and pid != os.getpid()
    # the fixture's pool is the ambient dispatcher: awaiting an async activity dispatches
    assert await acts.plug_async_pid() in activity_pool.worker_pids()
    assert [x async for x in activity_pool.amap(acts.plug_double, [1, 2])] == [2, 4]


def test_sticky_session_on_the_fixture_pool(activity_pool: Pool):
    with activity_pool.sticky_session() as session:
        assert session.run(acts.plug_load, "small") == "small"
        assert session.run(acts.plug_use) == (session.session_id, "small")


@pytest.mark.activity_fault(acts.plug_attempt, "crash", attempt=1)
def test_fault_marker_crashes_the_first_attempt(activity_pool: Pool):
    assert activity_pool.run(acts.plug_attempt) == 2


@pytest.mark.activity_fault(
    "plug_double", "raise", exception=sdk.ApplicationError("injected", non_retryable=True)
)
def test_fault_marker_raises_the_given_exception(activity_pool: Pool):
    with pytest.raises(sdk.ActivityError, match="injected") as info:
        activity_pool.run(acts.plug_double, 1)
    assert info.value.attempts == 1
    assert activity_pool.run(acts.plug_double, 1) == 2  # times=1: used once


def test_inject_fault_directly(activity_pool: Pool):
    activity_pool.inject_fault(acts.plug_attempt, "exit", attempt=None, times=2, exit_code=3)
    assert activity_pool.run(acts.plug_attempt) == 3


def test_pool_factory_makes_independent_pools(pool_factory):
    one = pool_factory(acts, workers=1)
    three = pool_factory(acts.plug_pid, workers=3)
    assert len(one.worker_pids()) == 1 and len(three.worker_pids()) == 3
    assert not set(one.worker_pids()) & set(three.worker_pids())
    assert one.run(acts.plug_pid) in one.worker_pids()
    assert three.run(acts.plug_pid) in three.worker_pids()


_session_pids: list[list[int]] = []


@pytest.mark.parametrize("round_", [1, 2])
def test_session_pool_is_reused(activity_pool_session: Pool, round_: int):
    assert activity_pool_session.run(acts.plug_double, round_) == 2 * round_
    _session_pids.append(sorted(activity_pool_session.worker_pids()))
    if round_ == 2:
        assert _session_pids[0] == _session_pids[1]  # the same workers: no start-up paid twice


def test_only_the_test_s_own_pool_is_ambient(activity_pool_session: Pool, pool_factory):
    from sdk._context import current_dispatcher

    assert current_dispatcher() is activity_pool_session
    pool_factory(workers=1)  # factory pools are never ambient: a test may hold several
    assert current_dispatcher() is activity_pool_session
