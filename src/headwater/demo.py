"""The local demo: generate sample events, run windowed metrics over them, print the accounting.

Runs on the FnApiRunner (batch) with no network and no cloud account. Outputs in ``workdir``:
``events.jsonl`` (the input), ``metrics.jsonl`` (one row per user and 60 s window),
``dead_letters.jsonl`` (rejected records with reason and original bytes) and ``summary.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.records import SourceRecord
from headwater.testing.replay import read_lines
from headwater.testing.workload import write_jsonl
from headwater.transforms.accounting import Accounting
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

__all__ = ["run_demo", "row_to_json"]


def row_to_json(row: dict[str, Any]) -> str:
    """A metrics row as one JSON line (datetimes in ISO-8601 UTC)."""
    return json.dumps(
        {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()},
        sort_keys=True,
    )


def _decode(payload: bytes) -> dict[str, Any]:
    record = json.loads(payload)
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    return record


def _single_file(path: Path) -> beam.io.WriteToText:
    return beam.io.WriteToText(str(path), shard_name_template="", num_shards=1)


def run_demo(workdir: Path, *, events: int = 20_000, **workload: Any) -> dict[str, Any]:
    """Generates ``events`` sample events in ``workdir`` and runs windowed metrics over them."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "events.jsonl"
    stats = write_jsonl(source, events, **workload)
    print(f"generated {stats.events} events into {source}: {stats.to_dict()}")
    records: list[SourceRecord] = list(read_lines(source))
    options = PipelineOptions(runner="FnApiRunner")
    with beam.Pipeline(options=options) as p:
        out = (
            p
            | "ReadEvents" >> beam.Create(records)
            | "WindowedMetrics"
            >> ComputeWindowedMetrics(
                decode=_decode,
                event_time=EventTimeExtractor(field="event_time", unit="ms"),
                dedup=DeduplicateById(id_field="event_id", horizon="10m"),
                window="fixed:60s",
                allowed_lateness="0s",
                key_field="user_id",
                metrics="count,sum:amount,max:amount",
            )
        )
        _ = (
            out.rows
            | "RowsToJson" >> beam.Map(row_to_json)
            | "WriteRows" >> _single_file(workdir / "metrics.jsonl")
        )
        _ = (
            out.dead_letter
            | "DeadLettersToJson" >> beam.Map(lambda d: d.to_json())
            | "WriteDeadLetters" >> _single_file(workdir / "dead_letters.jsonl")
        )
    accounting = Accounting.from_result(p.result)
    summary = accounting.to_dict()
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("accounting:", ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary
