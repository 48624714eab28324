"""Bad input through real pipelines: every bad record is a dead letter with its reason and bytes.

Each case runs ``windowed_metrics`` (JSON or Avro, injected source, real Parquet and dead-letter
sinks) or :class:`ComputeWindowedMetrics` (Confluent wire format, which needs a registry client
the CLI flags cannot inject) over two good records and one bad one, then asserts the accounting
identity, the exact counters, the dead letter's stage and reason, that it carries the original
bytes unchanged, and that the two good records made it into the metric rows.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import apache_beam as beam
import fastavro
import pytest
from _reliability import METRICS_FLAGS, event, line, metric_rows, payload_of, run_built, source_of
from _reliability import dead_letters as read_dead_letters
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows
from confluent_kafka.schema_registry import SchemaRegistryClient

from headwater.core.accounting import Accounting
from headwater.core.records import SourceRecord
from headwater.io.formats import ConfluentAvroFormat
from headwater.pipelines import windowed_metrics
from headwater.testing.assertions import assert_accounting
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

EVENT_SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": "string"},
        {"name": "event_time", "type": "long"},
        {"name": "amount", "type": "double"},
    ],
}

MAX_BYTES = 262_144  # above the 200 KB nested case, below the huge one
NESTED = b'{"event_id":"n","deep":' + b"[" * 100_000 + b"]" * 100_000 + b"}"

# (case, bad payload, stage, words the reason must contain)
JSON_CASES = [
    ("truncated_json", line(event(9))[:25], "decode", "invalid JSON"),
    ("invalid_json", b"{event_id: 9, user_id: u1}", "decode", "invalid JSON"),
    ("json_array_not_object", b"[1, 2, 3]", "decode", "expected a JSON object"),
    ("empty_payload", b"", "decode", "invalid JSON"),
    ("invalid_utf8", b'{"event_id":"e9","user_id":"u\xff\xfe1"}', "decode", "invalid UTF-8"),
    ("deeply_nested_100k_lists", NESTED, "decode", "nested too deeply"),
    (
        "huge_record",
        line(event(9, user="u" * (2 * MAX_BYTES))),
        "decode",
        "max_record_bytes=262144",
    ),
    (
        "missing_event_time",
        line({k: v for k, v in event(9).items() if k != "event_time"}),
        "event_time",
        "'event_time' is missing",
    ),
    ("non_numeric_event_time", line(event(9, time_ms="soon")), "event_time", "is not a number"),
    ("event_time_null", line(event(9, time_ms=None) | {"event_time": None}), "event_time", "null"),
    (
        "far_future_event_time_year_10000",
        line(event(9, time_ms=253_402_300_800_000)),
        "event_time",
        "after 9999-12-31",
    ),
    ("far_future_event_time_1e30", line(event(9, time_ms=1e30)), "event_time", "after 9999-12-31"),
    ("pre_1970_event_time", line(event(9, time_ms=-1)), "event_time", "before 1970-01-01"),
    ("empty_key", line(event(9, user="")), "validate", "'user_id' is empty"),
    (
        "missing_key",
        line({k: v for k, v in event(9).items() if k != "user_id"}),
        "validate",
        "user_id",
    ),
    ("non_numeric_amount", line(event(9, amount="12.5")), "validate", "'amount'='12.5'"),
    (
        "nan_amount",
        b'{"event_id":"e9","user_id":"u1","event_time":1700000009000,"amount":NaN}',
        "validate",
        "amount",
    ),
]


def _run_json(tmp_path: Path, payloads: list[bytes], *extra: str) -> Any:
    return run_built(
        windowed_metrics,
        [
            *METRICS_FLAGS,
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            f"--max_record_bytes={MAX_BYTES}",
            *extra,
        ],
        source=source_of(payloads),
    )


def _check_one_bad(tmp_path: Path, result: Any, bad: bytes, stage: str, words: str) -> None:
    assert_accounting(result, records_in=3, output=2, duplicate=0, dead_letter=1, late=0)
    (letter,) = read_dead_letters(tmp_path / "dlq")
    assert letter["stage"] == stage
    assert words in letter["error_message"], letter["error_message"]
    assert payload_of(letter) == bad  # the original bytes, unchanged
    assert letter["origin"] == {"file": "input.jsonl", "line": 3}
    rows = metric_rows(tmp_path / "out")
    assert sum(r["count"] for r in rows) == 2


@pytest.mark.parametrize(
    ("bad", "stage", "words"),
    [case[1:] for case in JSON_CASES],
    ids=[case[0] for case in JSON_CASES],
)
def test_bad_json_record_becomes_dead_letter_with_reason(tmp_path, bad, stage, words):
    """A bad JSON record is one dead letter naming the cause; the good records are aggregated."""
    result = _run_json(tmp_path, [line(event(1)), line(event(2)), bad])
    _check_one_bad(tmp_path, result, bad, stage, words)


def _avro(record: dict[str, Any], schema: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(schema), record)
    return buffer.getvalue()


OTHER_SCHEMA = {
    "type": "record",
    "name": "Other",
    "fields": [{"name": "flag", "type": "boolean"}, {"name": "count", "type": "long"}],
}

AVRO_CASES = [
    ("avro_truncated", _avro(event(9), EVENT_SCHEMA)[:-3], "truncated Avro record"),
    # Bytes of another schema read as truncated or invalid, depending on the bytes.
    ("avro_wrong_schema", _avro({"flag": True, "count": 77}, OTHER_SCHEMA), "Avro record"),
    (
        "avro_trailing_bytes",
        _avro(event(9), EVENT_SCHEMA) + b"\x00\x01",
        "2 trailing bytes after the record",
    ),
    ("avro_empty", b"", "truncated Avro record"),
]


@pytest.mark.parametrize(
    ("bad", "words"), [case[1:] for case in AVRO_CASES], ids=[case[0] for case in AVRO_CASES]
)
def test_bad_avro_record_becomes_dead_letter_with_reason(tmp_path, bad, words):
    """Truncated Avro or Avro written with another schema is a decode dead letter."""
    schema_path = tmp_path / "event.avsc"
    schema_path.write_text(json.dumps(EVENT_SCHEMA))
    good = [_avro(event(1), EVENT_SCHEMA), _avro(event(2), EVENT_SCHEMA)]
    result = _run_json(
        tmp_path,
        [*good, bad],
        "--source=kafka",  # Avro binary per record is the Kafka layout (files are containers)
        "--format=avro",
        f"--avro_schema={schema_path}",
    )
    _check_one_bad(tmp_path, result, bad, "decode", words)


# --- Confluent wire format ---------------------------------------------------------------------

_REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})


class _SharedMockRegistry:
    """A picklable handle on this module's mock registry (workers run in this process)."""

    def get_schema(self, schema_id: int) -> Any:
        return _REGISTRY.get_schema(schema_id)

    def register_schema(self, subject: str, schema: Any) -> Any:
        return _REGISTRY.register_schema(subject, schema)


def _confluent_format() -> ConfluentAvroFormat:
    return ConfluentAvroFormat(
        registry_client=_SharedMockRegistry(), schema=EVENT_SCHEMA, subject="events-value"
    )


CONFLUENT_CASES = [
    ("unknown_schema_id", struct.pack(">bI", 0, 987_654) + b"\x02a", "unknown schema id 987654"),
    ("wrong_magic_byte", b"\x01" + _confluent_format().encode(event(9))[1:], "wrong magic byte 1"),
    ("plain_json_not_wire_format", line(event(9)), "wrong magic byte 123"),
    ("truncated_header", b"\x00\x00\x00", "the header alone is 5"),
    ("truncated_body", _confluent_format().encode(event(9))[:-4], "truncated Avro record"),
]


@pytest.mark.parametrize(
    ("bad", "words"),
    [case[1:] for case in CONFLUENT_CASES],
    ids=[case[0] for case in CONFLUENT_CASES],
)
def test_bad_confluent_wire_record_becomes_dead_letter(bad, words):
    """Unknown schema ids, wrong magic bytes and truncation are decode dead letters."""
    fmt = _confluent_format()
    good = [fmt.encode(event(1)), fmt.encode(event(2))]
    p = beam.Pipeline("FnApiRunner")
    result_pcolls = (
        p
        | beam.Create(
            [
                SourceRecord(x, {"topic": "t", "partition": 0, "offset": i})
                for i, x in enumerate([*good, bad])
            ]
        )
        | ComputeWindowedMetrics(
            decode=fmt.decode,
            event_time=EventTimeExtractor(field="event_time", unit="ms"),
            dedup=DeduplicateById(id_field="event_id", horizon="10m"),
            window="fixed:60s",
            allowed_lateness=0,
            key_field="user_id",
            metrics="count",
        )
    )
    letters = result_pcolls.dead_letter | beam.Map(
        lambda d: (d.stage, words in d.error_message, d.payload, d.origin["offset"])
    )
    assert_that(letters, equal_to([("decode", True, bad, 2)]), label="one decode dead letter")
    counts = (
        result_pcolls.rows
        | "Global" >> beam.WindowInto(GlobalWindows())
        | "Count" >> beam.Map(lambda r: r["count"])
        | "Total" >> beam.CombineGlobally(sum)
    )
    assert_that(counts, equal_to([2]), label="good records aggregated")
    result = p.run()
    result.wait_until_finish()
    assert_accounting(result, records_in=3, output=2, dead_letter=1, duplicate=0, late=0)


def test_all_bad_inputs_in_one_run_are_all_accounted_for(tmp_path):
    """Every bad JSON case together with good records: each bad one is exactly one dead letter."""
    bad = [case[1] for case in JSON_CASES]
    good = [line(event(n)) for n in range(1, 21)]
    payloads = [x for pair in zip(good, bad, strict=False) for x in pair] + good[len(bad) :]
    result = _run_json(tmp_path, payloads)
    accounting: Accounting = assert_accounting(
        result, records_in=len(payloads), output=len(good), dead_letter=len(bad)
    )
    letters = read_dead_letters(tmp_path / "dlq")
    assert sorted(payload_of(x) for x in letters) == sorted(bad)
    assert accounting.records_in == len(good) + len(bad)
    assert sum(r["count"] for r in metric_rows(tmp_path / "out")) == len(good)
