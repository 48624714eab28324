"""Helpers shared by the reliability tests: run a ready-made pipeline in-process, read its files.

Pipelines run on the FnApiRunner in this process (so a test can read the Beam metrics of the
result and assert the accounting identity), with the pipeline's real sinks: Parquet rows and
JSON-lines dead letters written to a temporary folder and read back here with plain Python.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.core.records import SourceRecord

#: The workload's record layout, as windowed_metrics and stream_etl flags.
METRICS_FLAGS = (
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

T0_MS = 1_700_000_000_000


def event(n: int, *, user: str = "u1", amount: Any = 1.5, time_ms: Any = None) -> dict[str, Any]:
    """A valid workload record number ``n`` (time defaults to ``T0_MS + n`` seconds)."""
    return {
        "event_id": f"e{n}",
        "user_id": user,
        "event_time": T0_MS + n * 1000 if time_ms is None else time_ms,
        "amount": amount,
    }


def line(record: dict[str, Any]) -> bytes:
    """``record`` as compact JSON bytes."""
    return json.dumps(record, separators=(",", ":")).encode()


def source_of(payloads: Iterable[bytes]) -> beam.PTransform:
    """An injected source: each payload as a :class:`SourceRecord` with its line number."""
    return beam.Create(
        [SourceRecord(p, {"file": "input.jsonl", "line": i + 1}) for i, p in enumerate(payloads)]
    )


def run_built(
    module: ModuleType,
    flags: Sequence[str],
    *,
    source: beam.PTransform | None = None,
    sink: beam.PTransform | None = None,
) -> Any:
    """Builds ``module``'s pipeline from ``flags`` on the FnApiRunner; runs it; the result."""
    options = PipelineOptions(list(flags))
    p = beam.Pipeline("FnApiRunner", options=options)
    if module.__name__.endswith("replay_dead_letters"):
        module.build(p, options)
    else:
        module.build(p, options, source=source, sink=sink)
    result = p.run()
    result.wait_until_finish()
    return result


def dead_letters(folder: Path) -> list[dict[str, Any]]:
    """Every dead-letter envelope under ``folder`` (JSON lines), late ones excluded."""
    return [
        json.loads(text)
        for path in sorted(folder.rglob("*.jsonl"))
        if "late" not in path.relative_to(folder).parts
        for text in path.read_text(encoding="utf-8").splitlines()
    ]


def payload_of(letter: dict[str, Any]) -> bytes:
    """The original bytes a dead letter carries."""
    return base64.b64decode(letter["payload_b64"])


def metric_rows(folder: Path) -> list[dict[str, Any]]:
    """Every metrics row in the Parquet files under ``folder``, sorted by window and key."""
    rows = [
        row for path in sorted(folder.rglob("*.parquet")) for row in pq.read_table(path).to_pylist()
    ]
    return sorted(rows, key=lambda r: (r["window_start"], r["key"]))


def records_written(folder: Path) -> list[dict[str, Any]]:
    """Every record stream_etl wrote (Parquet) under ``folder``, sorted by ``event_id``."""
    return sorted(
        (
            row
            for path in sorted(folder.rglob("*.parquet"))
            for row in pq.read_table(path).to_pylist()
        ),
        key=lambda r: str(r.get("event_id")),
    )


def digests(folder: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
