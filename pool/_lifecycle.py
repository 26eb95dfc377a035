"""A pool's life: the loop it runs on, that loop's thread under ``with``, its supervisor, the
ambient dispatcher while it is open, and closing it.

``Lifecycle`` is owned by ``Pool`` and alone sets ``loop``, ``thread``, ``sup``, ``futures`` and
``closed`` (others only read them). Everything that needs the running pool goes through it:
``check_open()`` before a call is made, ``to_loop()`` to hand a call or an action to the loop
thread in order with everything else, ``ask()`` for a question the supervisor answers on the
loop. Under ``async with`` the loop is the caller's; under ``with`` it is a private uvloop loop
on a ``LoopThread``, started here and stopped when the pool closes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from pool._calls_state import Call
from pool._config import PoolConfig
from pool._events import PoolEvent
from pool._loop import LoopThread, on_loop
from pool._process import ForkServer
from pool._spawner import early_forkserver
from pool._supervisor import Supervisor
from sdk import _context
from sdk._errors import PoolClosedError

T = TypeVar("T")


class Lifecycle:
    """The running side of one pool (see the module docstring)."""

    def __init__(
        self,
        config: PoolConfig,
        on_output: Callable[[int, str | None, str], None] | None,
        dispatcher: _context.Dispatcher | None,
    ) -> None:
        """``dispatcher``: what ``await activity()`` dispatches to while the pool is open (the
        pool; None: nothing is made ambient)."""
        self.config = config
        self.on_output = on_output
        self.dispatcher = dispatcher
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: LoopThread | None = None  # the loop's thread under `with`
        self.sup: Supervisor | None = None
        self.futures: FutureOwner | None = None  # what a PoolFuture tells of a cancel
        self.closed = False
        self._token: contextvars.Token[Any] | None = None  # the ambient dispatcher's

    # -- starting ----------------------------------------------------------------------------
    async def astart(self, emit: Callable[[PoolEvent], None] | None) -> None:
        """Start on the running loop (``async with``); ``emit`` receives the events."""
        await self._start_on(asyncio.get_running_loop(), emit)
        self._make_ambient()

    def start(self, emit: Callable[[PoolEvent], None] | None) -> None:
        """Start on a loop thread of its own (``with``), once every worker is ready."""
        if self.sup is not None:
            raise RuntimeError("this Pool was already started; make a new one")
        # start_method="fork": fork the fork server while this is the only thread (~1 ms)
        early = early_forkserver(self.config)
        try:
            self.thread = thread = LoopThread()
            try:
                start = self._start_on(thread.loop, emit, early, True)
                asyncio.run_coroutine_threadsafe(start, thread.loop).result()
            except BaseException:
                self._stop_thread()
                raise
        except BaseException:
            if early is not None and self.sup is None:
                early.close()
            raise
        self._make_ambient()

    async def _start_on(
        self,
        loop: asyncio.AbstractEventLoop,
        emit: Callable[[PoolEvent], None] | None,
        early: ForkServer | None = None,
        with_thread: bool = False,
    ) -> None:
        if self.sup is not None:
            raise RuntimeError("this Pool was already started; make a new one")
        self.loop = loop
        self.sup = sup = Supervisor(
            loop, self.config, emit, self.on_output, early, early_tried=with_thread
        )
        self.futures = FutureOwner(sup)
        try:
            await sup.start()
        except BaseException:
            self.closed = True
            await sup.close(cancel=True)
            raise

    def _make_ambient(self) -> None:
        if self.dispatcher is not None:
            self._token = _context.set_dispatcher(self.dispatcher)

    # -- closing -----------------------------------------------------------------------------
    async def aclose(self, cancel: bool, ended: Callable[[], None]) -> None:
        """Drain (or, with ``cancel``, fail what is outstanding), stop every worker, then call
        ``ended()`` (unless the pool never started)."""
        self.closed = True
        self._reset_ambient()
        sup, loop = self.sup, self.loop
        if sup is None or loop is None:
            return
        try:
            if asyncio.get_running_loop() is loop:
                await sup.close(cancel=cancel)
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(sup.close(cancel), loop))
        finally:
            ended()

    def close(self, cancel: bool, ended: Callable[[], None]) -> None:
        """``aclose`` from a thread that is not the loop's, for a ``with`` pool; idempotent."""
        self.closed = True
        self._reset_ambient()
        sup, loop = self.sup, self.loop
        if sup is None or loop is None or (self.thread is None and loop.is_closed()):
            return
        if self.thread is None:
            raise RuntimeError("this pool runs on your event loop: use 'await pool.aclose()'")
        try:
            if loop.is_running():
                asyncio.run_coroutine_threadsafe(sup.close(cancel), loop).result()
        finally:
            self._stop_thread()
            ended()

    def _reset_ambient(self) -> None:
        if self._token is not None:
            try:
                _context.reset_dispatcher(self._token)
            except ValueError:  # closed from another context; the variable dies with it
                pass
            self._token = None

    def _stop_thread(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.stop()

    # -- reaching the running pool -----------------------------------------------------------
    def check_open(self) -> Supervisor:
        """The supervisor, for a new call; ``PoolClosedError`` when there is none to take it."""
        sup = self.sup
        if self.closed or sup is None:
            raise PoolClosedError(
                "the pool is closed" if self.closed else "the pool is not started"
            )
        return sup

    def started(self) -> Supervisor:
        """The supervisor, closed or not; ``PoolClosedError`` before the pool starts."""
        sup = self.sup
        if sup is None:
            raise PoolClosedError("the pool is not started")
        return sup

    def to_loop(self, item: Call | Callable[[], object]) -> None:
        """Hand a call (or an action) to the loop thread, in order with everything else."""
        sup = self.sup  # (started() inlined: every submit() comes here)
        if sup is None:
            raise PoolClosedError("the pool is not started")
        sup.inbox.put(item)

    def on_loop(self) -> bool:
        """Is this the pool's loop thread, inside its loop?"""
        return self.loop is not None and on_loop(self.loop)

    def refuse_on_loop(self, what: str) -> None:
        """Refuse the blocking ``what`` (``run``, ``map``...) on the pool's own loop."""
        if self.loop is not None and on_loop(self.loop):  # (every run() comes here)
            instead = (
                "await pool.execute()" if what == "run" else f"pool.a{what.removeprefix('a')}()"
            )
            raise RuntimeError(f"{what}() would block the pool's own event loop: use {instead}")

    def ask(self, question: Callable[[Supervisor], T], default: T) -> T:
        """``question(sup)`` answered where the state it reads is owned, on the loop thread
        (``default`` before the pool starts)."""
        sup = self.sup
        if sup is None:
            return default
        thread = self.thread
        if thread is None or on_loop(thread.loop):
            return question(sup)
        answer: T = thread.call(partial(question, sup))
        return answer

    def release_session(self, session: Any) -> None:
        """A sticky session closed: its worker may forget it (nothing to do once closed)."""
        loop, sup = self.loop, self.sup
        if loop is None or sup is None or loop.is_closed():
            return
        sup.inbox.put(partial(sup.release_session, session.session_id))

    def set_sink(
        self, emit: Callable[[PoolEvent], None] | None, kinds: frozenset[str] | None
    ) -> None:
        """Where the supervisor's events go (None: nowhere), and of which kinds."""
        if self.sup is not None:
            self.sup.set_on_event(emit, kinds)


class FutureOwner:
    """A ``PoolFuture``'s owner: its cancellation goes to the loop, in order with the calls;
    a thread waiting on it is woken once the loop thread's event is done."""

    __slots__ = ("sup", "wake_later")

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.wake_later = sup.wake_later

    def cancel_call(self, call: Call) -> None:
        sup = self.sup
        sup.inbox.put(partial(sup.cancel, call))
