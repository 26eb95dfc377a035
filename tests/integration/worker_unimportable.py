"""Imports fine in the supervisor, fails in a worker: the error must reach the call."""

import sys

from sdk import activity


@activity(retry_policy_max_attempts=1)
def cannot_load() -> int:
    return 1


if getattr(sys.modules.get("pool._worker"), "IN_WORKER", False):  # a worker, not a test
    raise ImportError("this module refuses to load in a worker")
