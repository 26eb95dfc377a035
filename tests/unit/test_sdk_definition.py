import asyncio
import inspect
import pickle
import sys
import types
from dataclasses import FrozenInstanceError
from datetime import timedelta

import numpy as np
import pydantic
import pytest

import sdk
from sdk import (
    ActivityDefinition,
    ActivityDefinitionError,
    ActivityInputError,
    ApplicationError,
    Depends,
    RateLimit,
    RetryPolicy,
    activity,
    get_definition,
)
from sdk._definition import activities_in_module


class Point(pydantic.BaseModel):
    x: int
    y: int


class Custom:
    pass


def make_thing() -> str:
    return "thing"


@activity
async def defn_bare_async(a: int, b: int = 2) -> int:
    return a + b


@activity
def defn_bare_sync(a: int) -> int:
    return a * 10


@activity(
    name="defn_custom_name",
    start_to_close_timeout=timedelta(seconds=7),
    heartbeat_timeout=1.5,
    schedule_to_close_timeout=timedelta(minutes=1),
    retry_policy_max_attempts=5,
    retry_policy_backoff_coefficient=3,
    retry_policy_initial_interval=timedelta(milliseconds=10),
    retry_policy_max_interval=2,
    non_retryable_error_types=(KeyError, "MyError"),
    sticky_to_worker=True,
    rate_limit=RateLimit(1.0, 5),
)
async def defn_full_options(text: str) -> str:
    return text.upper()


@activity()
def defn_empty_parens(x, y=1):  # type: ignore[no-untyped-def]
    return (x, y)


@activity
def defn_typed(n: int, point: Point, items: list[float], c: Custom, arr: np.ndarray) -> dict:
    return {"n": n, "point": point, "items": items, "c": c, "arr": arr}


@activity
def defn_with_depends(x: int, thing: str = Depends(make_thing)) -> str:
    return f"{x}-{thing}"


@activity
def defn_star(*args: int, **kwargs: int) -> int:
    return sum(args) + sum(kwargs.values())


@activity
def defn_posonly(a: int, /, b: int) -> int:
    return a - b


@activity
def defn_returns_int_badly() -> int:
    return "not a number"  # type: ignore[return-value]


@activity
def defn_noop():  # type: ignore[no-untyped-def]
    return None


@activity
def defn_returns_none() -> None:
    return None


class Holder:
    @staticmethod
    @activity(name="defn_in_class")
    def method(x: int) -> int:
        return x


def test_bare_async_keeps_coroutine_function_and_signature() -> None:
    assert inspect.iscoroutinefunction(defn_bare_async)
    assert defn_bare_async.__name__ == "defn_bare_async"
    assert str(inspect.signature(defn_bare_async)) == "(a: int, b: int = 2) -> int"
    assert asyncio.run(defn_bare_async(1)) == 3
    d = get_definition(defn_bare_async)
    assert d.is_async and d.name == "defn_bare_async"
    assert d.module == __name__ and d.qualname == "defn_bare_async"
    assert d.fn is not defn_bare_async and not hasattr(d.fn, "__activity_definition__")


def test_sync_is_plain_function() -> None:
    assert not inspect.iscoroutinefunction(defn_bare_sync)
    assert defn_bare_sync(2) == 20
    assert not get_definition(defn_bare_sync).is_async
    assert defn_empty_parens(1) == (1, 1)


def test_defaults() -> None:
    d = get_definition(defn_bare_sync)
    assert d.start_to_close_timeout == 300.0
    assert d.heartbeat_timeout is None and d.schedule_to_close_timeout is None
    assert d.retry_max_attempts is None and d.retry_backoff_coefficient is None
    assert d.non_retryable_error_types == () and d.sticky_to_worker is False
    assert d.rate_limit is None
    p = d.retry_policy(RetryPolicy())
    assert (p.maximum_attempts, p.backoff_coefficient, p.initial_interval) == (3, 2.0, 1.0)
    assert p.delay(50) == 100.0


def test_full_options_stored_in_seconds() -> None:
    d = get_definition("defn_custom_name")
    assert d.fn is get_definition(defn_full_options).fn
    assert d.start_to_close_timeout == 7.0
    assert d.heartbeat_timeout == 1.5
    assert d.schedule_to_close_timeout == 60.0
    assert d.retry_max_attempts == 5
    assert d.retry_backoff_coefficient == 3.0
    assert d.retry_initial_interval == 0.01
    assert d.retry_max_interval == 2.0
    assert d.non_retryable_error_types == ("KeyError", "MyError")
    assert d.sticky_to_worker is True
    assert d.rate_limit == RateLimit(1.0, 5)
    with pytest.raises(FrozenInstanceError):
        d.name = "x"  # type: ignore[misc]


def test_retry_policy_override_and_merge() -> None:
    d = get_definition(defn_full_options)
    p = d.retry_policy(RetryPolicy(maximum_attempts=9, non_retryable_error_types=("Base",)))
    assert p.maximum_attempts == 5
    assert p.backoff_coefficient == 3.0
    assert p.initial_interval == 0.01
    assert p.maximum_interval == 2.0
    assert p.non_retryable_error_types == ("Base", "KeyError", "MyError")


def test_retry_policy_conflicting_intervals_give_way() -> None:
    d = get_definition(defn_full_options)
    default = RetryPolicy(initial_interval=5.0, maximum_interval=10.0)
    p = d.retry_policy(default)
    assert p.initial_interval == 0.01 and p.maximum_interval == 2.0


def _registered(name: str) -> ActivityDefinition | None:
    """The definition registered under ``name``, or None."""
    try:
        return get_definition(name)
    except ActivityInputError:
        return None


def test_registry_and_lookup() -> None:
    assert _registered("defn_bare_sync") is get_definition(defn_bare_sync)
    assert _registered("no_such_activity_xyz") is None
    assert get_definition("defn_in_class").qualname == "Holder.method"
    with pytest.raises(ActivityInputError, match="unknown activity name 'nope_xyz'"):
        get_definition("nope_xyz")
    with pytest.raises(ActivityInputError, match="not an activity"):
        get_definition(make_thing)


def test_activities_in_module() -> None:
    names = {d.name for d in activities_in_module(__name__)}
    assert {"defn_bare_async", "defn_custom_name", "defn_in_class"} <= names
    assert names == {d.name for d in activities_in_module(sys.modules[__name__])}


def _fresh(source: str, module: str = "sdk_test_generated_mod") -> types.ModuleType:
    mod = types.ModuleType(module)
    exec(compile(source, f"<{module}>", "exec"), mod.__dict__)
    sys.modules[module] = mod
    return mod


def test_redecorating_same_function_replaces_and_duplicate_name_fails() -> None:
    src = "from sdk import activity\n@activity(name='defn_reloadable')\ndef f(x):\n    return x\n"
    first = _fresh(src)
    second = _fresh(src)  # a module reload
    assert get_definition("defn_reloadable").fn is get_definition(second.f).fn
    assert get_definition(first.f) is not get_definition(second.f)
    with pytest.raises(ActivityDefinitionError, match="already used"):
        _fresh(src, module="sdk_test_other_mod")
    with pytest.raises(ActivityDefinitionError, match="defn_bare_sync"):
        _fresh(
            "from sdk import activity\n@activity\ndef defn_bare_sync():\n    pass\n",
            module="sdk_test_third_mod",
        )
    # a renamed activity in a reloaded module drops its old name
    _fresh("from sdk import activity\n@activity(name='defn_renamed')\ndef f(x):\n    return x\n")
    assert _registered("defn_reloadable") is None and _registered("defn_renamed") is not None


def test_definition_pickles_by_reference() -> None:
    d = get_definition(defn_typed)
    assert pickle.loads(pickle.dumps(d)) is d
    assert pickle.loads(pickle.dumps(defn_typed)) is defn_typed


def test_nested_function_rejected() -> None:
    with pytest.raises(ActivityDefinitionError, match=r"inner.*module level"):

        @activity
        def inner() -> None:
            pass


@pytest.mark.parametrize(
    "target",
    [lambda: 1, Custom, len, np.add],
)
def test_non_functions_rejected(target: object) -> None:
    with pytest.raises(ActivityDefinitionError):
        activity(target)  # type: ignore[call-overload]


def test_generators_rejected() -> None:
    src = "from sdk import activity\n@activity\ndef g():\n    yield 1\n"
    with pytest.raises(ActivityDefinitionError, match="generator"):
        _fresh(src, module="sdk_test_gen_mod")
    src = "from sdk import activity\n@activity\nasync def g():\n    yield 1\n"
    with pytest.raises(ActivityDefinitionError, match="generator"):
        _fresh(src, module="sdk_test_agen_mod")


def test_double_decoration_rejected() -> None:
    with pytest.raises(ActivityDefinitionError, match="already an activity"):
        activity(defn_bare_sync)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("name", ""),
        ("name", "   "),
        ("name", 3),
        ("start_to_close_timeout", 0),
        ("start_to_close_timeout", -1.0),
        ("start_to_close_timeout", timedelta(0)),
        ("start_to_close_timeout", "5s"),
        ("heartbeat_timeout", 0),
        ("schedule_to_close_timeout", timedelta(seconds=-1)),
        ("retry_policy_max_attempts", -1),
        ("retry_policy_max_attempts", 2.0),
        ("retry_policy_max_attempts", True),
        ("retry_policy_backoff_coefficient", 0.5),
        ("retry_policy_initial_interval", 0),
        ("retry_policy_max_interval", -3),
        ("non_retryable_error_types", (42,)),
        ("non_retryable_error_types", (int,)),
        ("sticky_to_worker", 1),
        ("rate_limit", (1, 2)),
    ],
)
def test_option_validation(option: str, value: object) -> None:
    with pytest.raises(ActivityDefinitionError, match=f"make_thing|{option}"):
        activity(**{option: value})(make_thing)  # type: ignore[call-overload]
    assert not hasattr(make_thing, "__activity_definition__")


def test_max_interval_below_initial_rejected() -> None:
    with pytest.raises(ActivityDefinitionError, match="retry_policy_max_interval"):
        activity(retry_policy_initial_interval=2, retry_policy_max_interval=1)(make_thing)


def test_none_timeouts_allowed_and_single_error_type() -> None:
    src = (
        "from sdk import activity\n"
        "@activity(start_to_close_timeout=None, non_retryable_error_types=KeyError,"
        " retry_policy_max_attempts=0)\n"
        "def f():\n    pass\n"
    )
    mod = _fresh(src, module="sdk_test_none_mod")
    d = get_definition(mod.f)
    assert d.start_to_close_timeout is None
    assert d.non_retryable_error_types == ("KeyError",)
    assert d.retry_policy(RetryPolicy()).maximum_attempts == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"time_window_in_sec": 0, "max_execution": 1},
        {"time_window_in_sec": 1, "max_execution": 0},
        {"time_window_in_sec": 1, "max_execution": 1, "key": 5},
    ],
)
def test_rate_limit_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RateLimit(**kwargs)


# -- validate_args / validate_result -------------------------------------------------------------


def test_validate_args_lax_coercion() -> None:
    d = get_definition(defn_bare_async)
    assert d.validate_args(("3",), {}) == ((3,), {})
    assert d.validate_args((), {"a": "4", "b": 5.0}) == ((), {"a": 4, "b": 5})


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("x",), {}, "parameter 'a'"),
        ((), {}, "missing required argument 'a'"),
        ((1,), {"c": 1}, "unexpected keyword argument 'c'"),
        ((1, 2, 3), {}, "positional"),
        ((1,), {"a": 1}, "multiple values"),
    ],
)
def test_validate_args_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ActivityInputError, match=rf"'defn_bare_async'.*{match}"):
        get_definition(defn_bare_async).validate_args(args, kwargs)


def test_validate_args_models_custom_classes_and_numpy() -> None:
    d = get_definition(defn_typed)
    c = Custom()
    arr = np.arange(3)
    args, kwargs = d.validate_args(
        (1,), {"point": {"x": "1", "y": 2}, "items": ["1.5"], "c": c, "arr": arr}
    )
    assert args == (1,)
    assert kwargs["point"] == Point(x=1, y=2)
    assert kwargs["items"] == [1.5]
    assert kwargs["c"] is c and kwargs["arr"] is arr
    with pytest.raises(ActivityInputError, match="parameter 'c'"):
        d.validate_args((1, Point(x=1, y=1), [], object(), arr), {})
    with pytest.raises(ActivityInputError, match="parameter 'arr'"):
        d.validate_args((1, Point(x=1, y=1), [], c, [1, 2]), {})


def test_unannotated_pass_through() -> None:
    d = get_definition(defn_empty_parens)
    obj = object()
    assert d.validate_args((obj,), {"y": "s"}) == ((obj,), {"y": "s"})
    assert get_definition(defn_noop).validate_args((), {}) == ((), {})


def test_depends_param_not_required_nor_validated() -> None:
    d = get_definition(defn_with_depends)
    assert d.validate_args(("1",), {}) == ((1,), {})
    assert d.validate_args((1,), {"thing": 5}) == ((1,), {"thing": 5})
    assert list(d.depends_params()) == ["thing"]
    assert d.depends_params()["thing"] == Depends(make_thing)
    assert get_definition(defn_bare_sync).depends_params() == {}


def test_var_args_and_positional_only() -> None:
    d = get_definition(defn_star)
    assert d.validate_args(("1", 2), {"k": "3"}) == ((1, 2), {"k": 3})
    p = get_definition(defn_posonly)
    assert p.validate_args(("5",), {"b": "1"}) == ((5,), {"b": 1})
    with pytest.raises(ActivityInputError, match="positional-only"):
        p.validate_args((), {"a": 1, "b": 2})


def test_validate_result() -> None:
    assert get_definition(defn_bare_async).validate_result("5") == 5
    assert get_definition(defn_empty_parens).validate_result(object) is object
    assert get_definition(defn_returns_none).validate_result(None) is None
    with pytest.raises(ApplicationError) as info:
        get_definition(defn_returns_int_badly).validate_result("nope")
    assert info.value.type == "ResultValidationError"
    assert info.value.non_retryable
    assert "defn_returns_int_badly" in str(info.value)
    with pytest.raises(ApplicationError):
        get_definition(defn_returns_none).validate_result(3)


def test_validate_args_is_cheap_for_unannotated_noop() -> None:
    import time

    d = get_definition(defn_noop)
    d.validate_args((), {})
    n = 20_000
    start = time.perf_counter()
    for _ in range(n):
        d.validate_args((), {})
    per_call = (time.perf_counter() - start) / n
    assert per_call < 20e-6  # generous bound for slow CI; typically well under 1 µs


def test_definition_type_exported() -> None:
    assert isinstance(get_definition(defn_noop), ActivityDefinition)
    assert sdk.get_definition is get_definition


def test_not_an_activity_whose_repr_raises_is_an_input_error() -> None:
    class NoRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    with pytest.raises(ActivityInputError, match=r"<repr\(\) of NoRepr failed"):
        get_definition(NoRepr())
