"""The ``@activity`` decorator and call routing.

Applying the decorator validates the function and its options (``ActivityDefinitionError``
names the function and the problem), builds the frozen :class:`~sdk._definition.ActivityDefinition`,
registers it, and wraps the function. The wrapper routes each call:

- inside a running activity: a plain call in this process (the outer call is the retry
  boundary), its ``Depends`` resources from the running attempt's cache;
- an ``async def`` activity awaited under an ambient dispatcher (an active pool, the local
  runner): dispatched there;
- anywhere else: a plain call, ``Depends`` resources from the process-wide cache.

A worker imports this module with every activity module: like ``sdk._definition`` it loads
neither typing nor inspect (see that module's docstring).
"""

from __future__ import annotations

import functools
from types import FunctionType

from . import _attempt, _context, _session
from ._definition import (
    _CO_ASYNC_GENERATOR,
    _CO_COROUTINE,
    _CO_GENERATOR,
    _INF,
    ActivityDefinition,
    RateLimit,
    _plain_function,
    _register,
    get_definition,
)
from ._depends import default_resource_cache
from ._errors import ActivityDefinitionError

TYPE_CHECKING = False  # not typing's: a worker imports this module (see sdk._lazy)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from datetime import timedelta
    from typing import Any, ParamSpec, Protocol, TypeVar, overload

    P = ParamSpec("P")
    R = TypeVar("R")

    class _Decorator(Protocol):
        """What ``activity(...)`` returns: a decorator that keeps the function's signature."""

        def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


__all__ = ["ACTIVITY_OPTIONS", "DEFAULT_START_TO_CLOSE", "activity", "with_options"]

# The decorator's default per-attempt limit (DESIGN section 3): 5 minutes, in seconds (a float,
# not a timedelta, so that defining an activity does not import datetime in every worker).
DEFAULT_START_TO_CLOSE = 300.0


def _seconds(fn_name: str, option: str, value: Any, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        # datetime is imported only here: a timedelta given means the caller has loaded it
        from datetime import timedelta

        if not isinstance(value, timedelta):
            raise ActivityDefinitionError(
                f"activity {fn_name}: {option} must be a timedelta or seconds, got {value!r}"
            )
        seconds = value.total_seconds()
    if not (0 < seconds < _INF):
        raise ActivityDefinitionError(f"activity {fn_name}: {option} must be > 0, got {value!r}")
    return seconds


def _error_type_names(fn_name: str, types_: Any) -> tuple[str, ...]:
    if isinstance(types_, str | type):
        types_ = (types_,)
    try:
        items = list(types_)
    except TypeError:
        raise ActivityDefinitionError(
            f"activity {fn_name}: non_retryable_error_types must be exception classes or "
            f"their names, got {types_!r}"
        ) from None
    names: list[str] = []
    for t in items:
        if isinstance(t, str) and t:
            names.append(t)
        elif isinstance(t, type) and issubclass(t, BaseException):
            names.append(t.__name__)
        else:
            raise ActivityDefinitionError(
                f"activity {fn_name}: non_retryable_error_types must hold exception classes "
                f"or their names, got {t!r}"
            )
    return tuple(names)


def _define(
    fn: Any,
    *,
    name: str | None,
    start_to_close_timeout: timedelta | float | None,
    heartbeat_timeout: timedelta | float | None,
    schedule_to_close_timeout: timedelta | float | None,
    retry_policy_max_attempts: int | None,
    retry_policy_backoff_coefficient: float | None,
    retry_policy_initial_interval: timedelta | float | None,
    retry_policy_max_interval: timedelta | float | None,
    non_retryable_error_types: Iterable[type[BaseException] | str],
    sticky_to_worker: bool,
    rate_limit: RateLimit | None,
) -> ActivityDefinition:
    label = repr(getattr(fn, "__qualname__", fn))
    if hasattr(fn, "__activity_definition__"):
        raise ActivityDefinitionError(f"activity {label}: is already an activity")
    if not isinstance(fn, FunctionType):  # inspect.isfunction(), without inspect
        raise ActivityDefinitionError(
            f"@activity needs a function defined with 'def' or 'async def', got {fn!r}"
        )
    if fn.__name__ == "<lambda>":
        raise ActivityDefinitionError(
            f"activity {label}: a lambda cannot be an activity (workers import it by name)"
        )
    # inspect.isgeneratorfunction() / isasyncgenfunction() of a function: its code's flags
    if fn.__code__.co_flags & (_CO_GENERATOR | _CO_ASYNC_GENERATOR):
        raise ActivityDefinitionError(
            f"activity {label}: generator functions cannot be activities; return a value"
        )
    if "<locals>" in fn.__qualname__:
        raise ActivityDefinitionError(
            f"activity {label}: must be defined at module level (workers import it by module "
            "and qualified name), not inside a function"
        )
    if name is None:
        name = fn.__name__
    if not isinstance(name, str) or not name.strip():
        raise ActivityDefinitionError(
            f"activity {label}: name must be a non-empty str, got {name!r}"
        )
    s2c = _seconds(label, "start_to_close_timeout", start_to_close_timeout)
    hb = _seconds(label, "heartbeat_timeout", heartbeat_timeout)
    sched = _seconds(label, "schedule_to_close_timeout", schedule_to_close_timeout)
    attempts = retry_policy_max_attempts
    if attempts is not None and (
        isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
    ):
        raise ActivityDefinitionError(
            f"activity {label}: retry_policy_max_attempts must be an int >= 0 "
            f"(0 = unlimited, 1 = no retry), got {attempts!r}"
        )
    coef = retry_policy_backoff_coefficient
    if coef is not None:
        if isinstance(coef, bool) or not isinstance(coef, int | float) or not 1 <= coef < _INF:
            raise ActivityDefinitionError(
                f"activity {label}: retry_policy_backoff_coefficient must be >= 1, got {coef!r}"
            )
        coef = float(coef)
    initial = _seconds(label, "retry_policy_initial_interval", retry_policy_initial_interval)
    maximum = _seconds(label, "retry_policy_max_interval", retry_policy_max_interval)
    if initial is not None and maximum is not None and maximum < initial:
        raise ActivityDefinitionError(
            f"activity {label}: retry_policy_max_interval ({maximum}s) must be >= "
            f"retry_policy_initial_interval ({initial}s)"
        )
    if not isinstance(sticky_to_worker, bool):
        raise ActivityDefinitionError(
            f"activity {label}: sticky_to_worker must be a bool, got {sticky_to_worker!r}"
        )
    if rate_limit is not None and not isinstance(rate_limit, RateLimit):
        raise ActivityDefinitionError(
            f"activity {label}: rate_limit must be a RateLimit or None, got {rate_limit!r}"
        )
    if not _plain_function(fn):  # a plain function's signature is readable: its code's
        import inspect  # lazily: see the module docstring

        try:
            inspect.signature(fn)
        except (TypeError, ValueError) as e:
            raise ActivityDefinitionError(f"activity {label}: unreadable signature: {e}") from None
    return ActivityDefinition(
        name=name,
        fn=fn,
        module=fn.__module__,
        qualname=fn.__qualname__,
        is_async=_is_coroutine_function(fn),
        start_to_close_timeout=s2c,
        heartbeat_timeout=hb,
        schedule_to_close_timeout=sched,
        retry_max_attempts=attempts,
        retry_backoff_coefficient=coef,
        retry_initial_interval=initial,
        retry_max_interval=maximum,
        non_retryable_error_types=_error_type_names(label, non_retryable_error_types),
        sticky_to_worker=sticky_to_worker,
        rate_limit=rate_limit,
    )


def _is_coroutine_function(fn: FunctionType) -> bool:
    """``inspect.iscoroutinefunction(fn)`` for a function, without inspect unless ``fn`` bears
    the mark of ``inspect.markcoroutinefunction`` (Python 3.12+)."""
    if hasattr(fn, "_is_coroutine_marker"):
        import inspect

        return inspect.iscoroutinefunction(fn)
    return bool(fn.__code__.co_flags & _CO_COROUTINE)


def _wrap(defn: ActivityDefinition) -> Callable[..., Any]:
    fn = defn.fn
    if defn.is_async:

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = _context._current_activity.get()
            if ctx is None:
                dispatcher = _context._current_dispatcher.get()
                if dispatcher is not None:
                    return await dispatcher.dispatch(
                        defn, args, kwargs, _session.get_sticky_worker_session()
                    )
                cache = default_resource_cache()
            else:
                cache = ctx.resources
            if defn.depends_params():
                kwargs = await _attempt.ainject(defn, cache, args, kwargs)
            return await fn(*args, **kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if defn.depends_params():
                ctx = _context._current_activity.get()
                cache = default_resource_cache() if ctx is None else ctx.resources
                kwargs = _attempt.inject(defn, cache, args, kwargs)
            return fn(*args, **kwargs)

        wrapper = sync_wrapper
    wrapper.__activity_definition__ = defn  # type: ignore[attr-defined]
    return wrapper


# The options @activity(...) takes, in the order the docs list them.
ACTIVITY_OPTIONS = (
    "name",
    "start_to_close_timeout",
    "heartbeat_timeout",
    "schedule_to_close_timeout",
    "retry_policy_max_attempts",
    "retry_policy_backoff_coefficient",
    "retry_policy_initial_interval",
    "retry_policy_max_interval",
    "non_retryable_error_types",
    "sticky_to_worker",
    "rate_limit",
)


def _unknown_options(unknown: dict[str, Any]) -> TypeError:
    """The error for options @activity(...) does not take: names them, lists the valid ones."""
    bad = sorted(unknown)
    hint = ""
    if len(bad) == 1:
        # substring matches first: "timeout" means one of the three *_timeout options
        close = [o for o in ACTIVITY_OPTIONS if bad[0] in o]
        if not close:
            import difflib  # lazily: only a mistyped option needs it

            close = difflib.get_close_matches(bad[0], ACTIVITY_OPTIONS, n=3)
        if close:
            hint = f" (did you mean {' or '.join(close)}?)"
    what = "an unknown option" if len(bad) == 1 else "unknown options"
    return TypeError(
        f"@activity() got {what} {', '.join(map(repr, bad))}{hint}; "
        f"the valid options are: {', '.join(ACTIVITY_OPTIONS)}"
    )


class _ActivityDecorator:
    """``@activity`` / ``@activity(...)``, plus the in-activity helpers (``activity.heartbeat``)."""

    if TYPE_CHECKING:  # the overloads, for type checkers (no typing at run time)

        @overload
        def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

        @overload
        def __call__(
            self,
            *,
            name: str | None = None,
            start_to_close_timeout: timedelta | float | None = DEFAULT_START_TO_CLOSE,
            heartbeat_timeout: timedelta | float | None = None,
            schedule_to_close_timeout: timedelta | float | None = None,
            retry_policy_max_attempts: int | None = None,
            retry_policy_backoff_coefficient: float | None = None,
            retry_policy_initial_interval: timedelta | float | None = None,
            retry_policy_max_interval: timedelta | float | None = None,
            non_retryable_error_types: Iterable[type[BaseException] | str] = (),
            sticky_to_worker: bool = False,
            rate_limit: RateLimit | None = None,
        ) -> _Decorator: ...

    def __call__(
        self,
        fn: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        start_to_close_timeout: timedelta | float | None = DEFAULT_START_TO_CLOSE,
        heartbeat_timeout: timedelta | float | None = None,
        schedule_to_close_timeout: timedelta | float | None = None,
        retry_policy_max_attempts: int | None = None,
        retry_policy_backoff_coefficient: float | None = None,
        retry_policy_initial_interval: timedelta | float | None = None,
        retry_policy_max_interval: timedelta | float | None = None,
        non_retryable_error_types: Iterable[type[BaseException] | str] = (),
        sticky_to_worker: bool = False,
        rate_limit: RateLimit | None = None,
        **unknown: Any,
    ) -> Any:
        if unknown:
            raise _unknown_options(unknown)

        def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
            defn = _define(
                f,
                name=name,
                start_to_close_timeout=start_to_close_timeout,
                heartbeat_timeout=heartbeat_timeout,
                schedule_to_close_timeout=schedule_to_close_timeout,
                retry_policy_max_attempts=retry_policy_max_attempts,
                retry_policy_backoff_coefficient=retry_policy_backoff_coefficient,
                retry_policy_initial_interval=retry_policy_initial_interval,
                retry_policy_max_interval=retry_policy_max_interval,
                non_retryable_error_types=non_retryable_error_types,
                sticky_to_worker=sticky_to_worker,
                rate_limit=rate_limit,
            )
            wrapper = _wrap(defn)
            _register(defn)
            return wrapper

        if fn is not None:
            return decorate(fn)
        return decorate

    @staticmethod
    def heartbeat(details: Any = None) -> None:
        """Record progress; ``details`` reach the next attempt as ``info().heartbeat_details``."""
        _context.heartbeat(details)

    @staticmethod
    def info() -> _context.ActivityInfo:
        """The running attempt's :class:`ActivityInfo`."""
        return _context.info()

    @staticmethod
    def is_cancelled() -> bool:
        """Whether the running activity was asked to stop."""
        return _context.is_cancelled()

    @staticmethod
    def session_state() -> dict[str, Any]:
        """The running sticky session's state dict."""
        return _context.session_state()

    def __repr__(self) -> str:
        return "<activity decorator>"


activity = _ActivityDecorator()


# -- per-call options --------------------------------------------------------------------------

# What with_options may replace: every @activity option but the name (workers, rate limits and
# Temporal know an activity by its name), and the definition's field each one sets.
_OPTION_FIELDS = {
    "start_to_close_timeout": "start_to_close_timeout",
    "heartbeat_timeout": "heartbeat_timeout",
    "schedule_to_close_timeout": "schedule_to_close_timeout",
    "retry_policy_max_attempts": "retry_max_attempts",
    "retry_policy_backoff_coefficient": "retry_backoff_coefficient",
    "retry_policy_initial_interval": "retry_initial_interval",
    "retry_policy_max_interval": "retry_max_interval",
    "non_retryable_error_types": "non_retryable_error_types",
    "sticky_to_worker": "sticky_to_worker",
    "rate_limit": "rate_limit",
}
# Cached facts of the function, not of the options: a copy reuses the original's.
_FN_CACHES = ("_signature", "_hints", "_checks", "_binder", "_result_check", "_depends")

if TYPE_CHECKING:

    @overload
    def with_options(
        target: str | ActivityDefinition, /, **overrides: Any
    ) -> ActivityDefinition: ...
    @overload
    def with_options(target: Callable[P, R], /, **overrides: Any) -> Callable[P, R]: ...


def with_options(target: Any, /, **overrides: Any) -> Any:
    """``target`` with some of its ``@activity`` options replaced, for the calls it is passed to.

    ``target`` is an activity function, its definition or its registered name. The overrides
    take the decorator's option names (all but ``name``) and are validated the same way; the
    others keep the definition's values (``non_retryable_error_types`` replaces, never merges).
    A function gives a function (the same signature, for the pool methods' typing) that
    carries the copy; a definition or a name gives a definition. Nothing is registered: the
    registered activity is unchanged, and workers still import it by module and name (a copy
    pickles as the registered definition: its options matter only where calls are scheduled).
    """
    defn = get_definition(target)
    unknown = sorted(set(overrides) - set(_OPTION_FIELDS))
    if unknown:
        what = "name cannot be changed per call" if unknown == ["name"] else "unknown option"
        raise ActivityDefinitionError(
            f"activity {defn.name!r}: {what}: {', '.join(unknown)} "
            f"(options: {', '.join(_OPTION_FIELDS)})"
        )
    current = {option: getattr(defn, field) for option, field in _OPTION_FIELDS.items()}
    copy = _define(defn.fn, name=defn.name, **{**current, **overrides})
    # the copy is of the same function: what was derived from it alone carries over
    for cached in _FN_CACHES:
        if cached in defn.__dict__:
            copy.__dict__[cached] = defn.__dict__[cached]
    if isinstance(target, str | ActivityDefinition):
        return copy
    return _wrap(copy)
