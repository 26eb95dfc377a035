"""``Pool``: the public face of the runtime. The calling API and the lifecycle only.

The supervisor (and its scheduler) live on one event loop: the caller's, under ``async with``,
or a private uvloop loop on a background thread (``pool._loop.LoopThread``), under ``with``.
Calls are made in the calling thread (``pool._calls``: validated, pickled, with their waiter
from ``pool._waiters``); only the finished ``Call`` crosses to the loop, through the
supervisor's inbox. The typed calling methods themselves are ``pool._calling.PoolCalls``; the
running side (the loop, its thread, the supervisor, closing) is ``pool._lifecycle.Lifecycle``'s,
which the pool asks for it; who receives events is ``pool._listeners.Listeners``'.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import Any, Literal

from pool import _map
from pool._calling import ActivityRef, PoolCalls
from pool._calls import CallMaker, check_chunksize, map_run
from pool._calls_state import Call
from pool._config import PoolConfig
from pool._events import EventStream, PoolEvent, PoolStats
from pool._faults import FaultRule
from pool._futures import PoolFuture
from pool._lane import HANDED_OVER, NOT_TAKEN
from pool._lifecycle import Lifecycle
from pool._listeners import Listeners
from pool._supervisor import Supervisor
from pool._waiters import AsyncWaiter, BlockingWaiter, Waiter
from pool._worker import refuse_pool_while_importing_main
from sdk import _context
from sdk._definition import ActivityDefinition, get_definition
from sdk._retry import RetryPolicy

__all__ = ["Pool", "PoolCalls", "PoolSession"]


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
        direct_run: float = 0.005,
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
            direct_run=direct_run,
        )
        # the running side: loop, loop thread, supervisor, closing; it alone sets them
        self._life = life = Lifecycle(self._config, on_output, self if ambient else None)
        self._calls = CallMaker(retry_policy or RetryPolicy(), life.release_session)
        # who receives events: on_event, pool.events() streams, progress displays
        self._events = Listeners(
            on_event,
            on_loop=life.on_loop,
            closed=lambda: life.closed,
            to_loop=life.to_loop,
            set_sink=life.set_sink,
        )
        self._emit = self._events.emit if on_event is not None else None

    # -- lifecycle (pool._lifecycle) -------------------------------------------------------
    async def __aenter__(self) -> Pool:
        await self._life.astart(self._emit)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.aclose(cancel=exc_type is not None)

    def __enter__(self) -> Pool:
        self._life.start(self._emit)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(cancel=exc_type is not None)

    async def aclose(self, cancel: bool = False) -> None:
        """Drain (or, with ``cancel``, fail what is outstanding), then stop every worker."""
        await self._life.aclose(cancel, self._events.end_streams)

    def close(self, cancel: bool = False) -> None:
        """Blocking close of a ``with`` pool; idempotent. ``cancel`` fails what is outstanding."""
        self._life.close(cancel, self._events.end_streams)

    @property
    def _sup(self) -> Supervisor | None:
        """The supervisor, once started (for tests and benchmarks that look inside)."""
        return self._life.sup

    # -- calling (the CallTarget of PoolCalls) --------------------------------------------
    def _make(
        self,
        fn: ActivityRef | ActivityDefinition,
        args: tuple,
        kwargs: dict,
        session: Any,
        waiter: Waiter,
    ) -> Call:
        self._life.check_open()
        defn = fn if isinstance(fn, ActivityDefinition) else get_definition(fn)
        return self._calls.call(defn, args, kwargs, session, waiter)

    async def dispatch(
        self, defn: ActivityDefinition, args: tuple, kwargs: dict, session: Any
    ) -> Any:
        """The ambient-dispatcher entry used by ``await my_activity(...)`` inside the pool."""
        return await self._dispatch(defn, args, kwargs, session)

    async def _dispatch(
        self,
        fn: ActivityRef | ActivityDefinition,
        args: tuple,
        kwargs: dict,
        session: Any,
        adjust: Callable[[Call], None] | None = None,
    ) -> Any:
        """Await one call; ``adjust(call)`` changes it before it is handed over."""
        loop = asyncio.get_running_loop()
        life = self._life
        if loop is not life.loop:  # another loop's task: a Future it can await
            return await asyncio.wrap_future(self.submit_call(fn, args, kwargs, session, adjust))
        waiter = AsyncWaiter(loop)
        call = self._make(fn, args, kwargs, session, waiter)
        if adjust is not None:
            adjust(call)
        sup = life.sup
        assert sup is not None
        sup.submit(call)
        try:
            return await waiter.fut
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

        def resumed(call: Call) -> None:
            call.attempt = attempt - 1  # the scheduler counts the attempt it dispatches
            call.heartbeat_details = heartbeat_details
            call.on_heartbeat = on_heartbeat

        if session is None:
            session = _context.get_sticky_worker_session()
        return await self._dispatch(fn, args, kwargs or {}, session, resumed)

    def submit_call(
        self,
        fn: ActivityRef | ActivityDefinition,
        args: tuple,
        kwargs: dict,
        session: Any,
        adjust: Callable[[Call], None] | None = None,
    ) -> PoolFuture:
        # A PoolFuture, not a plain Future: no Condition (a lock, a deque, bound methods) until
        # somebody waits on it, so thousands in flight are not thousands of objects for the
        # garbage collector to trace; its cancel() comes back here (no done callback per call).
        fut = PoolFuture(self._life.futures)
        call = self._make(fn, args, kwargs, session, fut)
        if adjust is not None:
            adjust(call)
        fut.bind(call)
        self._life.to_loop(call)
        return fut

    def run_call(self, fn: ActivityRef, args: tuple, kwargs: dict, session: Any) -> Any:
        """Blocking call from a thread that is not the pool's loop."""
        life = self._life
        life.refuse_on_loop("run")
        sup = life.check_open()
        waiter = BlockingWaiter(sup.wake_later)
        call = self._make(fn, args, kwargs, session, waiter)
        lane = sup.lane  # a worker lent to threads like this one (pool._lane)
        try:
            if lane.fits(call):
                waiter.wake_later = sup.wake_blocking  # its answer may lend one for the next
                if lane.channel is not None:
                    value = lane.run(call)
                    if value is HANDED_OVER:
                        return waiter.wait()
                    if value is not NOT_TAKEN:
                        return value
            sup.inbox.put(call)
            return waiter.wait()
        except BaseException:
            if not waiter.done:  # interrupted (Ctrl-C): the activity is cancelled too
                sup.inbox.put(partial(sup.cancel, call))
            raise

    def map_run(
        self,
        what: str,
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
        if threaded:
            self._life.refuse_on_loop(what)
        size = check_chunksize(chunksize)
        window = _map.check_buffersize(buffersize)
        sup = self._life.check_open()
        defn = fn if isinstance(fn, ActivityDefinition) else get_definition(fn)
        self._calls.session_id(defn, session)
        if size > 1 and defn.rate_limit is not None:
            raise ValueError(
                f"activity {defn.name!r} has a rate_limit, which counts calls: map it with "
                "chunksize=1 (a chunk would start many items as one call)"
            )
        return map_run(
            defn,
            session,
            make=self._make,
            chunk_call=self._calls.chunk_call,
            check_open=self._life.check_open,
            sup=sup,
            loop=self._life.loop,
            window=window or _map.default_window(self._config.workers, size),
            chunksize=size,
            ordered=ordered,
            threaded=threaded,
            spread=spread,
        )

    def _target(self) -> tuple[Pool, Any]:
        return self, _context.get_sticky_worker_session()

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
        sup = self._life.started()
        self._life.to_loop(partial(sup.add_fault, rule))  # in order: later calls see it

    def clear_faults(self) -> None:
        """Drop every injected fault."""
        self._life.to_loop(self._life.started().clear_faults)

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
        run = self.map_run(
            "map", fn, session, buffersize, chunksize, ordered=ordered, threaded=True, spread=True
        )
        results = _map.results(run, iter(calls), True)
        if progress is None:
            next(results)
            return results
        from pool import _progress

        self._events.listen_soon(progress.on_event, _progress.KINDS)
        next(results)
        return self._events.unlisten_after(results, progress.on_event)

    # -- events ----------------------------------------------------------------------------
    def events(self, *, maxsize: int = 10_000) -> EventStream:
        """An async iterator of every ``PoolEvent`` from now on, ending when the pool closes.

        ``async for event in pool.events(): ...``; leave early with ``await stream.aclose()``
        (or ``contextlib.aclosing``). Events wait in a queue of ``maxsize``; when a slow reader
        lets it fill, later events are dropped and counted in ``stream.dropped``.
        """
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self._life.check_open()
        return self._events.stream(maxsize)

    def tracked(self, results: Iterator[Any], total: int | None, *, pairs: bool) -> Iterator[Any]:
        """A map's ``results`` shown in a progress display while consumed (``progress=True``)."""
        return self._events.tracked(results, total, pairs=pairs)

    def atracked(
        self, results: AsyncIterator[Any], total: int | None, *, pairs: bool
    ) -> AsyncIterator[Any]:
        return self._events.atracked(results, total, pairs=pairs)

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
        return self._life.ask(Supervisor.stats_snapshot, PoolStats(0, 0, 0, 0, None, None, None))

    @property
    def pool_id(self) -> str:
        """This pool's id: the value of ``ACTIVITYPOOL_POOL_ID`` in the environment of every
        process it starts, which what an activity starts inherits (see docs/operations.md)."""
        return self._config.pool_id

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (a snapshot taken on the pool's loop)."""
        return self._life.ask(Supervisor.worker_pids, [])

    def _process_pids(self) -> list[int]:
        """``worker_pids()`` and the pool's fork server (for leak checks)."""
        return self._life.ask(Supervisor.process_pids, [])

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
