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
import os
import threading
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from functools import partial
from typing import Any, Literal

from pool import _chunks
from pool._events import PoolEvent, PoolStats
from pool._futures import PoolFuture
from pool._process import ForkServer
from pool._protocol import dumps, lift_call_bytes
from pool._scheduler import Call
from pool._supervisor import FaultRule, Supervisor, SupervisorConfig, early_forkserver
from pool._worker import refuse_pool_while_importing_main
from sdk import _context
from sdk._definition import ActivityDefinition, activities_in_module, get_definition
from sdk._errors import (
    ActivityInputError,
    PoolClosedError,
    StickyWorkerSessionMissingError,
    safe_repr,
)
from sdk._retry import RetryPolicy

ActivityRef = Callable[..., Any] | str


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Pool:
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
        if workers is None:
            workers = os.cpu_count() or 1
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        if max_tasks_per_worker is not None and max_tasks_per_worker < 1:
            raise ValueError("max_tasks_per_worker must be >= 1 or None")
        if max_memory_per_worker is not None and max_memory_per_worker < 1:
            raise ValueError("max_memory_per_worker must be a positive byte count or None")
        if start_method not in ("forkserver", "fork", "spawn"):
            raise ValueError(
                f"unsupported start_method {start_method!r}: 'forkserver', 'fork' or 'spawn'"
            )
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        if not isinstance(spares, int) or spares < 0:
            raise ValueError("spares must be an int >= 0")
        if (
            isinstance(reply_spin, bool)
            or not isinstance(reply_spin, int | float)
            or not 0 <= reply_spin <= 0.01
        ):
            raise ValueError(f"reply_spin must be seconds in [0, 0.01], got {reply_spin!r}")
        if cancel_grace < 0 or start_timeout <= 0 or shutdown_timeout <= 0:
            raise ValueError("cancel_grace must be >= 0; start and shutdown timeouts > 0")
        affinity: tuple[frozenset[int], ...] | None = None
        if cpu_affinity is True:
            # one allowed CPU per worker, round robin
            allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
            affinity = tuple(frozenset({cpu}) for cpu in allowed) or None
        elif cpu_affinity is not False:
            affinity = tuple(frozenset(int(c) for c in cpus) for cpus in cpu_affinity)
            if not affinity or not all(affinity):
                raise ValueError("cpu_affinity: give True, or a non-empty list of CPU sets")
        if thread_limit == "auto":
            thread_limit = max(1, (os.cpu_count() or 1) // workers)
        elif thread_limit is not None and (
            isinstance(thread_limit, bool) or not isinstance(thread_limit, int) or thread_limit < 1
        ):
            raise ValueError(
                f"thread_limit must be an int >= 1 (threads per worker), 'auto' or None "
                f"(no limit), got {thread_limit!r}"
            )
        preload: list[str] = []
        for item in activities:
            if isinstance(item, types.ModuleType | str):
                defs = activities_in_module(item)
                name = item if isinstance(item, str) else item.__name__
                if defs or name not in preload:
                    preload.append(name)
            else:
                defn = get_definition(item)
                if defn.module not in preload:
                    preload.append(defn.module)
        self._config = SupervisorConfig(
            workers=workers,
            prefetch=prefetch,
            cancel_grace=cancel_grace,
            start_timeout=start_timeout,
            shutdown_timeout=shutdown_timeout,
            max_tasks_per_worker=max_tasks_per_worker,
            max_memory_per_worker=max_memory_per_worker,
            thread_limit=thread_limit if isinstance(thread_limit, int) else None,
            cpu_affinity=affinity,
            spares=spares,
            preload=tuple(preload),
            start_method=start_method,
            reply_spin=float(reply_spin),
        )
        self._default_policy = retry_policy or RetryPolicy()
        self._policies: dict[int, RetryPolicy] = {}
        self._ambient = ambient  # entering makes this pool the dispatcher of `await activity()`
        self._on_event = on_event
        self._on_output = on_output
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
            loop, self._config, self._on_event, self._on_output, early, early_tried=with_thread
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
        if asyncio.get_running_loop() is self._loop:
            await sup.close(cancel=cancel)
        else:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(sup.close(cancel), self._loop)
            )

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
            policy = self._policies[id(defn)] = defn.retry_policy(self._default_policy)
        return policy

    def _prepare_chunks(
        self, defn: ActivityDefinition, iterable: Iterable[Any], chunksize: int, session: Any
    ) -> list[Call]:
        """One call per ``chunksize`` items (the last may be shorter), each running ``defn``
        over its items in one worker (see ``pool._chunks``)."""
        if self._closed or self._sup is None:
            raise PoolClosedError(
                "the pool is closed" if self._closed else "the pool is not started"
            )
        if defn.rate_limit is not None:
            raise ValueError(
                f"activity {defn.name!r} has a rate_limit, which counts calls: map it with "
                "chunksize=1 (a chunk would start many items as one call)"
            )
        sid = self._session_id(defn, session)
        items = _validate_items(defn, iterable)
        policy = self._policy(defn)
        where = (defn.module, defn.qualname)
        defns: dict[int, ActivityDefinition] = {}  # by chunk length: at most two
        calls = []
        new_call = self._sup.new_call
        for start in range(0, len(items), chunksize):
            chunk = items[start : start + chunksize]
            cdefn = defns.get(len(chunk))
            if cdefn is None:
                cdefn = defns[len(chunk)] = _chunk_definition(defn, len(chunk))
            try:
                payload = dumps(((*where, chunk), {}))
            except Exception as exc:
                raise ActivityInputError(
                    f"arguments of activity {defn.name!r} cannot be pickled: {safe_repr(exc)}"
                ) from exc
            calls.append(new_call(cdefn, policy, payload, None, sid))
        return calls

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

    async def execute(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        """Run one activity in the pool and return its result (or raise its error)."""
        return await self.dispatch(get_definition(fn), args, kwargs, _context_session())

    def submit(
        self, fn: ActivityRef, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        """Start one activity; returns a ``concurrent.futures.Future``. Cancelling it cancels."""
        call = self._prepare(fn, args, kwargs, _context_session())
        fut = call.waiter = PoolFuture(self, call)
        self._to_loop(call)
        return fut

    def run(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking call from a thread that is not the pool's loop."""
        self._refuse_on_loop("run")
        return self._run_call(self._prepare(fn, args, kwargs, _context_session()))

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

    def map(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any],
        *,
        session: Any = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Call ``fn(item)`` for every item; results in input order. Blocking iterator.

        Every item is submitted at once. Leaving the iteration early cancels the calls that
        have not finished. An item whose call fails raises its error (``ActivityError``...)
        when the iteration reaches it.

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
        chunk's first item. Not allowed with an activity that has a ``rate_limit``.
        """
        size = _check_chunksize(chunksize)
        self._refuse_on_loop("map")
        session = session if session is not None else _context_session()
        defn = get_definition(fn)
        if size > 1:
            calls = self._prepare_chunks(defn, iterable, size, session)
        else:
            calls = [self._prepare(defn, (item,), {}, session) for item in iterable]
        # one result board for the whole map, not a Future (and its Condition) per item:
        # far fewer objects for the garbage collector to trace while thousands are in flight
        sup = self._sup
        assert sup is not None
        batch = _MapBatch(len(calls), sup.wake_later, chunked=size > 1)
        for i, call in enumerate(calls):
            call.waiter = _Slot(batch, i)
        self._to_loop(partial(sup.submit_many, calls))
        return batch.results_in_order(lambda: self._to_loop(partial(sup.cancel_many, calls)))

    def _refuse_on_loop(self, what: str) -> None:
        if self._loop is not None and _on_loop(self._loop):
            instead = "await pool.execute()" if what == "run" else "pool.amap()"
            raise RuntimeError(f"{what}() would block the pool's own event loop: use {instead}")

    def amap(
        self,
        fn: ActivityRef,
        iterable: Iterable[Any],
        *,
        session: Any = None,
        chunksize: int = 1,
    ) -> AsyncIterator[Any]:
        """``map`` for async code: an async iterator of results in input order.

        The items are submitted when the iteration starts; ``chunksize`` as in :meth:`map`.
        """
        return self._amap(fn, iterable, session, _check_chunksize(chunksize))

    async def _amap(
        self, fn: ActivityRef, iterable: Iterable[Any], session: Any, chunksize: int
    ) -> AsyncIterator[Any]:
        futures = self._submit_all(fn, iterable, session, chunksize)
        try:
            if chunksize > 1:
                for fut in futures:
                    for value in await asyncio.wrap_future(fut):
                        yield value
            else:
                for fut in futures:
                    yield await asyncio.wrap_future(fut)
        finally:
            for fut in futures:
                fut.cancel()

    def _submit_all(
        self, fn: ActivityRef, iterable: Iterable[Any], session: Any, chunksize: int = 1
    ) -> list[PoolFuture]:
        session = session if session is not None else _context_session()
        defn = get_definition(fn)
        if chunksize > 1:
            calls = self._prepare_chunks(defn, iterable, chunksize, session)
        else:
            calls = [self._prepare(defn, (item,), {}, session) for item in iterable]
        futures = [self._attach_future(call) for call in calls]
        sup = self._sup
        assert sup is not None
        self._to_loop(partial(sup.submit_many, calls))
        return futures

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
        defn = get_definition(fn)
        if fault not in ("hang", "crash", "exit", "raise", "oom"):
            raise ValueError(f"unknown fault {fault!r}")
        if fault == "raise" and not isinstance(exception, BaseException):
            raise ValueError("fault='raise' needs exception=<an exception instance>")
        if attempt is not None and attempt < 1:
            raise ValueError("attempt is 1-based")
        arg: Any = {"exit": exit_code, "raise": exception, "oom": memory}.get(fault)
        self._on_loop_thread(FaultRule(defn.name, attempt, fault, arg, times))

    def clear_faults(self) -> None:
        """Drop every injected fault."""
        self._on_loop_thread(None)

    def _on_loop_thread(self, rule: FaultRule | None) -> None:
        sup = self._sup
        if sup is None:
            raise PoolClosedError("the pool is not started")
        # in order with calls: a call submitted after this returns sees the rule
        self._to_loop(sup.clear_faults if rule is None else partial(sup.add_fault, rule))

    # -- sessions --------------------------------------------------------------------------
    def sticky_session(self) -> PoolSession:
        """A sticky session bound to this pool: sync and async context manager."""
        return PoolSession(self)

    # -- introspection ---------------------------------------------------------------------
    def stats(self) -> PoolStats:
        """Counts and latency percentiles (a snapshot taken on the pool's loop)."""
        sup = self._sup
        if sup is None:
            return PoolStats(0, 0, 0, 0, None, None, None)
        return self._on_loop_call(
            lambda: sup.stats.snapshot(sup.scheduler.live_workers(), sup.scheduler.queued())
        )

    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes (a snapshot taken on the pool's loop)."""
        sup = self._sup
        if sup is None:
            return []
        return self._on_loop_call(
            lambda: [h.proc.pid for h in sup.handles.values() if not h.proc.reaped and not h.eof]
        )

    def _process_pids(self) -> list[int]:
        """``worker_pids()`` and the pool's fork server (for leak checks)."""
        sup = self._sup
        if sup is None:
            return []
        pids = self.worker_pids()
        fs = sup._forkserver
        if fs is not None and not fs.dead:
            pids.append(fs.pid)
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


class PoolSession:
    """``pool.sticky_session()``: execute/run/submit/map pinned to one worker."""

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

    async def execute(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        return await self.pool.dispatch(get_definition(fn), args, kwargs, self.session)

    def submit(
        self, fn: ActivityRef, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        return self.pool._submit_call(self.pool._prepare(fn, args, kwargs, self.session))

    def run(self, fn: ActivityRef, /, *args: Any, **kwargs: Any) -> Any:
        self.pool._refuse_on_loop("run")
        return self.pool._run_call(self.pool._prepare(fn, args, kwargs, self.session))

    def map(self, fn: ActivityRef, iterable: Iterable[Any], *, chunksize: int = 1) -> Iterator[Any]:
        return self.pool.map(fn, iterable, session=self.session, chunksize=chunksize)

    def amap(
        self, fn: ActivityRef, iterable: Iterable[Any], *, chunksize: int = 1
    ) -> AsyncIterator[Any]:
        return self.pool.amap(fn, iterable, session=self.session, chunksize=chunksize)

    def close(self) -> None:
        self.session.close()


def _context_session() -> Any:
    return _context.get_sticky_worker_session()


def _check_chunksize(chunksize: Any) -> int:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(f"chunksize must be an int >= 1, got {chunksize!r}")
    if chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
    return chunksize


def _validate_items(defn: ActivityDefinition, iterable: Iterable[Any]) -> list[Any]:
    """Every item checked as ``defn(item)`` would be (coerced, in a new list).

    Binding one positional argument fails or succeeds alike for every item, so with a plain
    signature it is checked once and only the first parameter's type check runs per item.
    """
    items = list(iterable)
    if not items:
        return items
    args, kwargs = defn.validate_args((items[0],), {})
    binder = defn._binder
    if not binder.simple or kwargs or len(args) != 1 or not binder.positional:
        return [defn.validate_args((item,), {})[0][0] for item in items]
    name = binder.positional[0]
    check = defn._checks.get(name)
    if check is None:
        return items
    return [defn._check(check, name, item) for item in items]


def _chunk_definition(defn: ActivityDefinition, size: int) -> ActivityDefinition:
    """What the scheduler and the worker see of a chunk of ``size`` items of ``defn``.

    The worker runs the runner of ``pool._chunks``; everything else is ``defn``'s (its name,
    for events, log tags, ``info().name`` and injected faults; its heartbeat timeout, sticky
    flag and retry policy), with its per-call time limits multiplied by ``size``.
    """
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


class _MapBatch:
    """Results of one ``map``: written by the loop thread, read in order by the caller."""

    __slots__ = ("chunked", "cond", "results", "waiting", "wake_later", "woken")

    def __init__(
        self, n: int, wake_later: Callable[[Callable[[], None]], None], chunked: bool = False
    ) -> None:
        self.results: list[Any] = [_PENDING] * n  # (value, exception) once answered
        self.chunked = chunked  # each value is a chunk's list of results, yielded one by one
        self.cond = threading.Condition()
        self.waiting = -1  # the index the reader sleeps on cond for, or -1
        self.woken = False  # a wake-up is queued with the supervisor
        self.wake_later = wake_later  # Supervisor.wake_later: once this event's writes are out

    def deliver(self, index: int, value: Any, exc: BaseException | None) -> None:
        self.results[index] = (value, exc)
        # read after the store: a reader that missed it sees the result
        if index == self.waiting and not self.woken:
            self.woken = True
            self.wake_later(self._wake)

    def _wake(self) -> None:
        self.woken = False
        with self.cond:
            self.cond.notify()

    def results_in_order(self, cancel_rest: Callable[[], object]) -> Iterator[Any]:
        results, chunked = self.results, self.chunked
        try:
            for i in range(len(results)):
                if results[i] is _PENDING:
                    with self.cond:
                        self.waiting = i
                        while results[i] is _PENDING:
                            self.cond.wait()
                        self.waiting = -1
                value, exc = results[i]
                results[i] = None  # the caller has it; let it go
                if exc is not None:
                    raise exc
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            if any(r is _PENDING for r in results):
                cancel_rest()


class _Slot:
    """The waiter of one ``map`` item (the supervisor calls it with the outcome)."""

    __slots__ = ("batch", "index")

    def __init__(self, batch: _MapBatch, index: int) -> None:
        self.batch = batch
        self.index = index

    def __call__(self, value: Any, exc: BaseException | None) -> None:
        self.batch.deliver(self.index, value, exc)
