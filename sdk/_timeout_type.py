"""``TimeoutType``, the one enum of the sdk, in a module of its own so that ``enum`` loads only
when it is used (by the supervisor, or a caller inspecting a timeout): ``sdk._errors``, which
every worker imports, re-exports it lazily. It is still ``sdk._errors.TimeoutType`` (its
``__module__``), so pickles and documentation name it there.
"""

from __future__ import annotations

import enum


# (str, Enum) rather than StrEnum: the contract pins this base, and members compare equal to
# their plain-string values either way.
class TimeoutType(str, enum.Enum):  # noqa: UP042
    """Which deadline an attempt missed."""

    __module__ = "sdk._errors"

    START_TO_CLOSE = "START_TO_CLOSE"
    HEARTBEAT = "HEARTBEAT"
    SCHEDULE_TO_CLOSE = "SCHEDULE_TO_CLOSE"
