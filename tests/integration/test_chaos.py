"""Chaos: workers SIGKILLed at random and attempts hanging at random lose no call."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.chaos import RandomKiller, run_chaos
from pool import Pool
from tests.integration import activities as acts

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_random_kills_and_hangs_lose_nothing(start_method):
    # first let the deadlines catch the injected hangs, then kill
    chaos = RandomKiller(seed=1234, kills=8, gap=(0.02, 0.08), delay=0.3)
    with Pool([acts], workers=2, on_event=chaos.on_event, start_method=start_method) as pool:
        pool.inject_fault(acts.chaos_echo, "hang", attempt=1, times=5)
        items = list(range(3000))
        t0 = time.monotonic()
        with chaos.killing(pool):
            results = list(pool.map(acts.chaos_echo, items))
        assert results == items
        assert time.monotonic() - t0 < 60
        assert pool.run(acts.add, 1, 1) == 2
    assert chaos.count("worker_exited") >= 1  # the chaos really happened
    assert chaos.count("worker_killed") >= 1  # hangs were caught by the deadline


async def test_random_kills_during_calls_one_after_another_lose_nothing():
    # awaited one at a time: the supervisor spins for each reply (reply_spin), and the kills
    # land during those spins as well as between them
    chaos = RandomKiller(seed=99, kills=6, gap=(0.01, 0.05))
    # (chaos_echo sleeps 0.5 ms: a reply_spin of 5 ms covers it even on a loaded machine)
    async with Pool([acts], workers=2, on_event=chaos.on_event, reply_spin=0.005) as pool:
        with chaos.killing(pool):
            results = [await pool.execute(acts.chaos_echo, i) for i in range(1500)]
        assert results == list(range(1500))
        assert pool._sup is not None and pool._sup.reply_spin.caught > 0
    assert chaos.count("worker_exited") >= 1


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
async def test_chaos_command_loses_duplicates_and_reorders_nothing(start_method, tmp_path):
    # the core of `python -m benchmarks.chaos`, short: kills every ~50 ms, hangs, raises,
    # os._exit, sync and async, sticky sessions and plain calls, small and multi-MiB payloads
    summary = await run_chaos(
        600, workers=2, seed=11, kill_every=0.05, start_method=start_method, log_dir=tmp_path
    )
    report = summary.line() + "\n" + "\n".join(summary.problems)
    assert summary.calls == 600
    assert summary.kills >= 1 and summary.repeated >= 1, report  # the chaos really happened
    assert summary.ok > 0 and summary.failed_as_planned > 0, report
    assert summary.sessions > summary.sessions_lost, report  # some sessions ran to the end
    assert (summary.lost, summary.duplicated, summary.corrupt) == (0, 0, 0), report
    assert summary.out_of_order == 0, report


def test_chaos_command_prints_one_summary_line():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--calls", "60", "--kill-every", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("chaos: calls=60 kills="), proc.stdout
    counts = dict(re.findall(r"\b(lost|duplicated|out_of_order|corrupt)=(\d+)", lines[0]))
    assert proc.returncode == (1 if any(int(n) for n in counts.values()) else 0), proc.stderr
