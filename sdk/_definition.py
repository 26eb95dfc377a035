"""The ``@activity`` decorator, the frozen :class:`ActivityDefinition`, and the registry.

pydantic is imported on first use (the first check built from a type hint), never at import
time: workers import this module and most never validate arguments (the supervisor does).

Nor typing, dataclasses or inspect (~12 ms together, with the re, enum, ast, dis and tokenize
they bring): a worker defines activities (``@activity``) and runs them, and for a plain function
neither needs a ``Signature`` nor type hints. They are imported where they are needed: binding
or validating arguments (the supervisor), a ``Depends`` parameter, a return annotation, or a
function that is not a plain one (wrapped, with a ``__signature__``...).
"""

from __future__ import annotations

import functools
import importlib
import threading
from types import FunctionType

from . import _context
from ._depends import Dependency, default_resource_cache
from ._errors import (
    ActivityDefinitionError,
    ActivityInputError,
    ApplicationError,
    safe_repr,
    safe_str,
)
from ._record import record

TYPE_CHECKING = False  # not typing's: see the module docstring
if TYPE_CHECKING:
    import inspect
    import types
    from collections.abc import Callable, Iterable
    from datetime import timedelta
    from typing import Any, ParamSpec, Protocol, TypeVar, overload

    import pydantic

    from ._retry import RetryPolicy

    P = ParamSpec("P")
    R = TypeVar("R")

    class _Decorator(Protocol):
        """What ``activity(...)`` returns: a decorator that keeps the function's signature."""

        def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


__all__ = [
    "ActivityDefinition",
    "RateLimit",
    "activities_in_module",
    "activity",
    "get_definition",
    "lookup",
    "with_options",
]

# float('inf') rather than math.inf: math is an extension module, loaded from disk by every worker
_INF = float("inf")

# The decorator's default per-attempt limit (DESIGN section 3): 5 minutes, in seconds (a float,
# not a timedelta, so that defining an activity does not import datetime in every worker).
DEFAULT_START_TO_CLOSE = 300.0


# What a frozen dataclass would be, without importing dataclasses (see sdk._record).
@record(frozen=True)
class RateLimit:
    """At most ``max_execution`` starts per ``time_window_in_sec`` (per ``key``, if given)."""

    __match_args__ = ("time_window_in_sec", "max_execution", "key")

    time_window_in_sec: float
    """Length of the window in seconds; > 0."""
    max_execution: int
    """Starts allowed per window; >= 1."""
    key: str | None
    """Name of a limit shared by several activities; None: the activity's own."""

    def __init__(self, time_window_in_sec: float, max_execution: int, key: str | None = None):
        d = self.__dict__  # as a frozen dataclass sets its fields: around its own __setattr__
        d["time_window_in_sec"] = time_window_in_sec
        d["max_execution"] = max_execution
        d["key"] = key
        self.__post_init__()

    def __post_init__(self) -> None:  # (pydantic calls it too, as for a dataclass)
        w = self.time_window_in_sec
        if isinstance(w, bool) or not isinstance(w, int | float) or not (0 < w < _INF):
            raise ValueError(f"RateLimit.time_window_in_sec must be > 0, got {w!r}")
        m = self.max_execution
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"RateLimit.max_execution must be an int >= 1, got {m!r}")
        if self.key is not None and not isinstance(self.key, str):
            raise ValueError(f"RateLimit.key must be a str or None, got {self.key!r}")


class _Check:
    """Validates one argument: a pydantic adapter (lax mode) or an isinstance fallback."""

    __slots__ = ("adapter", "cls")

    def __init__(self, adapter: pydantic.TypeAdapter[Any] | None, cls: type | None) -> None:
        self.adapter = adapter
        self.cls = cls

    def __call__(self, value: Any) -> Any:
        if self.adapter is not None:
            return self.adapter.validate_python(value)
        assert self.cls is not None
        if not isinstance(value, self.cls):
            raise TypeError(f"expected {self.cls.__qualname__}, got {type(value).__qualname__}")
        return value


def _make_check(hint: Any) -> _Check | None:
    """The check for a resolved type hint, or None when nothing is to be checked."""
    import inspect  # lazily, as pydantic (which imports both anyway): see the module docstring
    import typing

    if hint is typing.Any or hint is inspect.Parameter.empty:
        return None
    import pydantic  # lazily: see the module docstring

    try:
        return _Check(pydantic.TypeAdapter(hint), None)
    except Exception:
        pass
    try:
        # Unknown classes inside a known shape (list[MyClass], ndarray | None) are checked with
        # isinstance by pydantic itself.
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(
            hint, config=pydantic.ConfigDict(arbitrary_types_allowed=True)
        )
        return _Check(adapter, None)
    except Exception:
        pass
    if isinstance(hint, type):
        return _Check(None, hint)
    return None  # a hint nothing can check (an exotic typing form): pass through


class _EachResult:
    """The result check of a chunk: each item's result against the target's annotation."""

    __slots__ = ("target",)

    def __init__(self, target: ActivityDefinition) -> None:
        self.target = target

    def __call__(self, values: list[Any]) -> list[Any]:
        validate = self.target.validate_result
        return [validate(v) for v in values]


class _Binder:
    """Precomputed signature facts for binding arguments without ``Signature.bind``."""

    __slots__ = ("keyword", "positional", "positional_only", "required", "simple")

    def __init__(
        self,
        simple: bool,  # no *args / **kwargs: bind by hand (fast); else use Signature.bind
        positional: tuple[str, ...],  # names that may be given positionally, in order
        positional_only: frozenset[str],
        keyword: frozenset[str],  # names that may be given by keyword
        required: tuple[str, ...],  # names without a default
    ) -> None:
        self.simple = simple
        self.positional = positional
        self.positional_only = positional_only
        self.keyword = keyword
        self.required = required


# code flags (as inspect names them): what a plain function is, read without inspect
_CO_GENERATOR = 0x20
_CO_COROUTINE = 0x80
_CO_ASYNC_GENERATOR = 0x200
# Attributes that make inspect.signature() look beyond a function's own code and defaults.
_SIGNATURE_OVERRIDES = ("__wrapped__", "__signature__", "_partialmethod", "__partialmethod__")


def _plain_function(fn: Any) -> bool:
    """Whether ``fn`` is a ``def`` whose signature is its code's: ``inspect.signature`` then
    cannot fail, and its parameters' defaults are ``__defaults__`` and ``__kwdefaults__``."""
    return type(fn) is FunctionType and not any(hasattr(fn, a) for a in _SIGNATURE_OVERRIDES)


@record(frozen=True)
class ActivityDefinition:
    """Everything known about an activity; attached to its wrapper as ``__activity_definition__``.

    Timeouts and intervals are seconds; retry fields left None take the pool's defaults.
    """

    __match_args__ = (
        "name",
        "fn",
        "module",
        "qualname",
        "is_async",
        "start_to_close_timeout",
        "heartbeat_timeout",
        "schedule_to_close_timeout",
        "retry_max_attempts",
        "retry_backoff_coefficient",
        "retry_initial_interval",
        "retry_max_interval",
        "non_retryable_error_types",
        "sticky_to_worker",
        "rate_limit",
    )

    name: str
    fn: Callable[..., Any]
    module: str
    qualname: str
    is_async: bool
    start_to_close_timeout: float | None
    heartbeat_timeout: float | None
    schedule_to_close_timeout: float | None
    retry_max_attempts: int | None
    retry_backoff_coefficient: float | None
    retry_initial_interval: float | None
    retry_max_interval: float | None
    non_retryable_error_types: tuple[str, ...]
    sticky_to_worker: bool
    rate_limit: RateLimit | None

    def __init__(
        self,
        name: str,
        fn: Callable[..., Any],
        module: str,
        qualname: str,
        is_async: bool,
        start_to_close_timeout: float | None,
        heartbeat_timeout: float | None,
        schedule_to_close_timeout: float | None,
        retry_max_attempts: int | None,
        retry_backoff_coefficient: float | None,
        retry_initial_interval: float | None,
        retry_max_interval: float | None,
        non_retryable_error_types: tuple[str, ...] = (),
        sticky_to_worker: bool = False,
        rate_limit: RateLimit | None = None,
    ) -> None:
        d = self.__dict__  # as a frozen dataclass sets its fields: around its own __setattr__
        d["name"] = name
        d["fn"] = fn
        d["module"] = module
        d["qualname"] = qualname
        d["is_async"] = is_async
        d["start_to_close_timeout"] = start_to_close_timeout
        d["heartbeat_timeout"] = heartbeat_timeout
        d["schedule_to_close_timeout"] = schedule_to_close_timeout
        d["retry_max_attempts"] = retry_max_attempts
        d["retry_backoff_coefficient"] = retry_backoff_coefficient
        d["retry_initial_interval"] = retry_initial_interval
        d["retry_max_interval"] = retry_max_interval
        d["non_retryable_error_types"] = non_retryable_error_types
        d["sticky_to_worker"] = sticky_to_worker
        d["rate_limit"] = rate_limit

    def __reduce__(self) -> Any:
        # Workers import the definition by module and qualified name; the function object itself
        # cannot be pickled by reference because the module attribute is the wrapper.
        return (_load_definition, (self.module, self.qualname))

    @functools.cached_property
    def _signature(self) -> inspect.Signature:
        import inspect  # lazily: see the module docstring

        return inspect.signature(self.fn)

    @functools.cached_property
    def _hints(self) -> dict[str, Any]:
        import typing  # lazily: see the module docstring

        try:
            return typing.get_type_hints(self.fn)
        except Exception:
            # Some hint does not resolve (a forward reference to a name that does not exist):
            # keep the ones that are real objects, skip the strings.
            raw = getattr(self.fn, "__annotations__", {})
            return {k: v for k, v in raw.items() if not isinstance(v, str)}

    @functools.cached_property
    def _checks(self) -> dict[str, _Check]:
        """Per-parameter checks (kept apart from :attr:`_binder`, which must not need pydantic)."""
        hints = self._hints
        checks: dict[str, _Check] = {}
        for p in self._signature.parameters.values():
            if isinstance(p.default, Dependency) or p.name not in hints:
                continue
            # For *args / **kwargs the hint is that of each element (checked one by one).
            check = _make_check(hints[p.name])
            if check is not None:
                checks[p.name] = check
        return checks

    @functools.cached_property
    def _binder(self) -> _Binder:
        import inspect  # lazily: see the module docstring

        params = list(self._signature.parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        return _Binder(
            simple=all(
                p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
                for p in params
            ),
            positional=tuple(p.name for p in params if p.kind in positional),
            positional_only=frozenset(
                p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_ONLY
            ),
            keyword=frozenset(
                p.name
                for p in params
                if p.kind
                in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            ),
            required=tuple(p.name for p in params if p.default is inspect.Parameter.empty),
        )

    @functools.cached_property
    def _result_check(self) -> _Check | None:
        try:
            annotations = getattr(self.fn, "__annotations__", None)
        except Exception:
            annotations = None
        if isinstance(annotations, dict) and "return" not in annotations:
            return None  # what _hints would say (its keys are these), without typing
        if "return" not in self._hints:
            return None
        return _make_check(self._hints["return"])

    @functools.cached_property
    def _depends(self) -> dict[str, Dependency]:
        fn = self.fn
        if _plain_function(fn):
            # The parameters' defaults are these: no Depends among them, no Signature needed.
            kwdefaults = fn.__kwdefaults__
            if not any(isinstance(d, Dependency) for d in fn.__defaults__ or ()) and not (
                kwdefaults and any(isinstance(d, Dependency) for d in kwdefaults.values())
            ):
                return {}
        return {
            p.name: p.default
            for p in self._signature.parameters.values()
            if isinstance(p.default, Dependency)
        }

    def depends_params(self) -> dict[str, Dependency]:
        """Parameters whose default is ``Depends(...)``, by name (the runtime fills them)."""
        return self._depends

    def options(self, **overrides: Any) -> ActivityDefinition:
        """A frozen copy with some ``@activity`` options replaced (see :func:`with_options`)."""
        return _with_options(self, overrides)

    def retry_policy(self, default: RetryPolicy) -> RetryPolicy:
        """The policy for this activity: fields set here override ``default``.

        Non-retryable types are merged. When only one interval is set here and it conflicts
        with the default's other interval, the default's interval gives way.
        """
        from ._retry import RetryPolicy  # lazily: workers never build policies

        initial = default.initial_interval
        maximum = default.maximum_interval
        if self.retry_initial_interval is not None:
            initial = self.retry_initial_interval
            if maximum is not None and self.retry_max_interval is None:
                maximum = max(maximum, initial)
        if self.retry_max_interval is not None:
            maximum = self.retry_max_interval
            if self.retry_initial_interval is None:
                initial = min(initial, maximum)
        types_ = tuple(
            dict.fromkeys((*default.non_retryable_error_types, *self.non_retryable_error_types))
        )
        return RetryPolicy(
            initial_interval=initial,
            backoff_coefficient=(
                self.retry_backoff_coefficient
                if self.retry_backoff_coefficient is not None
                else default.backoff_coefficient
            ),
            maximum_interval=maximum,
            maximum_attempts=(
                self.retry_max_attempts
                if self.retry_max_attempts is not None
                else default.maximum_attempts
            ),
            non_retryable_error_types=types_,
        )

    def validate_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Bind and check a call's arguments; returns them coerced (pydantic lax mode).

        Raises :class:`ActivityInputError` naming the activity and the parameter.
        """
        b = self._binder
        checks = self._checks
        if not b.simple:
            return self._validate_with_bind(args, kwargs)
        npos = len(args)
        if npos > len(b.positional):
            raise ActivityInputError(
                f"activity {self.name!r}: takes {len(b.positional)} positional argument(s) "
                f"but {npos} were given"
            )
        given_pos = b.positional[:npos]
        for key in kwargs:
            if key not in b.keyword:
                what = "positional-only" if key in b.positional_only else "unexpected"
                raise ActivityInputError(f"activity {self.name!r}: {what} keyword argument {key!r}")
            if key in given_pos:
                raise ActivityInputError(
                    f"activity {self.name!r}: multiple values for argument {key!r}"
                )
        for name in b.required:
            if name not in kwargs and name not in given_pos:
                raise ActivityInputError(
                    f"activity {self.name!r}: missing required argument {name!r}"
                )
        if not checks:
            return args, kwargs
        new_args = list(args)
        for i, name in enumerate(given_pos):
            check = checks.get(name)
            if check is not None:
                new_args[i] = self._check(check, name, args[i])
        new_kwargs = dict(kwargs)
        for name, value in kwargs.items():
            check = checks.get(name)
            if check is not None:
                new_kwargs[name] = self._check(check, name, value)
        return tuple(new_args), new_kwargs

    def _validate_with_bind(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        import inspect  # lazily: see the module docstring

        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as e:
            raise ActivityInputError(f"activity {self.name!r}: {e}") from None
        checks = self._checks
        params = self._signature.parameters
        for name, value in bound.arguments.items():
            check = checks.get(name)
            if check is None:
                continue
            kind = params[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[name] = tuple(self._check(check, name, v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._check(check, k, v) for k, v in value.items()}
            else:
                bound.arguments[name] = self._check(check, name, value)
        return tuple(bound.args), dict(bound.kwargs)

    def _check(self, check: _Check, name: str, value: Any) -> Any:
        try:
            return check(value)
        # pydantic.ValidationError is a ValueError: caught here without importing pydantic.
        except (TypeError, ValueError) as e:
            raise ActivityInputError(
                f"activity {self.name!r}: invalid value for parameter {name!r}: {e}"
            ) from None

    def checking_each_result_of(self, target: ActivityDefinition) -> ActivityDefinition:
        """This definition, whose result (a list) is checked item by item against ``target``'s
        return annotation: a chunk of a map, whose runner returns one result per item."""
        if target._result_check is not None:
            self.__dict__["_result_check"] = _EachResult(target)
        return self

    def validate_result(self, value: Any) -> Any:
        """Check a result against the return annotation; returns it (coerced).

        A mismatch is a non-retryable ``ApplicationError`` of type ``ResultValidationError``.
        """
        check = self._result_check
        if check is None:
            return value
        try:
            return check(value)
        except ApplicationError:  # an item's check of a chunk: already says what failed
            raise
        # pydantic.ValidationError is a ValueError; a user's validator may raise anything
        except Exception as e:
            raise ApplicationError(
                f"activity {self.name!r} returned an invalid result: {safe_str(e)}",
                type="ResultValidationError",
                non_retryable=True,
            ) from None


# -- registry ----------------------------------------------------------------------------------

_registry: dict[str, ActivityDefinition] = {}
_registry_lock = threading.Lock()


def _register(defn: ActivityDefinition) -> None:
    with _registry_lock:
        existing = _registry.get(defn.name)
        if existing is not None and (existing.module, existing.qualname) != (
            defn.module,
            defn.qualname,
        ):
            raise ActivityDefinitionError(
                f"activity name {defn.name!r} of {defn.module}.{defn.qualname} is already "
                f"used by {existing.module}.{existing.qualname}; pass a different name="
            )
        # A reloaded module may rename its activity: drop the stale name of this function.
        for name, other in list(_registry.items()):
            if (other.module, other.qualname) == (defn.module, defn.qualname):
                del _registry[name]
        _registry[defn.name] = defn


def lookup(name: str) -> ActivityDefinition | None:
    """The definition registered under ``name`` in this process, or None."""
    return _registry.get(name)


def get_definition(obj: Callable[..., Any] | str | ActivityDefinition) -> ActivityDefinition:
    """The definition of a decorated function or of a registered name."""
    if isinstance(obj, ActivityDefinition):
        return obj
    if isinstance(obj, str):
        defn = _registry.get(obj)
        if defn is None:
            known = ", ".join(sorted(_registry)) or "none"
            raise ActivityInputError(
                f"unknown activity name {obj!r} (registered in this process: {known}); "
                "import the module that defines it"
            )
        return defn
    defn = getattr(obj, "__activity_definition__", None)
    if not isinstance(defn, ActivityDefinition):
        raise ActivityInputError(f"{safe_repr(obj)} is not an activity; decorate it with @activity")
    return defn


def activities_in_module(module: types.ModuleType | str) -> list[ActivityDefinition]:
    """Every activity defined in ``module`` (a module or a dotted name, imported if needed)."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    with _registry_lock:
        return [d for d in _registry.values() if d.module == mod.__name__]


def _load_definition(module: str, qualname: str) -> ActivityDefinition:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return get_definition(obj)


# -- the decorator -----------------------------------------------------------------------------


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


def _provided(defn: ActivityDefinition, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Names the caller supplied, so injection never overrides them."""
    if not args:
        return kwargs
    return {*defn._binder.positional[: len(args)], *kwargs}


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
                        defn, args, kwargs, _context.get_sticky_worker_session()
                    )
                cache = default_resource_cache()
            else:
                cache = ctx.resources
            if defn.depends_params():
                injected = await cache.aresolve(defn, _provided(defn, args, kwargs))
                kwargs = {**injected, **kwargs}
            return await fn(*args, **kwargs)

        wrapper: Callable[..., Any] = async_wrapper
    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            if defn.depends_params():
                ctx = _context._current_activity.get()
                cache = default_resource_cache() if ctx is None else ctx.resources
                injected = cache.resolve(defn, _provided(defn, args, kwargs))
                kwargs = {**injected, **kwargs}
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
# Temporal know an activity by its name).
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
    defn = _with_options(get_definition(target), overrides)
    if isinstance(target, str | ActivityDefinition):
        return defn
    return _wrap(defn)


def _with_options(defn: ActivityDefinition, overrides: dict[str, Any]) -> ActivityDefinition:
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
    return copy
