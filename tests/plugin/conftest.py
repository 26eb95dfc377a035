"""The plugin's own tests use pytest's ``pytester`` to run pytest inside a test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pool.pytest_plugin import open_pool_worker_pids
from tests.conftest import check_no_leaked_processes


def pytest_configure(config: pytest.Config) -> None:
    # what `pytest_plugins = ["pytester"]` would do, which only the top-level conftest may say
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture(autouse=True)
def no_leaked_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/conftest.py's check, minus the session pool: it outlives the test that started it."""
    yield from check_no_leaked_processes(request, open_pool_worker_pids)
