"""Fault rules: matched per attempt, counted across workers, absent from other calls' frames."""

from __future__ import annotations

import pickle

import pytest

from pool._faults import FaultRule, FaultRules
from pool._protocol import RunMeta


def rule(kind: str = "crash", **kw: object) -> FaultRule:
    options: dict = {"attempt": 1, "times": 1, "exit_code": 1, "exception": None, "memory": 1}
    options.update(kw)
    return FaultRule.make("act", kind, **options)


def test_a_rule_matches_its_attempt_and_is_used_up() -> None:
    rules = FaultRules()
    assert not rules
    rules.add(rule(attempt=2, times=2))
    assert rules.match("act", 1) is None and rules.match("other", 2) is None
    assert rules.match("act", 2) == ("crash", None)
    assert rules.match("act", 2) == ("crash", None)
    assert rules.match("act", 2) is None and not rules


def test_attempt_none_matches_every_attempt_until_cleared() -> None:
    rules = FaultRules()
    rules.add(rule("exit", attempt=None, times=None, exit_code=7))
    assert [rules.match("act", n) for n in (1, 2, 3)] == [("exit", 7)] * 3
    rules.clear()
    assert rules.match("act", 4) is None


@pytest.mark.parametrize(
    ("kind", "kw", "message"),
    [
        ("melt", {}, "unknown fault 'melt'"),
        ("raise", {}, "needs exception="),
        ("crash", {"attempt": 0}, "1-based"),
    ],
)
def test_a_rule_that_makes_no_sense_is_refused(kind: str, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rule(kind, **kw)


def test_run_metadata_without_a_fault_leaves_it_off_the_frame() -> None:
    plain = ("m", "q", "n", "1", 1, None, None, None, None)
    assert RunMeta(*plain).fault is None
    faulted = RunMeta(*plain, ("crash", None))
    assert faulted.fault == ("crash", None)
    assert len(pickle.dumps(plain)) < len(pickle.dumps(tuple(faulted)))
