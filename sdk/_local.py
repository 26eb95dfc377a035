"""``run_activities_locally()``: run activity calls in the calling process, without a pool.

Calls get what a pool gives them except process isolation and heartbeat enforcement: argument
and result validation, retries with backoff, start-to-close and schedule-to-close timeouts, an
activity context (``activity.info()``, heartbeats recorded and handed to the next attempt),
Depends resources (made once per runner, torn down when it exits) and the sticky-session check.

A sync activity runs in a daemon thread of its own so that its timeout can be enforced. A thread
cannot be killed: on timeout the call fails at once and ``activity.is_cancelled()`` turns True,
but code that never looks keeps running in the background (a pool kills its process instead).

asyncio is imported by the methods that use it, not at module level: ``import sdk`` (which every
worker process does) must not load it.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._attempt import AttemptTimedOut, arun_attempt, attempt_info
from ._context import ActivityContext, reset_dispatcher, set_dispatcher
from ._definition import ActivityDefinition, get_definition
from ._depends import ResourceCache, close_private_loop
from ._errors import (
    ActivityTimeoutError,
    StickyWorkerSessionMissingError,
    TimeoutType,
)
from ._retry import RetryPolicy, final_error
from ._session import StickyWorkerSession, get_sticky_worker_session

if TYPE_CHECKING:
    import asyncio

__all__ = ["LocalRunner", "run_activities_locally"]

_NO_DETAILS = object()


class _Recorder:
    """Keeps the latest heartbeat details of one attempt."""

    __slots__ = ("details",)

    def __init__(self) -> None:
        self.details: Any = _NO_DETAILS

    def __call__(self, details: Any) -> None:
        self.details = details


class LocalRunner:
    """Runs activity calls in this process; the ambient dispatcher while entered.

    Use as ``with`` (then :meth:`run`) or ``async with`` (then ``await`` activities or
    :meth:`execute`).
    """

    def __init__(self, *, retry_policy: RetryPolicy | None = None) -> None:
        self.retry_policy = retry_policy if retry_policy is not None else RetryPolicy()
        self._tokens: list[contextvars.Token[Any]] = []
        # Private loop for the sync API, created on first run(); the cache's async factories and
        # teardowns run on it so async resources stay on one loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resources = ResourceCache(run_coroutine=self._run_on_private_loop)
        self._warned_heartbeat: set[str] = set()
        self._session_state: dict[str, dict[str, Any]] = {}

    # -- context management --------------------------------------------------------------------

    def __enter__(self) -> LocalRunner:
        self._tokens.append(set_dispatcher(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reset_dispatcher(self._tokens.pop())
        self._resources.close()
        if self._loop is not None:
            loop, self._loop = self._loop, None
            close_private_loop(loop)

    async def __aenter__(self) -> LocalRunner:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._resources.aclose()
        self.__exit__(exc_type, exc, tb)

    def _run_on_private_loop(self, coro: Any) -> Any:
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError("LocalRunner: cannot block on a coroutine inside a running loop")
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    # -- calling -------------------------------------------------------------------------------

    async def execute(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Run one call (an activity or its registered name) and return its result."""
        return await self.dispatch(get_definition(fn), args, kwargs, get_sticky_worker_session())

    def run(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Any:
        """Blocking :meth:`execute`; only outside a running event loop."""
        import asyncio

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "LocalRunner.run() blocks and cannot be called inside a running event loop; "
                "use 'await runner.execute(...)'"
            )
        return self._run_on_private_loop(self.execute(fn, *args, **kwargs))

    async def dispatch(
        self,
        defn: ActivityDefinition,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: StickyWorkerSession | None,
    ) -> Any:
        """Run ``defn`` with retries and timeouts (the Dispatcher protocol)."""
        import asyncio

        if defn.sticky_to_worker and session is None:
            raise StickyWorkerSessionMissingError(
                f"activity {defn.name!r} is sticky_to_worker and must be called inside "
                "run_sticky_worker_session()"
            )
        args, kwargs = defn.validate_args(args, kwargs)
        if defn.heartbeat_timeout is not None and defn.name not in self._warned_heartbeat:
            self._warned_heartbeat.add(defn.name)
            warnings.warn(
                f"activity {defn.name!r}: heartbeat_timeout is not enforced by "
                "run_activities_locally()",
                RuntimeWarning,
                stacklevel=2,
            )
        policy = defn.retry_policy(self.retry_policy)
        loop = asyncio.get_running_loop()
        activity_id = uuid.uuid4().hex
        overall_deadline = (
            loop.time() + defn.schedule_to_close_timeout
            if defn.schedule_to_close_timeout is not None
            else None
        )
        state = self._state_for(session)
        details: Any = None
        attempt = 1
        while True:
            recorder = _Recorder()
            try:
                timeout, timeout_type = defn.start_to_close_timeout, TimeoutType.START_TO_CLOSE
                if overall_deadline is not None:
                    remaining = overall_deadline - loop.time()
                    if remaining <= 0:
                        raise ActivityTimeoutError(
                            f"activity {defn.name!r}: schedule_to_close_timeout "
                            f"({defn.schedule_to_close_timeout}s) expired",
                            type=TimeoutType.SCHEDULE_TO_CLOSE,
                            last_heartbeat_details=details,
                        )
                    if timeout is None or remaining < timeout:
                        timeout, timeout_type = remaining, TimeoutType.SCHEDULE_TO_CLOSE
                cancelled = threading.Event()
                ctx = ActivityContext(
                    info=attempt_info(
                        activity_id,
                        defn.name,
                        attempt,
                        time.time(),
                        timeout=timeout,
                        session_id=session.session_id if session is not None else None,
                        heartbeat_details=details,
                    ),
                    heartbeat=recorder,
                    is_cancelled=cancelled.is_set,
                    session_state=state,
                    resources=self._resources,
                )
                try:
                    result = await arun_attempt(
                        defn, ctx, args, kwargs, timeout=timeout, stop=cancelled.set
                    )
                except AttemptTimedOut:
                    raise ActivityTimeoutError(
                        f"activity {defn.name!r} attempt {attempt}: "
                        f"{timeout_type.value.lower()} timeout ({timeout:.3g}s)",
                        type=timeout_type,
                        last_heartbeat_details=details,
                    ) from None
                finally:
                    if recorder.details is not _NO_DETAILS:
                        details = recorder.details
                return defn.validate_result(result)
            except Exception as exc:
                delay = policy.next_delay(exc, attempt)
                if delay is None:
                    raise final_error(defn.name, attempt, exc, _traceback_text(exc)) from exc
                if overall_deadline is not None:
                    # Waking at the deadline fails the call with a schedule-to-close timeout.
                    delay = max(0.0, min(delay, overall_deadline - loop.time()))
            await asyncio.sleep(delay)
            attempt += 1

    def _state_for(self, session: StickyWorkerSession | None) -> dict[str, Any]:
        if session is None:
            return {}
        state = self._session_state.get(session.session_id)
        if state is None:
            state = self._session_state[session.session_id] = {}
            session.on_close(self._drop_session_state)
        return state

    def _drop_session_state(self, session: StickyWorkerSession) -> None:
        self._session_state.pop(session.session_id, None)


def _traceback_text(exc: BaseException) -> str:
    """The traceback text of ``exc`` as raised here (a pool gives the worker's)."""
    import traceback  # lazily: only a call that fails for good needs it

    return "".join(traceback.format_exception(exc))


def run_activities_locally(*, retry_policy: RetryPolicy | None = None) -> LocalRunner:
    """A :class:`LocalRunner`: ``with``/``async with`` it to run activity calls in-process.

    ``retry_policy`` gives the defaults for retry fields an activity leaves unset.
    """
    return LocalRunner(retry_policy=retry_policy)
