import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from sdk import Depends, activity, get_definition
from sdk._depends import ResourceCache

EVENTS: list[str] = []


def dep_plain() -> str:
    EVENTS.append("make plain")
    return "plain"


async def dep_async() -> str:
    EVENTS.append("make async")
    return "async"


def dep_gen() -> Iterator[str]:
    EVENTS.append("make gen")
    yield "gen"
    EVENTS.append("close gen")


async def dep_agen() -> AsyncIterator[str]:
    EVENTS.append("make agen")
    yield "agen"
    EVENTS.append("close agen")


@contextlib.contextmanager
def _cm() -> Iterator[str]:
    EVENTS.append("enter cm")
    yield "cm"
    EVENTS.append("exit cm")


def dep_cm() -> contextlib.AbstractContextManager[str]:
    return _cm()


@contextlib.asynccontextmanager
async def _acm() -> AsyncIterator[str]:
    EVENTS.append("enter acm")
    yield "acm"
    EVENTS.append("exit acm")


def dep_acm() -> contextlib.AbstractAsyncContextManager[str]:
    return _acm()


def dep_bad_teardown() -> Iterator[str]:
    yield "bad"
    raise RuntimeError("teardown failed")


@activity
def dep_all(
    x: int,
    a: str = Depends(dep_plain),
    b: str = Depends(dep_async),
    c: str = Depends(dep_gen),
    d: str = Depends(dep_agen),
    e: str = Depends(dep_cm),
    f: str = Depends(dep_acm),
) -> str:
    return ",".join((a, b, c, d, e, f))


@activity
def dep_shared(p: str = Depends(dep_plain), g: str = Depends(dep_gen)) -> str:
    return p + g


@activity
def dep_failing(v: str = Depends(dep_bad_teardown), p: str = Depends(dep_plain)) -> str:
    return v


EXPECTED = {"a": "plain", "b": "async", "c": "gen", "d": "agen", "e": "cm", "f": "acm"}
MADE = ["make plain", "make async", "make gen", "make agen", "enter cm", "enter acm"]
CLOSED = ["exit acm", "exit cm", "close agen", "close gen"]


def test_depends_requires_callable() -> None:
    with pytest.raises(TypeError):
        Depends(3)  # type: ignore[arg-type]


def _deps(fn: Any) -> dict[str, Any]:
    """What the cache resolves: an activity's Depends parameters, by name."""
    return get_definition(fn).depends_params()


def test_sync_resolve_each_kind_once_and_teardown_in_reverse() -> None:
    EVENTS.clear()
    cache = ResourceCache()
    defn = get_definition(dep_all)
    assert cache.resolve(defn.depends_params()) == EXPECTED
    assert cache.resolve(defn.depends_params()) == EXPECTED
    assert cache.resolve(_deps(dep_shared)) == {"p": "plain", "g": "gen"}
    assert EVENTS == MADE
    cache.close()
    assert EVENTS == MADE + CLOSED
    cache.close()
    assert EVENTS == MADE + CLOSED


def test_provided_names_are_not_made() -> None:
    EVENTS.clear()
    cache = ResourceCache()
    assert cache.resolve(_deps(dep_shared), provided={"g"}) == {"p": "plain"}
    assert EVENTS == ["make plain"]
    cache.close()


def test_custom_run_coroutine() -> None:
    EVENTS.clear()
    loop = asyncio.new_event_loop()
    try:
        cache = ResourceCache(run_coroutine=loop.run_until_complete)
        assert cache.resolve(_deps(dep_all))["d"] == "agen"
        cache.close()
    finally:
        loop.close()
    assert EVENTS == MADE + CLOSED


def test_async_resolve_and_close() -> None:
    EVENTS.clear()
    cache = ResourceCache()

    async def main() -> None:
        assert await cache.aresolve(_deps(dep_all)) == EXPECTED
        assert await cache.aresolve(_deps(dep_all)) == EXPECTED
        await cache.aclose()

    asyncio.run(main())
    assert EVENTS == MADE + CLOSED


def test_sync_resolve_of_async_factory_inside_loop_is_clear_error() -> None:
    cache = ResourceCache()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="running event loop"):
            cache.resolve(_deps(dep_all))

    asyncio.run(main())
    cache.close()


def test_teardown_errors_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    EVENTS.clear()
    cache = ResourceCache()
    cache.resolve(_deps(dep_failing))
    with caplog.at_level(logging.ERROR):
        cache.close()
    assert "teardown" in caplog.text
    assert EVENTS == ["make plain"]


def test_wrapper_injects_and_caller_overrides() -> None:
    assert dep_shared(g="mine") == "plainmine"
    assert dep_shared("first") == "firstgen"
