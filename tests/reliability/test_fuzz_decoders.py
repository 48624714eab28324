"""Property-based: random bytes never crash a decoder or a pipeline, and are all accounted for.

Each decoder (:class:`JsonFormat`, :class:`AvroFormat`, :class:`ConfluentAvroFormat` over the
mock Schema Registry) either returns a dict or raises :class:`DecodeError` -- no other exception
escapes, whatever the bytes. Through a pipeline, random payloads mixed with valid ones end in
``main`` or ``dead_letter``, never lost: ``main + dead_letter == input`` and the accounting
identity holds.
"""

from __future__ import annotations

import io
import json
from typing import Any

import apache_beam as beam
import fastavro
import pytest
from _reliability import T0_MS, event, line
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.core.records import SourceRecord
from headwater.io.formats import AvroFormat, ConfluentAvroFormat, DecodeError, JsonFormat
from headwater.testing.assertions import assert_accounting
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.parse import ParseRecords
from headwater.transforms.process import ProcessEvents
from headwater.windowing.eventtime import EventTimeExtractor

settings.register_profile(
    "reliability",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# One pipeline per example: few examples, many records each.
settings.register_profile("reliability-pipeline", max_examples=8, deadline=None)

SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "user_id", "type": ["null", "string"], "default": None},
        {"name": "event_time", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}, "default": []},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
    ],
}
_REGISTRY = SchemaRegistryClient.new_client({"url": "mock://"})


class _SharedMockRegistry:
    """A picklable handle on this module's mock registry."""

    def get_schema(self, schema_id: int) -> Any:
        return _REGISTRY.get_schema(schema_id)

    def register_schema(self, subject: str, schema: Any) -> Any:
        return _REGISTRY.register_schema(subject, schema)


CONFLUENT = ConfluentAvroFormat(
    registry_client=_SharedMockRegistry(), schema=SCHEMA, subject="fuzz-value"
)
VALID_AVRO = {
    "event_id": "e1",
    "user_id": "u1",
    "event_time": T0_MS,
    "amount": 2.5,
    "tags": ["x"],
    "kind": "B",
}
SCHEMA_ID = CONFLUENT.schema_id()  # registers the schema: ids 1.. are known to the decoder

# Bytes that look a bit like the real thing hit deeper paths than uniform noise.
json_like = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
            max_leaves=20,
        ),
    ),
    st.builds(lambda b, i: line(event(1))[:i] + b, st.binary(max_size=20), st.integers(0, 80)),
)


def _avro_bytes() -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(SCHEMA), VALID_AVRO)
    return buffer.getvalue()


avro_like = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda i, b: _avro_bytes()[:i] + b, st.integers(0, 40), st.binary(max_size=10)),
    st.builds(
        lambda i, x: bytes(c ^ x if n == i else c for n, c in enumerate(_avro_bytes())),
        st.integers(0, 40),
        st.integers(1, 255),
    ),
)
confluent_like = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda b: b"\x00" + b, st.binary(max_size=60)),
    st.builds(
        lambda i, b: CONFLUENT.encode(VALID_AVRO)[:i] + b,
        st.integers(0, 45),
        st.binary(max_size=10),
    ),
)


def _decodes_or_refuses(decode: Any, payload: bytes) -> None:
    try:
        record, reason = decode(payload), None
    except DecodeError as exc:
        record, reason = None, str(exc)
    assert isinstance(record, dict) or reason  # a record, or a readable reason


@settings(settings.get_profile("reliability"))
@given(json_like)
def test_json_format_random_bytes_decode_or_raise_decode_error(payload):
    """JsonFormat: any bytes give a dict or a DecodeError, nothing else."""
    _decodes_or_refuses(JsonFormat().decode, payload)


@settings(settings.get_profile("reliability"))
@given(avro_like)
def test_avro_format_random_bytes_decode_or_raise_decode_error(payload):
    """AvroFormat: any bytes give a dict or a DecodeError, nothing else."""
    _decodes_or_refuses(AvroFormat(schema=SCHEMA).decode, payload)


@settings(settings.get_profile("reliability"))
@given(confluent_like)
def test_confluent_format_random_bytes_decode_or_raise_decode_error(payload):
    """ConfluentAvroFormat (mock registry): any bytes give a dict or a DecodeError."""
    _decodes_or_refuses(CONFLUENT.decode, payload)


def test_json_format_deep_nesting_is_a_decode_error():
    """100k nested lists raise DecodeError, not RecursionError."""
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(DecodeError, match="nested too deeply"):
        JsonFormat().decode(nested)


@settings(settings.get_profile("reliability-pipeline"))
@given(st.lists(st.one_of(json_like, st.just(line(event(2)))), min_size=1, max_size=60))
def test_parse_records_in_a_pipeline_accounts_for_every_random_payload(payloads):
    """ParseRecords over random bytes: main + dead_letter == input, no exception escapes."""
    fmt = JsonFormat()
    with beam.Pipeline("FnApiRunner") as p:
        parsed = (
            p
            | beam.Create([SourceRecord(x, {"line": i}) for i, x in enumerate(payloads)])
            | ParseRecords(
                decode=fmt.decode,
                event_time=EventTimeExtractor(field="event_time", unit="ms"),
                max_record_bytes=150,
            )
        )
        both = (
            (parsed.main | "M" >> beam.Map(lambda _: "main")),
            (parsed.dead_letter | "D" >> beam.Map(lambda _: "dead_letter")),
        ) | beam.Flatten()
        total = both | beam.combiners.Count.Globally()
        assert_that(total, equal_to([len(payloads)]), label="main + dead_letter == input")


@settings(settings.get_profile("reliability-pipeline"))
@given(st.lists(st.one_of(confluent_like, st.just(CONFLUENT.encode(VALID_AVRO))), max_size=60))
def test_process_events_accounts_for_random_confluent_payloads(payloads):
    """ProcessEvents over random wire-format bytes: the accounting identity holds."""
    p = beam.Pipeline("FnApiRunner")
    out = (
        p
        | beam.Create([SourceRecord(x, {"offset": i}) for i, x in enumerate(payloads)])
        | ProcessEvents(
            decode=CONFLUENT.decode,
            event_time=EventTimeExtractor(field="event_time", unit="ms"),
            dedup=DeduplicateById(id_field="event_id", horizon="10m"),
            window="fixed:60s",
            allowed_lateness=0,
        )
    )
    _ = out.main
    result = p.run()
    result.wait_until_finish()
    accounting = assert_accounting(result, records_in=len(payloads), late=0)
    assert accounting.output + accounting.duplicate + accounting.dead_letter == len(payloads)
