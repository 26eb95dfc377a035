"""A fresh worker imports what running an activity needs, and nothing else.

Never the supervisor, uvloop or psutil; and none of the modules that used to make its start-up
slow (logging, uuid, datetime, pathlib, traceback...): sdk and the worker import them where they
are used, so a worker whose activities never need them never pays for them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from pool import Pool
from tests.integration.activities import imported_modules
from tests.integration.worker_light_activities import loaded_modules

pytestmark = pytest.mark.timeout(30)

# Loaded on first use only: sdk/__init__.py, sdk/_context.py, sdk/_depends.py, sdk/_errors.py,
# sdk/_definition.py and pool/_worker.py import them where they are needed.
LAZY = {
    "logging",  # sdk: only to report a failing teardown or session callback
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


def _startup_modules() -> set[str]:
    """What this interpreter imports before running any code (site, sitecustomize...)."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_worker_does_not_import_supervisor_code():
    with Pool([imported_modules], workers=1) as pool:
        mods = set(pool.run(imported_modules))
    assert "pool._worker" in mods and "pool._protocol" in mods
    for heavy in ("uvloop", "psutil", "pool._supervisor", "pool._scheduler", "pool._pool"):
        assert heavy not in mods, heavy


def test_worker_loads_no_module_it_does_not_need():
    with Pool([loaded_modules], workers=1) as pool:
        mods = set(pool.run(loaded_modules))
    assert {"pool._worker", "sdk._definition", loaded_modules.__module__} <= mods
    unexpected = sorted((LAZY - _startup_modules()) & mods)
    assert not unexpected, f"a worker imported {unexpected} at start-up or to run an activity"
