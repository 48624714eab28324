"""What a Kafka read reads: one :class:`~headwater.io.kafka.record.PartitionRead` per partition,
its start resolved against the broker (earliest, latest, committed, a time, explicit offsets)
and its stop from ``stop_at_end`` / ``max_records`` / ``max_duration``."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from headwater.io.kafka.config import KafkaConnection, check_reachable, make_consumer
from headwater.io.kafka.errors import KafkaTopicError, wrap_kafka_error
from headwater.io.kafka.record import PartitionRead
from headwater.windowing.durations import to_beam_timestamp

__all__ = [
    "START_NAMES",
    "allocate",
    "read_partitions",
    "resolve_starts",
    "start_label",
    "validate_start",
]

_LOG = logging.getLogger(__name__)

START_NAMES = ("earliest", "latest", "committed")


def start_label(start: Any) -> str:
    if isinstance(start, dt.datetime):
        return start.isoformat()
    if isinstance(start, Mapping):
        return f"{len(start)} explicit offsets"
    return str(start)


def validate_start(start: Any, topics: Sequence[str]) -> Any:
    if isinstance(start, str):
        if start not in START_NAMES:
            raise ValueError(
                f"start={start!r} is not one of {list(START_NAMES)}, a timezone-aware datetime "
                "or a {(topic, partition): offset} dict"
            )
        return start
    if isinstance(start, dt.datetime):
        to_beam_timestamp(start, name="start")  # refuses naive datetimes
        return start
    if isinstance(start, Mapping):
        offsets: dict[tuple[str, int], int] = {}
        for key, offset in start.items():
            if (
                not isinstance(key, tuple)
                or len(key) != 2
                or not isinstance(key[0], str)
                or not isinstance(key[1], int)
            ):
                raise ValueError(f"start key {key!r} must be a (topic, partition) tuple")
            if key[0] not in topics:
                raise ValueError(f"start key {key!r} names a topic not in topics={list(topics)}")
            if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
                raise ValueError(f"start offset {offset!r} for {key!r} must be an integer >= 0")
            offsets[key] = offset
        return offsets
    raise ValueError(
        f"start={start!r} must be 'earliest', 'latest', 'committed', a timezone-aware datetime "
        "or a {(topic, partition): offset} dict"
    )


def allocate(
    max_records: int, starts: Sequence[int], ends: Sequence[int], stop_at_end: bool
) -> list[int]:
    """Stop offsets reading ``max_records`` in total, spread round-robin over the partitions.

    Records already in the partitions (``start..end``) are taken first; what ``max_records``
    asks beyond them is spread evenly past the ends (those partitions wait for new records),
    unless ``stop_at_end``.
    """
    counts = [0] * len(starts)
    available = [max(0, end - start) for start, end in zip(starts, ends, strict=True)]
    remaining = max_records
    while remaining > 0 and any(c < a for c, a in zip(counts, available, strict=True)):
        open_parts = [i for i, (c, a) in enumerate(zip(counts, available, strict=True)) if c < a]
        share = max(1, remaining // len(open_parts))
        for i in open_parts:
            take = min(share, available[i] - counts[i], remaining)
            counts[i] += take
            remaining -= take
            if remaining == 0:
                break
    if remaining > 0 and not stop_at_end and starts:
        for i in range(remaining):
            counts[i % len(starts)] += 1
    return [start + count for start, count in zip(starts, counts, strict=True)]


def read_partitions(
    connection: KafkaConnection,
    topics: Sequence[str],
    *,
    start: Any = "earliest",
    stop_at_end: bool = False,
    max_records: int | None = None,
    max_duration: float | None = None,
    group_id: str | None = None,
    timeout: float = 10.0,
    consumer: Any = None,
    now: Callable[[], float] = time.time,
) -> list[PartitionRead]:
    """Resolves what to read: one :class:`PartitionRead` per partition of ``topics``.

    Connects (a :class:`~headwater.io.kafka.KafkaConnectError` after ``timeout`` seconds
    if no broker answers), lists the partitions, and turns ``start`` into offsets; ``stop`` is
    the partition's high watermark (last offset + 1) when ``stop_at_end``, the allocation of
    ``max_records`` when set, else ``None``. ``start="committed"`` falls back to the
    ``auto.offset.reset`` setting (default earliest) for partitions without a committed offset;
    explicit offsets outside ``[low, high]`` are clamped to it.
    """
    from confluent_kafka import KafkaException, TopicPartition

    metadata = check_reachable(connection, timeout=timeout, topics=topics)
    owned = consumer is None
    if owned:
        consumer = make_consumer(connection, group_id)
    try:
        partitions = [
            (topic, p) for topic in topics for p in sorted(metadata.topics[topic].partitions)
        ]
        if not partitions:
            raise KafkaTopicError(f"topics {list(topics)} have no partitions")
        lows, highs = [], []
        for topic, p in partitions:
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=timeout, cached=False
                )
            except KafkaException as exc:
                raise wrap_kafka_error(
                    exc,
                    action=f"reading the offsets of {topic}[{p}]",
                    connection=connection,
                    cls=KafkaTopicError,
                ) from None
            lows.append(low)
            highs.append(high)
        starts = resolve_starts(
            consumer, connection, partitions, lows, highs, start=start, timeout=timeout
        )
    finally:
        if owned:
            consumer.close()
    if max_records is not None:
        ends = highs if stop_at_end else [max(h, s) for h, s in zip(highs, starts, strict=True)]
        stops: list[int | None] = list(allocate(max_records, starts, ends, stop_at_end))
    elif stop_at_end:
        stops = [max(h, s) for h, s in zip(highs, starts, strict=True)]
    else:
        stops = [None] * len(partitions)
    deadline = None if max_duration is None else now() + max_duration
    reads = [
        PartitionRead(topic, p, s, stop, deadline, high if stop_at_end else None)
        for (topic, p), s, stop, high in zip(partitions, starts, stops, highs, strict=True)
    ]
    _LOG.info(
        "kafka read of %s from %s: %d partitions%s",
        list(topics),
        start_label(start),
        len(reads),
        ""
        if not any(r.stop is not None for r in reads)
        else f", {sum((r.stop or 0) - r.start for r in reads)} offsets",
    )
    return reads


# The group coordinator's passing states: moved to another broker, loading its offsets, not up yet
# (a restarted or rebalancing broker); the offset fetch is asked again until the timeout.
_COORDINATOR_PASSING = (
    "NOT_COORDINATOR",
    "COORDINATOR_LOAD_IN_PROGRESS",
    "COORDINATOR_NOT_AVAILABLE",
)


def _committed(consumer: Any, partitions: list[Any], timeout: float) -> list[Any]:
    """The group's committed offsets, asked again while the coordinator is passing through one
    of its transient states or the error is retriable, up to ``timeout`` seconds in all."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=max(deadline - time.monotonic(), 0.1))
        except KafkaException as exc:
            error: Any = exc.args[0] if exc.args else None
            name = error.name() if error is not None else ""
            passing = error is not None and (error.retriable() or name in _COORDINATOR_PASSING)
            if not passing or time.monotonic() >= deadline:
                raise
            _LOG.info("committed offsets: %s; asking again", name)
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))  # the broker's pace


def resolve_starts(
    consumer: Any,
    connection: KafkaConnection,
    partitions: Sequence[tuple[str, int]],
    lows: Sequence[int],
    highs: Sequence[int],
    *,
    start: Any,
    timeout: float,
) -> list[int]:
    from confluent_kafka import KafkaException, TopicPartition

    if start == "earliest":
        return list(lows)
    if start == "latest":
        return list(highs)
    if isinstance(start, Mapping):
        starts = []
        for (topic, p), low, high in zip(partitions, lows, highs, strict=True):
            wanted = start.get((topic, p), low)
            clamped = min(max(wanted, low), high)
            if clamped != wanted:
                _LOG.warning(
                    "start offset %d of %s[%d] is outside [%d, %d]; reading from %d",
                    wanted,
                    topic,
                    p,
                    low,
                    high,
                    clamped,
                )
            starts.append(clamped)
        return starts
    try:
        if start == "committed":
            committed = _committed(consumer, [TopicPartition(t, p) for t, p in partitions], timeout)
            reset = str(connection.config.get("auto.offset.reset", "earliest"))
            fallback = highs if reset in ("latest", "largest", "end") else lows
            return [
                tp.offset if tp.offset >= 0 else fb
                for tp, fb in zip(committed, fallback, strict=True)
            ]
        millis = to_beam_timestamp(start, name="start").micros // 1000
        found = consumer.offsets_for_times(
            [TopicPartition(t, p, millis) for t, p in partitions], timeout=timeout
        )
        # -1: no record at or after the time; start at the end.
        return [
            tp.offset if tp.offset >= 0 else high for tp, high in zip(found, highs, strict=True)
        ]
    except KafkaException as exc:
        raise wrap_kafka_error(
            exc, action=f"resolving start={start_label(start)}", connection=connection
        ) from None
