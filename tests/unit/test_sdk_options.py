"""Per-call options: ``sdk.with_options`` gives a frozen copy of a definition with some
``@activity`` options replaced, validated as the decorator validates."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError
from datetime import timedelta

import pytest

import sdk
from sdk import ActivityDefinition, ActivityDefinitionError, activity, get_definition, with_options


@activity(
    start_to_close_timeout=20,
    heartbeat_timeout=2,
    retry_policy_max_attempts=5,
    non_retryable_error_types=[KeyError],
)
def opt_crunch(items: list[int]) -> int:
    return sum(items)


@activity
async def opt_async(x: int) -> int:
    return x + 1


def test_function_gives_function_with_copy_and_same_behaviour() -> None:
    fast = with_options(opt_crunch, retry_policy_max_attempts=1, start_to_close_timeout=0.5)
    assert callable(fast) and fast is not opt_crunch
    copy = get_definition(fast)
    original = get_definition(opt_crunch)
    assert copy is not original
    assert copy.retry_max_attempts == 1
    assert copy.start_to_close_timeout == 0.5
    # every option not given keeps the definition's value
    assert copy.heartbeat_timeout == 2.0
    assert copy.non_retryable_error_types == ("KeyError",)
    assert (copy.name, copy.module, copy.qualname, copy.fn) == (
        original.name,
        original.module,
        original.qualname,
        original.fn,
    )
    assert fast([1, 2, 3]) == 6
    # the registered activity is untouched
    assert get_definition("opt_crunch") is original
    assert original.retry_max_attempts == 5
    assert original.start_to_close_timeout == 20.0


def test_definition_and_name_give_definition() -> None:
    original = get_definition(opt_crunch)
    by_defn = with_options(original, heartbeat_timeout=timedelta(milliseconds=250))
    by_name = with_options("opt_crunch", heartbeat_timeout=0.25)
    via_sdk = sdk.with_options(original, heartbeat_timeout=0.25)
    for copy in (by_defn, by_name, via_sdk):
        assert isinstance(copy, ActivityDefinition)
        assert copy.heartbeat_timeout == 0.25
    assert by_defn == by_name == via_sdk != original


def test_copy_is_frozen_and_pickles_as_the_registered_definition() -> None:
    copy = with_options(get_definition(opt_crunch), retry_policy_max_attempts=1)
    with pytest.raises(FrozenInstanceError):
        copy.retry_max_attempts = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(copy)) is get_definition(opt_crunch)


def test_none_clears_an_option_and_types_replace() -> None:
    copy = with_options(
        "opt_crunch", start_to_close_timeout=None, non_retryable_error_types=("ValueError",)
    )
    assert copy.start_to_close_timeout is None
    assert copy.non_retryable_error_types == ("ValueError",)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"start_to_close_timeout": 0}, "start_to_close_timeout must be > 0"),
        ({"heartbeat_timeout": "1s"}, "heartbeat_timeout must be a timedelta or seconds"),
        ({"retry_policy_max_attempts": -1}, "retry_policy_max_attempts must be an int >= 0"),
        ({"retry_policy_max_attempts": True}, "retry_policy_max_attempts must be an int >= 0"),
        ({"retry_policy_backoff_coefficient": 0.5}, "must be >= 1"),
        (
            {"retry_policy_initial_interval": 5, "retry_policy_max_interval": 1},
            "retry_policy_max_interval (1.0s) must be >=",
        ),
        ({"sticky_to_worker": "yes"}, "sticky_to_worker must be a bool"),
        ({"rate_limit": 3}, "rate_limit must be a RateLimit"),
        ({"non_retryable_error_types": [3]}, "non_retryable_error_types must hold"),
        ({"name": "other"}, "name cannot be changed per call"),
        ({"retries": 1}, "unknown option: retries"),
    ],
)
def test_overrides_are_validated_as_the_decorator_validates(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ActivityDefinitionError, match="'opt_crunch'") as info:
        with_options(opt_crunch, **overrides)
    assert message in str(info.value)


def test_validation_facts_are_shared_not_rebuilt() -> None:
    original = get_definition(opt_crunch)
    original.validate_args(([1],), {})  # builds the checks once
    copy = with_options(original, retry_policy_max_attempts=1)
    assert copy._checks is original._checks
    assert copy.validate_args(([1, "2"],), {}) == (([1, 2],), {})


async def test_async_copy_stays_async() -> None:
    copy = with_options(opt_async, start_to_close_timeout=1)
    assert get_definition(copy).is_async
    assert await copy(1) == 2


def test_not_an_activity() -> None:
    with pytest.raises(sdk.ActivityInputError):
        with_options(len, retry_policy_max_attempts=1)
