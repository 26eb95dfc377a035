"""The plugin's own tests use pytest's ``pytester`` to run pytest inside a test."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psutil
import pytest

from pool.pytest_plugin import open_pool_worker_pids


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def pytest_configure(config: pytest.Config) -> None:
    # what `pytest_plugins = ["pytester"]` would do, which only the top-level conftest may say
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/conftest.py's check, minus the session pool: it outlives the test that started it."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        keep = before | open_pool_worker_pids()
        left = {
            pid: p
            for pid, p in _children().items()
            if pid not in keep and p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        }
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        for p in left.values():
            p.kill()
        pytest.fail(f"processes left behind by {request.node.name}: {sorted(left)}")
