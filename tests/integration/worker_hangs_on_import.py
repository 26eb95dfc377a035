"""Imports fine in the supervisor; hangs forever when a worker preloads it."""

import sys
import time

from sdk import activity


@activity
def never_reached() -> int:
    return 1


if getattr(sys.modules.get("pool._worker"), "IN_WORKER", False):  # a worker, not a test
    time.sleep(3600)
