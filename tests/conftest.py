"""Shared fixtures: every test that starts processes fails if one is left behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psutil
import pytest


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def check_no_leaked_processes(
    request: pytest.FixtureRequest, exempt: Callable[[], set[int]] = set
) -> Iterator[None]:
    """Around one test: fail it if a process it started (and not in ``exempt()``) is still alive
    shortly after it ends; kill what is left."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        keep = before | exempt()
        left = {
            pid: p
            for pid, p in _children().items()
            if pid not in keep and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        desc = ", ".join(f"{pid} {' '.join(p.cmdline()[:4])}" for pid, p in left.items())
        for p in left.values():
            p.kill()
        pytest.fail(f"processes left behind by {request.node.name}: {desc}")


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    yield from check_no_leaked_processes(request)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow", action="store_true", help="also run the tests marked slow (long variants)"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long variant, run only with --slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
