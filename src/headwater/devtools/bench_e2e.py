"""``make bench``, end to end: what a user runs, timed from process start to exit.

Every measurement here is a subprocess, timed with a wall clock around it, so interpreter
start-up, imports, graph construction, runner start-up and the final writes all count:

- :func:`headwater_run`: ``headwater run windowed_metrics --source=files ...`` (the console
  script next to this Python, else ``python -m headwater``) with ``--summary_json``; the
  summary's counters, engine and pipeline wall time come back with the wall time;
- :func:`plain_script`: :mod:`headwater.devtools.plain_script`, a standalone single-threaded
  script (json + dict dedup + dict per window, the same dead letters) run by path;
- :func:`plain_beam`: the same logic with Beam building blocks (``python -m headwater.devtools.bench
  --plain-beam FILE OUT``, GroupByKey dedup + CombinePerKey on the FnApiRunner);
- :func:`startup`: ``headwater --help``, ``headwater pipelines`` and ``headwater run
  windowed_metrics --help``.

:func:`read_script_rows` reads the plain script's rows in the shape of
:func:`headwater.devtools.bench.read_rows` so the two outputs can be compared row for row.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "COMPUTATION_FLAGS",
    "COUNTERS",
    "cli_command",
    "headwater_run",
    "plain_beam",
    "plain_script",
    "read_script_rows",
    "startup",
    "timed_command",
]

COUNTERS = ("records_in", "output", "duplicate", "dead_letter", "late")
COMPUTATION_FLAGS = (  # the reference computation, whatever the source
    "--event_time_field=event_time",
    "--event_time_unit=ms",
    "--id_field=event_id",
    "--dedup_horizon=10m",
    "--key_field=user_id",
    "--metrics=count,sum:amount",
    "--allowed_lateness=0s",
    "--output_format=parquet",
)
_TIMEOUT_S = 1_800.0


def cli_command() -> list[str]:
    """How a user starts headwater here: the ``headwater`` console script beside this Python."""
    script = Path(sys.executable).parent / "headwater"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "headwater"]


def timed_command(command: list[str], *, log: Path | None = None) -> dict[str, Any]:
    """Runs ``command`` to its end; ``{"seconds", "exit"}`` (stdout and stderr to ``log``).

    A non-zero exit raises ``RuntimeError`` with the end of its output: a failed run has no
    figure worth printing.
    """
    sink = log.open("wb") if log is not None else subprocess.DEVNULL
    began = time.perf_counter()
    try:
        done = subprocess.run(
            command, stdout=sink, stderr=subprocess.STDOUT, timeout=_TIMEOUT_S, check=False
        )
    finally:
        seconds = time.perf_counter() - began
        if log is not None:
            sink.close()  # type: ignore[union-attr]
    if done.returncode != 0:
        tail = ""
        if log is not None:
            tail = ":\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}{tail}")
    return {"seconds": round(seconds, 3), "exit": done.returncode}


def startup(workdir: Path) -> dict[str, float]:
    """Wall seconds of the commands that print before any data moves."""
    results = {}
    for name, args in (
        ("help", ["--help"]),
        ("pipelines", ["pipelines"]),
        ("run_help", ["run", "windowed_metrics", "--help"]),
    ):
        results[name] = timed_command([*cli_command(), *args], log=workdir / f"startup-{name}.log")[
            "seconds"
        ]
    return results


def headwater_run(
    events: Path, out: Path, *, window: str = "fixed:60s", extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``headwater run windowed_metrics`` over ``events`` into ``out``: wall time and summary.

    ``extra``: more flags (the runner's, ``--columnar_shards`` ...).
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    summary_path = out / "summary.json"
    command = [
        *cli_command(),
        "run",
        "windowed_metrics",
        "--source=files",
        f"--input={events}",
        "--format=json",
        *COMPUTATION_FLAGS,
        f"--window={window}",
        f"--output={out / 'rows'}",
        f"--dead_letter={out / 'dead_letters'}",
        f"--summary_json={summary_path}",
        *extra,
    ]
    result = timed_command(command, log=out / "run.log")
    summary = json.loads(summary_path.read_text())
    result.update({name: summary[name] for name in COUNTERS})
    result.update(
        engine=summary.get("engine"),
        pipeline_s=summary.get("wall_s"),
        identity_holds=summary.get("identity_holds"),
    )
    if result["pipeline_s"] is not None:
        result["outside_pipeline_s"] = round(result["seconds"] - result["pipeline_s"], 3)
    return result


def _script_path() -> Path:
    from headwater.devtools import plain_script

    return Path(plain_script.__file__)


def plain_script(events: Path, out: Path) -> dict[str, Any]:
    """The standalone plain-Python script over ``events``: wall time and its counters."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, str(_script_path()), str(events), str(out / "output")]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False, timeout=_TIMEOUT_S)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"plain_script.py exited {done.returncode}: {done.stderr[-2000:]!r}")
    counts = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return {"seconds": round(seconds, 3), **{name: counts[name] for name in COUNTERS}}


def plain_beam(events: Path, out: Path) -> dict[str, Any]:
    """Plain Beam (``python -m headwater.devtools.bench --plain-beam``) over ``events``: wall."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [
        sys.executable,
        "-m",
        "headwater.devtools.bench",
        "--plain-beam",
        str(events),
        "--workdir",
        str(out),
    ]
    return timed_command(command, log=out / "run.log")


def read_script_rows(folder: Path) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The plain script's rows, by (window_start as a datetime, key)."""
    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for file in sorted(folder.rglob("rows.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line)
            start = dt.datetime.fromisoformat(row["window_start"])
            rows[(start, row["key"])] = row
    return rows
