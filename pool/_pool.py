"""``Pool``: the public face of the runtime. Loop management and the calling API only.

The supervisor (and its scheduler) live on one event loop: the caller's, under ``async with``,
or a private uvloop loop on a background thread, under ``with``. Calls are validated and their
arguments pickled in the calling thread; only the finished ``Call`` crosses to the loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import threading
import types
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from functools import partial
from typing import Any, Literal, ParamSpec, TypeVar, overload

from pool import _chunks, _map
from pool._config import PoolConfig
from pool._events import EventStream, PoolEvent, PoolStats
from pool._faults import FaultRule
from pool._fds import StdioReserved
from pool._futures import PoolFuture
from pool._process import ForkServer
from pool._protocol import dumps, lift_call_bytes
from pool._scheduler import Call, CallState
from pool._spawner import early_forkserver
from pool._supervisor import Supervisor
from pool._worker import refuse_pool_while_importing_main
from sdk import _context
from sdk._definition import ActivityDefinition, get_definition
from sdk._errors import (
    ActivityInputError,
    PoolClosedError,
    StickyWorkerSessionMissingError,
    safe_repr,
)
from sdk._retry import RetryPolicy

ActivityRef = Callable[..., Any] | str


def _new_loop() -> asyncio.AbstractEventLoop:
    with StdioReserved():  # the loop's own fds (epoll, wake-up) are the pool's, never stdio
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class PoolCalls:
    """The calling API of a :class:`Pool` and of its :class:`PoolSession` (type checkers name
    it in their messages: ``"run" of "PoolCalls"``).

    Typed from the activity: ``pool.run(add, 1, 2)`` is what ``add`` returns, an ``async def``
    activity's coroutine result included, and the arguments are checked against its
    parameters; ``map`` checks the items against its one parameter. An activity given by its
    registered name is ``Any``.
    """

    __slots__ = ()

    def _target(self) -> tuple[Pool, Any]:
        """The pool that runs the calls, and the sticky session they belong to (or None)."""
        raise NotImplementedError

    @overload
    async def execute(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def execute(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    async def execute(self, fn: str, /, *args: Any, **kwargs: Any) -> Any: ...
    async def execute(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        """Run one activity in the pool and return its result (or raise its error)."""
        pool, session = self._target()
        return await pool.dispatch(get_definition(fn), args, kwargs, session)

    @overload
    def submit(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[R]: ...
    @overload
    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[R]: ...
    @overload
    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]: ...
    def submit(
        self, fn: ActivityRef, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Start one activity; returns a ``concurrent.futures.Future``. Cancelling it cancels."""
        pool, session = self._target()
        return pool._submit_call(pool._prepare(fn, args, kwargs, session))

    @overload
    def run(
        self, fn: Callable[P, Coroutine[Any, Any, R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    def run(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    def run(self, fn: str, /, *args: Any, **kwargs: Any) -> Any: ...
    def run(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking call from a thread that is not the pool's loop."""
        pool, session = self._target()
        pool._refuse_on_loop("run")
        return pool._run_call(pool._prepare(fn, args, kwargs, session))

    @overload
    def map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> Iterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> Iterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> Iterator[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> Iterator[R | BaseException]: ...
    @overload
    def map(
        self,
        fn: str,
        iterable: Iterable[Any],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool = ...,
        progress: bool = ...,
    ) -> Iterator[Any]: ...
    def map(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Call ``fn(item)`` for every item; results in input order. A blocking iterator.

        The input is read lazily: at most ``buffersize`` items are read and not yet yielded
        (default: 256 calls' worth, or 4 per worker if more; times ``chunksize``), so an endless
        generator works. The first window is sent at once; then an item is read for each one
        yielded. Leaving the iteration early (``break``, an exception, ``close()``) cancels the
        calls in flight and reads no more.

        An item's failure is raised when the iteration reaches it: its call's error
        (``ActivityError``...), or ``ActivityInputError`` for an item that fails validation or
        cannot be pickled (nothing was sent for it). With ``return_exceptions=True`` that error
        is yielded in the item's place and the map goes on. An exception raised by the input
        iterator itself is raised at its position, after every earlier item's outcome, with
        or without ``return_exceptions``, and ends the map.

        ``chunksize=k > 1`` sends the items ``k`` at a time (the last chunk shorter): each
        chunk is *one* call, run in one worker, where ``fn``'s function runs over the chunk's
        items in order with the activity context set up once (``activity.info()`` and
        ``heartbeat()`` work in every item; ``info()`` describes the chunk's attempt). This
        takes the per-call cost (a round trip, events, scheduling) off each item: use it for
        many short items. A chunk is one attempt: its ``start_to_close_timeout`` (and
        ``schedule_to_close_timeout``) is the activity's times the number of items in the
        chunk; ``heartbeat_timeout`` is unchanged and a heartbeat from any item counts. A
        failure of any item (an exception, a timeout, a crash) fails the chunk, and the
        activity's retry policy retries the whole chunk: its items run again, so they must be
        idempotent. When retries run out, the error is raised when the iteration reaches the
        chunk's first item (with ``return_exceptions``, it is every item's outcome). An item
        that fails validation is left out of its chunk and fails alone. Not allowed with an
        activity that has a ``rate_limit``.

        ``progress=True`` shows a progress bar on stderr while the results are consumed (plain
        periodic lines when stderr is not a terminal): done/total, failed, retried, workers
        lost by reason, rate and ETA (docs/cli.md).
        """
        pool, session = self._target()
        pool._refuse_on_loop("map")
        run = pool._map_run(fn, session, buffersize, chunksize, ordered=True, threaded=True)
        results = _map.results(run, iter(iterable), return_exceptions)
        next(results)  # the first window goes out now
        if progress:
            return pool._tracked(results, _length(iterable), pairs=False)
        return results

    @overload
    def map_unordered(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> Iterator[tuple[int, R]]: ...
    @overload
    def map_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> Iterator[tuple[int, R]]: ...
    @overload
    def map_unordered(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> Iterator[tuple[int, R | BaseException]]: ...
    @overload
    def map_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> Iterator[tuple[int, R | BaseException]]: ...
    @overload
    def map_unordered(
        self,
        fn: str,
        iterable: Iterable[Any],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool = ...,
        progress: bool = ...,
    ) -> Iterator[tuple[int, Any]]: ...
    def map_unordered(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> Iterator[tuple[int, Any]]:
        """:meth:`map` that yields ``(index, result)`` as the calls finish, not in input order.

        ``index`` is the item's position in the input (from 0). The window, chunks, errors and
        ``return_exceptions`` are as in :meth:`map`; a slow item holds back nothing but itself.
        """
        pool, session = self._target()
        pool._refuse_on_loop("map_unordered")
        run = pool._map_run(fn, session, buffersize, chunksize, ordered=False, threaded=True)
        results = _map.results(run, iter(iterable), return_exceptions)
        next(results)
        if progress:
            return pool._tracked(results, _length(iterable), pairs=True)
        return results

    @overload
    def amap(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> AsyncIterator[R]: ...
    @overload
    def amap(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> AsyncIterator[R]: ...
    @overload
    def amap(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> AsyncIterator[R | BaseException]: ...
    @overload
    def amap(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> AsyncIterator[R | BaseException]: ...
    @overload
    def amap(
        self,
        fn: str,
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool = ...,
        progress: bool = ...,
    ) -> AsyncIterator[Any]: ...
    def amap(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> AsyncIterator[Any]:
        """:meth:`map` for async code: an async iterator of results in input order.

        The input may be an async iterable too. Reading starts with the iteration; the rest is
        as in :meth:`map`. Leave early with ``contextlib.aclosing(pool.amap(...))``, or the
        calls in flight are cancelled only when the iterator is garbage-collected.
        """
        pool, session = self._target()
        run = pool._map_run(fn, session, buffersize, chunksize, ordered=True, threaded=False)
        source, is_async = _source(iterable)
        results = _map.aresults(run, source, is_async, return_exceptions)
        if progress:
            return pool._atracked(results, _length(iterable), pairs=False)
        return results

    @overload
    def amap_unordered(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> AsyncIterator[tuple[int, R]]: ...
    @overload
    def amap_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: Literal[False] = ...,
        progress: bool = ...,
    ) -> AsyncIterator[tuple[int, R]]: ...
    @overload
    def amap_unordered(
        self,
        fn: Callable[[T], Coroutine[Any, Any, R]],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> AsyncIterator[tuple[int, R | BaseException]]: ...
    @overload
    def amap_unordered(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool,
        progress: bool = ...,
    ) -> AsyncIterator[tuple[int, R | BaseException]]: ...
    @overload
    def amap_unordered(
        self,
        fn: str,
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        buffersize: int | None = ...,
        chunksize: int = ...,
        return_exceptions: bool = ...,
        progress: bool = ...,
    ) -> AsyncIterator[tuple[int, Any]]: ...
    def amap_unordered(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any] | AsyncIterable[Any],
        *,
        buffersize: int | None = None,
        chunksize: int = 1,
        return_exceptions: bool = False,
        progress: bool = False,
    ) -> AsyncIterator[tuple[int, Any]]:
        """:meth:`map_unordered` for async code (the input may be an async iterable)."""
        pool, session = self._target()
        run = pool._map_run(fn, session, buffersize, chunksize, ordered=False, threaded=False)
        source, is_async = _source(iterable)
        results = _map.aresults(run, source, is_async, return_exceptions)
        if progress:
            return pool._atracked(results, _length(iterable), pairs=True)
        return results


class Pool(PoolCalls):
    """A supervised pool of worker processes that run activities.

    Use as ``async with Pool(...) as pool`` (on the running loop) or ``with Pool(...) as pool``
    (the supervisor runs on a background thread). Entering returns once every worker is ready.
    """

    def __init__(
        self,
        activities: Iterable[Callable[..., Any] | types.ModuleType | str] = (),
        *,
        workers: int | None = None,
        max_tasks_per_worker: int | None = None,
        max_memory_per_worker: int | None = None,
        start_method: Literal["forkserver", "fork", "spawn"] = "forkserver",
        retry_policy: RetryPolicy | None = None,
        cancel_grace: float = 1.0,
        start_timeout: float = 60.0,
        shutdown_timeout: float = 5.0,
        prefetch: int = 32,
        thread_limit: int | Literal["auto"] | None = "auto",
        cpu_affinity: bool | Iterable[Iterable[int]] = False,
        spares: int = 0,
        reply_spin: float = 0.0002,
        on_event: Callable[[PoolEvent], None] | None = None,
        on_output: Callable[[int, str | None, str], None] | None = None,
        ambient: bool = True,
    ) -> None:
        refuse_pool_while_importing_main()
        self._config = PoolConfig.from_options(
            activities,
            workers=workers,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            start_method=start_method,
            cancel_grace=cancel_grace,
            start_timeout=start_timeout,
            shutdown_timeout=shutdown_timeout,
            prefetch=prefetch,
            thread_limit=thread_limit,
            cpu_affinity=cpu_affinity,
            spares=spares,
            reply_spin=reply_spin,
        )
        self._default_policy = retry_policy or RetryPolicy()
        self._policies: dict[int, RetryPolicy] = {}
        self._ambient = ambient  # entering makes this pool the dispatcher of `await activity()`
        self._on_event = on_event
        self._on_output = on_output
        # more receivers of events, beside on_event: pool.events() streams, progress displays
        # (the loop thread's; each is called on the loop thread)
        self._listeners: list[tuple[Callable[[PoolEvent], None], frozenset[str] | None]] = []
        self._streams: list[EventStream] = []  # to end when the pool closes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sup: Supervisor | None = None
        self._wake_later: Callable[[Callable[[], None]], None] | None = None
        self._closed = False
        self._dispatcher_token: contextvars.Token[Any] | None = None
        self._sessions_hooked: set[str] = set()
        # calls and actions on their way to the loop thread (see _to_loop)
        self._inbox: collections.deque[Call | Callable[[], object]] = collections.deque()
        self._inbox_armed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Pool:
        await self._start_on(asyncio.get_running_loop())
        if self._ambient:
            self._dispatcher_token = _context.set_dispatcher(self)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._reset_dispatcher()
        await self.aclose(cancel=exc_type is not None)

    def __enter__(self) -> Pool:
        if self._sup is not None:
            raise RuntimeError("this Pool was already started; make a new one")
        # start_method="fork": fork the fork server while this is the only thread (~1 ms)
        early = early_forkserver(self._config)
        try:
            self._enter(early)
        except BaseException:
            if early is not None and self._sup is None:
                early.close()
            raise
        return self

    def _enter(self, early: ForkServer | None) -> None:
        loop = _new_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(started.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="activitypool-supervisor", daemon=True)
        self._thread.start()
        started.wait()
        try:
            asyncio.run_coroutine_threadsafe(self._start_on(loop, early, True), loop).result()
        except BaseException:
            self._stop_thread()
            raise
        if self._ambient:
            self._dispatcher_token = _context.set_dispatcher(self)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)

    def _reset_dispatcher(self) -> None:
        if self._dispatcher_token is not None:
            try:
                _context.reset_dispatcher(self._dispatcher_token)
            except ValueError:  # closed from another context; the variable dies with it
                pass
            self._dispatcher_token = None

    async def _start_on(
        self,
        loop: asyncio.AbstractEventLoop,
        early: ForkServer | None = None,
        with_thread: bool = False,
    ) -> None:
        if self._sup is not None:
            raise RuntimeError("this Pool was already started; make a new one")
        self._loop = loop
        self._sup = Supervisor(
            loop,
            self._config,
            self._emit if self._on_event is not None else None,
            self._on_output,
            early,
            early_tried=with_thread,
        )
        self._sup.inbox = self._inbox
        self._wake_later = self._sup.wake_later  # PoolFuture: wake waiters after the event
        try:
            await self._sup.start()
        except BaseException:
            self._closed = True
            await self._sup.close(cancel=True)
            raise

    async def aclose(self, cancel: bool = False) -> None:
        """Drain (or, with ``cancel``, fail what is outstanding), then stop every worker."""
        self._closed = True
        self._reset_dispatcher()
        sup = self._sup
        if sup is None or self._loop is None:
            return
        try:
            if asyncio.get_running_loop() is self._loop:
                await sup.close(cancel=cancel)
            else:
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(sup.close(cancel), self._loop)
                )
        finally:
            self._end_streams()

    def close(self, cancel: bool = False) -> None:
        """Blocking close of a ``with`` pool; idempotent. ``cancel`` fails what is outstanding."""
        self._closed = True
        self._reset_dispatcher()
        sup, loop = self._sup, self._loop
        if sup is None or loop is None or (self._thread is None and loop.is_closed()):
            return
        if self._thread is None:
            raise RuntimeError("this pool runs on your event loop: use 'await pool.aclose()'")
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(sup.close(cancel), loop).result()
        finally:
            self._stop_thread()
            self._end_streams()

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._thread = None

    # -- calling ---------------------------------------------------------------------------
    def _prepare(
        self, fn: ActivityRef | ActivityDefinition, args: tuple, kwargs: dict, session: Any
    ) -> Call:
        if self._closed or self._sup is None:
            raise PoolClosedError(
                "the pool is closed" if self._closed else "the pool is not started"
            )
        defn = fn if isinstance(fn, ActivityDefinition) else get_definition(fn)
        sid = self._session_id(defn, session)
        args, kwargs = defn.validate_args(args, kwargs)
        try:
            payload = dumps(lift_call_bytes(args, kwargs))
        except Exception as exc:
            raise ActivityInputError(
                f"arguments of activity {defn.name!r} cannot be pickled: {safe_repr(exc)}"
            ) from exc
        return self._sup.new_call(defn, self._policy(defn), payload, None, sid)

    def _session_id(self, defn: ActivityDefinition, session: Any) -> str | None:
        """The sticky session a call of ``defn`` belongs to (None if it is not sticky)."""
        if not defn.sticky_to_worker:
            return None
        if session is None:
            raise StickyWorkerSessionMissingError(
                f"activity {defn.name!r} is sticky_to_worker: call it inside "
                "run_sticky_worker_session() or pool.sticky_session()"
            )
        sid: str = session.session_id
        if session.closed:
            raise ActivityInputError(f"sticky session {sid} is closed; start a new one")
        if sid not in self._sessions_hooked:
            self._sessions_hooked.add(sid)
            session.on_close(self._session_closed)
        return sid

    def _policy(self, defn: ActivityDefinition) -> RetryPolicy:
        policy = self._policies.get(id(defn))
        if policy is None:
            policy = defn.retry_policy(self._default_policy)
            # Only a registered definition lives as long as the process, so only its id is a
            # safe key: a per-call copy (with_options) is freed, and its id reused, soon.
            if _registered(defn):
                self._policies[id(defn)] = policy
        return policy

    def _chunk_call(
        self,
        defn: ActivityDefinition,
        session: Any,
        defns: dict[int, ActivityDefinition],
        items: list[Any],
        spread: bool = False,
    ) -> Call:
        """One call running ``defn`` over ``items`` (validated) in one worker (see
        ``pool._chunks``); ``defns`` caches the chunk definitions of one map by length."""
        if self._closed or self._sup is None:
            raise PoolClosedError(
                "the pool is closed" if self._closed else "the pool is not started"
            )
        sid = self._session_id(defn, session)
        cdefn = defns.get(len(items))
        if cdefn is None:
            cdefn = defns[len(items)] = _chunk_definition(defn, len(items), spread)
        try:
            payload = dumps(((defn.module, defn.qualname, items), {}))
        except Exception as exc:
            raise ActivityInputError(
                f"arguments of activity {defn.name!r} cannot be pickled: {safe_repr(exc)}"
            ) from exc
        return self._sup.new_call(cdefn, self._policy(defn), payload, None, sid)

    def _session_closed(self, session: Any) -> None:
        sid = session.session_id
        self._sessions_hooked.discard(sid)
        loop, sup = self._loop, self._sup
        if loop is None or sup is None or loop.is_closed():
            return
        self._to_loop(partial(sup.release_session, sid))

    async def dispatch(
        self, defn: ActivityDefinition, args: tuple, kwargs: dict, session: Any
    ) -> Any:
        """The ambient-dispatcher entry used by ``await my_activity(...)`` inside the pool."""
        call = self._prepare(defn, args, kwargs, session)
        loop = asyncio.get_running_loop()
        sup = self._sup
        assert sup is not None
        if loop is not self._loop:
            return await asyncio.wrap_future(self._submit_call(call))
        fut = loop.create_future()
        call.waiter = fut
        sup.submit(call)
        try:
            return await fut
        except asyncio.CancelledError:
            sup.cancel(call)
            raise

    async def execute_attempt(
        self,
        fn: ActivityRef | ActivityDefinition,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        attempt: int = 1,
        heartbeat_details: Any = None,
        on_heartbeat: Callable[[Any], None] | None = None,
        session: _context.StickyWorkerSession | None = None,
    ) -> Any:
        """Run one call as attempt ``attempt`` of a call whose retries someone else schedules
        (a Temporal activity task: see ``pool.temporal``).

        The activity sees ``attempt`` and ``heartbeat_details`` in ``activity.info()`` (what an
        earlier attempt, elsewhere, heartbeated last). ``on_heartbeat(details)`` is called on
        the pool's loop thread with each heartbeat of this call. The pool still retries by the
        activity's policy: pass ``with_options(fn, retry_policy_max_attempts=1)`` for exactly
        one attempt. ``session`` is the sticky session of a sticky activity (else the ambient
        one). Cancelling the await cancels the attempt, as for ``execute``.
        """
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
        defn = fn if isinstance(fn, ActivityDefinition) else get_definition(fn)
        call = self._prepare(
            defn, args, kwargs or {}, session if session is not None else _context_session()
        )
        call.attempt = attempt - 1  # the scheduler counts the attempt it dispatches
        call.heartbeat_details = heartbeat_details
        call.on_heartbeat = on_heartbeat
        loop = asyncio.get_running_loop()
        sup = self._sup
        assert sup is not None
        if loop is not self._loop:
            return await asyncio.wrap_future(self._submit_call(call))
        fut = loop.create_future()
        call.waiter = fut
        sup.submit(call)
        try:
            return await fut
        except asyncio.CancelledError:
            sup.cancel(call)
            raise

    def _target(self) -> tuple[Pool, Any]:
        return self, _context_session()

    def _run_call(self, call: Call) -> Any:
        # A lock released by the loop thread, not a Future: fewer objects and one wake-up.
        waiter = _BlockingWaiter()
        call.waiter = waiter
        self._to_loop(call)
        try:
            return waiter.wait()
        except BaseException:
            if not waiter.done:  # interrupted (Ctrl-C): the activity is cancelled too
                sup = self._sup
                if sup is not None:
                    self._to_loop(partial(sup.cancel, call))
            raise

    def _refuse_on_loop(self, what: str) -> None:
        if self._loop is not None and _on_loop(self._loop):
            instead = "await pool.execute()" if what == "run" else f"pool.a{what}()"
            raise RuntimeError(f"{what}() would block the pool's own event loop: use {instead}")

    def _map_run(
        self,
        fn: ActivityRef | ActivityDefinition,
        session: Any,
        buffersize: Any,
        chunksize: Any,
        *,
        ordered: bool,
        threaded: bool,
        spread: bool = False,
    ) -> _map.MapRun:
        """The state of one map of ``fn``, checked now: a mistake in the call itself (bad sizes,
        an unknown activity, a sticky one without a session, a closed pool) raises here, at
        the call of ``map``, not at the first item. ``spread``: each item is an
        ``(args, kwargs)`` pair, the call is ``fn(*args, **kwargs)`` (see ``spread_map``)."""
        size = _check_chunksize(chunksize)
        window = _map.check_buffersize(buffersize)
        sup = self._sup
        if self._closed or sup is None:
            raise PoolClosedError(
                "the pool is closed" if self._closed else "the pool is not started"
            )
        defn = get_definition(fn)
        self._session_id(defn, session)
        if size > 1 and defn.rate_limit is not None:
            raise ValueError(
                f"activity {defn.name!r} has a rate_limit, which counts calls: map it with "
                "chunksize=1 (a chunk would start many items as one call)"
            )
        prepare = self._prepare

        def one(item: Any) -> Call:
            return prepare(defn, (item,), {}, session)

        def one_spread(item: Any) -> Call:
            return prepare(defn, item[0], item[1], session)

        def check_spread(item: Any) -> Any:
            return defn.validate_args(item[0], item[1])

        def session_closed() -> bool:
            return defn.sticky_to_worker and session.closed

        return _map.MapRun(
            window=window or _map.default_window(self._config.workers, size),
            chunksize=size,
            ordered=ordered,
            one=one_spread if spread else one,
            check=check_spread if spread else _item_check(defn),
            chunk=partial(self._chunk_call, defn, session, {}, spread=spread),
            stopped=session_closed,
            submit=lambda calls: self._to_loop(partial(sup.submit_many, calls)),
            cancel=self._cancel_waiting if defn.sticky_to_worker else self._cancel_many,
            wake_later=sup.wake_later,
            loop=self._loop,
            threaded=threaded,
        )

    def _cancel_many(self, calls: list[Call]) -> None:
        sup = self._sup
        if sup is not None:
            try:
                self._to_loop(partial(sup.cancel_many, calls))
            except PoolClosedError:  # no loop left to run them: nothing runs either
                pass

    def _cancel_waiting(self, calls: list[Call]) -> None:
        """Cancel the calls of a sticky map that a consumer left, except one that runs: that
        would kill the session's worker and lose the session. It finishes; nothing follows."""
        sup = self._sup
        if sup is None:
            return

        def cancel() -> None:  # on the loop, where the calls' state is current
            sup.cancel_many([call for call in calls if call.state is not CallState.RUNNING])

        try:
            self._to_loop(cancel)
        except PoolClosedError:
            pass

    def _attach_future(self, call: Call) -> PoolFuture:
        # A PoolFuture, not a plain Future: no Condition (a lock, a deque, bound methods) until
        # somebody waits on it, so thousands in flight are not thousands of objects for the
        # garbage collector to trace; its cancel() forwards here (no done callback per call).
        fut = call.waiter = PoolFuture(self, call)
        return fut

    def _cancel_call(self, call: Call) -> None:
        """A PoolFuture was cancelled: cancel its call (on the loop, in order)."""
        sup = self._sup
        if sup is not None:
            self._to_loop(partial(sup.cancel, call))

    def _submit_call(self, call: Call) -> PoolFuture:
        fut = self._attach_future(call)
        self._to_loop(call)
        return fut

    def _to_loop(self, item: Call | Callable[[], object]) -> None:
        """Hand a call (or an action) to the loop thread, in order with everything else handed.

        Items wait in ``_inbox``; one loop callback drains all that arrived meanwhile, so a
        burst of submissions costs one wake-up of the loop and one batch, not one of each per
        call. Lock-free: the flag is cleared before draining, so an item appended after the
        drain's last pop always finds it cleared and schedules another drain.
        """
        loop, sup = self._loop, self._sup
        if loop is None or sup is None:
            raise PoolClosedError("the pool is not started")
        self._inbox.append(item)
        if not self._inbox_armed:
            self._inbox_armed = True
            try:
                if _on_loop(loop):
                    # never straight into the scheduler: we may be inside it (a Future's done
                    # callback runs while the scheduler answers a call)
                    loop.call_soon(self._drain_inbox)
                else:
                    loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # the loop is closed: nothing will run it
                self._inbox_armed = False

    def _drain_inbox(self) -> None:
        """On the loop thread: submit what other threads handed over, in their order."""
        self._inbox_armed = False
        inbox, sup = self._inbox, self._sup
        if sup is None:
            return
        batch: list[Call] = []
        while inbox:
            item = inbox.popleft()
            if isinstance(item, Call):
                batch.append(item)
                continue
            if batch:
                sup.submit_many(batch)
                batch = []
            item()
        if batch:
            sup.submit_many(batch)

    # -- fault injection (for tests of your own retry logic) -----------------------------
    def inject_fault(
        self,
        fn: ActivityRef,
        fault: Literal["hang", "crash", "exit", "raise", "oom"],
        *,
        attempt: int | None = 1,
        times: int | None = 1,
        exit_code: int = 1,
        exception: BaseException | None = None,
        memory: int = 256 << 20,
    ) -> None:
        """Make attempt ``attempt`` of ``fn`` misbehave in its worker, deterministically.

        ``hang`` sleeps forever (the deadlines must catch it); ``crash`` SIGKILLs the worker;
        ``exit`` calls ``os._exit(exit_code)``; ``raise`` raises ``exception``; ``oom`` allocates
        ``memory`` bytes then dies by SIGKILL as under the kernel's OOM killer. ``attempt=None``
        matches every attempt; the rule is used ``times`` times (None: until cleared).
        """
        rule = FaultRule.make(
            get_definition(fn).name,
            fault,
            attempt=attempt,
            times=times,
            exit_code=exit_code,
            exception=exception,
            memory=memory,
        )
        self._on_loop_thread(rule)

    def clear_faults(self) -> None:
        """Drop every injected fault."""
        self._on_loop_thread(None)

    def _on_loop_thread(self, rule: FaultRule | None) -> None:
        sup = self._sup
        if sup is None:
            raise PoolClosedError("the pool is not started")
        # in order with calls: a call submitted after this returns sees the rule
        self._to_loop(sup.clear_faults if rule is None else partial(sup.add_fault, rule))

    def spread_map(
        self,
        fn: ActivityRef | ActivityDefinition,
        calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]],
        *,
        session: Any = None,
        ordered: bool = True,
        buffersize: int | None = None,
        chunksize: int = 1,
        progress: Any = None,
    ) -> Iterator[Any]:
        """The lazy map of ``fn(*args, **kwargs)`` over ``(args, kwargs)`` pairs, every
        outcome returned (an error in its item's place): the engine of ``activitypool run``.

        Ordered, it yields outcomes in input order; else ``(index, outcome)`` as calls finish.
        ``session`` is a ``sticky_session()``'s ``session`` (sticky activities need one).
        ``progress``: a ``pool._progress.Progress`` that receives the events it counts while
        the map runs (the caller counts the outcomes).
        """
        self._refuse_on_loop("map")
        run = self._map_run(
            fn, session, buffersize, chunksize, ordered=ordered, threaded=True, spread=True
        )
        results = _map.results(run, iter(calls), True)
        if progress is None:
            next(results)
            return results
        from pool import _progress

        self._listen_soon(progress.on_event, _progress.KINDS)
        next(results)
        return self._unlisten_after(results, progress.on_event)

    def _unlisten_after(
        self, results: Iterator[Any], listener: Callable[[PoolEvent], None]
    ) -> Iterator[Any]:
        try:
            yield from results
        finally:
            self._to_loop_if_open(partial(self._unlisten, listener))

    # -- events --------------------------------------------------------------------------
    def events(self, *, maxsize: int = 10_000) -> EventStream:
        """An async iterator of every ``PoolEvent`` from now on, ending when the pool closes.

        ``async for event in pool.events(): ...``; leave early with ``await stream.aclose()``
        (or ``contextlib.aclosing``). Events wait in a queue of ``maxsize``; when a slow reader
        lets it fill, later events are dropped and counted in ``stream.dropped``.
        """
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if self._closed or self._sup is None:
            raise PoolClosedError(
                "the pool is closed" if self._closed else "the pool is not started"
            )
        stream = EventStream(maxsize)
        self._listen_soon(stream.push)
        stream.on_close = lambda: self._to_loop_if_open(partial(self._unlisten, stream.push))
        self._streams.append(stream)
        return stream

    def _emit(self, event: PoolEvent) -> None:
        """On the loop thread: hand an event to on_event and every listener of its kind."""
        if self._on_event is not None:
            self._on_event(event)
        for listener, kinds in self._listeners:
            if kinds is None or event.kind in kinds:
                listener(event)

    def _listen(
        self, listener: Callable[[PoolEvent], None], kinds: frozenset[str] | None = None
    ) -> None:
        """On the loop thread: ``listener`` gets every event (of ``kinds``) from now on."""
        self._listeners = [*self._listeners, (listener, kinds)]  # a copy: _emit may iterate
        self._update_sink()

    def _listen_soon(
        self, listener: Callable[[PoolEvent], None], kinds: frozenset[str] | None = None
    ) -> None:
        """``_listen`` before any call made after this returns: at once on the loop (where a
        call goes straight to the supervisor), else in order through the inbox."""
        loop = self._loop
        if loop is not None and _on_loop(loop):
            if self._closed:
                raise PoolClosedError("the pool is closed")
            self._listen(listener, kinds)
        else:
            self._to_loop(partial(self._listen, listener, kinds))

    def _unlisten(self, listener: Callable[[PoolEvent], None]) -> None:
        # == not is: each access to a bound method (progress.on_event) is a new object
        self._listeners = [(fn, k) for fn, k in self._listeners if fn != listener]
        self._update_sink()

    def _update_sink(self) -> None:
        """Tell the supervisor which events anybody receives: none makes none (the scheduler
        then builds no events at all); a few kinds make only those."""
        sup = self._sup
        if sup is None:
            return
        if self._on_event is not None or any(k is None for _, k in self._listeners):
            sup.set_on_event(self._emit)
        elif self._listeners:
            sup.set_on_event(self._emit, frozenset().union(*(k for _, k in self._listeners if k)))
        else:
            sup.set_on_event(None)

    def _to_loop_if_open(self, action: Callable[[], object]) -> None:
        try:
            self._to_loop(action)
        except PoolClosedError:
            pass

    def _end_streams(self) -> None:
        for stream in self._streams:
            stream.end()
        self._streams.clear()

    def _tracked(self, results: Iterator[Any], total: int | None, *, pairs: bool) -> Iterator[Any]:
        """``results`` of a map, counted into a progress display while they are consumed."""
        from pool import _progress

        progress = _progress.Progress(total)
        display = _progress.Display(progress)
        self._listen_soon(progress.on_event, _progress.KINDS)
        display.start()
        try:
            for outcome in results:
                value = outcome[1] if pairs else outcome
                progress.item(isinstance(value, BaseException))
                yield outcome
        except Exception:
            progress.item(True)
            raise
        finally:
            display.stop()
            self._to_loop_if_open(partial(self._unlisten, progress.on_event))

    async def _atracked(
        self, results: AsyncIterator[Any], total: int | None, *, pairs: bool
    ) -> AsyncIterator[Any]:
        """``_tracked`` for ``amap``."""
        from pool import _progress

        progress = _progress.Progress(total)
        display = _progress.Display(progress)
        self._listen_soon(progress.on_event, _progress.KINDS)
        display.start()
        try:
            async for outcome in results:
                value = outcome[1] if pairs else outcome
                progress.item(isinstance(value, BaseException))
                yield outcome
        except Exception:
            progress.item(True)
            raise
        finally:
            display.stop()
            self._to_loop_if_open(partial(self._unlisten, progress.on_event))
            aclose = getattr(results, "aclose", None)
            if aclose is not None:
                await aclose()

    # -- sessions --------------------------------------------------------------------------
    def sticky_session(self) -> PoolSession:
        """A sticky session bound to this pool: sync and async context manager."""
        return PoolSession(self)

    # -- introspection ---------------------------------------------------------------------
    @property
    def modules(self) -> tuple[str, ...]:
        """The activity modules every worker imports at start (from ``activities``)."""
        return self._config.preload

    @property
    def size(self) -> int:
        """The number of worker processes the pool keeps (``workers``)."""
        return self._config.workers

    def stats(self) -> PoolStats:
        """Counts and latency percentiles (a snapshot taken on the pool's loop)."""
        sup = self._sup
        if sup is None:
            return PoolStats(0, 0, 0, 0, None, None, None)
        return self._on_loop_call(sup.stats_snapshot)

    @property
    def pool_id(self) -> str:
        """This pool's id: the value of ``ACTIVITYPOOL_POOL_ID`` in the environment of every
        process it starts, which what an activity starts inherits (see docs/operations.md)."""
        return self._config.pool_id

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (a snapshot taken on the pool's loop)."""
        sup = self._sup
        if sup is None:
            return []
        return self._on_loop_call(sup.worker_pids)

    def _process_pids(self) -> list[int]:
        """``worker_pids()`` and the pool's fork server (for leak checks)."""
        sup = self._sup
        if sup is None:
            return []
        pids: list[int] = self._on_loop_call(sup.process_pids)
        return pids

    def _on_loop_call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` where the state it reads is owned: on the pool's loop thread."""
        loop = self._loop
        if loop is None or _on_loop(loop) or not loop.is_running() or self._thread is None:
            return fn()
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        try:
            loop.call_soon_threadsafe(call)
            return fut.result(timeout=5.0)
        except (RuntimeError, concurrent.futures.TimeoutError):  # the loop is going away
            return fn()

    @property
    def workers(self) -> int:
        return self._config.workers


class PoolSession(PoolCalls):
    """``pool.sticky_session()``: execute/run/submit/map/amap pinned to one worker (the
    unordered maps too; their calls still run in submission order there)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.session = _context.StickyWorkerSession()
        self._ambient: Any = None

    @property
    def session_id(self) -> str:
        return self.session.session_id

    def __enter__(self) -> PoolSession:
        # the session is also ambient inside the block, so `await sticky_activity()` uses it
        self._ambient = _context.run_sticky_worker_session(self.session)
        self._ambient.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._ambient is not None:
            self._ambient.__exit__(None, None, None)
            self._ambient = None
        self.session.close()

    async def __aenter__(self) -> PoolSession:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__(*exc)

    def _target(self) -> tuple[Pool, Any]:
        return self.pool, self.session

    def close(self) -> None:
        self.session.close()


def _registered(defn: ActivityDefinition) -> bool:
    """Whether ``defn`` is the definition registered under its name (not a per-call copy)."""
    try:
        return get_definition(defn.name) is defn
    except ActivityInputError:
        return False


def _length(iterable: Any) -> int | None:
    """The number of items, when the input knows it without being read."""
    try:
        return len(iterable)
    except TypeError:
        return None


def _context_session() -> Any:
    return _context.get_sticky_worker_session()


def _check_chunksize(chunksize: Any) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int >= 1, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
    return chunksize


def _item_check(defn: ActivityDefinition) -> Callable[[Any], Any] | None:
    """Checks one item as ``defn(item)`` would be checked; returns it coerced (None: every item
    passes as it is).

    Binding one positional argument fails or succeeds alike for every item, so with a plain
    signature only the first parameter's type check runs per item.
    """
    binder = defn._binder
    first = binder.positional[0] if binder.positional else None
    if not binder.simple or first is None or any(name != first for name in binder.required):
        return lambda item: defn.validate_args((item,), {})[0][0]
    check = defn._checks.get(first)
    if check is None:
        return None
    return partial(defn._check, check, first)


def _source(iterable: Iterable[Any] | AsyncIterable[Any]) -> tuple[Any, bool]:
    """An iterator over a map's input, and whether it is an async one."""
    if isinstance(iterable, AsyncIterable):
        return aiter(iterable), True
    return iter(iterable), False


def _chunk_definition(
    defn: ActivityDefinition, size: int, spread: bool = False
) -> ActivityDefinition:
    """What the scheduler and the worker see of a chunk of ``size`` items of ``defn``.

    The worker runs the runner of ``pool._chunks``; everything else is ``defn``'s (its name,
    for events, log tags, ``info().name`` and injected faults; its heartbeat timeout, sticky
    flag and retry policy), with its per-call time limits multiplied by ``size``.
    """
    if spread:
        runner = _chunks.run_chunk_spread_async if defn.is_async else _chunks.run_chunk_spread
    else:
        runner = _chunks.run_chunk_async if defn.is_async else _chunks.run_chunk
    s2c, s2close = defn.start_to_close_timeout, defn.schedule_to_close_timeout
    fields = {name: getattr(defn, name) for name in ActivityDefinition.__match_args__}
    fields.update(
        fn=runner,
        module=_chunks.__name__,
        qualname=runner.__qualname__,
        start_to_close_timeout=None if s2c is None else s2c * size,
        schedule_to_close_timeout=None if s2close is None else s2close * size,
    )
    return ActivityDefinition(**fields).checking_each_result_of(defn)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


_PENDING = object()


class _BlockingWaiter:
    """One blocking call's outcome: set once by the loop thread, waited for by the caller."""

    __slots__ = ("done", "exc", "lock", "value")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.done = False
        self.value: Any = None
        self.exc: BaseException | None = None

    def __call__(self, value: Any, exc: BaseException | None) -> None:
        if self.done:
            return
        self.value, self.exc, self.done = value, exc, True
        self.lock.release()

    def wait(self) -> Any:
        self.lock.acquire()
        if self.exc is not None:
            raise self.exc
        return self.value
