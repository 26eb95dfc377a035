"""A module whose import takes far longer than its activity's heartbeat timeout (module level:
workers import it, here on the first call since the test's pool does not preload it)."""

from __future__ import annotations

import time

from sdk import activity

time.sleep(0.4)  # user code at import time: a model loaded at module level, say


@activity(heartbeat_timeout=0.1, retry_policy_max_attempts=1, start_to_close_timeout=10)
def beat_after_slow_import(x: int) -> int:
    activity.heartbeat(x)
    return x
