"""Context variables: the running activity, the ambient dispatcher and the ambient session.

The sdk owns these; the runtime injects them. A worker installs an :class:`ActivityContext`
around each call (``activity_scope``); a pool installs itself as the ambient :class:`Dispatcher`
while it is active, so that awaiting an ``async def`` activity dispatches to it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from ._record import record

# Not typing's TYPE_CHECKING: every worker imports this module, and typing costs ~7 ms to import
# (re, enum, contextlib...). Nor dataclasses (which imports inspect): see sdk._record.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager
    from types import TracebackType
    from typing import Any

    from ._depends import ResourceCache
    from ._dispatcher import Dispatcher

__all__ = [
    "ActivityContext",
    "ActivityInfo",
    "Dispatcher",
    "StickyWorkerSession",
    "activity_heartbeat",
    "activity_scope",
    "current_activity",
    "current_dispatcher",
    "get_sticky_worker_session",
    "heartbeat",
    "info",
    "is_cancelled",
    "require_activity",
    "reset_activity",
    "reset_dispatcher",
    "run_sticky_worker_session",
    "session_state",
    "set_activity",
    "set_dispatcher",
]


@record(frozen=True)
class ActivityInfo:
    """What a running activity knows about its own attempt (``activity.info()``)."""

    __match_args__ = (
        "activity_id",
        "name",
        "attempt",
        "worker_id",
        "pid",
        "session_id",
        "started_at",
        "deadline",
        "heartbeat_timeout",
        "heartbeat_details",
    )

    activity_id: str
    """Identifier of the call; the same across its attempts."""
    name: str
    """Registered name of the activity."""
    attempt: int
    """1-based attempt number."""
    worker_id: int | None
    """Pool worker id, or None when running outside a pool."""
    pid: int
    """Process id the attempt runs in."""
    session_id: str | None
    """Sticky session id, if the call belongs to one."""
    started_at: float
    """``time.time()`` when the attempt started."""
    deadline: float | None
    """``time.time()`` by which the attempt must finish, if any."""
    heartbeat_timeout: float | None
    """Seconds allowed between heartbeats, if enforced."""
    heartbeat_details: Any
    """The last details heartbeated by an earlier attempt (None if none), to resume from."""

    def __init__(
        self,
        activity_id: str,
        name: str,
        attempt: int,
        worker_id: int | None,
        pid: int,
        session_id: str | None,
        started_at: float,
        deadline: float | None,
        heartbeat_timeout: float | None,
        heartbeat_details: Any,
    ) -> None:
        # as a frozen dataclass sets its fields: around its own __setattr__
        d = self.__dict__
        d["activity_id"] = activity_id
        d["name"] = name
        d["attempt"] = attempt
        d["worker_id"] = worker_id
        d["pid"] = pid
        d["session_id"] = session_id
        d["started_at"] = started_at
        d["deadline"] = deadline
        d["heartbeat_timeout"] = heartbeat_timeout
        d["heartbeat_details"] = heartbeat_details


_NO_EXTRA: Any = object()  # ActivityContext(extra=...) not given: a new dict


@record(factories={"extra": dict})
class ActivityContext:
    """Everything a running activity reaches through ``activity.*``; installed by the runtime."""

    __match_args__ = ("info", "heartbeat", "is_cancelled", "session_state", "resources", "extra")

    info: ActivityInfo
    heartbeat: Callable[[Any], None]
    is_cancelled: Callable[[], bool]
    session_state: dict[str, Any]
    resources: ResourceCache
    extra: dict[str, Any]

    def __init__(
        self,
        info: ActivityInfo,
        heartbeat: Callable[[Any], None],
        is_cancelled: Callable[[], bool],
        session_state: dict[str, Any],
        resources: ResourceCache,
        extra: dict[str, Any] = _NO_EXTRA,
    ) -> None:
        self.info = info
        self.heartbeat = heartbeat
        self.is_cancelled = is_cancelled
        self.session_state = session_state
        self.resources = resources
        self.extra = {} if extra is _NO_EXTRA else extra


_current_activity: ContextVar[ActivityContext | None] = ContextVar(
    "activitypool_current_activity", default=None
)


def current_activity() -> ActivityContext | None:
    """The context of the activity running in this task/thread, or None."""
    return _current_activity.get()


def require_activity() -> ActivityContext:
    """The running activity's context; RuntimeError when called outside an activity."""
    ctx = _current_activity.get()
    if ctx is None:
        raise RuntimeError(
            "activity function (heartbeat/info/is_cancelled/session_state) "
            "called outside an activity"
        )
    return ctx


def set_activity(ctx: ActivityContext | None) -> Token[ActivityContext | None]:
    """Install ``ctx`` as the running activity; pass the token to :func:`reset_activity`."""
    return _current_activity.set(ctx)


def reset_activity(token: Token[ActivityContext | None]) -> None:
    """Undo :func:`set_activity`."""
    _current_activity.reset(token)


def activity_scope(ctx: ActivityContext) -> AbstractContextManager[ActivityContext]:
    """Run the body with ``ctx`` as the running activity (``with activity_scope(ctx):``)."""
    import contextlib  # lazily: a worker installs its context with set_activity()

    return contextlib.contextmanager(_activity_scope)(ctx)


def _activity_scope(ctx: ActivityContext) -> Iterator[ActivityContext]:
    token = _current_activity.set(ctx)
    try:
        yield ctx
    finally:
        _current_activity.reset(token)


_current_dispatcher: ContextVar[Dispatcher | None] = ContextVar(
    "activitypool_current_dispatcher", default=None
)


def current_dispatcher() -> Dispatcher | None:
    """The ambient dispatcher (an active pool or local runner), or None."""
    return _current_dispatcher.get()


def set_dispatcher(dispatcher: Dispatcher | None) -> Token[Dispatcher | None]:
    """Install the ambient dispatcher; pass the token to :func:`reset_dispatcher`."""
    return _current_dispatcher.set(dispatcher)


def reset_dispatcher(token: Token[Dispatcher | None]) -> None:
    """Undo :func:`set_dispatcher`."""
    _current_dispatcher.reset(token)


# What names a new session: None is a random uuid4. A workflow engine, whose code must be
# deterministic, installs its own for the workflows it runs (see pool.temporal).
_session_ids: ContextVar[Callable[[], str] | None] = ContextVar(
    "activitypool_session_ids", default=None
)


def set_session_id_factory(factory: Callable[[], str] | None) -> Token[Callable[[], str] | None]:
    """Name the sessions created in this context with ``factory()`` (None: uuid4)."""
    return _session_ids.set(factory)


class StickyWorkerSession:
    """A sticky session: its sticky activities all run on one worker process.

    The pool binds the session to a worker on its first sticky activity and registers a release
    callback with :meth:`on_close`. Closing is idempotent; callbacks run once, in registration
    order; a callback registered after close runs at once.
    """

    def __init__(self, session_id: str | None = None) -> None:
        if session_id is None:
            factory = _session_ids.get()
            if factory is not None:
                session_id = factory()
            else:
                import uuid  # lazily: workers never make sessions

                session_id = uuid.uuid4().hex
        self.session_id: str = session_id
        self.closed: bool = False
        self._callbacks: list[Callable[[StickyWorkerSession], None]] = []

    def on_close(self, cb: Callable[[StickyWorkerSession], None]) -> None:
        """Call ``cb(self)`` when the session closes (at once if it is already closed)."""
        if self.closed:
            self._run_callback(cb)
        else:
            self._callbacks.append(cb)

    def close(self) -> None:
        """Close the session and run its callbacks; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            self._run_callback(cb)

    def _run_callback(self, cb: Callable[[StickyWorkerSession], None]) -> None:
        # One failing release callback must not keep the others (other pools) from running.
        try:
            cb(self)
        except Exception:
            import logging  # lazily: only a failing callback needs it

            logging.getLogger(__name__).exception(
                "sticky session %s: close callback %r failed", self.session_id, cb
            )

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<StickyWorkerSession {self.session_id} {state}>"


_current_session: ContextVar[StickyWorkerSession | None] = ContextVar(
    "activitypool_current_session", default=None
)


def get_sticky_worker_session() -> StickyWorkerSession | None:
    """The ambient sticky session (innermost ``run_sticky_worker_session``), or None."""
    return _current_session.get()


class run_sticky_worker_session:
    """Make a sticky session ambient for the body; ``async with`` or plain ``with``.

    Nestable: the inner session wins and the outer one is restored on exit. Yields the session.
    A session created here is closed on exit; a session passed in is left open (its owner
    closes it).
    """

    def __init__(self, session: StickyWorkerSession | None = None) -> None:
        self._owned = session is None
        self.session = session if session is not None else StickyWorkerSession()
        self._tokens: list[Token[StickyWorkerSession | None]] = []

    def __enter__(self) -> StickyWorkerSession:
        self._tokens.append(_current_session.set(self.session))
        return self.session

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current_session.reset(self._tokens.pop())
        if self._owned:
            self.session.close()

    async def __aenter__(self) -> StickyWorkerSession:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def heartbeat(details: Any = None) -> None:
    """Record progress of the running activity; ``details`` reach a retry exactly as given."""
    require_activity().heartbeat(details)


def activity_heartbeat(*details: Any) -> None:
    """Heartbeat with ``details`` as one tuple (the mistralai-workflows 3.x spelling)."""
    require_activity().heartbeat(tuple(details))


def info() -> ActivityInfo:
    """The running activity's :class:`ActivityInfo`."""
    return require_activity().info


def is_cancelled() -> bool:
    """Whether the running activity has been asked to stop (poll it in sync activities)."""
    return require_activity().is_cancelled()


def session_state() -> dict[str, Any]:
    """A dict shared by the activities of the running sticky session, dropped when it closes."""
    return require_activity().session_state


def __getattr__(name: str) -> Any:
    # Dispatcher, a typing.Protocol, lives in its own module, loaded on first use: typing costs
    # a worker ~7 ms to import, and no worker needs it (PEP 562).
    if name == "Dispatcher":
        from ._dispatcher import Dispatcher

        globals()[name] = Dispatcher
        return Dispatcher
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "Dispatcher"})
