"""Run ONE attempt of an activity in this process: the one way, for every runtime.

The pool's worker (for one call and for a chunk of a map alike), ``run_activities_locally()``
and the test environment (``pool.testing``) all run an attempt here, so that what an activity
sees is the same wherever it runs: its :class:`~sdk._context.ActivityContext` installed while
it runs (and only then), its ``Depends`` resources injected for the parameters the caller did
not supply, and its :class:`~sdk._context.ActivityInfo` built the same way.

What differs between runtimes is passed in, never decided here:

- the context (``heartbeat``, ``is_cancelled``, ``session_state``, ``resources``);
- a :class:`Host`, told when user code prepares the attempt (the worker holds the heartbeat
  clock meanwhile), when the activity is entered, and how a coroutine runs to completion from
  synchronous code;
- for :func:`run_attempt`, how a chunk of a map runs the activity over its items (``each``);
- for :func:`arun_attempt`, a time limit and a callback that receives the running task.

Retries are not here: one call of these functions is one attempt. The retry decision is
``RetryPolicy.next_delay`` (``sdk._retry``), shared by the pool's scheduler and the local runner.

A worker imports this module: like the rest of its import path it loads neither typing nor
asyncio (asyncio is imported by :func:`arun_attempt`, which only callers on a loop use).
"""

from __future__ import annotations

import os
import threading

from ._context import ActivityInfo, _current_activity

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    import asyncio
    import contextvars
    from collections.abc import Callable, Coroutine
    from typing import Any

    from ._context import ActivityContext
    from ._definition import ActivityDefinition
    from ._depends import ResourceCache

__all__ = [
    "AttemptTimedOut",
    "Host",
    "ainject",
    "arun_attempt",
    "attempt_info",
    "inject",
    "run_attempt",
    "supplied",
]


class Host:
    """The runtime an attempt runs in, as :func:`run_attempt` sees it. The defaults do nothing
    and run coroutines on a private loop; a runtime overrides what it cares about."""

    def hold(self) -> None:
        """User code is about to prepare the attempt (a ``Depends`` factory, a module import):
        it may take long, and is not the activity's running time between heartbeats."""

    def resume(self) -> None:
        """The preparation announced by :meth:`hold` is over."""

    def enter(self) -> None:
        """The activity is about to be entered (its setup is done)."""

    def run_task(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run an async activity's coroutine to completion from synchronous code."""
        raise NotImplementedError("this runtime runs no async activity synchronously")


class AttemptTimedOut(Exception):
    """:func:`arun_attempt`'s time limit passed; the activity was asked to stop."""


def supplied(defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The parameter names a call supplies (so that injection never overrides them): the
    keywords, and the names of the positional parameters ``args`` fill."""
    if not args:
        return kwargs
    return {*defn.positional_names[: len(args)], *kwargs}


def inject(
    defn: ActivityDefinition,
    cache: ResourceCache,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    host: Host | None = None,
) -> dict[str, Any]:
    """``kwargs`` with ``defn``'s ``Depends`` resources (from ``cache``) added for the
    parameters the call does not supply; ``host`` is held while a factory runs."""
    deps = defn.depends_params()
    if not deps:
        return kwargs
    given = supplied(defn, args, kwargs)
    if host is not None and cache.missing(deps, given):
        host.hold()
        try:
            made = cache.resolve(deps, given)
        finally:
            host.resume()
    else:
        made = cache.resolve(deps, given)
    return {**made, **kwargs}


async def ainject(
    defn: ActivityDefinition,
    cache: ResourceCache,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    host: Host | None = None,
) -> dict[str, Any]:
    """:func:`inject` on a running loop: async factories are awaited there."""
    deps = defn.depends_params()
    if not deps:
        return kwargs
    given = supplied(defn, args, kwargs)
    held = host is not None and cache.missing(deps, given)
    if held:
        host.hold()  # type: ignore[union-attr]
    try:
        made = await cache.aresolve(deps, given)
    finally:
        if held:
            host.resume()  # type: ignore[union-attr]
    return {**made, **kwargs}


def attempt_info(
    activity_id: str,
    name: str,
    attempt: int,
    started_at: float,
    *,
    deadline: float | None = None,
    timeout: float | None = None,
    worker_id: int | None = None,
    session_id: str | None = None,
    heartbeat_timeout: float | None = None,
    heartbeat_details: Any = None,
) -> ActivityInfo:
    """The :class:`ActivityInfo` of an attempt in this process; ``deadline`` (wall clock) or
    ``timeout`` (seconds from ``started_at``) gives its deadline."""
    if deadline is None and timeout is not None:
        deadline = started_at + timeout
    return ActivityInfo(
        activity_id=activity_id,
        name=name,
        attempt=attempt,
        worker_id=worker_id,
        pid=os.getpid(),
        session_id=session_id,
        started_at=started_at,
        deadline=deadline,
        heartbeat_timeout=heartbeat_timeout,
        heartbeat_details=heartbeat_details,
    )


def run_attempt(
    defn: ActivityDefinition,
    ctx: ActivityContext,
    args: Any,
    kwargs: dict[str, Any],
    host: Host,
    each: Callable[[ActivityDefinition, ResourceCache, Any, Host], Any] | None = None,
) -> Any:
    """Run one attempt of ``defn`` in this thread with ``ctx`` installed; its result, or its
    exception raised. An async activity runs through ``host.run_task``.

    With ``each``, the attempt is a chunk of a map: ``args`` are its items, and
    ``each(defn, resources, items, host)`` runs the activity over them once it is entered (the
    list of their results; for an async activity, the coroutine that makes it).
    """
    token = _current_activity.set(ctx)
    try:
        if each is not None:
            host.enter()
            run = each(defn, ctx.resources, args, host)
        else:
            if defn.depends_params():
                kwargs = inject(defn, ctx.resources, args, kwargs, host)
            host.enter()
            run = defn.fn(*args, **kwargs)
        if defn.is_async:
            return host.run_task(run)
        return run
    finally:
        _current_activity.reset(token)


async def arun_attempt(
    defn: ActivityDefinition,
    ctx: ActivityContext,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    timeout: float | None = None,
    stop: Callable[[], None] | None = None,
    on_start: Callable[[asyncio.Future[Any]], None] | None = None,
    grace: float = 1.0,
) -> Any:
    """Run one attempt of ``defn`` from a running loop with ``ctx`` installed; its result, or
    its exception raised.

    An async activity is a task on this loop; a sync one runs in a daemon thread of its own,
    so that the loop (and the time limit) go on. ``on_start`` receives the attempt's future
    (to cancel it from elsewhere). After ``timeout`` seconds, or when the caller is cancelled,
    ``stop()`` is called (the activity's ``is_cancelled()`` should turn True) and the future is
    cancelled; an async activity gets ``grace`` seconds to unwind, then
    :class:`AttemptTimedOut` is raised. A thread cannot be killed: a sync activity that never
    looks at ``is_cancelled()`` keeps running in the background.
    """
    import asyncio
    import contextvars

    kwargs = await ainject(defn, ctx.resources, args, kwargs)
    run_ctx = contextvars.copy_context()
    run_ctx.run(_current_activity.set, ctx)
    loop = asyncio.get_running_loop()
    if defn.is_async:
        fut: asyncio.Future[Any] = loop.create_task(defn.fn(*args, **kwargs), context=run_ctx)
    else:
        fut = loop.create_future()
        threading.Thread(
            target=_run_in_thread,
            args=(loop, fut, run_ctx, defn.fn, args, kwargs),
            name=f"activity-{defn.name}",
            daemon=True,
        ).start()
    if on_start is not None:
        on_start(fut)
    try:
        done, _ = await asyncio.wait({fut}, timeout=timeout)
    except asyncio.CancelledError:
        if stop is not None:
            stop()
        fut.cancel()
        raise
    if done:
        return fut.result()
    if stop is not None:
        stop()
    fut.cancel()
    if defn.is_async:
        # a coroutine that swallows CancelledError must not hang the caller
        await asyncio.wait({fut}, timeout=grace)
    raise AttemptTimedOut(f"activity {defn.name!r}: attempt timed out ({timeout:.3g}s)")


def _run_in_thread(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    ctx: contextvars.Context,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    try:
        result = ctx.run(fn, *args, **kwargs)
    except BaseException as exc:
        _post(loop, fut, None, exc)
    else:
        _post(loop, fut, result, None)


def _post(
    loop: asyncio.AbstractEventLoop,
    fut: asyncio.Future[Any],
    result: Any,
    exc: BaseException | None,
) -> None:
    def deliver() -> None:
        if fut.done():  # timed out or cancelled meanwhile
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    try:
        loop.call_soon_threadsafe(deliver)
    except RuntimeError:
        pass  # the loop is closed: nobody waits for this result any more
