"""``Depends(factory)``: resources made once per worker process and reused by every activity.

A :class:`ResourceCache` (one per worker process; the runtime owns it) makes each factory's
resource on first use, keyed by the factory's identity, and tears them down in reverse order of
creation when closed. A factory may be a sync or async function, a sync or async generator
function (the code after ``yield`` is the teardown), or return a sync or async context manager
(entered when made, exited at close).

asyncio is imported only when an async factory or teardown has to run from synchronous code, so
that importing the sdk (as every worker does) does not load it.
"""

from __future__ import annotations

import atexit
import threading

from ._record import record

# Not typing's TYPE_CHECKING, nor dataclasses, nor inspect at import: every worker imports this
# module (see sdk._lazy). inspect is imported where a factory is first made.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
    from typing import Any

    # A teardown is either a plain callable or a callable returning a coroutine.
    _Teardown = tuple[bool, Callable[[], Any]]  # (is_async, fn)

__all__ = ["Dependency", "Depends", "ResourceCache", "default_resource_cache"]


@record(frozen=True)
class Dependency:
    """What ``Depends(factory)`` makes: the parameter default that injects ``factory``'s
    resource (``model=Depends(load_model)``). At run time ``Depends`` is this class."""

    __match_args__ = ("factory",)

    factory: Callable[[], Any]
    """Makes the resource; called once per worker process."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.__dict__["factory"] = factory  # as a frozen dataclass sets it
        self.__post_init__()

    def __post_init__(self) -> None:  # (pydantic calls it too, as for a dataclass)
        if not callable(self.factory):
            raise TypeError(f"Depends() needs a callable factory, got {self.factory!r}")


if TYPE_CHECKING:
    # For type checkers a function returning Any (as FastAPI's Depends): the default of a
    # parameter of any annotated type, ``conn: Connection = Depends(connect)``.
    def Depends(factory: Callable[[], Any]) -> Any:
        """Parameter default that injects ``factory``'s resource: ``model=Depends(load)``."""

else:
    Depends = Dependency


class ResourceCache:
    """Resources of ``Depends`` parameters for one process; see the module docstring.

    ``run_coroutine`` runs an async factory or teardown to completion from synchronous code
    (a worker passes its loop's ``run_until_complete``). By default the cache uses a private
    event loop of its own, kept for its lifetime so that async generators are resumed on the
    loop that started them; it cannot be used from inside a running loop (use :meth:`aresolve`
    and :meth:`aclose` there).
    """

    def __init__(self, run_coroutine: Callable[[Coroutine[Any, Any, Any]], Any] | None = None):
        self._run_coroutine = run_coroutine
        self._loop: asyncio.AbstractEventLoop | None = None
        # factory id -> (factory, value); the factory is kept so its id cannot be reused.
        self._values: dict[int, tuple[Callable[[], Any], Any]] = {}
        self._teardowns: list[_Teardown] = []
        # Guards creation so that two threads never make the same resource twice.
        self._lock = threading.RLock()

    # -- sync API ------------------------------------------------------------------------------

    def missing(self, deps: Mapping[str, Dependency], provided: Collection[str] = ()) -> bool:
        """Whether resolving ``deps`` would call a factory (user code that may take long: the
        worker holds the activity's heartbeat clock meanwhile)."""
        values = self._values
        return any(
            id(dep.factory) not in values for name, dep in deps.items() if name not in provided
        )

    def resolve(
        self, deps: Mapping[str, Dependency], provided: Collection[str] = ()
    ) -> dict[str, Any]:
        """Keyword arguments for the parameters in ``deps`` (name -> its ``Depends``) that are
        not in ``provided``: each factory's resource, made on first use."""
        if not deps:
            return {}
        out: dict[str, Any] = {}
        for name, dep in deps.items():
            if name in provided:
                continue
            entry = self._values.get(id(dep.factory))
            if entry is None:
                with self._lock:
                    entry = self._values.get(id(dep.factory))
                    if entry is None:
                        value = self._create_sync(dep.factory)
                        entry = (dep.factory, value)
                        self._values[id(dep.factory)] = entry
            out[name] = entry[1]
        return out

    def close(self) -> None:
        """Tear every resource down, newest first; idempotent. Teardown errors are logged."""
        with self._lock:
            teardowns, self._teardowns = self._teardowns, []
            self._values.clear()
            for is_async, fn in reversed(teardowns):
                try:
                    if is_async:
                        self._run(fn())
                    else:
                        fn()
                except Exception:
                    _log_teardown_failure(fn)
            if self._loop is not None:
                loop, self._loop = self._loop, None
                close_private_loop(loop)

    # -- async API (for callers already inside a running loop) ---------------------------------

    async def aresolve(
        self, deps: Mapping[str, Dependency], provided: Collection[str] = ()
    ) -> dict[str, Any]:
        """Like :meth:`resolve`, awaiting async factories on the running loop."""
        if not deps:
            return {}
        out: dict[str, Any] = {}
        for name, dep in deps.items():
            if name in provided:
                continue
            entry = self._values.get(id(dep.factory))
            if entry is None:
                value, teardowns = await self._create_async(dep.factory)
                entry = self._values.get(id(dep.factory))
                if entry is None:
                    entry = (dep.factory, value)
                    self._values[id(dep.factory)] = entry
                    self._teardowns.extend(teardowns)
                else:
                    # Another task made it while this one awaited: keep the first, drop ours.
                    await _run_teardowns_async(teardowns)
            out[name] = entry[1]
        return out

    async def aclose(self) -> None:
        """Like :meth:`close`, awaiting async teardowns on the running loop."""
        teardowns, self._teardowns = self._teardowns, []
        self._values.clear()
        await _run_teardowns_async(teardowns)
        self.close()  # releases the private loop, if any

    # -- creation ------------------------------------------------------------------------------

    def _create_sync(self, factory: Callable[[], Any]) -> Any:
        import inspect  # lazily: only an activity with a Depends parameter gets here

        if inspect.isgeneratorfunction(factory):
            gen = factory()
            value = next(gen)
            self._teardowns.append((False, lambda: _finish_generator(gen)))
            return value
        if inspect.isasyncgenfunction(factory):
            agen = factory()
            value = self._run(agen.__anext__())
            self._teardowns.append((True, lambda: _finish_async_generator(agen)))
            return value
        value = factory()
        if inspect.iscoroutine(value):
            value = self._run(value)
        elif inspect.isawaitable(value):
            value = self._run(_await(value))
        if _is_cm(value):
            entered = value.__enter__()
            self._teardowns.append((False, lambda: value.__exit__(None, None, None)))
            return entered
        if _is_async_cm(value):
            entered = self._run(_await(value.__aenter__()))
            self._teardowns.append((True, lambda: _await(value.__aexit__(None, None, None))))
            return entered
        return value

    async def _create_async(self, factory: Callable[[], Any]) -> tuple[Any, list[_Teardown]]:
        import inspect  # lazily, as in _create_sync

        if inspect.isgeneratorfunction(factory):
            gen = factory()
            value = next(gen)
            return value, [(False, lambda: _finish_generator(gen))]
        if inspect.isasyncgenfunction(factory):
            agen = factory()
            value = await agen.__anext__()
            return value, [(True, lambda: _finish_async_generator(agen))]
        value = factory()
        if inspect.isawaitable(value):
            value = await value
        if _is_async_cm(value):
            entered = await value.__aenter__()
            return entered, [(True, lambda: _await(value.__aexit__(None, None, None)))]
        if _is_cm(value):
            entered = value.__enter__()
            return entered, [(False, lambda: value.__exit__(None, None, None))]
        return value, []

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        if self._run_coroutine is not None:
            return self._run_coroutine(coro)
        import asyncio  # lazily: see the module docstring

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "ResourceCache: an async Depends factory or teardown cannot run synchronously "
                "inside a running event loop; use 'await cache.aresolve(...)' / "
                "'await cache.aclose()' or pass run_coroutine"
            )
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)


def _log_teardown_failure(fn: Callable[[], Any]) -> None:
    """Log the exception being handled; logging is imported only when a teardown fails."""
    import logging

    logging.getLogger(__name__).exception("teardown of resource %r failed", fn)


def _is_cm(value: Any) -> bool:
    return hasattr(value, "__enter__") and hasattr(value, "__exit__")


def _is_async_cm(value: Any) -> bool:
    return hasattr(value, "__aenter__") and hasattr(value, "__aexit__")


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _finish_generator(gen: Any) -> None:
    try:
        next(gen)
    except StopIteration:
        return
    gen.close()
    raise RuntimeError(f"Depends generator {gen!r} yielded more than once")


async def _finish_async_generator(agen: Any) -> None:
    try:
        await agen.__anext__()
    except StopAsyncIteration:
        return
    await agen.aclose()
    raise RuntimeError(f"Depends async generator {agen!r} yielded more than once")


async def _run_teardowns_async(teardowns: list[_Teardown]) -> None:
    for is_async, fn in reversed(teardowns):
        try:
            if is_async:
                await fn()
            else:
                fn()
        except Exception:
            _log_teardown_failure(fn)


_default_cache: ResourceCache | None = None
_default_lock = threading.Lock()


def default_resource_cache() -> ResourceCache:
    """The process-wide cache used by in-process calls outside any runtime; closed at exit."""
    global _default_cache
    if _default_cache is None:
        with _default_lock:
            if _default_cache is None:
                cache = ResourceCache()
                atexit.register(cache.close)
                _default_cache = cache
    return _default_cache


def close_private_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Finish a loop this code made for itself: async generators first, then the loop."""
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
