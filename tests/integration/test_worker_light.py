"""A fresh worker imports what running an activity needs, and nothing else.

Never the supervisor, uvloop or psutil; and none of the modules that used to make its start-up
slow (logging, uuid, datetime, pathlib, traceback...): sdk and the worker import them where they
are used, so a worker whose activities never need them never pays for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pool import Pool
from tests.integration.activities import imported_modules
from tests.integration.worker_light_activities import loaded_modules, typed_loaded_modules

pytestmark = pytest.mark.timeout(30)

# Loaded on first use only: sdk/__init__.py, sdk/_context.py, sdk/_depends.py, sdk/_errors.py,
# sdk/_definition.py and pool/_worker.py import them where they are needed.
LAZY = {
    "logging",  # sdk: only to report a failing teardown or session callback
    "pool._worker_log",  # worker: forwards records once something has imported logging
    "uuid",  # sdk: only to name a new sticky session (in the caller, not the worker)
    "platform",  # imported by uuid
    "datetime",  # sdk: only when a timedelta is given (then the caller has imported it)
    "_datetime",
    "traceback",  # worker: only to format a failure
    "textwrap",  # imported by traceback
    "importlib.util",  # worker: only to run the supervisor's __main__ as __mp_main__
    "sdk._local",  # run_activities_locally(): never used in a worker
    "sdk._retry",  # RetryPolicy: the supervisor's business
    "math",  # an extension module loaded from disk; sdk needs only float("inf")
}


# Never imported by the fork server nor by a worker: they cost ~15 ms of a worker's start
# (typing, with re, enum, contextlib; dataclasses, with inspect, ast, dis, tokenize), and the
# worker's code has what it needs without them (sdk._record, pool._protocol.Kind, _pickle,
# _signal). A user's activity module may import them, of course: not these tests'.
HEAVY = ("typing", "dataclasses", "inspect", "ast", "dis", "tokenize", "re", "enum")
ROOT = Path(__file__).resolve().parents[2]

# Imports ``target`` in a fresh interpreter and prints, as JSON, which module first imported each
# of ``heavy`` (the innermost frame that is not the import system's).
_WHO_IMPORTS = """
import sys

heavy = set(HEAVY)
importers = {}


class Watch:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in heavy and name not in importers:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):
                frame = frame.f_back
            importers[name] = frame.f_globals.get("__name__") if frame else None
        return None


sys.meta_path.insert(0, Watch)
import TARGET

loaded = sorted(heavy & set(sys.modules))
import json  # only now: json imports re

print(json.dumps({"importers": importers, "loaded": loaded}))
"""


def _who_imports(target: str) -> tuple[dict[str, str | None], set[str]]:
    code = _WHO_IMPORTS.replace("HEAVY", repr(HEAVY)).replace("TARGET", target)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["importers"], set(got["loaded"])


def _startup_modules() -> set[str]:
    """What this interpreter imports before running any code (site, sitecustomize...)."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


@contextlib.contextmanager
def _fresh_worker_pool(module: object) -> Iterator[Pool]:
    """A default pool: its fork server is a fresh interpreter (with ``start_method="fork"`` a
    worker would have this process's modules, by design)."""
    with Pool([module], workers=1) as pool:
        assert pool._sup is not None and pool._sup.spawner.forkserver_pid() is not None
        assert not pool._sup.spawner.forked_caller()
        yield pool


def test_worker_does_not_import_supervisor_code():
    with _fresh_worker_pool(imported_modules) as pool:
        mods = set(pool.run(imported_modules))
    assert "pool._worker" in mods and "pool._protocol" in mods
    for heavy in ("uvloop", "psutil", "pool._supervisor", "pool._scheduler", "pool._pool"):
        assert heavy not in mods, heavy


def test_worker_loads_no_module_it_does_not_need():
    with _fresh_worker_pool(loaded_modules) as pool:
        mods = set(pool.run(loaded_modules))
    assert {"pool._worker", "sdk._definition", loaded_modules.__module__} <= mods
    unexpected = sorted((LAZY - _startup_modules()) & mods)
    assert not unexpected, f"a worker imported {unexpected} at start-up or to run an activity"


def test_worker_running_a_typed_activity_needs_no_pydantic():
    # the caller checks arguments and results: a typed activity costs a fresh worker nothing more
    with _fresh_worker_pool(loaded_modules) as pool:
        pool.run(typed_loaded_modules, 1)
        list(pool.map(typed_loaded_modules, [1, 2, 3], chunksize=2))  # chunks: the same
        mods = set(pool.run(typed_loaded_modules, 2))  # after typed results went back
    assert "pool._worker" in mods
    unexpected = sorted(({"pydantic", "pydantic_core", *HEAVY} - _startup_modules()) & mods)
    assert not unexpected, f"a worker imported {unexpected} to run a typed activity"


def test_forkserver_imports_no_heavy_stdlib_module():
    importers, loaded = _who_imports("pool._forkserver")
    loaded -= _startup_modules()
    unexpected = {name: importers.get(name) for name in loaded}
    assert not unexpected, f"import pool._forkserver loaded {unexpected} (module: importer)"


def test_worker_module_imports_no_heavy_stdlib_module():
    # what a spawned worker imports before it runs anything (WORKER_BOOT)
    importers, loaded = _who_imports("pool._worker")
    unexpected = {name: importers.get(name) for name in loaded - _startup_modules()}
    assert not unexpected, f"import pool._worker loaded {unexpected} (module: importer)"


def test_spawned_worker_running_an_activity_imports_no_heavy_stdlib_module():
    # spawned: a fresh interpreter, not a fork of a process that has these modules already
    with Pool([loaded_modules], workers=1, start_method="spawn") as pool:
        mods = set(pool.run(loaded_modules))
    assert {"pool._worker", "sdk._definition", loaded_modules.__module__} <= mods
    unexpected = sorted((set(HEAVY) - _startup_modules()) & mods)
    assert not unexpected, f"a spawned worker imported {unexpected} to start or run an activity"
