"""Fault injection (``Pool.inject_fault``): a test feature, kept off the path of other calls.

The rules belong to the supervisor, which asks :meth:`FaultRules.match` when it sends an
attempt: a rule's count spans every worker, and ``inject_fault`` may add one at any time (it
reaches the loop thread in order with calls). A matched fault travels in the attempt's RUN
metadata and the worker misbehaves as asked (``pool._worker``); the RUN of a call that no rule
matches carries nothing of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["hang", "crash", "exit", "raise", "oom"]
FAULT_KINDS: tuple[str, ...] = ("hang", "crash", "exit", "raise", "oom")


@dataclass(eq=False)
class FaultRule:
    """Make attempt ``attempt`` (None: every attempt) of activity ``name`` misbehave."""

    name: str
    attempt: int | None
    kind: str  # one of FAULT_KINDS
    arg: Any  # exit: the code; raise: the exception; oom: bytes to allocate
    remaining: int | None  # None: forever

    @classmethod
    def make(
        cls,
        name: str,
        kind: str,
        *,
        attempt: int | None,
        times: int | None,
        exit_code: int,
        exception: BaseException | None,
        memory: int,
    ) -> FaultRule:
        """The rule ``Pool.inject_fault`` asks for; ``ValueError`` if it makes no sense."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}")
        if kind == "raise" and not isinstance(exception, BaseException):
            raise ValueError("fault='raise' needs exception=<an exception instance>")
        if attempt is not None and attempt < 1:
            raise ValueError("attempt is 1-based")
        arg: Any = {"exit": exit_code, "raise": exception, "oom": memory}.get(kind)
        return cls(name, attempt, kind, arg, times)


class FaultRules:
    """The rules in force, by activity name. Loop thread only."""

    __slots__ = ("_by_name",)

    def __init__(self) -> None:
        self._by_name: dict[str, list[FaultRule]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def add(self, rule: FaultRule) -> None:
        self._by_name.setdefault(rule.name, []).append(rule)

    def clear(self) -> None:
        self._by_name.clear()

    def match(self, name: str, attempt: int) -> tuple[str, Any] | None:
        """The fault for this attempt, as ``(kind, arg)``, using up one of its rule's count."""
        rules = self._by_name.get(name)
        if not rules:
            return None
        for rule in rules:
            if rule.attempt is None or rule.attempt == attempt:
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        rules.remove(rule)
                        if not rules:
                            del self._by_name[name]
                return (rule.kind, rule.arg)
        return None
