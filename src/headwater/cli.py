"""The ``headwater`` command line.

``headwater generate``  writes sample events shaped like the reference workload.
``headwater demo``      generates events and runs the windowed-metrics core over them locally,
                        printing the accounting summary (what ``make demo`` runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
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


def _add_workload_args(parser: argparse.ArgumentParser, *, n: int) -> None:
    parser.add_argument(
        "-n",
        "--events",
        type=_positive_int,
        default=n,
        help=f"how many events to generate (default {n})",
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
        default=0.0,
        help="fraction of deliberately broken records (default 0)",
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from headwater.testing.workload import write_jsonl

    stats = write_jsonl(
        args.output,
        args.events,
        seed=args.seed,
        dup_frac=args.dup_frac,
        late_frac=args.late_frac,
        malformed_frac=args.malformed_frac,
    )
    print(json.dumps({"output": str(args.output), **stats.to_dict()}))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from headwater.demo import run_demo

    started = time.monotonic()
    summary = run_demo(
        Path(args.workdir),
        events=args.events,
        seed=args.seed,
        dup_frac=args.dup_frac,
        late_frac=args.late_frac,
        malformed_frac=args.malformed_frac,
    )
    print(f"demo finished in {time.monotonic() - started:.1f} s; outputs in {args.workdir}/")
    return 0 if summary["identity_holds"] else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headwater", description="Event-time stream processing on Apache Beam."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser(
        "generate",
        help="write sample events (JSON lines)",
        description="Write sample events shaped like the reference "
        "workload: duplicates, disorder, late and malformed records.",
    )
    generate.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write (JSON lines); a .stats.json sidecar is written too",
    )
    _add_workload_args(generate, n=100_000)
    generate.set_defaults(func=_cmd_generate)

    demo = commands.add_parser(
        "demo",
        help="generate events and run windowed metrics locally",
        description="Generate sample events and run the windowed-metrics "
        "core over them on the local runner; print the accounting summary.",
    )
    demo.add_argument(
        "--workdir",
        default="demo-output",
        help="folder for the events and the outputs (default demo-output)",
    )
    _add_workload_args(demo, n=20_000)
    demo.set_defaults(func=_cmd_demo, malformed_frac=0.01)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return 2
