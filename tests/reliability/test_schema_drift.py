"""Schema drift through ``stream_etl --avro_schema``: incompatible records are dead letters naming
the field; compatible evolution passes.

A producer changes its records mid-stream (the same run sees records before and after the
change). Records that no longer match the pipeline's schema -- a required field removed, a field
retyped -- become ``validate`` dead letters whose reason names the field, with the original
bytes; the rest are written. A field added by the producer is not in the schema and is ignored;
a schema evolved with an optional field (a default, or a union with null) accepts old and new
records alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
from _reliability import dead_letters as read_dead_letters
from _reliability import event, line, payload_of, run_built, source_of

from headwater.pipelines import stream_etl
from headwater.testing.assertions import assert_accounting

V1 = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "amount", "type": "double"},
    ],
}
# Compatible evolution: an optional (nullable) field and a field with a default.
V2 = {
    **V1,
    "fields": [
        *V1["fields"],
        {"name": "note", "type": ["null", "string"], "default": None},
        {"name": "currency", "type": "string", "default": "EUR"},
    ],
}


def _run(tmp_path: Path, schema: dict[str, Any], payloads: list[bytes]) -> Any:
    schema_path = tmp_path / "schema.avsc"
    schema_path.write_text(json.dumps(schema))
    return run_built(
        stream_etl,
        [
            "--event_time_field=event_time",
            "--event_time_unit=ms",
            "--id_field=event_id",
            "--window=fixed:60s",
            "--allowed_lateness=0s",
            f"--avro_schema={schema_path}",
            "--output_format=avro",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
        ],
        source=source_of(payloads),
    )


def _written(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.rglob("*.avro")):
        with path.open("rb") as handle:
            rows.extend(fastavro.reader(handle))
    return sorted(rows, key=lambda r: r["event_id"])


def test_removed_and_retyped_fields_become_dead_letters_naming_the_field(tmp_path):
    """Mid-stream, records without 'amount' or with a string 'amount' are dead letters naming it."""
    before = [line(event(n)) for n in range(1, 5)]
    removed = [line({k: v for k, v in event(n).items() if k != "amount"}) for n in (5, 6)]
    retyped = [line(event(n, amount=f"{n}.50")) for n in (7, 8, 9)]
    after = [line(event(n)) for n in range(10, 13)]
    payloads = before + removed + retyped + after
    result = _run(tmp_path, V1, payloads)
    assert_accounting(result, records_in=12, output=7, dead_letter=5, duplicate=0, late=0)
    letters = read_dead_letters(tmp_path / "dlq")
    assert sorted(payload_of(x) for x in letters) == sorted(removed + retyped)
    for letter in letters:
        assert letter["stage"] == "validate"
        assert "amount" in letter["error_message"], letter["error_message"]
        assert "Event" in letter["error_message"]
    retyped_reasons = [x["error_message"] for x in letters if payload_of(x) in retyped]
    assert all("of type <class 'str'> expected double" in r for r in retyped_reasons)
    written = _written(tmp_path / "out")
    assert [r["event_id"] for r in written] == sorted(f"e{n}" for n in (*range(1, 5), 10, 11, 12))


def test_retyped_id_and_time_fields_name_their_field(tmp_path):
    """A numeric event_id and a float event_time are dead letters naming each field."""
    payloads = [
        line(event(1)),
        line(event(2) | {"event_id": 2}),
        line(event(3) | {"event_time": 1_700_000_003_000.5}),
    ]
    result = _run(tmp_path, V1, payloads)
    assert_accounting(result, records_in=3, output=1, dead_letter=2)
    reasons = {payload_of(x): x["error_message"] for x in read_dead_letters(tmp_path / "dlq")}
    assert "event_id" in reasons[payloads[1]]
    assert "event_time" in reasons[payloads[2]]


def test_field_added_by_the_producer_passes_and_is_not_written(tmp_path):
    """A producer adding a field unknown to the schema keeps its records flowing."""
    payloads = [
        line(event(1)),
        line(event(2) | {"coupon": "X1"}),
        line(event(3) | {"coupon": None}),
    ]
    result = _run(tmp_path, V1, payloads)
    assert_accounting(result, records_in=3, output=3, dead_letter=0)
    written = _written(tmp_path / "out")
    assert [r["event_id"] for r in written] == ["e1", "e2", "e3"]
    assert all("coupon" not in r for r in written)


def test_compatible_evolution_with_optional_fields_accepts_old_and_new_records(tmp_path):
    """Schema v2 (nullable note, currency with default) accepts v1 records and v2 records."""
    old = [line(event(n)) for n in (1, 2)]
    new = [
        line(event(3) | {"note": "gift", "currency": "USD"}),
        line(event(4) | {"note": None}),
    ]
    bad = [line(event(5) | {"note": 42})]  # an optional field with the wrong type still fails
    result = _run(tmp_path, V2, old + new + bad)
    assert_accounting(result, records_in=5, output=4, dead_letter=1)
    (letter,) = read_dead_letters(tmp_path / "dlq")
    assert "note" in letter["error_message"]
    written = {r["event_id"]: r for r in _written(tmp_path / "out")}
    assert sorted(written) == ["e1", "e2", "e3", "e4"]
    assert written["e1"]["note"] is None
    assert written["e1"]["currency"] == "EUR"
    assert written["e3"]["note"] == "gift"
    assert written["e3"]["currency"] == "USD"
