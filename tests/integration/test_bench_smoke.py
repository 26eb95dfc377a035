"""The benchmark script runs (quick mode, one row) and reports this pool beside its peers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)


def test_bench_quick_noop_row(tmp_path):
    pytest.importorskip("loky")
    pytest.importorskip("pebble")
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--quick", "--only", "noop", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "activitypool" in proc.stdout and "ProcessPoolExecutor" in proc.stdout
    data = json.loads(out.read_text())
    assert data  # figures were recorded for a later --compare
