"""The plugin seen from a user's test run: markers, ini options, reports, timeouts, leaks.

Each test writes a small test suite and runs pytest on it in this process (``pytester``).
Activity names are unique per suite: the activity registry is per process.
"""

from __future__ import annotations

import time

import psutil
import pytest
from _pytest.pytester import Pytester

pytestmark = pytest.mark.timeout(60)

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
activity_pool_leak_timeout = 0.1
"""


@pytest.fixture
def suite(pytester: Pytester) -> Pytester:
    pytester.makeini(INI)
    pytester.syspathinsert()
    return pytester


def test_markers_and_ini_options_are_registered(suite: Pytester):
    markers = suite.runpytest("--markers").stdout.str()
    assert "@pytest.mark.activity_pool(*activities, **pool_kwargs)" in markers
    assert "@pytest.mark.activity_fault(activity, fault, *," in markers
    help_text = suite.runpytest("--help").stdout.str()
    for option in (
        "activity_pool_workers",
        "activity_pool_modules",
        "activity_pool_leak_check",
        "activity_pool_leak_timeout",
    ):
        assert option in help_text


def test_ini_options_configure_the_pool(suite: Pytester):
    suite.makeini(INI + "activity_pool_workers = 3\nactivity_pool_modules = pti_acts\n")
    suite.makepyfile(
        pti_acts="""
        from sdk import activity

        @activity
        def pti_triple(x: int) -> int:
            return 3 * x
        """,
        test_ini="""
        import pytest

        def test_ini(activity_pool):
            assert len(activity_pool.worker_pids()) == 3
            assert activity_pool.run("pti_triple", 2) == 6  # preloaded: callable by name

        @pytest.mark.activity_pool(workers=1)
        def test_marker_wins(activity_pool):
            assert len(activity_pool.worker_pids()) == 1
            assert activity_pool.run("pti_triple", 3) == 9  # the ini modules still apply

        def test_factory_defaults(pool_factory):
            assert len(pool_factory().worker_pids()) == 3
            assert len(pool_factory(workers=2).worker_pids()) == 2
        """,
    )
    suite.runpytest().assert_outcomes(passed=3)


def test_failure_report_shows_remote_traceback_and_worker_output(suite: Pytester):
    suite.makepyfile(
        test_report="""
        from sdk import activity

        def deep_helper(x):
            raise ValueError(f"kaboom {x}")

        @activity(retry_policy_max_attempts=2, retry_policy_initial_interval=0.01)
        def ptr_explode(x: int) -> int:
            print(f"WORKER SAYS attempt {activity.info().attempt}")
            return deep_helper(x)

        def test_explodes(activity_pool):
            activity_pool.run(ptr_explode, 7)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- activitypool remote traceback (call) -*",
            "ActivityError: activity 'ptr_explode' failed after 2 attempts*(attempts=2)",
            "last failure: ValueError: kaboom 7",
            "remote traceback (in the worker):",
            "Traceback (most recent call last):",
            "*in ptr_explode*",
            "*in deep_helper*",
            "ValueError: kaboom 7",
            "*- Captured activitypool worker output call -*",
            "[[]worker * ptr_explode[]] WORKER SAYS attempt 1",
            "[[]worker * ptr_explode[]] WORKER SAYS attempt 2",
        ]
    )


def test_worker_output_and_log_records_are_captured_per_test(suite: Pytester):
    suite.makepyfile(
        test_per_test="""
        import logging

        from sdk import activity

        @activity
        def pco_say(word: str) -> str:
            print(f"printed {word}")
            logging.getLogger("pco").warning("logged %s", word)
            return word

        def test_first(activity_pool):
            assert activity_pool.run(pco_say, "first") == "first"

        def test_second(activity_pool):
            assert activity_pool.run(pco_say, "second") == "second"
            assert False, "fail to show what this test captured"
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- Captured log call -*",
            "WARNING  pco:test_per_test.py:* logged second",
            "*- Captured activitypool worker output call -*",
            "[[]worker * pco_say[]] printed second",
        ]
    )
    text = result.stdout.str()
    assert "printed first" not in text and "logged first" not in text


def test_timeout_never_leaves_orphans(suite: Pytester):
    suite.makepyfile(
        test_hang="""
        import time
        import pytest
        from sdk import activity

        @activity(start_to_close_timeout=600, retry_policy_max_attempts=1)
        def pth_hang() -> None:
            time.sleep(3600)

        @pytest.mark.timeout(1.0)  # (pool set-up included: room for a loaded machine)
        def test_hangs(activity_pool):
            activity_pool.run(pth_hang)

        @pytest.mark.timeout(1.0)  # (pool set-up included: room for a loaded machine)
        async def test_hangs_async(activity_pool):
            await activity_pool.execute(pth_hang)
        """
    )
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    started = time.monotonic()
    result = suite.runpytest()
    elapsed = time.monotonic() - started
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*Timeout*"])
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left
    assert elapsed < 5  # teardown cancels and kills at once: no drain, no grace period


def test_leak_guard_fails_the_test_and_says_which(suite: Pytester):
    suite.makepyfile(
        test_leaky="""
        import os
        import subprocess
        import sys
        import pytest

        @pytest.fixture
        def cleanup():
            things = []
            yield things  # torn down after the pool fixtures: the guard sees the leaks first
            for thing in things:
                if isinstance(thing, int):
                    os.close(thing)
                else:
                    thing.kill()
                    thing.wait()

        def test_leaky(cleanup, activity_pool):
            r, w = os.pipe()
            cleanup += [r, w]
            cleanup.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))

        def test_leaky_env(cleanup, activity_env):
            r, w = os.pipe()
            cleanup += [r, w]
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaky*",
            "activity_pool left resources behind:",
            "  process * started during the test is still running (*python*)",
            "  pipe fd * (pipe:[[]*[]]) is still open",
            "  pipe fd * (pipe:[[]*[]]) is still open",
            "*ERROR at teardown of test_leaky_env*",
            "activity_env left resources behind:",
        ]
    )


def test_leak_guard_finds_what_init_adopted_by_the_pool_marker(suite: Pytester):
    suite.makepyfile(
        test_escaped="""
        import os
        import subprocess

        def test_escaped(activity_pool):
            # a leftover as an activity's escaped daemon would be: marked, adopted by init
            env = {**os.environ, "ACTIVITYPOOL_POOL_ID": activity_pool.pool_id}
            script = "sleep 60 >/dev/null 2>&1 & echo $!"
            subprocess.run(["sh", "-c", script], env=env, check=True, capture_output=True)
        """
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_escaped*",
            "activity_pool left resources behind:",
            "  process * started by pool * is still running, adopted by pid * (sleep 60)",
        ]
    )


def test_leak_check_can_be_switched_off(suite: Pytester):
    suite.makeini(INI + "activity_pool_leak_check = false\n")
    suite.makepyfile(
        test_off="""
        import os

        def test_leaky(activity_pool):
            r, w = os.pipe()
            os.close(w)
            test_leaky.fd = r

        def test_close_it():
            os.close(test_leaky.fd)
        """
    )
    suite.runpytest().assert_outcomes(passed=2)


def test_session_pool_is_shared_restarted_after_a_failure_and_configurable(suite: Pytester):
    suite.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def activity_pool_session_options():
            return {"activities": ["pts_acts"], "workers": 1}
        """
    )
    suite.makepyfile(
        pts_acts="""
        import os
        from sdk import activity

        @activity(retry_policy_max_attempts=1)
        def pts_pid() -> int:
            return os.getpid()
        """,
        test_session="""
        import pytest
        import sdk

        seen = []

        def test_first(activity_pool_session):
            assert len(activity_pool_session.worker_pids()) == 1
            seen.append(activity_pool_session.run("pts_pid"))

        def test_same_worker(activity_pool_session):
            seen.append(activity_pool_session.run("pts_pid"))
            assert seen[0] == seen[1]

        @pytest.mark.activity_fault(
            "pts_pid", "raise", exception=sdk.ApplicationError("injected"), times=None
        )
        def test_fault_marker_applies(activity_pool_session):
            with pytest.raises(sdk.ActivityError, match="injected"):
                activity_pool_session.run("pts_pid")

        def test_fault_was_cleared(activity_pool_session):
            assert activity_pool_session.run("pts_pid") == seen[0]

        def test_fails(activity_pool_session):
            assert False, "a failing test"

        def test_fresh_pool_after_a_failure(activity_pool_session):
            assert activity_pool_session.run("pts_pid") != seen[0]
        """,
    )
    result = suite.runpytest()
    result.assert_outcomes(passed=5, failed=1)


def test_pool_factory_closes_every_pool(suite: Pytester):
    suite.makepyfile(
        test_factory="""
        import pytest
        import sdk
        from sdk import activity

        @activity
        def ptp_one() -> int:
            return 1

        made = []

        def test_make(pool_factory):
            made.extend([pool_factory(ptp_one, workers=1), pool_factory(workers=2)])
            assert [p.run(ptp_one) for p in made] == [1, 1]

        def test_all_closed():
            assert [p.worker_pids() for p in made] == [[], []]
            with pytest.raises(sdk.PoolClosedError):
                made[0].run(ptp_one)
        """
    )
    suite.runpytest().assert_outcomes(passed=2)
