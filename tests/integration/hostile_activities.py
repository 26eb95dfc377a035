"""Activities whose exceptions and heartbeat details fight being formatted (module level:
workers import them)."""

from __future__ import annotations

import os
import threading

from sdk import activity

FAST = {"retry_policy_initial_interval": 0.001}


class BadStr(Exception):
    """Pickles and unpickles fine; only its ``str()`` raises."""

    def __str__(self) -> str:
        raise ValueError("no str for you")


class BadStrAndRepr(BadStr):
    def __repr__(self) -> str:
        raise ValueError("no repr for you")


class UnpicklableBadStr(BadStr):
    """Cannot cross the pipe (a lock), and cannot be printed either."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


class BadRepr:
    """Heartbeat details that neither pickle nor have a repr."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@activity(name="hostile.pid_of")
def pid_of() -> int:
    return os.getpid()


@activity(retry_policy_max_attempts=2, **FAST)
def raise_bad_str(kind: str) -> None:
    raise {"str": BadStr, "repr": BadStrAndRepr, "unpicklable": UnpicklableBadStr}[kind]()


@activity(retry_policy_max_attempts=2, **FAST)
def heartbeat_bad_repr() -> object:
    if activity.info().attempt == 1:
        activity.heartbeat(BadRepr())
        raise RuntimeError("retry me")
    return activity.info().heartbeat_details


class HostileArgument:
    """An argument that cannot be pickled, and whose pickling error cannot be printed."""

    def __reduce__(self) -> object:
        raise BadStrAndRepr()

    def __repr__(self) -> str:
        raise ValueError("no repr for you")


@activity(name="hostile.echo")
def echo(x):
    return x
