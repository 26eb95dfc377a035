"""pool.temporal pieces that need no server: the slot bound, the option mapping, the errors."""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from datetime import timedelta

import pytest

pytest.importorskip("temporalio", reason="the temporal extra is not installed")

import temporalio.exceptions
from temporalio.worker import SlotPermit, SlotReleaseContext

from pool import temporal
from pool._temporal_host import Host, SharedSlots, to_temporal
from pool.temporal import _temporal_options
from sdk import (
    ActivityError,
    ActivityTimeoutError,
    ApplicationError,
    StickySessionLostError,
    TimeoutType,
    activity,
    get_definition,
    run_sticky_worker_session,
)
from sdk._session import set_session_id_factory


@dataclass
class Reserve:
    task_queue: str
    slot_type: str = "activity"
    worker_identity: str = "test"
    worker_build_id: str = ""
    worker_deployment_version: None = None
    is_sticky: bool = False


@dataclass
class Used:
    permit: SlotPermit
    slot_info: object = None


def _use(slots: SharedSlots, permit: SlotPermit) -> None:
    slots.mark_slot_used(Used(permit))  # type: ignore[arg-type]


def _release(slots: SharedSlots, permit: SlotPermit, used: bool) -> None:
    slots.release_slot(SlotReleaseContext(slot_info=object() if used else None, permit=permit))  # type: ignore[arg-type]


async def test_two_queues_share_one_bound():
    slots = SharedSlots(2)
    shared, host = Reserve("q"), Reserve("q@host")
    # an idle poller on each queue: both may poll, neither keeps the other from a slot
    s1 = await slots.reserve_slot(shared)  # type: ignore[arg-type]
    h1 = await slots.reserve_slot(host)  # type: ignore[arg-type]
    _use(slots, s1)  # a shared task: one subprocess busy
    s2 = await slots.reserve_slot(shared)  # type: ignore[arg-type]
    _use(slots, s2)  # two shared tasks: every subprocess busy
    waiting = asyncio.ensure_future(slots.reserve_slot(shared))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert not waiting.done()  # no third shared task on a full host
    assert slots.try_reserve_slot(shared) is None  # type: ignore[arg-type]
    # the host queue's idle poller still takes its session's task (it runs nowhere else)...
    _use(slots, h1)
    # ...but no further one while the host is full
    assert slots.try_reserve_slot(host) is None  # type: ignore[arg-type]
    _release(slots, s1, used=True)
    _release(slots, s2, used=True)
    await asyncio.wait_for(waiting, 1)  # a freed subprocess admits the waiting poller
    _release(slots, waiting.result(), used=False)
    _release(slots, h1, used=True)
    assert slots.try_reserve_slot(shared) is not None  # type: ignore[arg-type]


async def test_cancelled_reservation_keeps_no_slot():
    slots = SharedSlots(1)
    p = await slots.reserve_slot(Reserve("q"))  # type: ignore[arg-type]
    _use(slots, p)
    waiting = asyncio.ensure_future(slots.reserve_slot(Reserve("q")))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    _release(slots, p, used=True)
    assert slots.try_reserve_slot(Reserve("q")) is not None  # type: ignore[arg-type]


@activity(
    start_to_close_timeout=7,
    heartbeat_timeout=2,
    schedule_to_close_timeout=60,
    retry_policy_initial_interval=0.5,
    retry_policy_backoff_coefficient=3,
    retry_policy_max_interval=4,
    non_retryable_error_types=[KeyError, "Boom"],
)
def mapped(x: int) -> int:
    return x


@activity(start_to_close_timeout=None)
def defaults(x: int) -> int:
    return x


def test_options_map_field_by_field():
    o = _temporal_options(get_definition(mapped))
    assert o["start_to_close_timeout"] == timedelta(seconds=7)
    assert o["heartbeat_timeout"] == timedelta(seconds=2)
    assert o["schedule_to_close_timeout"] == timedelta(seconds=60)
    rp = o["retry_policy"]
    assert rp.initial_interval == timedelta(seconds=0.5)
    assert rp.backoff_coefficient == 3
    assert rp.maximum_interval == timedelta(seconds=4)
    assert rp.maximum_attempts == 3  # None: the sdk's default, never Temporal's unlimited
    assert rp.non_retryable_error_types == ["KeyError", "Boom"]
    o = _temporal_options(get_definition(defaults))
    assert o["start_to_close_timeout"] == timedelta(days=1)  # Temporal needs some limit
    assert o["retry_policy"].maximum_attempts == 3
    assert o["heartbeat_timeout"] is None


def _failed(cause: BaseException) -> ActivityError:
    err = ActivityError("failed", attempts=1)
    err.__cause__ = cause
    return err


def test_failures_map_to_typed_application_errors():
    e = to_temporal(_failed(KeyError("k")))
    assert isinstance(e, temporalio.exceptions.ApplicationError)
    assert (e.type, e.non_retryable) == ("KeyError", False)
    e = to_temporal(_failed(ApplicationError("no", type="Boom", non_retryable=True)))
    assert (e.type, e.non_retryable) == ("Boom", True)
    e = to_temporal(_failed(StickySessionLostError("gone")))
    assert (e.type, e.non_retryable) == ("StickySessionLostError", True)
    timeout = ActivityTimeoutError("late", type=TimeoutType.HEARTBEAT)
    e = to_temporal(_failed(timeout))
    assert (e.type, e.non_retryable) == ("ActivityTimeoutError", False)


def test_session_lost_error_is_both_kinds():
    e = temporal.TemporalStickySessionLostError("gone", session_id="s")
    assert isinstance(e, StickySessionLostError)
    assert isinstance(e, temporalio.exceptions.ApplicationError)
    assert (e.type, e.non_retryable, e.session_id, e.message) == (
        "StickySessionLostError",
        True,
        "s",
        "gone",
    )


def test_session_id_factory_names_new_sessions():
    def in_a_workflow_context() -> str:
        set_session_id_factory(lambda: "fixed")
        with run_sticky_worker_session() as s:
            return s.session_id

    assert contextvars.copy_context().run(in_a_workflow_context) == "fixed"
    with run_sticky_worker_session() as s:
        assert s.session_id != "fixed"  # outside that context: uuid4 as before


async def test_host_sessions_expire_when_idle_never_while_running():
    host = Host(pool=None, task_queue="q", idle_expiry=0.05)  # type: ignore[arg-type]
    assert host.open("s1").startswith("q@")
    running = host.enter("s1")
    await asyncio.sleep(0.1)  # a call running in it: never expires
    host.leave(running)
    assert not running.session.closed
    expired = asyncio.get_running_loop().create_future()
    running.session.on_close(lambda s: expired.set_result(s.session_id))
    assert await asyncio.wait_for(expired, 1) == "s1"  # idle: released, its pool session too
    with pytest.raises(StickySessionLostError, match=r"expired after 0\.05s idle"):
        host.enter("s1")
    host.open("s2")
    s2 = host.sessions["s2"].session
    host.close("s2")  # the workflow's session ended
    assert s2.closed and "s2" not in host.sessions
