"""pool.events(), the reason of every kill in a real pool, map(progress=True), the bar on a
terminal (a pseudo-terminal), and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pool import Pool, PoolEvent
from tests.integration import cli_activities as acts

ROOT = Path(__file__).resolve().parents[2]
MOD = "tests.integration.cli_activities"
pytestmark = pytest.mark.timeout(60)


async def test_events_is_an_async_iterator_that_ends_with_the_pool() -> None:
    seen: list[PoolEvent] = []
    async with Pool([acts], workers=1) as pool:
        stream = pool.events()

        async def read() -> None:
            async for event in stream:
                seen.append(event)

        reader = asyncio.create_task(read())
        assert await pool.execute(acts.add, 1, 2) == 3
    await asyncio.wait_for(reader, 5)  # the pool closed: the iteration ended
    kinds = [e.kind for e in seen]
    assert "attempt_started" in kinds and "attempt_completed" in kinds
    assert kinds.index("attempt_started") < kinds.index("attempt_completed")


async def test_events_beside_on_event_and_a_stream_left_early() -> None:
    direct: list[str] = []
    async with Pool([acts], workers=1, on_event=lambda e: direct.append(e.kind)) as pool:
        stream = pool.events()
        await pool.execute(acts.add, 1)
        first = await asyncio.wait_for(anext(stream), 5)
        await stream.aclose()
        await pool.execute(acts.add, 2)
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert first.kind == direct[direct.index(first.kind)]
    assert direct.count("attempt_completed") == 2


def test_events_of_a_with_pool_reach_another_threads_loop() -> None:
    with Pool([acts], workers=1) as pool:
        stream = pool.events()
        pool.run(acts.add, 1)

        async def first_completed() -> PoolEvent:
            async for event in stream:
                if event.kind == "attempt_completed":
                    return event
            raise AssertionError("no attempt_completed")

        event = asyncio.run(asyncio.wait_for(first_completed(), 5))
    assert event.activity == acts.add.__activity_definition__.name


def test_every_kill_in_a_real_pool_names_its_reason() -> None:
    events: list[PoolEvent] = []
    with Pool([acts], workers=1, on_event=events.append, max_tasks_per_worker=1) as pool:
        hang = acts.hangs_first.__activity_definition__
        from pool._cli import with_overrides

        assert pool.run(with_overrides(hang, start_to_close_timeout=0.2), 4) == 4
        with pytest.raises(Exception, match="exit code 3"):
            pool.run(acts.crashes, 1)
    ends = [(e.kind, e.reason) for e in events if e.kind.startswith("worker_") and e.reason]
    assert ("worker_killed", "deadline") in ends
    assert ("worker_exited", "crash") in ends
    assert ("worker_recycled", "tasks_recycle") in ends
    for e in events:
        if e.kind in ("worker_killed", "worker_exited", "worker_recycled"):
            assert e.reason, e


def test_map_with_progress_prints_plain_lines_when_not_a_terminal(capsys) -> None:
    with Pool([acts], workers=2) as pool:
        got = list(pool.map(acts.add, range(20), progress=True))
        pairs = sorted(pool.map_unordered(acts.add, [-1, 2], return_exceptions=True, progress=True))
    assert got == list(range(20))
    assert pairs[1] == (1, 2) and isinstance(pairs[0][1], Exception)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("done 20/20 | failed 0 | retried 0 | ")
    assert err[1].startswith("done 2/2 | failed 1 | retried 1 | ")


async def test_amap_with_progress(capsys) -> None:
    async with Pool([acts], workers=2) as pool:
        got = [r async for r in pool.amap(acts.add, range(5), progress=True)]
    assert got == list(range(5))
    assert capsys.readouterr().err.startswith("done 5/5 | failed 0")


def _plain(text: str) -> str:
    """``text`` without terminal control sequences and carriage returns."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", text)


def _run_in_pty(argv: list[str], timeout: float = 40) -> tuple[int, str]:
    """Run ``argv`` with its stdin, stdout and stderr on a pseudo-terminal; its exit status
    and everything it wrote there."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(ROOT)
        os.environ.update(COLUMNS="120", LINES="40", TERM="xterm-256color")
        os.execv(argv[0], argv)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode(errors="replace")


def test_the_bar_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(60)))
    out = tmp_path / "out.jsonl"
    code, screen = _run_in_pty(
        [sys.executable, "-m", "pool", "run", f"{MOD}:slow", "-i", str(src), "-o", str(out),
         "-w", "2"]
    )  # fmt: skip
    assert code == 0, screen
    assert "\x1b[" in screen  # drawn with terminal control sequences, redrawn in place
    assert "60/60" in screen and "failed 0" in screen and "retried 0" in screen
    assert "━" in screen  # the bar itself
    assert "/s" in screen
    assert "ETA" in screen  # while it ran
    assert "latency p95" in screen and "throughput" in screen  # the summary table
    assert len(out.read_text().splitlines()) == 60


def test_what_workers_print_goes_above_the_bar(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(30)))
    code, screen = _run_in_pty(
        [sys.executable, "-m", "pool", "run", f"{MOD}:chatty", "-i", str(src), "-o", os.devnull,
         "-w", "2"]
    )  # fmt: skip
    assert code == 0, screen
    said = [line for line in screen.splitlines() if "chatty says" in line]
    assert len(said) == 30
    # each printed line is whole: the bar is redrawn below it, never inside it
    assert all(
        re.match(r"\[worker \d+ cli_test\.chatty\] chatty says \d+$", _plain(line)) for line in said
    )


def test_records_on_the_terminal_get_plain_lines_not_a_bar(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(5)))
    code, screen = _run_in_pty(
        [sys.executable, "-m", "pool", "run", f"{MOD}:add", "-i", str(src), "-w", "1"]
    )
    assert code == 0, screen
    assert '{"index":4,"result":4}' in screen
    assert "done 5/5 | failed 0" in screen  # the plain line
    assert "━" not in screen.split("calls")[0]  # no bar drawn between the records


def test_the_demo_runs_every_part() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pool", "demo", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert "model loaded 1x" in err
    assert "workers lost: deadline 4" in err
    assert "workers lost: crash 4" in err
    assert "results [0, 1, 4, 9]" in err and "results [1, 2, 3, 4]" in err
    assert "demo summary" in err and "deadline 4, crash 4" in err
    assert time.monotonic() - started < 30


def test_a_progress_attached_to_spread_map_counts_only_what_it_needs() -> None:
    from pool._progress import Progress

    progress = Progress()
    with Pool([acts], workers=1) as pool:
        out = list(pool.spread_map(acts.crashes, [((1,), {})], progress=progress))
        assert isinstance(out[0], Exception)
        # after the map the listener is gone: later calls are not counted
        pool.run(acts.add, 1)
    assert progress.kills["crash"] == 2  # two attempts, each killed its worker
    assert (progress.attempts, progress.retries) == (2, 1)
    assert progress.latency.n == 0  # nothing completed


def test_spread_chunks_inject_depends_and_check_each_result() -> None:
    calls = [((i,), {}) for i in range(5)] + [((), {"x": 1, "y": 2})]
    with Pool([acts], workers=1) as pool:
        sync = list(pool.spread_map(acts.with_dep, calls, chunksize=4))
        asyn = list(
            pool.spread_map(acts.with_dep_async, [((i,), {}) for i in range(3)], chunksize=2)
        )
        lies = list(pool.spread_map(acts.lies, [((i,), {}) for i in range(4)], chunksize=4))
    assert sync == [100, 101, 102, 103, 104, 103]
    assert asyn == [100, 101, 102]
    assert all(isinstance(v, Exception) for v in lies)  # one bad result fails its chunk
    assert "returned an invalid result" in str(lies[0].__cause__)  # checked by the supervisor


def test_a_progress_display_counts_what_happened_before_its_map_was_consumed(capsys) -> None:
    # the first window goes out when map() is called: a crash and a retry may be over before
    # the caller reads the first result, and the display must have seen them
    with Pool([acts], workers=1) as pool:
        results = pool.map(acts.crashes_first, [7], progress=True)
        deadline = time.monotonic() + 10
        while pool.stats().completed < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(results) == [7]
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("done 1/1 | failed 0 | retried 1 | workers lost: crash 1"), err
