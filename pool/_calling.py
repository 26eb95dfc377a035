"""The calling API shared by ``Pool`` and ``PoolSession``, typed from the activity.

``PoolCalls`` turns ``execute``/``run``/``submit``/``map``... into requests to a
``CallTarget`` (the pool), with the sticky session they belong to. Only the overloads that type
them for a reader and a type checker live here; the pool makes and hands over the calls.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from pool import _map
from pool._calls import map_source
from sdk._definition import ActivityDefinition, get_definition

ActivityRef = Callable[..., Any] | str

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class CallTarget(Protocol):
    """What ``PoolCalls`` asks of the pool (``session``: a sticky session, or None)."""

    async def dispatch(
        self, defn: ActivityDefinition, args: tuple, kwargs: dict, session: Any, /
    ) -> Any: ...
    def submit_call(
        self, fn: ActivityRef, args: tuple, kwargs: dict, session: Any, /
    ) -> concurrent.futures.Future[Any]: ...
    def run_call(self, fn: ActivityRef, args: tuple, kwargs: dict, session: Any, /) -> Any: ...
    def map_run(
        self,
        what: str,
        fn: ActivityRef,
        session: Any,
        buffersize: Any,
        chunksize: Any,
        /,
        *,
        ordered: bool,
        threaded: bool,
    ) -> _map.MapRun: ...
    def tracked(
        self, results: Iterator[Any], total: int | None, *, pairs: bool
    ) -> Iterator[Any]: ...
    def atracked(
        self, results: AsyncIterator[Any], total: int | None, *, pairs: bool
    ) -> AsyncIterator[Any]: ...


class PoolCalls:
    """The calling API of a :class:`Pool` and of its :class:`PoolSession` (type checkers name
    it in their messages: ``"run" of "PoolCalls"``).

    Typed from the activity: ``pool.run(add, 1, 2)`` is what ``add`` returns, an ``async def``
    activity's coroutine result included, and the arguments are checked against its
    parameters; ``map`` checks the items against its one parameter. An activity given by its
    registered name is ``Any``.
    """

    __slots__ = ()

    def _target(self) -> tuple[CallTarget, Any]:
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
        return pool.submit_call(fn, args, kwargs, session)

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
        return pool.run_call(fn, args, kwargs, session)

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
        run = pool.map_run("map", fn, session, buffersize, chunksize, ordered=True, threaded=True)
        results = _map.results(run, iter(iterable), return_exceptions)
        # (a display hears events from when it is made: before the first window goes out)
        tracked = pool.tracked(results, _length(iterable), pairs=False) if progress else None
        next(results)  # the first window goes out now
        return results if tracked is None else tracked

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
        run = pool.map_run(
            "map_unordered", fn, session, buffersize, chunksize, ordered=False, threaded=True
        )
        results = _map.results(run, iter(iterable), return_exceptions)
        tracked = pool.tracked(results, _length(iterable), pairs=True) if progress else None
        next(results)
        return results if tracked is None else tracked

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
        run = pool.map_run("amap", fn, session, buffersize, chunksize, ordered=True, threaded=False)
        source, is_async = map_source(iterable)
        results = _map.aresults(run, source, is_async, return_exceptions)
        if progress:
            return pool.atracked(results, _length(iterable), pairs=False)
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
        run = pool.map_run(
            "amap_unordered", fn, session, buffersize, chunksize, ordered=False, threaded=False
        )
        source, is_async = map_source(iterable)
        results = _map.aresults(run, source, is_async, return_exceptions)
        if progress:
            return pool.atracked(results, _length(iterable), pairs=True)
        return results


def _length(iterable: Any) -> int | None:
    """The number of items, when the input knows it without being read."""
    try:
        return len(iterable)
    except TypeError:
        return None
