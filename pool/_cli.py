"""The ``activitypool`` command (and ``python -m pool``): run, demo, worker. See docs/cli.md.

``run`` streams a JSON Lines file through ``Pool.spread_map`` (the lazy map, every outcome
returned): memory stays bounded by the map's window whatever the input's length. Records are
written as outcomes arrive, each a whole line, so what was written stays valid when the run is
stopped (a bad input line, Ctrl-C).

Exit status: 0 every call succeeded; 1 some call failed; 2 a usage error (one line, no
traceback); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import IO, Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A mistake in how the command was called: printed as one line, exit status 2."""


class BadLine(Exception):
    """An input line that is not valid JSON: the run stops reading there."""

    def __init__(self, number: int, why: str) -> None:
        super().__init__(f"line {number}: not valid JSON ({why})")


# -- the activity and its options -------------------------------------------------------------
def load_activity(spec: str) -> Any:
    """The definition named by ``MODULE:ACTIVITY`` (the module imported from the current
    directory first, as ``python -m`` would)."""
    from sdk._definition import ActivityDefinition

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"expected MODULE:ACTIVITY, got {spec!r}")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    defn = getattr(obj, "__activity_definition__", None)
    if not isinstance(defn, ActivityDefinition):
        raise UsageError(f"{spec} is not an activity (decorate it with @activity)")
    return defn


def with_overrides(defn: Any, **overrides: Any) -> Any:
    """``defn`` with some of its options replaced (the names of ``@activity``'s keywords; None
    keeps the activity's own). The one place the command line changes an activity's options:
    through ``sdk.with_options`` when the SDK has it, else a copy made here."""
    changed = {k: v for k, v in overrides.items() if v is not None}
    if not changed:
        return defn
    try:
        from sdk import with_options  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        return with_options(defn, **changed)
    from sdk._definition import ActivityDefinition

    field_of = {
        "start_to_close_timeout": "start_to_close_timeout",
        "heartbeat_timeout": "heartbeat_timeout",
        "retry_policy_max_attempts": "retry_max_attempts",
        "sticky_to_worker": "sticky_to_worker",
    }
    changes = {field_of[k]: v for k, v in overrides.items() if v is not None}
    if not changes:
        return defn
    fields = {name: getattr(defn, name) for name in ActivityDefinition.__match_args__}
    fields.update(changes)
    return ActivityDefinition(**fields)


# -- input and output -----------------------------------------------------------------------
def read_calls(lines: IO[bytes]) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """One ``(args, kwargs)`` per non-blank line: an array is the positional arguments, an
    object the keywords, anything else the one argument. Raises ``BadLine`` at a bad line."""
    loads = json.loads
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = loads(line)
        except ValueError as exc:
            raise BadLine(number, str(exc)) from None
        if isinstance(value, list):
            yield tuple(value), {}
        elif isinstance(value, dict):
            yield (), value
        else:
            yield (value,), {}


def count_lines(path: str) -> int | None:
    """The number of lines of a regular file, for the progress total (None: unknown, a pipe or
    stdin). Blank lines count too: a file of them ends a little short of its total."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        n = 0
        last = b"\n"
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
        return n if last == b"\n" else n + 1
    except OSError:
        return None


def _numpy_fallback(value: Any) -> Any:
    """What pydantic cannot serialise itself: numpy scalars and arrays (by ``tolist``)."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot serialise a {type(value).__qualname__} to JSON")


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ raises
        return f"<{type(exc).__name__}: message not printable>"


def error_info(exc: BaseException) -> dict[str, Any]:
    """``{"type", "message", "attempts"}`` of a failed call: the last attempt's own exception
    (or the timeout or crash that ended it), not the ``ActivityError`` around it."""
    from sdk._errors import ActivityError, ApplicationError

    attempts = 0
    inner = exc
    if isinstance(exc, ActivityError):
        attempts = exc.attempts
        if exc.__cause__ is not None:
            inner = exc.__cause__
    name = type(inner).__name__
    if isinstance(inner, ApplicationError) and isinstance(inner.type, str) and inner.type:
        name = inner.type  # the type named by the activity (or of a remote exception)
    message = getattr(inner, "message", None)
    if not isinstance(message, str):
        message = _text(inner)
    return {"type": name, "message": message, "attempts": attempts}


class Writer:
    """Writes the records, one whole line each, and counts the failures."""

    def __init__(self, out: IO[bytes]) -> None:
        import pydantic_core

        self.out = out
        self.failed = 0
        to_json = pydantic_core.to_json
        try:  # NaN and infinities as null: the records stay valid JSON (pydantic >= 2.7)
            to_json(0.0, inf_nan_mode="null")
            self._to_json: Callable[..., bytes] = partial(to_json, inf_nan_mode="null")
        except TypeError:
            self._to_json = to_json

    def record(self, index: int, outcome: Any) -> bool:
        """Write one call's record; False if it failed."""
        if isinstance(outcome, BaseException):
            line = self._to_json({"index": index, "error": error_info(outcome)})
            ok = False
        else:
            try:
                line = self._to_json({"index": index, "result": outcome}, fallback=_numpy_fallback)
                ok = True
            except Exception as exc:
                error = {"type": type(exc).__name__, "message": _text(exc), "attempts": 0}
                line = self._to_json({"index": index, "error": error})
                ok = False
        self.out.write(line + b"\n")
        if not ok:
            self.failed += 1
        return ok


# -- commands ---------------------------------------------------------------------------------
def _open_input(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _open_output(path: str | None) -> IO[bytes]:
    if path is None or path == "-":
        return sys.stdout.buffer
    try:
        return open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from pool import _progress
    from pool._pool import Pool

    defn = load_activity(args.activity)
    defn = with_overrides(
        defn,
        retry_policy_max_attempts=args.max_attempts,
        start_to_close_timeout=args.start_to_close,
        heartbeat_timeout=args.heartbeat_timeout,
        sticky_to_worker=True if args.sticky else None,
    )
    total = None if args.quiet or args.input == "-" else count_lines(args.input)
    source = _open_input(args.input)
    sink = _open_output(args.output)
    progress = _progress.Progress(total)
    # records written to the terminal would tear a live bar: plain lines then
    to_terminal = sink is sys.stdout.buffer and _progress.isatty(sys.stdout)
    display = _progress.Display(progress, quiet=args.quiet, label=defn.name, live=not to_terminal)
    writer = Writer(sink)
    status = EXIT_OK
    try:
        with Pool([defn.module], workers=args.workers) as pool:
            display.start()
            try:
                status = _stream(pool, defn, args, source, writer, progress)
            finally:
                sink.flush()
                display.stop()
    except KeyboardInterrupt:
        _flush_quietly(sink)
        display.stop()
        display.summary("interrupted")
        print("activitypool: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if source is not sys.stdin.buffer:
            source.close()
        if sink is not sys.stdout.buffer:
            _close_quietly(sink)
    if status == EXIT_USAGE:
        return status
    display.summary()
    return EXIT_FAILED if writer.failed else EXIT_OK


def _stream(
    pool: Any, defn: Any, args: argparse.Namespace, source: IO[bytes], writer: Writer, progress: Any
) -> int:
    calls = read_calls(source)
    session = pool.sticky_session() if args.sticky else None
    try:
        results = pool.spread_map(
            defn,
            calls,
            session=None if session is None else session.session,
            ordered=not args.unordered,
            chunksize=args.chunksize,
            # events feed only the display and the summary: none at all when quiet
            progress=None if args.quiet else progress,
        )
        pairs: Iterator[tuple[int, Any]] = results if args.unordered else enumerate(results)
        record, item = writer.record, progress.item
        try:
            for index, outcome in pairs:
                item(not record(index, outcome))
        except BadLine as exc:
            print(f"activitypool: {args.input}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        if session is not None:
            session.close()
    return EXIT_OK


def _flush_quietly(f: IO[bytes]) -> None:
    try:
        f.flush()
    except (OSError, ValueError):
        pass


def _close_quietly(f: IO[bytes]) -> None:
    try:
        f.close()
    except (OSError, ValueError):
        pass


def cmd_demo(args: argparse.Namespace) -> int:
    from pool import _demo

    return _demo.main(workers=args.workers, quiet=args.quiet)


def cmd_worker(args: argparse.Namespace) -> int:
    try:
        temporal = importlib.import_module("pool.temporal")
        serve_host: Callable[..., Any] = temporal.serve_host
    except (ImportError, AttributeError) as exc:
        missing = getattr(exc, "name", None)
        if missing and not missing.startswith("pool"):
            why = f"{missing} is not installed"
        else:
            why = "this activitypool has no Temporal host"
        raise UsageError(
            f"{why}: install activitypool[temporal] to run a Temporal worker"
        ) from None
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    result = serve_host(
        address=args.address,
        namespace=args.namespace,
        task_queue=args.task_queue,
        workers=args.workers or os.cpu_count() or 1,
        modules=list(args.modules),
    )
    if hasattr(result, "__await__"):
        import asyncio

        asyncio.run(result)
    return EXIT_OK


# -- parsing --------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="activitypool",
        description="Run activities in a supervised process pool (docs/cli.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="map an activity over a JSON Lines file",
        description="Call MODULE:ACTIVITY once per input line; write one JSON record per call.",
    )
    run.add_argument("activity", metavar="MODULE:ACTIVITY")
    run.add_argument(
        "--input",
        "-i",
        required=True,
        metavar="FILE",
        help="JSON Lines: an array (positional arguments), an object (keywords) or a scalar "
        "(one argument) per line; - for stdin",
    )
    run.add_argument(
        "--output", "-o", metavar="FILE", help="where the records go (default, or -: stdout)"
    )
    run.add_argument("--workers", "-w", type=_positive_int, help="worker processes (default: CPUs)")
    run.add_argument(
        "--chunksize", type=_positive_int, default=1, help="items sent per call (default 1)"
    )
    run.add_argument(
        "--unordered", action="store_true", help="write records as calls finish, not in order"
    )
    run.add_argument(
        "--sticky", action="store_true", help="run every call in one sticky session (one worker)"
    )
    run.add_argument("--max-attempts", type=_positive_int, help="override the activity's")
    run.add_argument(
        "--start-to-close", type=_seconds, metavar="SECONDS", help="override the activity's"
    )
    run.add_argument(
        "--heartbeat-timeout", type=_seconds, metavar="SECONDS", help="override the activity's"
    )
    run.add_argument(
        "--quiet", "-q", action="store_true", help="no progress and no summary on stderr"
    )
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser(
        "demo", help="a short tour on built-in data", description="A short tour on built-in data."
    )
    demo.add_argument("--workers", "-w", type=_positive_int, default=None)
    demo.add_argument("--quiet", "-q", action="store_true")
    demo.set_defaults(func=cmd_demo)

    worker = sub.add_parser(
        "worker",
        help="serve activities to Temporal (needs activitypool[temporal])",
        description="Run a Temporal worker whose activities execute in a supervised pool.",
    )
    worker.add_argument("modules", nargs="+", metavar="MODULE", help="modules of activities")
    worker.add_argument("--address", default="localhost:7233")
    worker.add_argument("--namespace", default="default")
    worker.add_argument("--task-queue", required=True)
    worker.add_argument("--workers", "-w", type=_positive_int, default=None)
    worker.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except UsageError as exc:
        print(f"activitypool: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("activitypool: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader of stdout went away (| head): point stdout at nothing, so that the
        # interpreter's final flush does not fail again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_FAILED


def entry() -> None:
    """The console script."""
    code = main()
    if "temporalio.bridge.temporal_sdk_bridge" in sys.modules:
        # A Temporal host has shut down: temporalio's native threads can crash the
        # interpreter's teardown (an open SDK bug, temporalio/sdk-python#300), so leave
        # without it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
