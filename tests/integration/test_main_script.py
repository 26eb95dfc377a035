"""Activities defined in the script a user runs (``__main__``), run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

START_METHODS = ("forkserver", "fork", "spawn")


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env=env,
    )


# The script of the issue: multiprocessing (or concurrent.futures, or anything that imports it:
# scikit-learn, torch) imported by the script sets sys.modules["__mp_main__"] in the worker too.
MAIN_SCRIPT = """
import sys
{imports}

import sdk as workflows
from pool import Pool


@workflows.activity
def double(x: int) -> int:
    return 2 * x


@workflows.activity
def late_import(x: int) -> int:
    import multiprocessing.pool  # imported while the activity runs, after the script loaded

    return x + 1


if __name__ == "__main__":
    with Pool(activities=[double, late_import], workers=2, start_method=sys.argv[1]) as pool:
        print("results", pool.run(double, 21), list(pool.map(double, range(4))))
        print("late", pool.run(late_import, 1), pool.run(double, 1))
"""


@pytest.mark.parametrize(
    "imports", ["import multiprocessing", "from concurrent.futures import ProcessPoolExecutor"]
)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_activity_in_main_works_whatever_the_script_imports(
    tmp_path: Path, start_method: str, imports: str
) -> None:
    proc = run_script(tmp_path, MAIN_SCRIPT.format(imports=imports), start_method)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "results 42 [0, 2, 4, 6]" in proc.stdout
    assert "late 2 2" in proc.stdout


NO_GUARD_SCRIPT = """
import sys

import sdk as workflows
from pool import Pool


@workflows.activity
def add(x: int, y: int) -> int:
    return x + y


with Pool(activities=[add], workers=1, start_method=sys.argv[1]) as pool:
    try:
        pool.run(add, 1, 2)
    except Exception as exc:
        print("ERROR", type(exc).__name__, exc)
    else:
        print("ran")
"""


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_script_without_the_main_guard_gets_one_error_that_names_it(
    tmp_path: Path, start_method: str
) -> None:
    proc = run_script(tmp_path, NO_GUARD_SCRIPT, start_method)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, proc.stdout + proc.stderr
    error = errors[0]
    assert 'if __name__ == "__main__":' in error
    assert "Workers import the script" in error  # says why
    assert error.count("ActivityError") == 1  # not nested
    assert "__mp_main__" not in error
    assert "ModuleNotFoundError" not in error


def test_without_the_guard_fork_needs_none(tmp_path: Path) -> None:
    # workers forked from the caller already have its __main__: the script does not run again
    proc = run_script(tmp_path, NO_GUARD_SCRIPT, "fork")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ran" in proc.stdout.splitlines()
