"""Retry policy and the pure backoff function."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import (
    ActivityError,
    ActivityInputError,
    ActivityTimeoutError,
    ApplicationError,
    TimeoutType,
    safe_str,
)

__all__ = ["RetryPolicy", "backoff_delay", "final_error"]

# When no maximum interval is given the delay stops growing at this multiple of the initial
# interval (Temporal's default), so an unlimited-attempt activity does not back off for hours.
DEFAULT_MAXIMUM_INTERVAL_FACTOR = 100.0


def backoff_delay(attempt: int, initial: float, coefficient: float, maximum: float) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one.

    ``min(initial * coefficient ** (attempt - 1), maximum)``, computed without overflow.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    try:
        delay = initial * coefficient ** (attempt - 1)
    except OverflowError:
        return maximum
    if math.isinf(delay) or math.isnan(delay):
        return maximum
    return min(delay, maximum)


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts of an activity are retried."""

    initial_interval: float = 1.0
    """Seconds to wait after the first failed attempt; must be > 0."""

    backoff_coefficient: float = 2.0
    """Each later wait is the previous one times this; must be >= 1."""

    maximum_interval: float | None = None
    """Cap on one wait in seconds; None means 100 x ``initial_interval``. Must be >= initial."""

    maximum_attempts: int = 3
    """Attempts in total, the first included: 0 = unlimited, 1 = no retry."""

    non_retryable_error_types: tuple[str, ...] = ()
    """Exception class names (or ``ApplicationError.type`` values) that are never retried."""

    def __post_init__(self) -> None:
        if isinstance(self.initial_interval, bool) or not isinstance(
            self.initial_interval, int | float
        ):
            raise ValueError(f"initial_interval must be a number, got {self.initial_interval!r}")
        if not self.initial_interval > 0 or math.isinf(self.initial_interval):
            raise ValueError(f"initial_interval must be > 0, got {self.initial_interval!r}")
        if isinstance(self.backoff_coefficient, bool) or not isinstance(
            self.backoff_coefficient, int | float
        ):
            raise ValueError(
                f"backoff_coefficient must be a number, got {self.backoff_coefficient!r}"
            )
        if not self.backoff_coefficient >= 1 or math.isinf(self.backoff_coefficient):
            raise ValueError(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}")
        if self.maximum_interval is not None:
            if isinstance(self.maximum_interval, bool) or not isinstance(
                self.maximum_interval, int | float
            ):
                raise ValueError(
                    f"maximum_interval must be a number or None, got {self.maximum_interval!r}"
                )
            if not self.maximum_interval >= self.initial_interval:
                raise ValueError(
                    f"maximum_interval ({self.maximum_interval!r}) must be >= "
                    f"initial_interval ({self.initial_interval!r})"
                )
        if isinstance(self.maximum_attempts, bool) or not isinstance(self.maximum_attempts, int):
            raise ValueError(f"maximum_attempts must be an int, got {self.maximum_attempts!r}")
        if self.maximum_attempts < 0:
            raise ValueError(
                f"maximum_attempts must be >= 0 (0 = unlimited), got {self.maximum_attempts!r}"
            )
        types = self.non_retryable_error_types
        if isinstance(types, str) or not all(isinstance(t, str) for t in types):
            raise ValueError(
                f"non_retryable_error_types must be a tuple of class names, got {types!r}"
            )
        object.__setattr__(self, "non_retryable_error_types", tuple(types))

    @property
    def effective_maximum_interval(self) -> float:
        """The cap on one wait, with the None default resolved."""
        if self.maximum_interval is None:
            return self.initial_interval * DEFAULT_MAXIMUM_INTERVAL_FACTOR
        return self.maximum_interval

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next attempt."""
        return backoff_delay(
            attempt,
            self.initial_interval,
            self.backoff_coefficient,
            self.effective_maximum_interval,
        )

    def exhausted(self, attempt: int) -> bool:
        """True when attempt ``attempt`` (1-based) was the last one allowed."""
        return self.maximum_attempts != 0 and attempt >= self.maximum_attempts

    def next_delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds to wait before the next attempt after attempt ``attempt`` (1-based) failed
        with ``exc``, or None when the call fails for good (``exc`` is not retryable, or that
        was the last attempt allowed). ``ApplicationError(next_retry_delay=...)`` overrides
        the backoff. The one retry decision: the pool's scheduler and the local runner ask it.
        """
        if not self.is_retryable(exc) or self.exhausted(attempt):
            return None
        if isinstance(exc, ApplicationError) and exc.next_retry_delay is not None:
            return exc.next_retry_delay
        return self.delay(attempt)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether a failure of this kind may be retried (attempt counts aside)."""
        if isinstance(exc, ApplicationError):
            if exc.non_retryable:
                return False
            if exc.type is not None and exc.type in self.non_retryable_error_types:
                return False
        if isinstance(exc, ActivityInputError):
            return False
        if isinstance(exc, ActivityTimeoutError) and exc.type is TimeoutType.SCHEDULE_TO_CLOSE:
            return False
        if self.non_retryable_error_types:
            names = self.non_retryable_error_types
            if any(cls.__name__ in names for cls in type(exc).__mro__):
                return False
        return True


def final_error(
    name: str,
    attempts: int,
    exc: BaseException,
    traceback_text: str | None,
    output: tuple[str, ...] = (),
) -> ActivityError:
    """What the caller gets when a call fails for good: an :class:`ActivityError` naming the
    activity and the attempts, with ``exc`` (the last failure) as its cause, the traceback
    text of where ``exc`` was raised (the worker's, or this process's for a local run) and
    ``output``, the last lines the failing attempt printed."""
    err = ActivityError(
        f"activity {name!r} failed after {attempts} attempt{'s' if attempts != 1 else ''}: "
        f"{type(exc).__name__}: {safe_str(exc)}",
        attempts=attempts,
        remote_traceback=traceback_text,
        output=output,
    )
    err.__cause__ = exc
    return err
