"""Imports fine in the supervisor; hangs forever when a worker preloads it."""

import sys
import time

from sdk import activity


@activity
def never_reached() -> int:
    return 1


if "pool._worker" in sys.modules:
    time.sleep(3600)
