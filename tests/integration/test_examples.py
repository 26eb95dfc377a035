"""Every example runs as a user would run it, and shows what it claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quickstart():
    out = run_example("quickstart.py")
    pids = {int(p) for p in re.findall(r"'pid': (\d+)", out)}
    assert len(pids) == 1  # load_model and every predict ran in the same worker
    assert out.count("predict: ") == 3
    assert "crunch x4 on 2 workers" in out
