"""Formats: JSON, Avro schemaless, Confluent wire format (with the registry's mock:// client)."""

from __future__ import annotations

import io
import json
import pickle
import struct

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from headwater.core.records import SourceRecord
from headwater.io.formats import (
    AvroFormat,
    ConfluentAvroFormat,
    DecodeError,
    EncodeError,
    JsonFormat,
    make_format,
)
from headwater.io.kafka import KafkaRecord

SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [{"name": "id", "type": "long"}, {"name": "name", "type": "string"}],
}


def test_json_decodes_an_object():
    """A JSON object decodes to a dict."""
    assert JsonFormat().decode(b'{"id": 1, "name": "\xc3\xa9"}') == {"id": 1, "name": "é"}


def test_json_decodes_records_carrying_bytes():
    """decode accepts a KafkaRecord (its value) and a SourceRecord (its payload)."""
    record = KafkaRecord("t", 0, 5, None, b'{"a": 1}')
    assert JsonFormat().decode(record) == {"a": 1}
    assert JsonFormat().decode(SourceRecord(b'{"b": 2}')) == {"b": 2}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{", "invalid UTF-8"),
        (b'{"id": ', "invalid JSON"),
        (b"[1, 2]", "expected a JSON object, got a JSON array"),
        (b"42", "got a JSON number"),
        (b"null", "got a JSON null"),
    ],
)
def test_json_rejects_bad_payload_with_reason(payload, reason):
    """Bad bytes raise DecodeError (a ValueError) saying why."""
    with pytest.raises(DecodeError, match=reason):
        JsonFormat().decode(payload)


def test_json_decode_error_never_quotes_the_payload():
    """The reason names the position, not the (possibly sensitive) bytes."""
    with pytest.raises(DecodeError) as caught:
        JsonFormat().decode(b'{"card": 4111111111111111 oops}')
    assert "4111" not in str(caught.value)


def test_json_tombstone_is_a_decode_error():
    """A record without a value (tombstone) is a DecodeError, not a crash."""
    with pytest.raises(DecodeError, match="tombstone"):
        JsonFormat().decode(KafkaRecord("t", 0, 1, b"k", None))


def test_json_encode_round_trips():
    """encode then decode gives the record back."""
    fmt = JsonFormat()
    assert fmt.decode(fmt.encode({"a": [1, 2], "b": "é"})) == {"a": [1, 2], "b": "é"}


def test_json_encode_refuses_unserializable():
    """A value JSON cannot represent raises EncodeError."""
    with pytest.raises(EncodeError, match="JSON"):
        JsonFormat().encode({"a": object()})


def test_avro_round_trip_matches_fastavro_bytes():
    """AvroFormat writes the same bytes as fastavro's schemaless writer and reads them back."""
    fmt = AvroFormat(schema=SCHEMA)
    data = fmt.encode({"id": 3, "name": "x"})
    expected = io.BytesIO()
    fastavro.schemaless_writer(expected, fastavro.parse_schema(SCHEMA), {"id": 3, "name": "x"})
    assert data == expected.getvalue()
    assert fmt.decode(data) == {"id": 3, "name": "x"}


def test_avro_schema_from_file(tmp_path):
    """schema_path reads a .avsc file."""
    path = tmp_path / "event.avsc"
    path.write_text(json.dumps(SCHEMA))
    fmt = AvroFormat(schema_path=path)
    assert fmt.decode(fmt.encode({"id": 1, "name": "a"})) == {"id": 1, "name": "a"}


def test_avro_rejects_truncated_bytes():
    """Bytes cut short raise DecodeError naming truncation."""
    data = AvroFormat(schema=SCHEMA).encode({"id": 1, "name": "hello"})
    with pytest.raises(DecodeError, match="truncated"):
        AvroFormat(schema=SCHEMA).decode(data[:-2])


def test_avro_rejects_trailing_bytes():
    """Bytes left after the record (a wrong schema) raise DecodeError."""
    data = AvroFormat(schema=SCHEMA).encode({"id": 1, "name": "hello"})
    with pytest.raises(DecodeError, match="trailing"):
        AvroFormat(schema=SCHEMA).decode(data + b"\x00\x00")


def test_avro_encode_refuses_record_not_matching_schema():
    """A record missing a field raises EncodeError."""
    with pytest.raises(EncodeError, match="schema"):
        AvroFormat(schema=SCHEMA).encode({"id": 1})


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({}, "schema is required"),
        ({"schema": {"type": "string"}}, "record schema"),
        ({"schema": "{not json"}, "not an Avro schema"),
        ({"schema_path": "/no/such/file.avsc"}, "/no/such/file.avsc"),
        (
            {"schema": {"type": "record", "name": "E", "fields": [{"name": "a", "type": "nope"}]}},
            "not a valid Avro schema",
        ),
    ],
)
def test_avro_validation_names_the_bad_value(kwargs, bad):
    """Bad schema options raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=bad):
        AvroFormat(**kwargs)


def _registry():
    return SchemaRegistryClient.new_client({"url": "mock://"})


def test_confluent_wire_format_bytes_checked_with_fastavro():
    """encode writes magic 0, the registered id, then schemaless Avro readable by fastavro."""
    registry = _registry()
    fmt = ConfluentAvroFormat(registry_client=registry, schema=SCHEMA, subject="events-value")
    data = fmt.encode({"id": 9, "name": "n"})
    magic, schema_id = struct.unpack(">bI", data[:5])
    assert magic == 0
    assert schema_id == registry.get_latest_version("events-value").schema_id
    body = fastavro.schemaless_reader(io.BytesIO(data[5:]), fastavro.parse_schema(SCHEMA), None)
    assert body == {"id": 9, "name": "n"}
    assert fmt.decode(data) == {"id": 9, "name": "n"}


def test_confluent_decode_uses_the_writer_schema_from_registry():
    """A reader without a schema decodes bytes written under any registered schema id."""
    registry = _registry()
    schema_id = registry.register_schema("s", Schema(json.dumps(SCHEMA), "AVRO"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(SCHEMA), {"id": 1, "name": "z"})
    data = struct.pack(">bI", 0, schema_id) + body.getvalue()
    assert ConfluentAvroFormat(registry_client=registry).decode(data) == {"id": 1, "name": "z"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\x01\x00\x00\x00\x01\x02", "wrong magic byte 1"),
        (b"\x00\x00", "truncated Confluent"),
        (b"\x00\x00\x00\x03\xe7\x02", "unknown schema id 999"),
    ],
)
def test_confluent_rejects_bad_payload_with_reason(payload, reason):
    """Wrong magic byte, short header and unknown schema id are DecodeErrors saying so."""
    with pytest.raises(DecodeError, match=reason):
        ConfluentAvroFormat(registry_client=_registry()).decode(payload)


def test_confluent_truncated_body_is_a_decode_error():
    """A valid header followed by a cut Avro body raises DecodeError."""
    fmt = ConfluentAvroFormat(registry_client=_registry(), schema=SCHEMA, subject="s")
    with pytest.raises(DecodeError, match="truncated"):
        fmt.decode(fmt.encode({"id": 1, "name": "abcdef"})[:-3])


def test_confluent_encode_needs_schema_and_subject():
    """encode without a schema/subject raises EncodeError."""
    with pytest.raises(EncodeError, match="subject"):
        ConfluentAvroFormat(registry_client=_registry()).encode({"id": 1})


def test_confluent_format_pickles_without_its_url_client():
    """A URL-built format pickles (the client is rebuilt on the worker) and masks secrets."""
    fmt = ConfluentAvroFormat(
        registry_url="http://registry:8081",
        registry_config={"basic.auth.user.info": "user:pa55word"},
    )
    copy = pickle.loads(pickle.dumps(fmt))  # noqa: S301 - our own bytes
    assert "pa55word" not in repr(copy)
    assert "http://registry:8081" in repr(copy)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({}, "registry_url=None"),
        ({"registry_url": ""}, "registry_url=''"),
        ({"registry_client": object()}, "registry_client=object"),
        ({"registry_url": "mock://", "subject": ""}, "subject=''"),
    ],
)
def test_confluent_validation_names_the_bad_value(kwargs, bad):
    """Bad registry options raise ValueError naming them."""
    with pytest.raises(ValueError, match=bad):
        ConfluentAvroFormat(**kwargs)


def test_make_format_builds_each_cli_name():
    """json, avro and confluent-avro build their formats; None options are ignored."""
    assert isinstance(make_format("json", schema_path=None), JsonFormat)
    assert isinstance(make_format("avro", schema=SCHEMA), AvroFormat)
    assert isinstance(make_format("confluent-avro", registry_url="mock://"), ConfluentAvroFormat)


def test_make_format_rejects_unknown_name_and_options():
    """An unknown name or option raises ValueError naming it."""
    with pytest.raises(ValueError, match="'xml'"):
        make_format("xml")
    with pytest.raises(ValueError, match="'json'"):
        make_format("json", schema=SCHEMA)
