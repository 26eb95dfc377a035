"""The frozen :class:`ActivityDefinition`, its argument and result checks, and the registry.

The decorator that makes definitions, and the routing of calls, are in ``sdk._decorator``.

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

from ._depends import Dependency
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
    from collections.abc import Callable
    from typing import Any

    import pydantic

    from ._retry import RetryPolicy


__all__ = [
    "ActivityDefinition",
    "RateLimit",
    "activities_in_module",
    "get_definition",
]

# float('inf') rather than math.inf: math is an extension module, loaded from disk by every worker
_INF = float("inf")


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

    @functools.cached_property
    def positional_names(self) -> tuple[str, ...]:
        """The names of the parameters that may be given positionally, in order."""
        fn = self.fn
        if _plain_function(fn):  # its code says, without a Signature
            code = fn.__code__
            return code.co_varnames[: code.co_argcount]
        return self._binder.positional

    def depends_params(self) -> dict[str, Dependency]:
        """Parameters whose default is ``Depends(...)``, by name (the runtime fills them)."""
        return self._depends

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

    def item_check(self) -> Callable[[Any], Any] | None:
        """A check of one item of a map, as ``validate_args((item,), {})`` checks it: returns
        the item coerced (None: every item passes as it is).

        Binding one positional argument fails or succeeds alike for every item, so with a plain
        signature only the first parameter's type check runs per item.
        """
        binder = self._binder
        first = binder.positional[0] if binder.positional else None
        if not binder.simple or first is None or any(name != first for name in binder.required):
            return lambda item: self.validate_args((item,), {})[0][0]
        check = self._checks.get(first)
        if check is None:
            return None
        return functools.partial(self._check, check, first)

    def _check(self, check: _Check, name: str, value: Any) -> Any:
        try:
            return check(value)
        # pydantic.ValidationError is a ValueError: caught here without importing pydantic.
        except (TypeError, ValueError) as e:
            raise ActivityInputError(
                f"activity {self.name!r}: invalid value for parameter {name!r}: {e}"
            ) from None

    def validate_result(self, value: Any) -> Any:
        """Check a result against the return annotation; returns it (coerced).

        A mismatch is a non-retryable ``ApplicationError`` of type ``ResultValidationError``.
        """
        check = self._result_check
        if check is None:
            return value
        try:
            return check(value)
        # pydantic.ValidationError is a ValueError; a user's validator may raise anything
        except Exception as e:
            raise ApplicationError(
                f"activity {self.name!r} returned an invalid result: {safe_str(e)}",
                type="ResultValidationError",
                non_retryable=True,
            ) from None

    def validate_results(self, values: list[Any]) -> list[Any]:
        """:meth:`validate_result` of each of ``values``: the results of a chunk of a map, one
        per item, each checked as the result of one call is."""
        if self._result_check is None:
            return values
        validate = self.validate_result
        return [validate(v) for v in values]


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
