"""What an activity prints and logs reaches the caller: printed lines on its stderr, tagged with
the worker and the activity; log records in its logging, as records. Output that never ends a
line costs linear time and holds up no other call."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pool import Pool
from pool._output import cut_marker
from tests.integration import output_activities as acts
from tests.integration import output_lazy_logging

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]


def worker_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if hasattr(r, "worker_id")]


def test_printed_lines_reach_the_callers_stderr_tagged(capfd):
    with Pool([acts], workers=1) as pool:
        assert pool.run(acts.talk, 7) == 7
        assert pool.run(acts.quick, 1) == 1  # the protocol is intact after all that
    err = capfd.readouterr().err.splitlines()
    assert "[worker 1 talk] printed on stdout 7" in err
    assert "[worker 1 talk] written to stderr 7" in err
    assert "[worker 1 talk] raw fd write" in err
    # a record is not printed by the worker: it comes out of the caller's logging
    assert not any(line.startswith("[worker") and "root warning" in line for line in err)


def test_log_records_reach_the_callers_logging_as_records(caplog):
    caplog.set_level(logging.INFO)  # before the pool starts: its workers take the levels
    with Pool([acts], workers=1) as pool:
        assert pool.run(acts.talk, 5) == 5
        pid = pool.run(acts.quick, os.getpid())  # (any call: the records came before it)
    assert pid == os.getpid()
    records = worker_records(caplog)
    by_msg = {r.getMessage(): r for r in records}
    warning = by_msg["root warning 5"]
    assert (warning.levelno, warning.levelname, warning.name) == (
        logging.WARNING,
        "WARNING",
        "root",
    )
    assert warning.worker_id == 1 and warning.activity == "talk" and warning.attempt == 1
    assert warning.pid != os.getpid() and warning.process == warning.pid
    assert warning.activity_id and warning.funcName == "talk"
    assert warning.filename == "output_activities.py" and warning.lineno > 0
    assert abs(warning.created - time.time()) < 30
    info = by_msg["info 5"]
    assert (info.levelno, info.name) == (logging.INFO, "outputtest")
    assert "debug 5" not in by_msg  # below the caller's level: not even sent
    failed = by_msg["it failed"]
    assert failed.levelno == logging.ERROR and "ZeroDivisionError" in failed.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(failed)


def test_a_logger_level_set_by_the_caller_applies_in_the_worker(caplog):
    caplog.set_level(logging.WARNING)
    caplog.set_level(logging.DEBUG, logger="outputtest.verbose")
    with Pool([acts], workers=1) as pool:
        pool.run(acts.talk, 3)
    msgs = {r.getMessage() for r in worker_records(caplog)}
    assert "verbose debug 3" in msgs
    assert "info 3" not in msgs and "root warning 3" in msgs


def test_on_output_takes_the_printed_lines_over(capfd, caplog):
    seen: list[tuple[int, str | None, str]] = []
    with Pool([acts], workers=1, on_output=lambda *a: seen.append(a)) as pool:
        pool.run(acts.talk, 2)
    assert (1, "talk", "printed on stdout 2") in seen
    assert (1, "talk", "written to stderr 2") in seen
    assert "[worker" not in capfd.readouterr().err
    assert "root warning 2" in {r.getMessage() for r in worker_records(caplog)}


def test_a_record_cannot_break_the_worker_nor_the_channel(caplog):
    with Pool([acts], workers=1) as pool:
        pid = pool.run(acts.worker_pid)
        assert pool.run(acts.log_badly, 1) == 1
        assert pool.run(acts.worker_pid) == pid  # the same worker, still serving
    msgs = [r.getMessage() for r in worker_records(caplog)]
    assert any("could not be formatted (TypeError)" in m and "two args" in m for m in msgs)
    assert any("could not be formatted (RuntimeError)" in m for m in msgs)
    assert any("its repr() raised RuntimeError" in m for m in msgs)
    big = [m for m in msgs if m.startswith("big ")]
    assert big and len(big[0]) < 70_000 and big[0].endswith("characters]")
    # basicConfig() in an activity finds the forwarding handler and leaves it alone
    assert msgs.count("after basicConfig") == 1


def test_records_from_a_thread_and_a_forked_child(caplog):
    seen: list[str] = []
    with Pool([acts], workers=1, on_output=lambda w, a, line: seen.append(line)) as pool:
        assert pool.run(acts.log_elsewhere, 4) == 4
        assert pool.run(acts.quick, 1) == 1
    thread = [r for r in worker_records(caplog) if r.getMessage() == "from a thread 4"]
    assert len(thread) == 1 and thread[0].activity == "log_elsewhere"
    assert thread[0].attempt is None  # not on the attempt's thread: unknown
    # the child cannot use the channel: it prints its record instead
    assert "WARNING:outputtest:from a forked child 4" in seen


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_logging_imported_inside_an_activity_is_forwarded(caplog, start_method):
    with Pool([output_lazy_logging], workers=1, start_method=start_method) as pool:
        handlers = pool.run(output_lazy_logging.log_lazily, 1)
    assert handlers == "ForwardingHandler"
    lazy = [r for r in worker_records(caplog) if r.getMessage() == "lazy 1"]
    assert len(lazy) == 1 and lazy[0].levelno == logging.WARNING


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_child_forked_before_logging_was_imported_does_not_use_the_channel(caplog, start_method):
    seen: list[str] = []
    kw = {"workers": 1, "start_method": start_method, "on_output": lambda w, a, t: seen.append(t)}
    with Pool([output_lazy_logging], **kw) as pool:
        assert pool.run(output_lazy_logging.fork_then_log, 6) == 6
        assert pool.run(output_lazy_logging.fork_then_log, 7) == 7
    assert not [r for r in worker_records(caplog) if r.getMessage().startswith("child record")]
    assert "child record 6" in seen and "child record 7" in seen  # printed by its own logging


def run_script(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )


def test_a_worker_forked_from_a_caller_with_logging_configured_forwards_once(tmp_path):
    # the worker has the caller's handlers (a fork of it): it must not use them too
    out = run_script(
        tmp_path,
        """
        import logging

        from pool import Pool
        from tests.integration import output_lazy_logging as lazy

        logging.basicConfig(format="%(levelname)s %(name)s %(activity)s: %(message)s")
        if __name__ == "__main__":
            with Pool([lazy], workers=1, start_method="fork") as pool:
                assert pool._sup.spawner.forked_caller()
                print(pool.run(lazy.log_lazily, 3))
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ForwardingHandler\n"
    assert out.stderr.splitlines() == ["WARNING outputtest.lazy log_lazily: lazy 3"]


def test_32_mib_without_a_newline_is_linear_and_stalls_no_call():
    lines: list[str] = []
    with Pool([acts], workers=2, on_output=lambda w, a, line: lines.append(line)) as pool:
        pool.run(acts.quick, 0)
        start = time.perf_counter()
        fut = pool.submit(acts.blast, 32 << 20, False)
        latencies = []
        while not fut.done():
            t = time.perf_counter()
            pool.run(acts.quick, 1)
            latencies.append(time.perf_counter() - t)
        assert fut.result() == 32 << 20
        took = time.perf_counter() - start
    # When each read was joined to the unfinished line this took 5-14 s, and the other calls
    # took 180 ms at the 90th percentile, up to 450 ms. Now ~1 ms and ~10 ms; the bounds leave
    # room for a loaded machine's scheduling hiccups.
    assert took < 2.0, took
    latencies.sort()
    p90 = latencies[int(0.9 * len(latencies))]
    assert p90 < 0.05, (p90, latencies[-1])
    assert latencies[-1] < 0.25, latencies[-1]
    marker = cut_marker(64 * 1024).decode()
    assert len(lines) == 512
    assert all(line == "x" * 65536 + marker for line in lines[:-1]) and lines[-1] == "x" * 65536


def test_a_carriage_return_progress_bar_gives_its_last_state():
    lines: list[str] = []
    with Pool([acts], workers=1, on_output=lambda w, a, line: lines.append(line)) as pool:
        last = pool.run(acts.blast, 32 << 20, True)
    assert lines == [f"{last:8d}"]


def test_a_user_script_sees_output_and_warnings_on_stderr(tmp_path):
    """As a user runs it: no logging configured, no on_output."""
    out = run_script(
        tmp_path,
        """
        import logging
        import sys

        import sdk
        from pool import Pool

        @sdk.activity
        def crunch(n: int) -> int:
            print("crunching", n)
            sys.stderr.write("a note\\n")
            logging.getLogger("mylib").warning("careful with %d", n)
            logging.getLogger("mylib").info("not shown")
            return 2 * n

        if __name__ == "__main__":
            with Pool([crunch], workers=1) as pool:
                print("result", pool.run(crunch, 21))
        """,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "result 42\n"
    err = out.stderr.splitlines()
    assert "[worker 1 crunch] crunching 21" in err
    assert "[worker 1 crunch] a note" in err
    assert "careful with 21" in err  # Python's last-resort handler: warnings and up
    assert not any("not shown" in line for line in err)
