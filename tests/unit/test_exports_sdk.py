import sdk


def test_sdk_all_is_pinned() -> None:
    assert sorted(sdk.__all__) == [
        "ActivityDefinition",
        "ActivityDefinitionError",
        "ActivityError",
        "ActivityInfo",
        "ActivityInputError",
        "ActivityPoolError",
        "ActivityTimeoutError",
        "ApplicationError",
        "Depends",
        "LocalRunner",
        "PoolClosedError",
        "RateLimit",
        "RemoteTraceback",
        "RetryPolicy",
        "StickySessionLostError",
        "StickyWorkerSession",
        "StickyWorkerSessionMissingError",
        "TimeoutType",
        "WorkerCrashedError",
        "activities_in_module",
        "activity",
        "activity_heartbeat",
        "backoff_delay",
        "get_definition",
        "get_sticky_worker_session",
        "run_activities_locally",
        "run_sticky_worker_session",
        "with_options",
    ]


def test_every_exported_name_exists() -> None:
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None


def test_no_process_machinery_imported() -> None:
    import os
    import pathlib
    import subprocess
    import sys

    root = str(pathlib.Path(sdk.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    code = "import sys, sdk; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    mods = set(out.stdout.split())
    assert "uvloop" not in mods
    assert "multiprocessing" not in mods
    assert not any(m == "pool" or m.startswith("pool.") for m in mods)
