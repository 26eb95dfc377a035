"""Context variables: the running activity, the ambient dispatcher and the ambient session.

The sdk owns these; the runtime injects them. An :class:`ActivityContext` is installed around
each attempt by ``sdk._attempt``; a pool installs itself as the ambient :class:`Dispatcher` while
it is active, so that awaiting an ``async def`` activity dispatches to it.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

from ._lazy import lazy_exports
from ._record import record
from ._session import (  # re-exported: the ambient session is part of the activity's context
    StickyWorkerSession,
    get_sticky_worker_session,
    run_sticky_worker_session,
)

# Not typing's TYPE_CHECKING, nor dataclasses: a worker imports this module (see sdk._lazy).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ._depends import ResourceCache
    from ._dispatcher import Dispatcher

__all__ = [
    "ActivityContext",
    "ActivityInfo",
    "Dispatcher",
    "StickyWorkerSession",
    "activity_heartbeat",
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


# Dispatcher, a typing.Protocol, loads on first use (see sdk._lazy): no worker needs it.
__getattr__, __dir__ = lazy_exports(__name__, {"Dispatcher": "sdk._dispatcher"}, globals(), __all__)
