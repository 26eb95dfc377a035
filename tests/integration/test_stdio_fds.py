"""The pool's own fds never take 0-2: what an activity does to its stdio (close, redirect, write
garbage) cannot reach the protocol channel or a shared-memory segment."""

from __future__ import annotations

import os

import pytest

from pool import Pool
from pool._segments import shm_supported
from tests.integration import stdio_activities as acts

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not shm_supported(), reason="needs memfd and /proc"),
]

MIB = 1 << 20


def _results_exact(pool: Pool, calls: int, size: int, chatter: int) -> list[str]:
    """Run ``calls`` noisy calls at once; what went wrong with each that did not come back
    exact (a wrong result, or an error: before the fix, segments and prints shared fds)."""
    futures = [pool.submit(acts.noisy_pattern, size, seed, chatter) for seed in range(calls)]
    wrong = []
    for seed, f in enumerate(futures):
        try:
            if f.result() != acts.pattern(size, seed):
                wrong.append(f"{seed}: wrong bytes")
        except Exception as exc:
            wrong.append(f"{seed}: {exc!r}"[:200])
    return wrong


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_results_stay_exact_after_an_activity_closes_its_stdio(start_method):
    with Pool([acts], workers=1, prefetch=4, start_method=start_method) as pool:
        pool.run(acts.close_stdio)
        assert _results_exact(pool, calls=25, size=8 * MIB, chatter=64 << 10) == []
        # nothing of the pool's took the closed fds, in the worker
        assert pool.run(acts.stdio_fds) == {0: "/dev/null"}
        assert all(link.startswith("pipe:") for link in pool.run(acts.channel_fds))


def test_results_stay_exact_when_an_activity_redirects_its_stdio_to_garbage(tmp_path):
    with Pool([acts], workers=1, prefetch=4) as pool:
        pool.run(acts.close_stdio)
        assert _results_exact(pool, calls=4, size=8 * MIB, chatter=0) == []  # segments made
        # fds 1 and 2 are free again: a redirection takes them, and must not touch a segment
        pool.run(acts.garbage_onto_stdio, str(tmp_path / "out"))
        assert _results_exact(pool, calls=25, size=8 * MIB, chatter=64 << 10) == []
        links = pool.run(acts.stdio_fds)
        assert links[1] == links[2] == str(tmp_path / "out")
    assert os.path.getsize(tmp_path / "out") > 0


# A caller that closed its own stdio: the pool's fds (pipes, pidfds, the fork server's socket,
# segments, the event loop's) must not take 0-2, in it or in the processes it starts.
_CALLER = """
import json, os, sys
from pool import Pool
from tests.integration import stdio_activities as acts

out = sys.argv[1]
for fd in (0, 1, 2):
    os.close(fd)


def low_fds(pid):
    found = {}
    for fd in (0, 1, 2):
        try:
            found[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass
    return found


report = {}
size = 8 << 20
with Pool([acts], workers=2, start_method=sys.argv[2]) as pool:
    futures = [pool.submit(acts.noisy_pattern, size, seed, 1024) for seed in range(8)]
    report["wrong"] = [s for s, f in enumerate(futures) if f.result() != acts.pattern(size, s)]
    report["echo"] = pool.run(acts.echo_len, acts.pattern(size, 99)) == size
    report["caller"] = low_fds(os.getpid())
    children = [int(p) for p in open(f"/proc/self/task/{os.getpid()}/children").read().split()]
    report["children"] = {pid: low_fds(pid) for pid in children}
    report["workers"] = sorted(pool.run(acts.this_pid) for _ in range(4))
report["after"] = low_fds(os.getpid())
with open(out, "w") as f:
    json.dump(report, f)
"""


@pytest.mark.parametrize("start_method", ["forkserver", "fork", "spawn"])
def test_a_caller_without_stdio_gets_exact_results_and_no_pool_fd_takes_it(tmp_path, start_method):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-c", _CALLER, str(out), start_method], cwd=root, check=True, timeout=60
    )
    report = json.loads(out.read_text())
    assert report["wrong"] == [] and report["echo"]
    assert report["caller"] == {} and report["after"] == {}  # still closed: nothing took them
    for links in report["children"].values():
        # the fork server's stdio is /dev/null (or closed); a worker's 1 and 2 its output pipe
        assert links.get("0") == "/dev/null"
        assert all(
            not link.startswith(("socket:", "anon_inode:", "/memfd:")) for link in links.values()
        )
