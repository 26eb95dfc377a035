"""A mistyped or out-of-range option fails at once, with an error a user can act on."""

from __future__ import annotations

import pytest

from pool import Pool
from sdk import activity
from sdk._decorator import ACTIVITY_OPTIONS


def test_unknown_activity_option_names_it_and_lists_the_valid_ones() -> None:
    with pytest.raises(TypeError) as info:

        @activity(timeout=5)  # type: ignore[call-overload]
        def f() -> None: ...

    text = str(info.value)
    assert "'timeout'" in text
    assert "did you mean start_to_close_timeout or heartbeat_timeout" in text
    assert all(option in text for option in ACTIVITY_OPTIONS)
    assert "_ActivityDecorator" not in text and "__call__" not in text


def test_unknown_activity_options_with_a_function_too() -> None:
    def g() -> None: ...

    with pytest.raises(TypeError, match="unknown options 'max_retries', 'sticky'"):
        activity(g, sticky=True, max_retries=3)  # type: ignore[call-overload]


def test_activity_option_names_match_the_decorator() -> None:
    import inspect

    params = inspect.signature(type(activity).__call__).parameters
    keyword = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    assert tuple(keyword) == ACTIVITY_OPTIONS


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "4", "none"])
def test_thread_limit_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match=r"thread_limit must be an int >= 1.*got"):
        Pool(thread_limit=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [1, 3, "auto", None])
def test_thread_limit_accepts_ints_auto_and_none(good: object) -> None:
    Pool(thread_limit=good)  # type: ignore[arg-type]  # (not entered: no process starts)
