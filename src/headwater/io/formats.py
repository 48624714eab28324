"""Record formats shared by Kafka and files: JSON, Avro binary, and the Confluent wire format.

A format turns one record's bytes into a ``dict`` (:meth:`decode`) and back (:meth:`encode`).
Decoding never guesses: bytes that are not a valid record raise :class:`DecodeError` (a
``ValueError``) with a readable reason that never quotes the payload, so a pipeline can route the
record to its dead-letter output with :class:`~headwater.transforms.deadletter.ApplyOrDeadLetter`
and keep the original bytes and coordinates there::

    routed = records | ApplyOrDeadLetter(JsonFormat().decode, stage="decode")

``decode`` accepts the bytes themselves or any source record that carries them
(:class:`~headwater.io.kafka.KafkaRecord`'s ``value``,
:class:`~headwater.core.records.SourceRecord`'s ``payload``).

* :class:`JsonFormat` -- UTF-8 JSON, one object per record.
* :class:`AvroFormat` -- Avro binary without a container or header ("schemaless"), with the
  writer schema from a ``.avsc`` file or a dict (fastavro).
* :class:`ConfluentAvroFormat` -- the Confluent wire format: magic byte ``0``, the 4-byte
  big-endian schema id, then Avro binary; schemas come from a Schema Registry (confluent-kafka's
  client, so ``mock://`` works in tests).

:func:`make_format` builds one from the names the CLI uses: ``json``, ``avro``,
``confluent-avro``. Formats are picklable (Beam ships them to workers).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "AvroFormat",
    "ConfluentAvroFormat",
    "DecodeError",
    "EncodeError",
    "Format",
    "FormatError",
    "JsonFormat",
    "make_format",
    "FORMAT_NAMES",
]

_MAGIC_BYTE = 0
_WIRE_HEADER = struct.Struct(">bI")

#: Registry client settings whose values must never be shown (repr, errors, logs).
_REGISTRY_SECRET_KEYS = ("basic.auth.user.info", "bearer.auth.token", "ssl.key.location")


class FormatError(ValueError):
    """A record could not be converted by a format."""


class DecodeError(FormatError):
    """Bytes that are not a valid record in the expected format; the message says why.

    >>> str(DecodeError("invalid JSON: Expecting value at line 1 column 1"))
    'invalid JSON: Expecting value at line 1 column 1'
    """


class EncodeError(FormatError):
    """A record that cannot be written in the format (wrong type, schema mismatch)."""


def _payload_bytes(payload: Any) -> bytes:
    """The bytes of ``payload``: bytes-like, or a source record's ``value``/``payload``."""
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)
    value = getattr(payload, "value", b"")
    if isinstance(value, bytes) and hasattr(payload, "value"):
        return value
    if value is None:
        raise DecodeError("the record has no value (a Kafka tombstone)")
    inner = getattr(payload, "payload", None)
    if isinstance(inner, bytes):
        return inner
    raise DecodeError(f"expected bytes or a source record, got {type(payload).__name__}")


class Format:
    """The interface of a record format: ``decode(bytes) -> dict`` and ``encode(dict) -> bytes``."""

    #: The name :func:`make_format` knows this format by.
    name = ""

    def decode(self, payload: Any) -> dict[str, Any]:
        """One record's bytes (or a record carrying them) as a dict; :class:`DecodeError` if not."""
        raise NotImplementedError

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """``record`` as bytes in this format; :class:`EncodeError` if it cannot be written."""
        raise NotImplementedError

    def __call__(self, payload: Any) -> dict[str, Any]:
        return self.decode(payload)


class JsonFormat(Format):
    """UTF-8 JSON, one top-level object per record.

    Decoding is ``json.loads`` on the bytes (no intermediate string); anything but an object --
    an array, a number, ``null`` -- is a :class:`DecodeError`. Encoding is compact JSON in UTF-8
    with keys in the record's order.

    >>> JsonFormat().decode(b'{"id": 1}')
    {'id': 1}
    >>> JsonFormat().encode({"id": 1})
    b'{"id":1}'
    """

    name = "json"

    def decode(self, payload: Any) -> dict[str, Any]:
        if type(payload) is not bytes:
            payload = _payload_bytes(payload)
        try:
            record = json.loads(payload)
        except UnicodeDecodeError as exc:
            raise DecodeError(
                f"invalid UTF-8 at byte {exc.start} ({exc.reason}); JSON records must be UTF-8"
            ) from None
        except ValueError as exc:  # json.JSONDecodeError names the position, never the text
            raise DecodeError(f"invalid JSON: {exc}") from None
        except RecursionError:  # e.g. 100k nested lists: a bad record, not a crash
            raise DecodeError(
                "invalid JSON: nested too deeply for the decoder (RecursionError)"
            ) from None
        if type(record) is not dict:
            raise DecodeError(f"expected a JSON object, got a JSON {_json_kind(record)}")
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        if not isinstance(record, Mapping):
            raise EncodeError(f"expected a dict, got {type(record).__name__}")
        try:
            return json.dumps(dict(record), separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot write the record as JSON: {exc}") from None

    def __repr__(self) -> str:
        return "JsonFormat()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonFormat)

    def __hash__(self) -> int:
        return hash(JsonFormat)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array"


def _load_schema(schema_path: str | Path | None, schema: Any, *, required: bool) -> Any:
    if schema_path is not None and schema is not None:
        raise ValueError(
            f"schema_path={str(schema_path)!r} and schema=... are both set; give one of them"
        )
    if schema_path is not None:
        try:
            text = Path(schema_path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"schema_path={str(schema_path)!r} cannot be read: {exc}") from None
        try:
            schema = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"schema_path={str(schema_path)!r} is not JSON: {exc}") from None
    elif isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise ValueError(
                f"schema={schema[:80]!r} is not an Avro schema in JSON: {exc}"
            ) from None
    if schema is None:
        if required:
            raise ValueError("an Avro schema is required: give schema_path=... or schema=...")
        return None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError(
            f"schema={_short(schema)} must be an Avro record schema "
            '(a JSON object with "type": "record")'
        )
    try:
        return fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises several types for a bad schema
        raise ValueError(f"schema={_short(schema)} is not a valid Avro schema: {exc}") from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _avro_read(buffer: io.BytesIO, writer_schema: Any, reader_schema: Any, size: int) -> Any:
    try:
        record = fastavro.schemaless_reader(buffer, writer_schema, reader_schema)
    except (EOFError, StopIteration, IndexError, struct.error):
        raise DecodeError(
            f"truncated Avro record: the schema needs more than {size} bytes"
        ) from None
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"invalid Avro record: a string field is not UTF-8 ({exc.reason})"
        ) from None
    except Exception as exc:  # fastavro's schema-resolution and corrupt-data errors
        raise DecodeError(f"invalid Avro record: {type(exc).__name__}: {exc}") from None
    if buffer.tell() != size:
        raise DecodeError(
            f"invalid Avro record: {size - buffer.tell()} trailing bytes after the record "
            f"(read {buffer.tell()} of {size}); wrong schema?"
        )
    if not isinstance(record, dict):
        raise DecodeError(f"expected an Avro record, got {type(record).__name__}")
    return record


def _avro_write(record: Mapping[str, Any], schema: Any, buffer: io.BytesIO) -> None:
    if not isinstance(record, Mapping):
        raise EncodeError(f"expected a dict, got {type(record).__name__}")
    try:
        fastavro.schemaless_writer(buffer, schema, dict(record))
    except Exception as exc:  # fastavro raises ValueError/TypeError/KeyError on a mismatch
        raise EncodeError(f"the record does not match the Avro schema: {exc}") from None


class AvroFormat(Format):
    """Avro binary, one record per payload, no container or header (fastavro's "schemaless").

    The writer schema comes from ``schema_path`` (a ``.avsc`` file) or ``schema`` (a dict or its
    JSON text) and must be a record schema. Decoding refuses truncated bytes and bytes left over
    after the record (the usual sign of a wrong schema).

    >>> fmt = AvroFormat(schema={"type": "record", "name": "E",
    ...                          "fields": [{"name": "id", "type": "long"}]})
    >>> fmt.decode(fmt.encode({"id": 7}))
    {'id': 7}
    """

    name = "avro"

    def __init__(self, *, schema_path: str | Path | None = None, schema: Any = None):
        self._schema_path = None if schema_path is None else str(schema_path)
        self._schema = _load_schema(schema_path, schema, required=True)

    @property
    def schema(self) -> Any:
        """The parsed Avro schema."""
        return self._schema

    def decode(self, payload: Any) -> dict[str, Any]:
        if type(payload) is not bytes:
            payload = _payload_bytes(payload)
        record: dict[str, Any] = _avro_read(io.BytesIO(payload), self._schema, None, len(payload))
        return record

    def encode(self, record: Mapping[str, Any]) -> bytes:
        buffer = io.BytesIO()
        _avro_write(record, self._schema, buffer)
        return buffer.getvalue()

    def __repr__(self) -> str:
        where = self._schema_path or self._schema.get("name", "?")
        return f"AvroFormat(schema={where!r})"


class ConfluentAvroFormat(Format):
    """The Confluent wire format: magic byte ``0``, a 4-byte schema id, then Avro binary.

    Decoding looks the writer schema up in the Schema Registry by the id in the payload (once per
    id; cached) and reads the record with it, resolved to ``schema`` when one is given (the
    reader schema). Encoding needs ``schema`` and ``subject`` (e.g. ``"orders-value"``): it
    registers the schema under the subject once and prefixes each record with its id.

    The registry is ``registry_url`` (``registry_config`` adds client settings such as
    ``basic.auth.user.info``, masked in ``repr`` and errors) or a ready ``registry_client``
    (e.g. ``SchemaRegistryClient.new_client({"url": "mock://"})`` in tests; it must be
    picklable to run on workers). A client built from the URL is created lazily on each worker.

    >>> from confluent_kafka.schema_registry import SchemaRegistryClient
    >>> fmt = ConfluentAvroFormat(
    ...     registry_client=SchemaRegistryClient.new_client({"url": "mock://"}),
    ...     schema={"type": "record", "name": "E", "fields": [{"name": "id", "type": "long"}]},
    ...     subject="events-value")
    >>> data = fmt.encode({"id": 7})
    >>> data[0], fmt.decode(data)
    (0, {'id': 7})
    """

    name = "confluent-avro"

    def __init__(
        self,
        *,
        registry_url: str | None = None,
        registry_client: Any = None,
        registry_config: Mapping[str, Any] | None = None,
        schema: Any = None,
        schema_path: str | Path | None = None,
        subject: str | None = None,
    ):
        if (registry_url is None) == (registry_client is None):
            raise ValueError(
                f"registry_url={registry_url!r} and registry_client=... : give exactly one of them"
            )
        if registry_url is not None and (not isinstance(registry_url, str) or not registry_url):
            raise ValueError(f"registry_url={registry_url!r} must be a non-empty URL string")
        if registry_client is not None and not callable(
            getattr(registry_client, "get_schema", None)
        ):
            raise ValueError(
                f"registry_client={type(registry_client).__name__} has no get_schema()"
            )
        if registry_config is not None and not isinstance(registry_config, Mapping):
            raise ValueError(f"registry_config={type(registry_config).__name__} must be a dict")
        if subject is not None and (not isinstance(subject, str) or not subject):
            raise ValueError(f"subject={subject!r} must be a non-empty string")
        self._registry_url = registry_url
        self._registry_config = dict(registry_config or {})
        self._client = registry_client
        self._owns_client = registry_client is None
        self._reader_schema = _load_schema(schema_path, schema, required=False)
        self._subject = subject
        self._writers: dict[int, Any] = {}
        self._schema_id: int | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_writers"] = {}
        if self._owns_client:
            state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _registry(self) -> Any:
        if self._client is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._client = SchemaRegistryClient(
                {**self._registry_config, "url": self._registry_url}
            )
        return self._client

    def _writer_schema(self, schema_id: int) -> Any:
        writer = self._writers.get(schema_id)
        if writer is not None:
            return writer
        with self._lock:
            try:
                registered = self._registry().get_schema(schema_id)
            except Exception as exc:  # SchemaRegistryError, or a transport error
                raise DecodeError(
                    f"unknown schema id {schema_id}: the registry answered "
                    f"{_scrub(str(exc), self._registry_config)}"
                ) from None
            if getattr(registered, "schema_type", "AVRO") not in (None, "AVRO"):
                raise DecodeError(
                    f"schema id {schema_id} is a {registered.schema_type} schema, not Avro"
                )
            try:
                writer = fastavro.parse_schema(json.loads(registered.schema_str))
            except Exception as exc:
                raise DecodeError(
                    f"schema id {schema_id} is not a valid Avro schema: {exc}"
                ) from None
            self._writers[schema_id] = writer
        return writer

    def decode(self, payload: Any) -> dict[str, Any]:
        if type(payload) is not bytes:
            payload = _payload_bytes(payload)
        if len(payload) < _WIRE_HEADER.size:
            raise DecodeError(
                f"truncated Confluent wire-format record: {len(payload)} bytes, the header alone "
                f"is {_WIRE_HEADER.size}"
            )
        magic, schema_id = _WIRE_HEADER.unpack_from(payload)
        if magic != _MAGIC_BYTE:
            raise DecodeError(
                f"wrong magic byte {payload[0]} (expected {_MAGIC_BYTE}): "
                "not the Confluent wire format"
            )
        writer = self._writer_schema(schema_id)
        buffer = io.BytesIO(payload)
        buffer.seek(_WIRE_HEADER.size)
        record: dict[str, Any] = _avro_read(buffer, writer, self._reader_schema, len(payload))
        return record

    def schema_id(self) -> int:
        """The id of ``schema`` under ``subject`` (registered on first use)."""
        if self._schema_id is None:
            if self._reader_schema is None or self._subject is None:
                raise EncodeError(
                    "ConfluentAvroFormat needs schema=... and subject=... to encode records"
                )
            from confluent_kafka.schema_registry import Schema

            try:
                self._schema_id = int(
                    self._registry().register_schema(
                        self._subject, Schema(json.dumps(self._reader_schema), "AVRO")
                    )
                )
            except Exception as exc:
                raise EncodeError(
                    f"cannot register the schema under subject {self._subject!r}: "
                    f"{_scrub(str(exc), self._registry_config)}"
                ) from None
        return self._schema_id

    def encode(self, record: Mapping[str, Any]) -> bytes:
        schema_id = self.schema_id()
        buffer = io.BytesIO()
        buffer.write(_WIRE_HEADER.pack(_MAGIC_BYTE, schema_id))
        _avro_write(record, self._reader_schema, buffer)
        return buffer.getvalue()

    def __repr__(self) -> str:
        registry = self._registry_url if self._registry_url else type(self._client).__name__
        config = {
            k: ("***" if _is_registry_secret(k) else v) for k, v in self._registry_config.items()
        }
        extra = f", registry_config={config!r}" if config else ""
        return f"ConfluentAvroFormat(registry={registry!r}, subject={self._subject!r}{extra})"


def _is_registry_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in _REGISTRY_SECRET_KEYS or "password" in lowered or "secret" in lowered


def _scrub(text: str, config: Mapping[str, Any]) -> str:
    for key, value in config.items():
        if _is_registry_secret(key) and isinstance(value, str) and value:
            text = text.replace(value, "***")
            if ":" in value:  # user:password
                text = text.replace(value.split(":", 1)[1], "***")
    return text


FORMAT_NAMES = ("json", "avro", "confluent-avro")

_FACTORIES: dict[str, Callable[..., Format]] = {
    "json": JsonFormat,
    "avro": AvroFormat,
    "confluent-avro": ConfluentAvroFormat,
}


def make_format(name: str, **options: Any) -> Format:
    """The format the CLI calls ``name`` (``json``, ``avro``, ``confluent-avro``).

    ``options`` go to the format's constructor (``schema_path=...`` for ``avro``,
    ``registry_url=...`` for ``confluent-avro``); ``None`` values are ignored so CLI flags that
    were not given can be passed straight through.

    >>> make_format("json")
    JsonFormat()
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ValueError(f"format={name!r} is not one of {list(FORMAT_NAMES)}")
    options = {key: value for key, value in options.items() if value is not None}
    try:
        return factory(**options)
    except TypeError as exc:
        raise ValueError(f"format={name!r} does not take these options: {exc}") from None
