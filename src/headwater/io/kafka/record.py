"""The Kafka source's element types: :class:`KafkaRecord` (what it emits) and
:class:`PartitionRead` (one partition to read, the element of its splittable DoFn)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["KafkaRecord", "PartitionRead"]


class KafkaRecord(NamedTuple):
    """One Kafka record as read: coordinates, key and value bytes, timestamp, headers.

    ``value`` (and ``key``) are ``None`` for tombstones (records without one). ``timestamp_ms``
    is Kafka's record timestamp in epoch milliseconds, ``None`` when the record has none.
    :func:`headwater.core.records.payload_of` gives ``value`` and
    :func:`~headwater.core.records.origin_of` gives ``{"topic", "partition", "offset"}``.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def payload(self) -> bytes:
        """The value bytes (``b""`` for a tombstone): what a dead letter keeps."""
        return self.value if self.value is not None else b""


class PartitionRead(NamedTuple):
    """One partition to read, resolved at pipeline start: the element of the reading DoFn.

    ``stop`` is exclusive, ``None`` for an unbounded read; ``deadline`` (epoch seconds) ends the
    read early when ``max_duration`` is set. ``end`` is the partition's end offset (high
    watermark) seen at start when the read stops there (``stop_at_end``): a record at or past it
    makes the reader check that end against the broker (see :func:`check_end_offset`).
    """

    topic: str
    partition: int
    start: int
    stop: int | None = None
    deadline: float | None = None
    end: int | None = None
