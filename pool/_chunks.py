"""A chunk of a map (``Pool.map(fn, items, chunksize=k)``): one call that runs ``fn`` over k
items, in one attempt, in one worker.

The caller's side makes it a ``Call`` of the activity itself (``CallMaker.chunk_call``): its
payload is the items, ``Call.chunk`` says how each is passed (``ITEMS`` or ``SPREAD``), its
time limits are the activity's times k (``pool._timeouts.chunk_limits``), and its result, a list,
is checked item by item against the activity's return annotation when it comes back
(``ActivityDefinition.validate_results``). The RUN frame carries the kind (``RunMeta.chunk``).

The worker runs the attempt as any other (``sdk._attempt.run_attempt``): the activity is looked
up, its context set up once (so ``activity.info()``, ``heartbeat()``, ``is_cancelled()`` and
``session_state()`` work inside every item), and it is entered once; then one of the loops here
calls its plain function over the items in order. Any item's exception fails the chunk, and
with it the attempt. A worker imports this module only when its first chunk arrives
(tests/integration/test_chunked_map.py), and it imports nothing a worker has not loaded already:
results are never checked here, so a worker needs neither ``typing`` nor pydantic.
"""

from __future__ import annotations

from sdk._attempt import ainject, inject

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from sdk._attempt import Host
    from sdk._definition import ActivityDefinition
    from sdk._depends import ResourceCache

ITEMS = 1  # each item is the activity's one positional argument: fn(item)
SPREAD = 2  # each item is an (args, kwargs) pair: fn(*args, **kwargs)


def each(kind: int, is_async: bool) -> Callable[..., Any]:
    """How an attempt runs a chunk of ``kind`` (``run_attempt``'s ``each``): a function of the
    definition, the resource cache, the items and the host; an async activity's returns the
    coroutine that runs them."""
    if kind == SPREAD:
        return run_spread_async if is_async else run_spread
    if kind == ITEMS:
        return run_items_async if is_async else run_items
    raise ValueError(f"unknown kind of chunk {kind!r}")


def run_items(
    defn: ActivityDefinition, cache: ResourceCache, items: list[Any], host: Host | None
) -> list[Any]:
    """``defn``'s function over ``items``, one call each with the item as the first argument,
    its ``Depends`` resources made once; the results in order."""
    fn = defn.fn
    kwargs = inject(defn, cache, (None,), {}, host)
    return [fn(item, **kwargs) for item in items]


async def run_items_async(
    defn: ActivityDefinition, cache: ResourceCache, items: list[Any], host: Host | None
) -> list[Any]:
    """:func:`run_items` of an async activity, one item after the other on the running loop."""
    fn = defn.fn
    kwargs = await ainject(defn, cache, (None,), {}, host)
    return [await fn(item, **kwargs) for item in items]


def run_spread(
    defn: ActivityDefinition, cache: ResourceCache, items: list[Any], host: Host | None
) -> list[Any]:
    """:func:`run_items` over ``(args, kwargs)`` pairs: each item is ``fn(*args, **kwargs)``,
    its ``Depends`` resources injected for the parameters it does not supply."""
    fn = defn.fn
    return [fn(*a, **inject(defn, cache, a, kw, host)) for a, kw in items]


async def run_spread_async(
    defn: ActivityDefinition, cache: ResourceCache, items: list[Any], host: Host | None
) -> list[Any]:
    """:func:`run_spread` of an async activity."""
    fn = defn.fn
    return [await fn(*a, **(await ainject(defn, cache, a, kw, host))) for a, kw in items]
