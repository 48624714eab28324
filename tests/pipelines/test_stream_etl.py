"""stream_etl: records validated against an Avro schema, deduplicated, written per window."""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pyarrow.parquet as pq
import pytest

from headwater.pipelines import stream_etl

SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "coupon", "type": ["null", "string"], "default": None},
    ],
}


def _event(i: int, t: int, **extra) -> dict:
    return {
        "event_id": f"e{i}",
        "user_id": f"u{i % 3}",
        "event_time": t,
        "amount": 1.5 * i,
        **extra,
    }


def _run(tmp_path: Path, lines: list[bytes], *extra: str) -> dict:
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "event.avsc").write_text(json.dumps(SCHEMA))
    return stream_etl.run(
        [
            f"--input={tmp_path / 'in.jsonl'}",
            f"--avro_schema={tmp_path / 'event.avsc'}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            "--window=fixed:60s",
            "--output_format=parquet",
            *extra,
        ]
    )


def _written(tmp_path: Path) -> list[dict]:
    return [
        row
        for path in sorted((tmp_path / "out").rglob("*.parquet"))
        for row in pq.read_table(path).to_pylist()
    ]


def _letters(tmp_path: Path) -> list[dict]:
    return [
        json.loads(x)
        for p in sorted((tmp_path / "dlq").glob("*.jsonl"))
        for x in p.read_text().splitlines()
    ]


def test_records_land_in_their_window_folders_once(tmp_path):
    """Valid records are written once, into the folder of their window; dups are dropped."""
    events = [_event(1, 1_000), _event(2, 61_000), _event(1, 1_000), _event(3, 62_000)]
    summary = _run(tmp_path, [json.dumps(e).encode() for e in events])
    assert (summary["records_in"], summary["output"], summary["duplicate"]) == (4, 3, 1)
    assert summary["identity_holds"]
    folders = sorted(p.parent.name for p in (tmp_path / "out").rglob("*.parquet"))
    assert folders == ["window_start=1970-01-01T00:00:00Z", "window_start=1970-01-01T00:01:00Z"]
    assert sorted(r["event_id"] for r in _written(tmp_path)) == ["e1", "e2", "e3"]


def test_schema_drift_goes_to_dead_letters_naming_the_field(tmp_path):
    """Retyped or removed fields are dead letters naming the field; an added optional passes."""
    good = _event(1, 1_000)
    retyped = {**_event(2, 2_000), "amount": "12.5 EUR"}
    removed = {k: v for k, v in _event(3, 3_000).items() if k != "user_id"}
    evolved = _event(4, 4_000, coupon="SPRING")
    summary = _run(tmp_path, [json.dumps(e).encode() for e in (good, retyped, removed, evolved)])
    assert (summary["output"], summary["dead_letter"]) == (2, 2)
    reasons = {
        json.loads(__import__("base64").b64decode(d["payload_b64"]))["event_id"]: d["error_message"]
        for d in _letters(tmp_path)
    }
    assert "amount" in reasons["e2"]
    assert "user_id" in reasons["e3"]
    assert all(d["stage"] == "validate" for d in _letters(tmp_path))
    assert sorted(r["event_id"] for r in _written(tmp_path)) == ["e1", "e4"]


def test_avro_output_uses_the_schema(tmp_path):
    """--output_format=avro writes container files with the given schema."""
    summary = _run(tmp_path, [json.dumps(_event(1, 1_000)).encode()], "--output_format=avro")
    assert summary["output"] == 1
    [path] = list((tmp_path / "out").rglob("*.avro"))
    with path.open("rb") as handle:
        reader = fastavro.reader(handle)
        assert reader.writer_schema["name"] == "Event"
        assert [r["event_id"] for r in reader] == ["e1"]


def test_unreadable_schema_is_refused_naming_the_flag(tmp_path):
    """A bad --avro_schema fails before the run with a message naming it."""
    (tmp_path / "in.jsonl").write_text("{}\n")
    (tmp_path / "bad.avsc").write_text("{not json")
    with pytest.raises(ValueError, match="--avro_schema"):
        stream_etl.run(
            [
                f"--input={tmp_path / 'in.jsonl'}",
                f"--avro_schema={tmp_path / 'bad.avsc'}",
                f"--output={tmp_path / 'o'}",
                f"--dead_letter={tmp_path / 'd'}",
            ]
        )
