"""The host side of :mod:`pool.temporal`: what a host's Temporal workers run.

Every sdk activity becomes an ``async`` Temporal activity awaiting one attempt in the pool
(:func:`temporal_activity`); the host's sticky sessions live in :class:`Host`; one bound,
:class:`SharedSlots`, caps the tasks both of the host's Workers (shared queue, host queue) take;
:class:`HostWorker` runs the two. Imported only by :mod:`pool.temporal`, which wires them in
``create_worker``.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import inspect
import logging
import os
import socket
import threading
import typing
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import temporalio.activity
import temporalio.exceptions
import temporalio.worker
from temporalio.worker import (
    CustomSlotSupplier,
    SlotMarkUsedContext,
    SlotPermit,
    SlotReleaseContext,
    SlotReserveContext,
)

from pool._pool import Pool
from sdk import _context
from sdk._decorator import with_options
from sdk._definition import ActivityDefinition
from sdk._errors import (
    ActivityError,
    ActivityInputError,
    ActivityTimeoutError,
    ApplicationError,
    PoolClosedError,
    StickySessionLostError,
)

# records keep the public module's name, the one users configure logging for
log = logging.getLogger("pool.temporal")


# Sessions travel in the activity id (deterministic, unique within a run, no headers needed).
SESSION_ID_PREFIX = "activitypool-session:"
OPEN_SESSION = "activitypool.open_session"
CLOSE_SESSION = "activitypool.close_session"


def to_temporal(exc: BaseException) -> BaseException:
    """What a failed pool attempt raises to Temporal: an ApplicationError typed by the cause's
    class name, so that the workflow's non-retryable types match by name."""
    cause: BaseException | None = exc
    if isinstance(exc, ActivityError):
        cause = exc.cause or exc
    assert cause is not None
    message = str(cause) or type(cause).__name__
    if isinstance(cause, ApplicationError):
        return temporalio.exceptions.ApplicationError(
            message,
            type=cause.type or type(cause).__name__,
            non_retryable=cause.non_retryable,
            next_retry_delay=(
                timedelta(seconds=cause.next_retry_delay)
                if cause.next_retry_delay is not None
                else None
            ),
        )
    non_retryable = isinstance(cause, StickySessionLostError | ActivityInputError)
    if isinstance(cause, ActivityTimeoutError):
        message = f"{message} (killed by the pool)"
    return temporalio.exceptions.ApplicationError(
        message, type=type(cause).__name__, non_retryable=non_retryable
    )


# -- host side: slots --------------------------------------------------------------------------


class _Permit(SlotPermit):
    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.used = False


class SharedSlots(CustomSlotSupplier):
    """One bound for a host's two activity Workers (shared queue, host queue).

    A Temporal worker reserves a slot before each poll, so an idle poller holds a permit. A
    permit counts against the bound per queue: a queue may reserve while the tasks in use plus
    its own idle permits are under the bound. So an idle poller of one queue never keeps the
    other from using every free subprocess, and a shared task is taken only when a subprocess
    is free. The host queue carries only its sessions' tasks, which can run nowhere else: one of
    them may be taken while the shared queue's tasks fill every subprocess (it waits for its
    session's subprocess, as it would have anyway).
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._lock = threading.Lock()  # the bridge may call release from another thread
        self._used = 0
        self._idle: collections.Counter[str] = collections.Counter()
        self._waiters: collections.deque[tuple[str, asyncio.Future[None]]] = collections.deque()

    def _grantable(self, queue: str) -> bool:
        return self._used + self._idle[queue] < self.slots

    async def reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit:
        queue = ctx.task_queue
        with self._lock:
            if self._grantable(queue) and not any(q == queue for q, _ in self._waiters):
                self._idle[queue] += 1
                return _Permit(queue)
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((queue, fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                if (queue, fut) in self._waiters:
                    self._waiters.remove((queue, fut))
                    raise
            # granted just as it was cancelled: give the permit back
            self._release(queue, used=False)
            raise
        return _Permit(queue)

    def try_reserve_slot(self, ctx: SlotReserveContext) -> SlotPermit | None:
        with self._lock:
            if self._grantable(ctx.task_queue):
                self._idle[ctx.task_queue] += 1
                return _Permit(ctx.task_queue)
        return None

    def mark_slot_used(self, ctx: SlotMarkUsedContext) -> None:
        permit = ctx.permit
        if not isinstance(permit, _Permit) or permit.used:
            return
        with self._lock:
            permit.used = True
            self._idle[permit.queue] -= 1
            self._used += 1

    def release_slot(self, ctx: SlotReleaseContext) -> None:
        permit = ctx.permit
        if isinstance(permit, _Permit):
            self._release(permit.queue, used=permit.used)

    def _release(self, queue: str, *, used: bool) -> None:
        with self._lock:
            if used:
                self._used -= 1
            else:
                self._idle[queue] -= 1
            # wake, in order, every waiter the freed slot now admits
            for entry in list(self._waiters):
                q, fut = entry
                if self._grantable(q):
                    self._waiters.remove(entry)
                    self._idle[q] += 1
                    fut.get_loop().call_soon_threadsafe(_grant, fut)


def _grant(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# -- host side: sessions -----------------------------------------------------------------------


class _HostSession:
    """A workflow's sticky session on this host: the pool's session plus its idle expiry."""

    def __init__(self, session_id: str) -> None:
        self.session = _context.StickyWorkerSession(session_id)
        self.running = 0
        self.expiry: asyncio.TimerHandle | None = None


class Host:
    """What a host's activities share: the pool, its queue, its sessions."""

    def __init__(self, pool: Pool, task_queue: str, idle_expiry: float) -> None:
        self.pool = pool
        self.task_queue = task_queue
        self.host_queue = (
            f"{task_queue}@{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.idle_expiry = idle_expiry
        self.sessions: dict[str, _HostSession] = {}
        # per-call copies by (name, start-to-close, heartbeat): a handful per activity
        self._copies: dict[tuple[str, float | None, float | None], ActivityDefinition] = {}

    def copy_for(
        self, defn: ActivityDefinition, info: temporalio.activity.Info
    ) -> ActivityDefinition:
        """``defn`` for one Temporal attempt: one pool attempt, Temporal's timeouts."""
        s2c = info.start_to_close_timeout.total_seconds() if info.start_to_close_timeout else None
        hb = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else None
        key = (defn.name, s2c or None, hb or None)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = with_options(
                defn,
                retry_policy_max_attempts=1,
                start_to_close_timeout=key[1],
                heartbeat_timeout=key[2],
                # Temporal enforces the whole call's limit across hosts
                schedule_to_close_timeout=None,
            )
        return copy

    def open(self, session_id: str) -> str:
        hs = self.sessions.get(session_id)
        if hs is None:
            hs = self.sessions[session_id] = _HostSession(session_id)
            self._arm(hs)
        return self.host_queue

    def enter(self, session_id: str) -> _HostSession:
        hs = self.sessions.get(session_id)
        if hs is None:
            raise StickySessionLostError(
                f"sticky session {session_id} is not open on this host (closed, or expired "
                f"after {self.idle_expiry:g}s idle)",
                session_id=session_id,
            )
        hs.running += 1
        if hs.expiry is not None:
            hs.expiry.cancel()
            hs.expiry = None
        return hs

    def leave(self, hs: _HostSession) -> None:
        hs.running -= 1
        if hs.running == 0 and not hs.session.closed:
            self._arm(hs)

    def close(self, session_id: str) -> None:
        hs = self.sessions.pop(session_id, None)
        if hs is not None:
            if hs.expiry is not None:
                hs.expiry.cancel()
            hs.session.close()  # the pool releases the subprocess's session state

    def close_all(self) -> None:
        for sid in list(self.sessions):
            self.close(sid)

    def _arm(self, hs: _HostSession) -> None:
        loop = asyncio.get_running_loop()
        hs.expiry = loop.call_later(self.idle_expiry, self._expire, hs)

    def _expire(self, hs: _HostSession) -> None:
        if hs.running == 0 and self.sessions.get(hs.session.session_id) is hs:
            log.info(
                "sticky session %s expired after %gs idle", hs.session.session_id, self.idle_expiry
            )
            self.close(hs.session.session_id)


def _session_of(activity_id: str) -> str | None:
    if not activity_id.startswith(SESSION_ID_PREFIX):
        return None
    return activity_id[len(SESSION_ID_PREFIX) :].rpartition(":")[0]


# -- host side: activities ---------------------------------------------------------------------


def temporal_activity(host: Host, defn: ActivityDefinition) -> Callable[..., Any]:
    """``defn`` as an async Temporal activity that runs one attempt in the pool."""

    async def run(*args: Any) -> Any:
        info = temporalio.activity.info()
        copy = host.copy_for(defn, info)
        loop = asyncio.get_running_loop()
        activity_context = contextvars.copy_context()  # temporalio's activity context
        done = False

        def forward(details: Any) -> None:  # on the pool's loop thread: hop to this one
            loop.call_soon_threadsafe(beat, details)

        def beat(details: Any) -> None:
            if not done:  # latest wins: temporalio throttles and keeps the last details
                activity_context.run(temporalio.activity.heartbeat, details)

        previous = info.heartbeat_details[0] if info.heartbeat_details else None
        sid = _session_of(info.activity_id)
        hs = None
        try:
            if sid is not None:
                hs = host.enter(sid)
            return await host.pool.execute_attempt(
                copy,
                args,
                attempt=info.attempt,
                heartbeat_details=previous,
                on_heartbeat=forward,
                session=hs.session if hs is not None else None,
            )
        except (ActivityError, ActivityInputError, StickySessionLostError) as exc:
            raise to_temporal(exc) from None
        except PoolClosedError as exc:  # this host is shutting down: another one retries
            raise temporalio.exceptions.ApplicationError(str(exc), type="PoolClosedError") from None
        finally:
            done = True
            if hs is not None:
                host.leave(hs)

    # Temporal decodes arguments and results into the sdk function's declared types.
    sig = inspect.signature(defn.fn)
    params = [p for p in sig.parameters.values() if p.name not in defn.depends_params()]
    run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    try:
        hints = typing.get_type_hints(defn.fn)
    except Exception:
        hints = {}
    run.__annotations__ = {k: v for k, v in hints.items() if k not in defn.depends_params()}
    run.__name__ = run.__qualname__ = defn.fn.__name__
    run.__doc__ = defn.fn.__doc__
    return temporalio.activity.defn(name=defn.name)(run)


def session_activities(host: Host) -> list[Callable[..., Any]]:
    @temporalio.activity.defn(name=OPEN_SESSION)
    async def open_session(session_id: str) -> str:
        return host.open(session_id)

    @temporalio.activity.defn(name=CLOSE_SESSION)
    async def close_session(session_id: str) -> None:
        host.close(session_id)

    return [open_session, close_session]


class HostWorker(temporalio.worker.Worker):
    """The shared-queue Worker; it runs and shuts down its host-queue companion with it."""

    def __init__(
        self, *args: Any, companion: temporalio.worker.Worker, host: Host, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.companion = companion
        self.host = host

    @property
    def host_task_queue(self) -> str:
        """The task queue of this host alone (its sticky sessions' activities)."""
        return self.host.host_queue

    async def run(self) -> None:
        companion = asyncio.create_task(self.companion.run())
        try:
            await super().run()
        finally:
            await self.companion.shutdown()
            await asyncio.gather(companion, return_exceptions=True)
            self.host.close_all()

    async def shutdown(self) -> None:
        await asyncio.gather(super().shutdown(), self.companion.shutdown())
