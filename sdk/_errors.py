"""The error taxonomy of activitypool (DESIGN section 5).

Every error that carries keyword attributes implements ``__reduce__``: the default pickling of an
exception replays only ``self.args``, so keyword-only attributes (``non_retryable``,
``attempts``...) would be silently dropped or make unpickling fail when an error crosses the pipe
between a worker and the supervisor.
"""

from __future__ import annotations

from ._lazy import lazy_exports

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    from datetime import timedelta
    from typing import Any

    from ._timeout_type import TimeoutType

__all__ = [
    "ActivityDefinitionError",
    "ActivityError",
    "ActivityInputError",
    "ActivityPoolError",
    "ActivityTimeoutError",
    "ApplicationError",
    "PoolClosedError",
    "RemoteTraceback",
    "StickySessionLostError",
    "StickyWorkerSessionMissingError",
    "TimeoutType",
    "WorkerCrashedError",
]


class ActivityPoolError(Exception):
    """Base class of every error raised by activitypool."""

    # Whether ``__cause__`` is pickled with the error (off by default: a cause may not pickle).
    _pickle_cause = False

    def __reduce__(self) -> Any:
        # Rebuild without calling __init__: subclasses (user ApplicationError subclasses too)
        # may have any signature, and every attribute lives in __dict__ anyway.
        cause = self.__cause__ if self._pickle_cause else None
        return (_rebuild, (type(self), self.args, dict(self.__dict__), cause))


class ActivityDefinitionError(ActivityPoolError):
    """The ``@activity`` decorator was misused; raised when the decorator is applied."""


class ActivityInputError(ActivityPoolError):
    """The arguments of a call failed validation (or the activity is unknown); nothing was sent."""


class ActivityError(ActivityPoolError):
    """An activity call failed for good.

    ``__cause__`` (also ``.cause``) is the last failure; ``.attempts`` is how many attempts ran;
    ``.remote_traceback`` is the worker-side traceback text of the last failure, when known;
    ``.output`` is the last lines (up to 20) the failing attempt printed in a pool worker, its
    stdout and stderr interleaved (empty when it printed nothing, and for a local run).
    """

    output: tuple[str, ...] = ()  # (for an error pickled before it had one)

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        remote_traceback: str | None = None,
        output: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts
        self.remote_traceback = remote_traceback
        self.output = tuple(output)

    @property
    def cause(self) -> BaseException | None:
        """The last failure (same as ``__cause__``)."""
        return self.__cause__

    # The cause is the whole point of this error, so it travels with it when pickled.
    _pickle_cause = True


class ApplicationError(ActivityPoolError):
    """Raised by user code to control retries.

    ``non_retryable=True`` stops retries; ``next_retry_delay`` overrides the backoff delay before
    the next attempt; ``type`` is a name matched against ``non_retryable_error_types``.
    """

    def __init__(
        self,
        message: str = "",
        *details: Any,
        type: str | None = None,
        non_retryable: bool = False,
        next_retry_delay: timedelta | float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: tuple[Any, ...] = tuple(details)
        self.type = type
        self.non_retryable = bool(non_retryable)
        self.next_retry_delay: float | None = _seconds_or_none(next_retry_delay)


def _seconds_or_none(delay: timedelta | float | None) -> float | None:
    if delay is None:
        return None
    if isinstance(delay, int | float):
        return float(delay)
    # datetime is imported only here: a timedelta given means the caller has loaded it already
    from datetime import timedelta

    if isinstance(delay, timedelta):
        return delay.total_seconds()
    return float(delay)


class ActivityTimeoutError(ActivityPoolError):
    """An attempt (or the whole call) missed a deadline.

    ``.type`` says which; ``.last_heartbeat_details`` are the latest details heartbeated.
    """

    def __init__(
        self, message: str, *, type: TimeoutType, last_heartbeat_details: Any = None
    ) -> None:
        from ._timeout_type import TimeoutType  # lazily: see the end of this module

        super().__init__(message)
        self.message = message
        self.type = TimeoutType(type)
        self.last_heartbeat_details = last_heartbeat_details


class WorkerCrashedError(ActivityPoolError):
    """The worker process running the attempt died (exit, signal, OOM kill)."""

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None,
        signal: int | None,
        pid: int | None,
        worker_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exitcode = exitcode
        self.signal = signal
        self.pid = pid
        self.worker_id = worker_id


class StickySessionLostError(ActivityPoolError):
    """The worker a sticky session was pinned to is gone; the session cannot continue."""

    def __init__(self, message: str, *, session_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.session_id = session_id


class StickyWorkerSessionMissingError(ActivityPoolError):
    """A ``sticky_to_worker`` activity was called outside any sticky session."""


class PoolClosedError(ActivityPoolError):
    """The pool is closed (or closing) and accepts no more work."""


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in another process.

    Set as the ``__cause__`` of a remote exception so that printing it shows the remote frames.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _rebuild(
    cls: type[BaseException],
    args: tuple[Any, ...],
    state: dict[str, Any],
    cause: BaseException | None,
) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    if cause is not None:
        exc.__cause__ = cause
    return exc


def safe_str(obj: object) -> str:
    """``str(obj)``, or a placeholder that says it failed: a user's object whose ``__str__``
    raises must not break the code that reports on it (a failure report, an error message)."""
    try:
        return str(obj)
    except BaseException as exc:
        return f"<str() of {type(obj).__name__} failed: {_describe(exc)}>"


def safe_repr(obj: object) -> str:
    """``repr(obj)``, or a placeholder that says it failed (see :func:`safe_str`)."""
    try:
        return repr(obj)
    except BaseException as exc:
        return f"<repr() of {type(obj).__name__} failed: {_describe(exc)}>"


def _describe(exc: BaseException) -> str:
    """An exception raised by ``__str__``/``__repr__``: its type and, if it has one, its text."""
    try:
        text = str(exc)
    except BaseException:
        text = ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# TimeoutType, an enum, loads on first use (see sdk._lazy): no worker needs it.
__getattr__, __dir__ = lazy_exports(
    __name__, {"TimeoutType": "sdk._timeout_type"}, globals(), __all__
)
