"""The worker side of a chunked map (``Pool.map(fn, items, chunksize=k)``).

A chunk is one ordinary call of one of the two runners below: the worker resolves it by module
and qualified name like any activity, sets up the activity context once (so ``activity.info()``,
``heartbeat()``, ``is_cancelled()`` and ``session_state()`` work inside every item), and the
runner calls the target activity's plain function over the chunk's items in order. The results
come back as one list. Any item's exception fails the chunk, and with it the attempt.

The supervisor side (the chunk's deadlines and retry policy, taken from the target activity) is
in ``pool._pool``. This module imports nothing beyond what a worker has loaded already, and a
worker imports it only when its first chunk arrives (tests/integration/test_worker_light.py).

The runners are not registered by name (``pool.run("...")`` cannot reach them); a worker needs
only their ``__activity_definition__``. Results are checked by the supervisor, item by item, when
the chunk's list comes back (``ActivityDefinition.checking_each_result_of``), never here: a
worker needs neither ``typing`` nor pydantic.
"""

from __future__ import annotations

from sdk import _attempt, _context
from sdk._definition import ActivityDefinition
from sdk._depends import default_resource_cache
from sdk._errors import ApplicationError, safe_str

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

# The name is never registered; it shows only if a runner is looked at directly.
RUNNER_NAME = "activitypool.chunk"


def _target(module: str, qualname: str, is_async: bool) -> tuple[ActivityDefinition, Any]:
    """The activity a chunk runs, as the running attempt's host loads any activity (the
    worker: its cache, __main__, the heartbeat clock held over a first import), and the
    resources and host its items run with."""
    ctx = _context.current_activity()
    host = ctx.host if ctx is not None else None
    try:
        if host is not None:
            target = host.load(module, qualname)
        else:  # outside a pool worker (a test calling the runner directly)
            target = _attempt.Host().load(module, qualname)
    except BaseException as exc:
        name = ctx.info.name if ctx is not None else f"{module}.{qualname}"
        raise ApplicationError(
            f"worker could not load {name!r}: {type(exc).__name__}: {safe_str(exc)}",
            type=type(exc).__name__,
            non_retryable=True,
        ) from exc
    if target.is_async is not is_async:  # the module changed between caller and worker
        raise ApplicationError(
            f"activity {target.name!r} is {'async' if target.is_async else 'sync'} in the "
            "worker but was not in the caller",
            non_retryable=True,
        )
    return target, ctx


def run_chunk(module: str, qualname: str, items: list[Any]):  # no return annotation: see above
    """Run the sync activity ``module.qualname`` over ``items``; its results, in order."""
    target, ctx = _target(module, qualname, False)
    if ctx is None:
        return _attempt.call_each(target, default_resource_cache(), items, None)
    return _attempt.call_each(target, ctx.resources, items, ctx.host)


async def run_chunk_async(module: str, qualname: str, items: list[Any]):  # (see above)
    """Run the async activity ``module.qualname`` over ``items``, one after the other, on the
    worker's event loop; its results, in order."""
    target, ctx = _target(module, qualname, True)
    if ctx is None:
        return await _attempt.acall_each(target, default_resource_cache(), items, None)
    return await _attempt.acall_each(target, ctx.resources, items, ctx.host)


def run_chunk_spread(module: str, qualname: str, items: list[Any]):  # (see above)
    """``run_chunk`` over ``(args, kwargs)`` pairs: each item is ``fn(*args, **kwargs)``, its
    ``Depends`` resources injected for the parameters it does not supply."""
    target, ctx = _target(module, qualname, False)
    fn: Callable[..., Any] = target.fn
    cache, host = (default_resource_cache(), None) if ctx is None else (ctx.resources, ctx.host)
    inject = _attempt.inject
    return [fn(*a, **inject(target, cache, a, kw, host)) for a, kw in items]


async def run_chunk_spread_async(module: str, qualname: str, items: list[Any]):  # (see above)
    """``run_chunk_async`` over ``(args, kwargs)`` pairs."""
    target, ctx = _target(module, qualname, True)
    fn: Callable[..., Any] = target.fn
    cache, host = (default_resource_cache(), None) if ctx is None else (ctx.resources, ctx.host)
    ainject = _attempt.ainject
    return [await fn(*a, **(await ainject(target, cache, a, kw, host))) for a, kw in items]


def _definition(fn: Callable[..., Any], is_async: bool) -> ActivityDefinition:
    # The options here are never used: the supervisor sends each chunk with the deadlines and
    # the retry policy of the activity it runs (see pool._pool._chunk_definition).
    return ActivityDefinition(
        name=RUNNER_NAME,
        fn=fn,
        module=__name__,
        qualname=fn.__qualname__,
        is_async=is_async,
        start_to_close_timeout=None,
        heartbeat_timeout=None,
        schedule_to_close_timeout=None,
        retry_max_attempts=None,
        retry_backoff_coefficient=None,
        retry_initial_interval=None,
        retry_max_interval=None,
    )


run_chunk.__activity_definition__ = _definition(run_chunk, False)  # type: ignore[attr-defined]
run_chunk_async.__activity_definition__ = _definition(  # type: ignore[attr-defined]
    run_chunk_async, True
)
run_chunk_spread.__activity_definition__ = _definition(  # type: ignore[attr-defined]
    run_chunk_spread, False
)
run_chunk_spread_async.__activity_definition__ = _definition(  # type: ignore[attr-defined]
    run_chunk_spread_async, True
)
