"""Shared fixtures: every test that starts processes fails if one is left behind."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from pool._tree import marked


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _escaped(children: dict[int, psutil.Process]) -> dict[int, psutil.Process]:
    """Processes of this process's pools (by the marker in their environment) that are no
    longer among our descendants: adopted by init after escaping their pool."""
    mine = f"{os.getpid()}."
    out = {}
    for pid, pool_id in marked().items():
        if pool_id.startswith(mine) and pid not in children:
            try:
                out[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
    return out


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def check_no_leaked_processes(
    request: pytest.FixtureRequest, exempt: Callable[[], set[int]] = set
) -> Iterator[None]:
    """Around one test: fail it if a process it started (and not in ``exempt()``) is still alive
    shortly after it ends, or one that a pool of this process started has escaped to init;
    kill what is left."""
    before = set(_children())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        keep = before | exempt()
        children = _children()
        left = {pid: p for pid, p in children.items() if pid not in keep}
        left.update(_escaped(children))
        left = {pid: p for pid, p in left.items() if _running(p)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if left:
        desc = ", ".join(f"{pid} {' '.join(_cmdline(p)[:4])}" for pid, p in left.items())
        for p in left.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        pytest.fail(f"processes left behind by {request.node.name}: {desc}")


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return ["?"]


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
