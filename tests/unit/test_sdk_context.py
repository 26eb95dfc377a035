import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sdk import (
    ActivityInfo,
    Depends,
    StickyWorkerSession,
    activity,
    activity_heartbeat,
    get_definition,
    get_sticky_worker_session,
    run_sticky_worker_session,
)
from sdk._context import (
    ActivityContext,
    current_activity,
    current_dispatcher,
    require_activity,
    reset_activity,
    reset_dispatcher,
    set_activity,
    set_dispatcher,
)
from sdk._depends import ResourceCache

CALLS: list[str] = []


def ctx_resource() -> str:
    CALLS.append("factory")
    return "from-factory"


@activity
async def ctx_async_inner(x: int) -> int:
    return x + 1


@activity
async def ctx_async_outer(x: int) -> int:
    return await ctx_async_inner(x) * 10


@activity
def ctx_sync_act(x: int) -> int:
    return x * 2


@activity
def ctx_sync_dep(res: str = Depends(ctx_resource)) -> str:
    return res


@activity
async def ctx_async_dep(res: str = Depends(ctx_resource)) -> str:
    return res


class FakeDispatcher:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def dispatch(self, defn: Any, args: tuple, kwargs: dict, session: Any) -> Any:
        self.calls.append((defn.name, args, kwargs, session))
        return "dispatched"


def make_ctx(resources: ResourceCache | None = None, **info: Any) -> tuple[ActivityContext, list]:
    beats: list[Any] = []
    fields: dict[str, Any] = {
        "activity_id": "a1",
        "name": "n",
        "attempt": 1,
        "worker_id": 3,
        "pid": os.getpid(),
        "session_id": None,
        "started_at": time.time(),
        "deadline": None,
        "heartbeat_timeout": None,
        "heartbeat_details": None,
    }
    fields.update(info)
    ctx = ActivityContext(
        info=ActivityInfo(**fields),
        heartbeat=beats.append,
        is_cancelled=lambda: True,
        session_state={"k": 1},
        resources=resources or ResourceCache(),
    )
    return ctx, beats


@contextlib.contextmanager
def _installed(ctx: ActivityContext) -> Iterator[None]:
    """``ctx`` as the running activity, as a runtime installs it."""
    token = set_activity(ctx)
    try:
        yield
    finally:
        reset_activity(token)


@pytest.mark.parametrize(
    "call",
    [
        lambda: activity.heartbeat(),
        lambda: activity.heartbeat({"step": 1}),
        lambda: activity_heartbeat(1, 2),
        lambda: activity.info(),
        lambda: activity.is_cancelled(),
        lambda: activity.session_state(),
        require_activity,
    ],
)
def test_outside_activity_raises_runtime_error(call: Any) -> None:
    with pytest.raises(RuntimeError, match="outside an activity"):
        call()


def test_heartbeat_details_exact() -> None:
    ctx, beats = make_ctx(attempt=2, heartbeat_details=("prev",))
    with _installed(ctx):
        assert current_activity() is ctx
        activity.heartbeat()
        activity.heartbeat({"step": 1})
        activity.heartbeat((1, 2))
        activity_heartbeat(1, 2)
        activity_heartbeat()
        activity_heartbeat([3])
        info = activity.info()
        assert info.attempt == 2 and info.heartbeat_details == ("prev",)
        assert activity.is_cancelled() is True
        assert activity.session_state() == {"k": 1}
    assert beats == [None, {"step": 1}, (1, 2), (1, 2), (), ([3],)]
    assert current_activity() is None


def test_nested_async_call_is_plain_inside_activity() -> None:
    fake = FakeDispatcher()

    async def main() -> int:
        token = set_dispatcher(fake)
        try:
            ctx, _ = make_ctx()
            with _installed(ctx):
                return await ctx_async_outer(1)
        finally:
            reset_dispatcher(token)

    assert asyncio.run(main()) == 20
    assert fake.calls == []


def test_ambient_dispatcher_used_by_async_wrapper() -> None:
    fake = FakeDispatcher()

    async def main() -> Any:
        token = set_dispatcher(fake)
        try:
            assert current_dispatcher() is fake
            plain = await ctx_async_outer(
                1,
            )
            async with run_sticky_worker_session() as session:
                in_session = await ctx_async_inner(x=5)
            return plain, in_session, session
        finally:
            reset_dispatcher(token)

    plain, in_session, session = asyncio.run(main())
    assert plain == in_session == "dispatched"
    assert fake.calls == [
        ("ctx_async_outer", (1,), {}, None),
        ("ctx_async_inner", (), {"x": 5}, session),
    ]
    assert current_dispatcher() is None


def test_sync_activity_never_dispatches() -> None:
    fake = FakeDispatcher()
    token = set_dispatcher(fake)
    try:
        assert ctx_sync_act(4) == 8
    finally:
        reset_dispatcher(token)
    assert fake.calls == []


def test_no_dispatcher_plain_async_call() -> None:
    assert asyncio.run(ctx_async_outer(2)) == 30


def test_depends_filled_from_running_context_cache() -> None:
    cache = ResourceCache()
    ctx, _ = make_ctx(resources=cache)
    CALLS.clear()
    with _installed(ctx):
        assert ctx_sync_dep() == "from-factory"
        assert ctx_sync_dep() == "from-factory"
        assert ctx_sync_dep(res="given") == "given"

        async def main() -> str:
            return await ctx_async_dep()

        assert asyncio.run(main()) == "from-factory"
    assert CALLS == ["factory"]
    cache.close()


def test_depends_outside_activity_uses_default_cache() -> None:
    from sdk._depends import default_resource_cache

    assert default_resource_cache() is default_resource_cache()
    assert ctx_sync_dep() == "from-factory"
    assert get_definition(ctx_sync_dep).depends_params()


# -- sticky sessions ------------------------------------------------------------------------------


def test_session_basics() -> None:
    s = StickyWorkerSession()
    assert len(s.session_id) == 32 and not s.closed
    assert StickyWorkerSession("given").session_id == "given"
    seen: list[str] = []
    s.on_close(lambda sess: seen.append(sess.session_id))
    s.on_close(lambda sess: 1 / 0)  # logged, not raised; later callbacks still run
    s.on_close(lambda sess: seen.append("second"))
    s.close()
    s.close()
    assert s.closed and seen == [s.session_id, "second"]
    s.on_close(lambda sess: seen.append("late"))
    assert seen[-1] == "late"
    assert s.session_id in repr(s) and "closed" in repr(s)


def test_run_sticky_session_nesting_async() -> None:
    async def main() -> None:
        assert get_sticky_worker_session() is None
        async with run_sticky_worker_session() as outer:
            assert get_sticky_worker_session() is outer
            async with run_sticky_worker_session() as inner:
                assert inner is not outer
                assert get_sticky_worker_session() is inner
            assert inner.closed
            assert get_sticky_worker_session() is outer
            assert not outer.closed
        assert outer.closed
        assert get_sticky_worker_session() is None

    asyncio.run(main())


def test_run_sticky_session_given_not_closed_sync() -> None:
    given = StickyWorkerSession()
    with run_sticky_worker_session(given) as s:
        assert s is given and get_sticky_worker_session() is given
        with run_sticky_worker_session() as inner:
            assert get_sticky_worker_session() is inner
        assert get_sticky_worker_session() is given
    assert not given.closed
    assert get_sticky_worker_session() is None


def test_session_restored_after_exception() -> None:
    with pytest.raises(KeyError), run_sticky_worker_session() as s:
        raise KeyError("x")
    assert s.closed and get_sticky_worker_session() is None
