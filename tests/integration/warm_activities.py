"""Standard modules the fork server does not have (test_forkserver.py: warming).

``decimal`` is imported here directly, which the supervisor sees before the first fork;
``fractions`` only through another module, which the first worker reports at READY.
"""

from __future__ import annotations

import os
import sys

PRELOADED = {name: name in sys.modules for name in ("decimal", "fractions")}  # before ours

import decimal  # noqa: E402,F401  (the point: a stdlib module an activity module needs)

from sdk import activity  # noqa: E402
from tests.integration import warm_helper  # noqa: E402,F401  (it imports fractions)


@activity
def preloaded() -> tuple[int, dict[str, bool]]:
    return os.getpid(), PRELOADED
