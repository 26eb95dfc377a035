"""``start_method="fork"``: the fork server is forked from the caller while the caller has one
thread (fast: no interpreter start, no imports), and spawned otherwise. A forked one sheds what
is the caller's process state (signals, fds, atexit, streams, context, event loop). Each case
runs in a fresh interpreter, whose threads the test controls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import psutil
import pytest

from pool import Pool
from pool._process import caller_can_fork
from tests.integration import fork_caller_activities as fca

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fork path is Linux's"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CALLER = textwrap.dedent(
    """
    import asyncio, atexit, io, json, os, select, signal, sys, threading

    sys.path.insert(0, {root!r})
    from pool import Pool
    from tests.integration import fork_caller_activities as fca

    mode, out_path, marker, start_method = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *a: None)
    atexit.register(lambda: open(marker, "a").write(f"{{os.getpid()}}\\n"))
    fca.CALLER_VALUE.set("caller")
    r, w = os.pipe()
    pipe_target = os.readlink(f"/proc/self/fd/{{w}}")
    lines = []
    stop = threading.Event()
    if mode == "threaded":
        threading.Thread(target=stop.wait).start()
    real_stdout, sys.stdout = sys.stdout, io.StringIO()  # as pytest's capture would

    def on_output(worker_id, name, text):
        lines.append(text)

    def after(pool, workers):
        res = {{"workers": workers}}
        res["forked_caller"] = pool._sup.spawner.forked_caller()
        res["server_pid"] = pool._sup.spawner.forkserver_pid()
        os.close(w)  # nobody else may hold the write end: EOF now
        res["eof"] = bool(select.select([r], [], [], 2.0)[0]) and os.read(r, 1) == b""
        return res

    # the first worker (forked from the caller with "fork"), then, after a kill, a replacement
    # (forked by the fork server)
    kw = dict(workers=1, thread_limit=1, on_output=on_output, start_method=start_method)
    if mode == "async":
        async def main():
            async with Pool([fca], **kw) as pool:
                first = await pool.execute(fca.inherited, w)
                os.kill(first["pid"], signal.SIGKILL)
                second = first
                while second["pid"] == first["pid"]:
                    second = await pool.execute(fca.inherited, w)
                return after(pool, [first, second])
        res = asyncio.run(main())
    else:
        with Pool([fca], **kw) as pool:
            first = pool.run(fca.inherited, w)
            os.kill(first["pid"], signal.SIGKILL)
            second = first
            while second["pid"] == first["pid"]:
                second = pool.run(fca.inherited, w)
            res = after(pool, [first, second])
    stop.set()
    res["pipe_target"] = pipe_target
    res["caller_pid"] = os.getpid()
    res["captured"] = sys.stdout.getvalue()
    res["relayed"] = "".join(lines)
    with open(out_path, "w") as f:
        json.dump(res, f)
    """
)


@pytest.mark.parametrize(
    "mode, start_method",
    [("with", "fork"), ("async", "fork"), ("threaded", "fork"), ("with", "forkserver")],
)
def test_workers_inherit_nothing_of_the_callers_own(mode, start_method, tmp_path):
    out, marker = tmp_path / "out.json", tmp_path / "atexit"
    script = CALLER.format(root=ROOT)
    proc = subprocess.run(
        [sys.executable, "-c", script, mode, str(out), str(marker), start_method],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    # "fork" and one thread: forked from the caller; another thread running: spawned, and
    # said; the default ("forkserver") never forks the caller
    forked = start_method == "fork" and mode != "threaded"
    assert res["forked_caller"] is forked
    assert ("start_method='fork'" in proc.stderr) is (start_method == "fork" and not forked)
    for worker in res["workers"]:  # the first one, and a replacement the server forked
        assert worker["pid"] != res["server_pid"]
        assert worker["sigterm_default"], "the caller's SIGTERM handler reached the worker"
        assert worker["context"] == "unset", "the caller's context variables reached the worker"
        assert worker["asyncio_run"] == 42, "the caller's running loop reached the worker"
        assert worker["omp"] == "1"
        assert worker["stdout_fd"] == 1
        # the caller's pipe is not held open by the fork server or the worker
        assert worker["fd_target"] != res["pipe_target"]
    assert res["eof"]
    # the worker prints to its own stdout, which the pool relays; not into the caller's object
    assert "printed by the worker" in res["relayed"]
    assert "printed by the worker" not in res["captured"]
    # the caller's atexit handler ran once, in the caller, not in a worker or the server
    assert marker.read_text().split() == [str(res["caller_pid"])]


def test_caller_can_fork_counts_native_threads_too():
    # numpy's BLAS threads are native threads, invisible to threading; the kernel counts them
    code = textwrap.dedent(
        """
        import ctypes, ctypes.util, sys, threading
        sys.path.insert(0, {root!r})
        from pool._process import caller_can_fork
        before = caller_can_fork()
        libc = ctypes.CDLL(None)
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        during = caller_can_fork()
        stop.set()
        t.join()
        print(before, during, threading.active_count())
        """
    ).format(root=ROOT)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["True", "False", "1"], out.stderr


def test_an_in_process_pool_uses_the_fork_path_only_when_it_is_safe():
    # this test process may have threads (pytest plugins, numpy): whatever it has, the pool
    # must have chosen by it, and work
    expected = caller_can_fork()
    with Pool([fca], workers=1, start_method="fork") as pool:
        assert pool._sup is not None and pool._sup.spawner.forkserver_pid() is not None
        assert pool._sup.spawner.forked_caller() is expected
        worker = pool.run(fca.pid)
        assert worker in pool.worker_pids()
        # either way the workers are the fork server's children, and it is ours
        assert psutil.Process(worker).ppid() == pool._sup.spawner.forkserver_pid()
        assert psutil.Process(pool._sup.spawner.forkserver_pid()).ppid() == os.getpid()
