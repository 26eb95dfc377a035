"""Process trees and the pool marker, read from ``/proc``. Light: ``os`` only.

The fork server (which must stay as light as a worker) sweeps with these, the supervisor kills
a worker's tree with them and the pytest plugin's leak guard finds leftovers with them. Where
``/proc`` is missing (not Linux) they find nothing, and callers fall back or do without.

Every process a pool starts carries ``POOL_MARKER=<pool id>`` in its environment, and so does
whatever an activity starts with the environment it inherited (``subprocess`` does unless told
otherwise). A process that escaped every sweep, adopted by init, is still found by its marker.
"""

from __future__ import annotations

import os

POOL_MARKER = "ACTIVITYPOOL_POOL_ID"
_SIGKILL = 9  # (not from signal: it imports enum, which the fork server never needs)

# Linux with CONFIG_PROC_CHILDREN lists a thread's children in /proc; not every kernel has it.
_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children(pid: int) -> list[int]:
    """The children of ``pid`` (zombies included): /proc/PID/task/TID/children, a read per
    thread; where the kernel lacks that file, a scan of every process's parent."""
    if not _CHILDREN_FILES:
        return [child for child, parent in _parents().items() if parent == pid]
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(k) for k in f.read().split())
    except OSError:  # exited meanwhile (or no /proc)
        pass
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, parents before their children."""
    if not _CHILDREN_FILES:
        by_parent: dict[int, list[int]] = {}
        for child, parent in _parents().items():
            by_parent.setdefault(parent, []).append(child)
        found, todo = [], [pid]
        while todo:
            kids = by_parent.get(todo.pop(), [])
            found.extend(kids)
            todo.extend(kids)
        return found
    found = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/PID/stat)."""
    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        fields = stat.rpartition(b")")[2].split()
        if len(fields) > 1:
            out[int(name)] = int(fields[1])
    return out


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant, all found before any is killed (a killed parent's
    children would otherwise move to a subreaper or init before the walk reached them)."""
    for target in [pid, *descendants(pid)]:
        try:
            os.kill(target, _SIGKILL)
        except OSError:
            pass


def marked() -> dict[int, str]:
    """pid -> pool id of every live process (but this one) whose environment carries the pool
    marker. Only processes of this user can be read; a zombie has no environment left.

    ``/proc/PID/environ`` shows the environment a process was started (exec'd) with: a process
    forked from a pool process without an exec shows its exec'd ancestor's.
    """
    key = f"\0{POOL_MARKER}=".encode()
    out: dict[int, str] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return out
    me = os.getpid()
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = b"\0" + f.read()
        except OSError:
            continue
        at = env.find(key)
        if at < 0:
            continue
        at += len(key)
        end = env.find(b"\0", at)
        out[int(name)] = env[at : end if end >= 0 else len(env)].decode(errors="replace")
    return out
