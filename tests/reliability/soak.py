"""Soak benchmark: the reference workload through the batch path and through stream replay.

Not a test (pytest does not collect it: the name does not start with ``test_``). It prints one
JSON line per phase with the accounting, the wall time, the throughput and the peak resident
memory of the pipeline process, and checks the accounting identity and zero loss against the
plain-Python reference (``headwater.devtools.reference``)::

    .venv/bin/python tests/reliability/soak.py --batch 5000000 --replay 1000000

Phases:

``batch``   ``headwater run windowed_metrics --source=files`` (FnApiRunner) over ``--batch``
            generated events (10 % duplicates, 1 % late, 1 % malformed);
``replay``  the same pipeline with ``--replay_as_stream`` (watermark = max event time - 5 s)
            over ``--replay`` events, on ``--replay-engine`` (``auto``: the columnar replay;
            ``teststream``: TestStream on the BundleBasedDirectRunner, record by record).

Each phase runs the CLI in a subprocess; its peak memory is that child's ``ru_maxrss``
(``os.wait4``). A phase
also runs at a tenth of its size first, so memory growth with input size is visible (state must
stay bounded by the dedup horizon; the input itself is held in memory by stream replay, which
reads the file in the driver).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from headwater.devtools.reference import windowed_metrics_reference
from headwater.devtools.workload import write_jsonl

_FLAGS = (
    "--runner=DirectRunner",
    "--event_time_field=event_time",
    "--event_time_unit=ms",
    "--id_field=event_id",
    "--dedup_horizon=10m",
    "--key_field=user_id",
    "--window=fixed:60s",
    "--allowed_lateness=0s",
    "--metrics=count,sum:amount",
    "--output_format=parquet",
)


def _phase(name: str, n: int, folder: Path, *, replay: bool, engine: str = "auto") -> dict:
    data = folder / f"{name}-{n}.jsonl"
    started = time.monotonic()
    write_jsonl(data, n, seed=11, malformed_frac=0.01, late_frac=0.01, dup_frac=0.10)
    generated_s = time.monotonic() - started
    summary_path = folder / f"{name}-{n}.summary.json"
    args = [
        sys.executable,
        "-m",
        "headwater",
        "run",
        "windowed_metrics",
        *_FLAGS,
        "--source=files",
        f"--input={data}",
        f"--output={folder / f'{name}-{n}-out'}",
        f"--dead_letter={folder / f'{name}-{n}-dlq'}",
        f"--summary_json={summary_path}",
        *(
            ["--replay_as_stream", f"--replay_engine={engine}", "--max_out_of_orderness=5s"]
            if replay
            else []
        ),
    ]
    log_path = folder / f"{name}-{n}.log"
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        # wait4 gives this child's own resource usage (its peak resident set).
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall_s = time.monotonic() - started
    if child.returncode != 0:
        tail = log_path.read_text(encoding="utf-8")[-3000:]
        raise SystemExit(f"{name} failed ({child.returncode}):\n{tail}")
    summary = json.loads(summary_path.read_text())
    counts = {k: summary[k] for k in ("records_in", "output", "duplicate", "dead_letter", "late")}
    lost = counts["records_in"] - sum(
        counts[k] for k in ("output", "duplicate", "dead_letter", "late")
    )
    figures = {
        "phase": name,
        "events": n,
        **counts,
        "lost": lost,
        "wall_s": round(wall_s, 1),
        "events_per_s": round(n / wall_s),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # Linux reports KiB
        "generate_s": round(generated_s, 1),
    }
    if not replay:  # batch: nothing is late, so the reference gives every counter
        lines = data.read_bytes().splitlines()
        reference = windowed_metrics_reference(lines, window_s=60)
        figures["matches_reference"] = all(counts[k] == reference[k] for k in counts)
    data.unlink()
    return figures


def main(argv: list[str] | None = None) -> int:
    """Runs the phases and prints one JSON line each; exit 1 if a record was lost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=5_000_000, help="events for the batch path")
    parser.add_argument("--replay", type=int, default=1_000_000, help="events for stream replay")
    parser.add_argument(
        "--replay-engine",
        default="auto",
        choices=("auto", "columnar", "teststream"),
        help="how the replay phase runs (windowed_metrics --replay_engine)",
    )
    parser.add_argument("--folder", default=None, help="work folder (default: a temp folder)")
    args = parser.parse_args(argv)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="headwater-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"cpus": os.cpu_count(), "folder": str(folder)}), flush=True)
    lost = 0
    for name, n, replay in (
        ("batch", max(args.batch // 10, 1), False),
        ("batch", args.batch, False),
        ("replay", max(args.replay // 10, 1), True),
        ("replay", args.replay, True),
    ):
        figures = _phase(name, n, folder, replay=replay, engine=args.replay_engine)
        lost += figures["lost"]
        print(json.dumps(figures), flush=True)
    return 1 if lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
