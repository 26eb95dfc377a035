"""The pool's methods are typed from the activity: mypy --strict on a user's program finds the
mistakes marked in it, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

PROGRAM = Path(__file__).with_name("user_program.py")
MARK = re.compile(r"#\s*E:\s*([a-z -]+?)\s*$")
REPORTED = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def _expected() -> set[tuple[int, str]]:
    return {
        (number, code)
        for number, line in enumerate(PROGRAM.read_text().splitlines(), 1)
        if (match := MARK.search(line))
        for code in match.group(1).split()
    }


@pytest.mark.timeout(300)
def test_mypy_strict_reports_exactly_the_marked_lines(tmp_path):
    out, err, _ = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--show-error-codes",
            "--hide-error-context",
            "--no-pretty",
            "--cache-dir",
            str(Path(__file__).parents[2] / ".mypy_cache"),
            "--config-file",
            "",
            str(PROGRAM),
        ]
    )
    reported = set()
    for line in out.splitlines():
        match = REPORTED.match(line)
        if match and Path(match["path"]).name == PROGRAM.name:
            reported.add((int(match["line"]), match["code"]))
        else:
            assert ": note:" in line or not line.strip(), line  # nothing else: no crash
    expected = _expected()
    assert len(expected) >= 15
    assert sorted(reported - expected) == [], f"unexpected errors:\n{out}"
    assert sorted(expected - reported) == [], f"mistakes mypy did not catch:\n{out}"
    assert not err
