"""``activitypool run``: records, exit status, usage errors, streaming, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MOD = "tests.integration.cli_activities"
pytestmark = pytest.mark.timeout(60)


def cli(*args: str, stdin: str | None = None, timeout: float = 40) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_arrays_objects_and_scalars_are_the_arguments(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('1\n[2, 3]\n{"x": 4, "y": 5}\n\n[6]\n')
    out = tmp_path / "out.jsonl"
    proc = cli("run", f"{MOD}:add", "--input", str(src), "--output", str(out), "-w", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # --quiet
    assert records(out.read_text()) == [
        {"index": 0, "result": 1},
        {"index": 1, "result": 5},
        {"index": 2, "result": 9},
        {"index": 3, "result": 6},
    ]


def test_failures_are_records_of_the_last_attempts_own_error() -> None:
    lines = '[-1]\n"not a number"\n[1, 2, 3]\n7\n'
    proc = cli("run", f"{MOD}:add", "--input", "-", "-w", "2", "-q", stdin=lines)
    assert proc.returncode == 1, proc.stderr
    got = records(proc.stdout)
    assert got[0] == {
        "index": 0,
        "error": {"type": "ValueError", "message": "negative: -1", "attempts": 2},
    }
    # validation failures: that line's error, nothing dispatched
    assert got[1]["error"]["type"] == "ActivityInputError"
    assert got[1]["error"]["attempts"] == 0
    assert got[2]["error"]["type"] == "ActivityInputError"
    assert got[3] == {"index": 3, "result": 7}


def test_timeouts_crashes_and_typed_errors_are_named() -> None:
    proc = cli(
        "run", f"{MOD}:hangs_first", "--input", "-", "-q", "--start-to-close", "0.3",
        "--max-attempts", "1", stdin="1\n",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    error = records(proc.stdout)[0]["error"]
    assert error["type"] == "ActivityTimeoutError" and error["attempts"] == 1
    assert "start-to-close timeout of 0.3s" in error["message"]

    proc = cli("run", f"{MOD}:crashes", "--input", "-", "-q", stdin="1\n")
    error = records(proc.stdout)[0]["error"]
    assert error["type"] == "WorkerCrashedError" and error["attempts"] == 2
    assert "exit code 3" in error["message"]

    proc = cli("run", f"{MOD}:typed_failure", "--input", "-", "-q", stdin="1\n")
    assert records(proc.stdout)[0]["error"] == {
        "type": "LuckError",
        "message": "no luck",
        "attempts": 1,
    }


def test_overrides_change_the_activitys_options() -> None:
    # the activity's own start-to-close (10 s) would wait out the hang; 0.3 s kills it
    started = time.monotonic()
    proc = cli(
        "run", f"{MOD}:hangs_first", "--input", "-", "-q", "-w", "2",
        "--start-to-close", "0.3", stdin="5\n6\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "result": 5}, {"index": 1, "result": 6}]
    assert time.monotonic() - started < 8
    proc = cli("run", f"{MOD}:add", "--input", "-", "-q", "--max-attempts", "1", stdin="-1\n")
    assert records(proc.stdout)[0]["error"]["attempts"] == 1


def test_results_serialise_models_dataclasses_datetimes_and_numpy() -> None:
    proc = cli("run", f"{MOD}:shapes", "--input", "-", "-q", "-w", "1", stdin="3\n")
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [
        {
            "index": 0,
            "result": {
                "point": {"x": 3, "when": "2024-01-01T12:00:03"},
                "i64": 3,
                "arr": [0, 1, 2],
                "f32": 0.5,
                "nan": None,  # valid JSON: no NaN
            },
        }
    ]


def test_unordered_chunked_and_sticky_runs(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"[{i}, 1]\n" for i in range(50)))
    for extra in (["--unordered"], ["--chunksize", "7"], ["--unordered", "--chunksize", "4"]):
        proc = cli("run", f"{MOD}:add", "--input", str(src), "-q", "-w", "2", *extra)
        assert proc.returncode == 0, (extra, proc.stderr)
        got = sorted(records(proc.stdout), key=lambda r: r["index"])
        assert got == [{"index": i, "result": i + 1} for i in range(50)], extra
    proc = cli("run", f"{MOD}:where", "--input", str(src), "-q", "-w", "2", "--sticky")
    assert proc.returncode == 0, proc.stderr
    assert len({r["result"] for r in records(proc.stdout)}) == 1  # one session, one worker


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (f"{MOD}", "expected MODULE:ACTIVITY"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        (f"{MOD}:missing", "has no attribute 'missing'"),
        (f"{MOD}:not_an_activity", "is not an activity"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(spec: str, says: str) -> None:
    proc = cli("run", spec, "--input", "-", stdin="1\n")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_options_are_usage_errors() -> None:
    for args in (["run"], ["run", f"{MOD}:add"], ["run", f"{MOD}:add", "-i", "-", "-w", "0"]):
        proc = cli(*args, stdin="")
        assert proc.returncode == 2, args
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    proc = cli("run", f"{MOD}:add", "--input", "/no/such/file.jsonl")
    assert proc.returncode == 2 and "cannot read /no/such/file.jsonl" in proc.stderr


def test_a_line_that_is_not_json_stops_the_run_after_the_calls_in_flight() -> None:
    lines = "".join(f"{i}\n" for i in range(5)) + "{oops\n" + "".join(f"{i}\n" for i in range(5))
    for extra in ([], ["--unordered"]):
        proc = cli("run", f"{MOD}:slow", "--input", "-", "-q", "-w", "2", *extra, stdin=lines)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "activitypool: -: line 6: not valid JSON " + (
            "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1))\n"
        )
        got = sorted(records(proc.stdout), key=lambda r: r["index"])
        assert got == [{"index": i, "result": i} for i in range(5)]


def test_worker_without_temporal_is_a_usage_error() -> None:
    try:
        import pool.temporal  # noqa: F401

        pytest.skip("pool.temporal is installed")
    except ImportError:
        pass
    proc = cli("worker", MOD, "--task-queue", "q")
    assert proc.returncode == 2
    assert "install activitypool[temporal]" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_ctrl_c_stops_cleanly_and_keeps_what_was_written(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f"{i}\n" for i in range(2000)))
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pool", "run", f"{MOD}:slow", "-i", str(src), "-o", str(out),
         "-w", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        # some records are out (a write buffer's worth: 8 KiB), many calls are still to run
        while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 100):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    got = records(out.read_text())  # every line written is a whole record
    assert 0 < len(got) < 2000
    assert [r["index"] for r in got] == list(range(len(got)))
    assert all(r == {"index": r["index"], "result": r["index"]} for r in got)


def test_python_dash_m_and_the_console_script_are_the_same_command() -> None:
    script = Path(sys.executable).with_name("activitypool")
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    proc = subprocess.run(
        [str(script), "run", f"{MOD}:add", "-i", "-", "-q"],
        input="[1, 1]\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=40,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"index": 0, "result": 2}]


def test_worker_hands_its_options_to_the_temporal_host(monkeypatch, capsys) -> None:
    import types

    from pool import _cli

    seen: dict = {}

    async def serve_host(**kwargs: object) -> None:
        seen.update(kwargs)

    fake = types.ModuleType("pool.temporal")
    fake.serve_host = serve_host  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pool.temporal", fake)
    argv = ["worker", MOD, "other.mod", "--task-queue", "q", "--address", "h:1", "-w", "3"]
    assert _cli.main(argv) == 0
    assert seen == {
        "address": "h:1",
        "namespace": "default",
        "task_queue": "q",
        "workers": 3,
        "modules": [MOD, "other.mod"],
    }
