"""A fresh worker imports the protocol and the sdk, never the supervisor, uvloop or psutil."""

from __future__ import annotations

import pytest

from pool import Pool
from tests.integration.activities import imported_modules

pytestmark = pytest.mark.timeout(30)


def test_worker_does_not_import_supervisor_code():
    with Pool([imported_modules], workers=1) as pool:
        mods = set(pool.run(imported_modules))
    assert "pool._worker" in mods and "pool._protocol" in mods
    for heavy in ("uvloop", "psutil", "pool._supervisor", "pool._scheduler", "pool._pool"):
        assert heavy not in mods, heavy
