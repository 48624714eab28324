"""The raw records that sources emit, and how any element names its payload and origin.

Sources hand the pipeline :class:`SourceRecord` values (files) or
:class:`headwater.io.kafka.KafkaRecord` values (Kafka). Both carry the original bytes and where
they came from, so that any stage that rejects a record can put the *unchanged* bytes and their
coordinates into the dead-letter envelope (:mod:`headwater.transforms.deadletter`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["ParsedRecord", "SourceRecord", "origin_of", "payload_of", "with_origin"]


class SourceRecord(NamedTuple):
    """One undecoded record: its bytes and where it came from.

    ``origin`` is ``{"file": path, "line": n}`` for files, ``{"topic", "partition", "offset"}``
    for Kafka, or empty when unknown. ``timestamp_ms`` is the source's own timestamp, if any.
    """

    payload: bytes
    origin: Mapping[str, Any] = {}
    timestamp_ms: int | None = None


class DecodedRecord(NamedTuple):
    """A record a source has already decoded (Avro and Parquet files), with its origin.

    ``origin`` is ``{"file": path, "record": n}`` (0-based index within the file).
    """

    record: Mapping[str, Any]
    origin: Mapping[str, Any] = {}


class ParsedRecord(dict):
    """A decoded record -- a plain ``dict`` -- that remembers where it came from (``origin``).

    Parsing emits these, so a later stage that rejects the record (dedup, the late router, the
    aggregation) still names its ``file``/``line`` or ``topic``/``partition``/``offset``.
    Everything else sees a dict (equality, JSON, Arrow); Beam's coder pickles the subclass.
    """

    origin: Mapping[str, Any] = {}


def with_origin(record: Mapping[str, Any], origin: Mapping[str, Any]) -> Mapping[str, Any]:
    """``record`` as a :class:`ParsedRecord` carrying ``origin`` (unchanged when it is empty)."""
    if not origin:
        return record
    parsed = ParsedRecord(record)
    parsed.origin = dict(origin)
    return parsed


def payload_of(element: Any) -> bytes:
    """The bytes a dead letter keeps for ``element``.

    Raw records give their original bytes unchanged. A record that was already decoded (a dict,
    a :class:`DecodedRecord`) is encoded as canonical JSON (sorted keys), since its original
    bytes are not at hand.
    """
    if isinstance(element, bytes):
        return element
    if isinstance(element, DecodedRecord):
        element = element.record
    payload = getattr(element, "payload", None)
    if isinstance(payload, bytes):
        return payload
    value = getattr(element, "value", None)
    if isinstance(value, bytes):
        return value
    if isinstance(element, str):
        return element.encode("utf-8")
    try:
        return json.dumps(element, sort_keys=True, separators=(",", ":"), default=str).encode()
    except (TypeError, ValueError):
        return repr(element).encode("utf-8", "backslashreplace")


def origin_of(element: Any) -> dict[str, Any]:
    """Where ``element`` came from: file/line or topic/partition/offset, else ``{}``."""
    origin = getattr(element, "origin", None)
    if isinstance(origin, Mapping):
        return dict(origin)
    if all(hasattr(element, name) for name in ("topic", "partition", "offset")):
        return {"topic": element.topic, "partition": element.partition, "offset": element.offset}
    return {}
