"""``import sdk`` (which every worker process does) loads neither pydantic nor asyncio.

Each check runs in a fresh interpreter: this test process has both modules imported already.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pydantic

# Run before each snippet: ``loaded()`` lists the modules that must stay unloaded.
_PRELUDE = """
import sys


def loaded():
    return sorted(
        name
        for name in sys.modules
        if name.split(".")[0] in ("pydantic", "pydantic_core", "asyncio")
    )
"""


def _run(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_define_and_call_do_not_load_pydantic_or_asyncio() -> None:
    out = _run(
        """
        import sdk

        assert loaded() == [], ("import sdk", loaded())

        @sdk.activity(retry_policy_max_attempts=3, start_to_close_timeout=10)
        def add(a: int, b: int = 1) -> int:
            return a + b

        @sdk.activity
        async def fetch(url: str) -> bytes:
            return b""

        def make_resource() -> dict:
            return {"n": 1}

        @sdk.activity
        def uses_resource(x: int, res: dict = sdk.Depends(make_resource)) -> int:
            return x + res["n"]

        assert loaded() == [], ("decorate", loaded())
        assert add(2, 3) == 5
        assert add(a=2) == 3
        assert uses_resource(1) == 2  # Depends injection, a positional argument given
        defn = sdk.get_definition(add)
        assert defn.retry_max_attempts == 3 and defn.start_to_close_timeout == 10.0
        assert sdk.get_definition(fetch).is_async
        with sdk.run_activities_locally():
            pass
        assert loaded() == [], ("plain call", loaded())
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_decorator_validates_options_without_pydantic() -> None:
    out = _run(
        """
        import sdk

        try:
            @sdk.activity(start_to_close_timeout=-1)
            def bad(a: int) -> int:
                return a
        except sdk.ActivityDefinitionError as e:
            assert "start_to_close_timeout" in str(e), e
        else:
            raise AssertionError("no ActivityDefinitionError")
        assert loaded() == [], loaded()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_validation_imports_pydantic_on_first_use() -> None:
    out = _run(
        """
        import sdk

        @sdk.activity
        def double(n: int) -> int:
            return 2 * n

        defn = sdk.get_definition(double)
        assert defn.validate_args(("3",), {}) == ((3,), {})
        assert "pydantic" in sys.modules
        try:
            defn.validate_args(("three",), {})
        except sdk.ActivityInputError as e:
            assert "parameter 'n'" in str(e) and "int" in str(e), e
        else:
            raise AssertionError("no ActivityInputError")
        try:
            defn.validate_result("x")
        except sdk.ApplicationError as e:
            assert e.type == "ResultValidationError" and e.non_retryable, e
        else:
            raise AssertionError("no ApplicationError")
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_validation_error_is_a_value_error() -> None:
    # sdk catches pydantic's errors as ValueError so that it need not import pydantic to catch.
    assert issubclass(pydantic.ValidationError, ValueError)


def test_defining_an_activity_loads_only_what_a_worker_needs() -> None:
    # What a worker does at start-up: import the sdk's core, import a module that defines
    # activities. None of these may load (each is imported where it is first needed).
    out = _run(
        """
        from sdk import _context
        from sdk._definition import ActivityDefinition
        from sdk._depends import ResourceCache
        from sdk._errors import ApplicationError
        from sdk import Depends, activity

        @activity(start_to_close_timeout=10, heartbeat_timeout=2.5)
        def add(a: int, b: int = 1) -> int:
            return a + b

        @activity(rate_limit=None, sticky_to_worker=False)
        def uses(res: dict = Depends(dict)):
            return res

        assert add(2, 3) == 5 and uses() == {}
        ApplicationError("no", next_retry_delay=1.5)
        lazy = {"logging", "uuid", "datetime", "math", "sdk._local", "sdk._retry"}
        print(" ".join(sorted(lazy & set(sys.modules))) or "ok")
        """
    )
    assert out.strip() == "ok"


def test_lazily_loaded_parts_still_work() -> None:
    out = _run(
        """
        from datetime import timedelta

        import sdk
        from sdk._decorator import DEFAULT_START_TO_CLOSE

        @sdk.activity(heartbeat_timeout=timedelta(seconds=2))
        def f():
            return 1

        defn = sdk.get_definition(f)
        assert defn.start_to_close_timeout == DEFAULT_START_TO_CLOSE == 300.0
        assert defn.heartbeat_timeout == 2.0
        assert sdk.ApplicationError(next_retry_delay=timedelta(seconds=3)).next_retry_delay == 3.0
        assert defn.retry_policy(sdk.RetryPolicy()).maximum_attempts == 3
        assert len(sdk.StickyWorkerSession().session_id) == 32
        assert "RetryPolicy" in dir(sdk) and sdk.run_activities_locally is not None
        print("ok")
        """
    )
    assert out.strip() == "ok"
