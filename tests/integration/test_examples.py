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


def test_sticky_model_loads_once_per_worker():
    out = run_example("sticky_model.py")
    loaded = re.search(r"load_model: pid (\d+), loads 1, max weight error ([\d.]+)", out)
    assert loaded, out
    assert float(loaded.group(2)) < 0.01  # a real model, really trained
    pid = loaded.group(1)
    # every prediction ran in the worker that loaded the model, which loaded it once
    assert f"predict x200: pids [{pid}], loads [1], last n 200" in out
    assert f"the model was trained once, in worker {pid}" in out


def test_heartbeat_resume_continues_after_the_kill():
    out = run_example("heartbeat_resume.py")
    killed = re.search(r"attempt 1: worker (\d+) SIGKILLed after record 50 of 100", out)
    resumed = re.search(r"attempt 2 on worker (\d+): resumed from record (\d+)", out)
    assert killed and resumed, out
    assert killed.group(1) != resumed.group(1)  # a replacement worker
    assert 0 < int(resumed.group(2)) <= 50  # not from scratch, nothing skipped


def test_cpu_map_matches_the_sequential_run():
    out = run_example("cpu_map.py")
    assert re.search(r"sequential: +[\d.]+s for 10000 items", out), out
    assert re.search(r"pool.map, \d+ workers: +[\d.]+s \([\d.]+x on \d+ CPUs\)", out), out
    assert "same results in the same order: True" in out


def test_hung_code_is_killed_on_heartbeat_timeout_and_retried():
    out = run_example("hung_code.py")
    stuck = re.search(r"attempt 1 on worker (\d+): stuck in C", out)
    retried = re.search(r"attempt 2 on worker (\d+) returned after ([\d.]+)s", out)
    assert stuck and retried, out
    assert "ActivityTimeoutError(HEARTBEAT), last heartbeat 'calling into C'" in out
    assert stuck.group(1) != retried.group(1)
    assert float(retried.group(2)) < 10


def test_my_activities_example_passes_under_pytest():
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "examples/test_my_activities.py"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "8 passed" in proc.stdout


def test_temporal_fanout_runs_offline_on_a_dev_server():
    pytest.importorskip("temporalio", reason="the temporal extra is not installed")
    out = run_example("temporal_fanout.py")
    total = re.search(r"crunch x20: total (\d+) \(expected (\d+)\)", out)
    assert total and total.group(1) == total.group(2), out
    assert re.search(r"crunch ran in subprocesses \[\d+(, \d+)?\]", out), out
    assert re.search(r"session: load \+ predict x5 in \[\d+\]: \[0, 5, 10, 15, 20\]", out), out
