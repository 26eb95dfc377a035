"""Every ``activitypool run`` and ``activitypool demo`` command shown in docs/cli.md and the README
runs, in a fresh directory holding the files the page shows, with the exit status it claims
(a trailing ``# exit N``; 0 otherwise)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

_BLOCK = re.compile(r"(?:<!-- file: (?P<file>\S+) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```", re.S)


def _blocks(page: Path) -> list[tuple[str | None, str, str]]:
    text = page.read_text()
    return [(m["file"], m["lang"], m["body"]) for m in _BLOCK.finditer(text)]


def _commands(page: Path) -> list[str]:
    out = []
    for _, lang, body in _blocks(page):
        if lang != "bash":
            continue
        for line in body.splitlines():
            if line.strip():
                out.append(line.strip())
    return out


def _shell(tmp: Path) -> dict[str, str]:
    """An environment where ``activitypool`` is this interpreter's ``-m pool``."""
    bindir = tmp / "bin"
    bindir.mkdir()
    shim = bindir / "activitypool"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m pool "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def _run(line: str, cwd: Path, env: dict[str, str]) -> None:
    expected = re.search(r"#\s*exit (\d+)\s*$", line)
    proc = subprocess.run(
        line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=100
    )
    want = int(expected[1]) if expected else 0
    assert proc.returncode == want, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_every_command_of_the_cli_page(tmp_path: Path) -> None:
    page = ROOT / "docs" / "cli.md"
    for name, _, body in _blocks(page):
        if name:
            (tmp_path / name).write_text(body)
    env = _shell(tmp_path)
    commands = _commands(page)
    shown = [c for c in commands if re.search(r"\bactivitypool (run|demo)\b", c)]
    assert len(shown) >= 5  # the page shows them; this is not an empty loop
    for line in commands:
        _run(line, tmp_path, env)
    records = (tmp_path / "out.jsonl").read_text().splitlines()
    assert records[:2] == ['{"index":0,"result":0}', '{"index":1,"result":1}']


def test_the_readme_commands(tmp_path: Path) -> None:
    env = _shell(tmp_path)
    lines = [
        c.split("&& .venv/bin/")[-1]  # the first command installs, then runs the demo
        for c in _commands(ROOT / "README.md")
        if re.search(r"\bactivitypool (run|demo)\b", c)
    ]
    assert lines and lines[0] == "activitypool demo"
    on_the_cli_page = set(_commands(ROOT / "docs" / "cli.md"))  # run by the test above
    for line in lines:
        if line not in on_the_cli_page:
            _run(line, tmp_path, env)
