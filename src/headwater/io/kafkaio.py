"""Native Kafka IO on confluent-kafka: a splittable-DoFn source and an idempotent sink, no JVM.

:class:`ReadFromKafka` reads topics into a ``PCollection`` of :class:`KafkaRecord` (topic,
partition, offset, key, value bytes, timestamp_ms, headers), undecoded: decode them with a format
from :mod:`headwater.io.formats` inside
:class:`~headwater.transforms.deadletter.ApplyOrDeadLetter`, so undecodable bytes become dead
letters carrying their topic/partition/offset.

Parallelism
    One restriction (an offset range) per topic-partition, resolved once at pipeline start; a
    runner may split a range further while it is read (dynamic splitting), and splits of one
    partition run in parallel. Within a restriction records come in offset order; there is no
    order across partitions.

Bounded and unbounded
    With ``stop_at_end=True`` (stop at each partition's end offset -- Kafka's high watermark,
    last offset + 1 -- seen at start), ``max_records`` or ``max_duration`` the read is bounded and
    runs in batch (``FnApiRunner`` locally). Otherwise it is unbounded: when a partition is caught
    up the DoFn checkpoints and resumes after ``poll_interval`` (Dataflow, Flink, Prism; the
    Python DirectRunner cannot run unbounded splittable DoFns).

Timestamps and watermark
    Each record's timestamp is its Kafka timestamp (``event_time=None``), or a field of its value
    read with an :class:`~headwater.windowing.eventtime.EventTimeExtractor` after decoding it with
    ``value_format``. A record whose event time cannot be read is stamped with its partition's
    current watermark, so it never moves the watermark, and is counted under
    ``kafka.event_time_fallback``; the decode and event-time steps downstream route it to dead
    letters with the reason. Per partition the
    watermark is :class:`~headwater.windowing.watermark.BoundedOutOfOrderness`: the largest
    timestamp read minus ``max_delay``, advancing with the clock once the partition has been idle
    for ``idle_timeout``; ``watermark=None`` means ``max_delay=0`` and no idle timeout. Beam takes
    the minimum over partitions. Records behind the watermark are late; the windowing step sends
    them to its ``late`` output.

Delivery guarantee
    At-least-once into the pipeline: a record is emitted after its offset is claimed, and a
    runner that retries a bundle reads its offsets again (exactly-once processing comes from the
    runner's checkpoints, not from Kafka). With ``commit_on_finalize=True`` the next offset of
    each partition is committed to the consumer group ``group_id`` only after the runner has
    durably committed the bundle that read it (bundle finalization) -- never before, so a
    restart from ``start="committed"`` does not skip records, but may re-read records of bundles
    that were committed by the runner and not yet finalized. Commits are advisory (a failed commit
    is logged and counted, not retried) and, when a runner splits one partition into parallel
    ranges, may be applied out of order.

:class:`WriteToKafka` writes elements with an idempotent producer (``enable.idempotence``, acks
from all in-sync replicas), flushes at the end of every bundle and fails the bundle when any
record was not acknowledged, so the runner retries it: at-least-once into Kafka, no
fire-and-forget.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from headwater.io.formats import Format, FormatError, JsonFormat, make_format
from headwater.io.kafkaconfig import (
    KafkaCommitError,
    KafkaConnection,
    KafkaConsumeError,
    KafkaDeliveryError,
    KafkaIOError,
    KafkaTopicError,
    check_reachable,
    wrap_kafka_error,
)
from headwater.io.partitionwatermarks import WATERMARKS, SharedWatermarkProvider
from headwater.windowing.durations import DurationLike, parse_duration, to_beam_timestamp
from headwater.windowing.eventtime import EventTimeExtractor, timestamp_from_millis
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = [
    "KafkaRecord",
    "PartitionRead",
    "ReadFromKafka",
    "WriteToKafka",
    "read_partitions",
    "request_drain",
    "reset_drain",
]

_LOG = logging.getLogger(__name__)

#: The stop offset of an unbounded restriction.
UNBOUNDED_STOP = 2**63 - 1
_START_NAMES = ("earliest", "latest", "committed")
_CONSUME_BATCH = 1000
_BATCH_WAIT_S = 0.05
_MAX_BUNDLE_SECONDS = 5.0
_NS = "headwater"


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
    makes the reader check that end against the broker (see :func:`_check_end_offset`).
    """

    topic: str
    partition: int
    start: int
    stop: int | None = None
    deadline: float | None = None
    end: int | None = None


class _PartitionRange(OffsetRange):
    """An offset range that also carries the read's wall-clock deadline (``None``: none)."""

    def __init__(self, start: int, stop: int, deadline: float | None = None):
        super().__init__(start, stop)
        self.deadline = deadline

    def split_at(self, split_pos: int) -> tuple[_PartitionRange, _PartitionRange]:
        return (
            _PartitionRange(self.start, split_pos, self.deadline),
            _PartitionRange(split_pos, self.stop, self.deadline),
        )

    def split(self, desired_num_offsets_per_split: int, min_num_offsets_per_split: int = 1):
        for part in super().split(desired_num_offsets_per_split, min_num_offsets_per_split):
            yield _PartitionRange(part.start, part.stop, self.deadline)

    def is_bounded(self) -> bool:
        return self.stop < UNBOUNDED_STOP

    def __repr__(self) -> str:
        stop = "inf" if self.stop >= UNBOUNDED_STOP else self.stop
        return f"_PartitionRange(start={self.start}, stop={stop}, deadline={self.deadline})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_PartitionRange, (self.start, self.stop, self.deadline))


_DRAIN = threading.Event()


def request_drain() -> None:
    """Ends every unbounded Kafka read of this process at its next claim, with no residual.

    A local streaming run (Prism with the SDK harness in this process, ``LOOPBACK``) then
    drains: the read finishes, the watermark moves to the end of time, every open window closes
    and is written, and the job ends by itself. ``headwater run`` calls it on the first Ctrl-C.
    """
    _LOG.info("drain requested: unbounded Kafka reads stop claiming records")
    _DRAIN.set()


def reset_drain() -> None:
    """Clears :func:`request_drain` (before the next run in the same process)."""
    _DRAIN.clear()


def _read_ends(restriction: OffsetRange, clock: Callable[[], float] = time.time) -> bool:
    """Whether a read of ``restriction`` stops now: its deadline passed, or a drain of an
    unbounded range was requested."""
    deadline = getattr(restriction, "deadline", None)
    if deadline is not None and clock() >= deadline:
        return True
    return restriction.stop >= UNBOUNDED_STOP and _DRAIN.is_set()


class _PartitionTracker(OffsetRestrictionTracker):
    """Claims offsets of one partition; ends the restriction at the deadline, with no residual.

    After the deadline (or, for an unbounded range, after :func:`request_drain`) a claim fails
    and the range is cut at the refused offset, so the restriction is done (nothing is handed
    back to the runner) and ``check_done`` holds.
    """

    def __init__(self, offset_range: _PartitionRange, clock: Callable[[], float] = time.time):
        super().__init__(offset_range)
        self._clock = clock

    def try_claim(self, position: int) -> bool:
        deadline = getattr(self._range, "deadline", None)
        if (
            self._range.start <= position < self._range.stop
            and (self._last_claim_attempt is None or position > self._last_claim_attempt)
            and self.ends_now()
        ):
            self._range = _PartitionRange(self._range.start, position, deadline)
            self._last_claim_attempt = position  # type: ignore[assignment]
            return False
        return bool(super().try_claim(position))

    def is_bounded(self) -> bool:
        return bool(self._range.stop < UNBOUNDED_STOP)

    def try_split(self, fraction_of_remainder: float) -> Any:
        # An unbounded range has no end to split toward: a split at a fraction of the
        # remainder lands near offset 2**62, which no partition has (Prism asks for such
        # splits; the residual then read from an offset out of range). Only a checkpoint
        # (fraction 0: stop after the current offset) is allowed there.
        if self._range.stop >= UNBOUNDED_STOP and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def ends_now(self) -> bool:
        """Whether the read stops here: past its deadline, or an unbounded range drained."""
        return _read_ends(self._range, self._clock)


class _PartitionRestrictions(RestrictionProvider):
    """Restrictions of :class:`PartitionRead` elements: one offset range per partition."""

    def initial_restriction(self, element: PartitionRead) -> _PartitionRange:
        stop = UNBOUNDED_STOP if element.stop is None else max(element.stop, element.start)
        return _PartitionRange(element.start, stop, element.deadline)

    def create_tracker(self, restriction: _PartitionRange) -> _PartitionTracker:
        return _PartitionTracker(restriction)

    def split(self, element: PartitionRead, restriction: _PartitionRange):
        # The initial split is by partition (one element per partition); ranges are split
        # further only dynamically, by the runner, while they are read.
        yield restriction

    def restriction_size(self, element: PartitionRead, restriction: _PartitionRange) -> float:
        if restriction.stop >= UNBOUNDED_STOP:
            return 1.0  # unknown backlog; every partition weighs the same
        return float(restriction.stop - restriction.start)

    def truncate(self, element: PartitionRead, restriction: _PartitionRange):
        # On drain an unbounded read stops where it is; a bounded one finishes.
        if restriction.stop >= UNBOUNDED_STOP:
            return None
        return restriction


_RESTRICTIONS = _PartitionRestrictions()


def _start_label(start: Any) -> str:
    if isinstance(start, dt.datetime):
        return start.isoformat()
    if isinstance(start, Mapping):
        return f"{len(start)} explicit offsets"
    return str(start)


def _validate_start(start: Any, topics: Sequence[str]) -> Any:
    if isinstance(start, str):
        if start not in _START_NAMES:
            raise ValueError(
                f"start={start!r} is not one of {list(_START_NAMES)}, a timezone-aware datetime "
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


def _allocate(
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


def _consumer_config(
    connection: KafkaConnection, group_id: str | None, **overrides: Any
) -> dict[str, Any]:
    defaults = {
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    config = connection.client_config(defaults)
    # These change delivery semantics: headwater owns them.
    config["enable.auto.commit"] = False
    config["enable.auto.offset.store"] = False
    config["group.id"] = group_id or config.get("group.id") or f"headwater-{uuid.uuid4().hex}"
    config.update(overrides)
    return config


def _make_consumer(connection: KafkaConnection, group_id: str | None) -> Any:
    from confluent_kafka import Consumer, KafkaException

    try:
        return Consumer(_consumer_config(connection, group_id))
    except (KafkaException, ValueError) as exc:
        raise wrap_kafka_error(
            exc, action="creating a Kafka consumer", connection=connection
        ) from None


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

    Connects (a :class:`~headwater.io.kafkaconfig.KafkaConnectError` after ``timeout`` seconds
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
        consumer = _make_consumer(connection, group_id)
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
        starts = _resolve_starts(
            consumer, connection, partitions, lows, highs, start=start, timeout=timeout
        )
    finally:
        if owned:
            consumer.close()
    if max_records is not None:
        ends = highs if stop_at_end else [max(h, s) for h, s in zip(highs, starts, strict=True)]
        stops: list[int | None] = list(_allocate(max_records, starts, ends, stop_at_end))
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
        _start_label(start),
        len(reads),
        ""
        if not any(r.stop is not None for r in reads)
        else f", {sum((r.stop or 0) - r.start for r in reads)} offsets",
    )
    return reads


def _resolve_starts(
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
            committed = consumer.committed(
                [TopicPartition(t, p) for t, p in partitions], timeout=timeout
            )
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
            exc, action=f"resolving start={_start_label(start)}", connection=connection
        ) from None


def _check_end_offset(
    consumer: Any, tp: Any, messages: Sequence[Any], connection: KafkaConnection
) -> None:
    """Refuses a broker whose end offset (high watermark) is behind the records it returned.

    Kafka never returns a record at or past a partition's high watermark, so a record there
    proves the broker reports a wrong end offset (Tansu, ``headwater dev-broker``, reports the
    base offset of the last record batch + 1 once a producer batches records): a read that
    stops at that end would silently return part of the partition. Called when a bounded read
    sees records at or past the end offset it was given at start (records written since then
    are normal), it asks the broker again and raises
    :class:`~headwater.io.kafkaconfig.KafkaConsumeError` if a record is at or past the answer.
    """
    from confluent_kafka import KafkaException

    last = max(
        (
            m.offset()
            for m in messages
            if m.error() is None and m.topic() == tp.topic and m.partition() == tp.partition
        ),
        default=-1,
    )
    try:
        _low, high = consumer.get_watermark_offsets(tp, timeout=10.0, cached=False)
    except KafkaException as exc:
        raise wrap_kafka_error(
            exc,
            action=f"reading the end offset of {tp.topic}[{tp.partition}]",
            connection=connection,
            cls=KafkaConsumeError,
        ) from None
    if last >= high:
        raise KafkaConsumeError(
            f"{tp.topic}[{tp.partition}]: the broker returned a record at offset {last} but "
            f"reports the partition's end offset (high watermark) as {high}; Kafka never returns "
            "records at or past its end offset, so this broker's end offsets are wrong and a "
            "read that stops at the end would silently miss records. (Tansu, which `headwater "
            "dev-broker` runs, reports the base offset of the last record batch + 1 when a "
            "producer batches records.) Read from Apache Kafka, or bound the read with "
            "max_records/max_duration instead of stop_at_end"
        )


class _ListPartitionsFn(beam.DoFn):
    """Impulse -> one :class:`PartitionRead` per partition, resolved against the broker."""

    def __init__(self, read: ReadFromKafka):
        self._connection = read.connection
        self._topics = read.topics
        self._start = read.start
        self._stop_at_end = read.stop_at_end
        self._max_records = read.max_records
        self._max_duration = read.max_duration
        self._group_id = read.group_id
        self._timeout = read.connect_timeout

    def process(self, _impulse: Any) -> Iterator[PartitionRead]:
        yield from read_partitions(
            self._connection,
            self._topics,
            start=self._start,
            stop_at_end=self._stop_at_end,
            max_records=self._max_records,
            max_duration=self._max_duration,
            group_id=self._group_id,
            timeout=self._timeout,
        )


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition's offset range with ``assign()``; the source's splittable DoFn.

    It is its own watermark-estimator provider (the policy is per transform); restrictions come
    from :class:`_PartitionRestrictions`.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group_id: str | None,
        policy: BoundedOutOfOrderness,
        event_time: EventTimeExtractor | None,
        value_format: Format | None,
        commit_on_finalize: bool,
        poll_interval: float,
        stall_timeout: float = 60.0,
        bounded: bool,
        clock: Callable[[], float] | None = None,
        read_id: str | None = None,
    ):
        self._connection = connection
        self._group_id = group_id
        self._policy = policy
        self._read_id = read_id
        self._provider: Any = policy.estimator_provider(clock)
        if read_id is not None:
            # Partitions report the read's minimum watermark (Prism takes only the last
            # bundle's): see headwater.io.partitionwatermarks.
            self._provider = SharedWatermarkProvider(
                self._provider, read_id=read_id, split_of=_split_of
            )
        self._event_time = event_time
        self._value_format = value_format
        self._commit_on_finalize = commit_on_finalize
        self._poll_interval = poll_interval
        self._stall_timeout = stall_timeout
        self._bounded = bounded
        self._consumer: Any = None
        self._assigned: tuple[str, int, int] | None = None
        self._records = Metrics.counter(_NS, "kafka.records_read")
        self._fallbacks = Metrics.counter(_NS, "kafka.event_time_fallback")
        self._commit_failures = Metrics.counter(_NS, "kafka.commit_failures")

    # -- watermark estimator provider ------------------------------------------------------
    def initial_estimator_state(self, element: PartitionRead, restriction: Any) -> Any:
        return self._provider.initial_estimator_state(element, restriction)

    def create_watermark_estimator(self, estimator_state: Any) -> Any:
        return self._provider.create_watermark_estimator(estimator_state)

    def estimator_state_coder(self) -> Any:
        return self._provider.estimator_state_coder()

    # -- lifecycle -------------------------------------------------------------------------
    def setup(self) -> None:
        self._consumer = None
        self._assigned = None

    def _get_consumer(self) -> Any:
        if self._consumer is None:
            self._consumer = _make_consumer(self._connection, self._group_id)
        return self._consumer

    def teardown(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception:  # closing is best effort at shutdown
                _LOG.debug("closing the Kafka consumer failed", exc_info=True)
            self._consumer = None

    # -- reading ---------------------------------------------------------------------------
    def _timestamp(self, record: KafkaRecord, watermark: Callable[[], Timestamp]) -> Timestamp:
        """The record's event time; for a record without one, the partition's watermark.

        Such a record becomes a dead letter downstream and must not move the watermark: with
        its Kafka timestamp (when it was produced, seen on Prism) one malformed record pushed
        its partition's watermark to the present, and every later record of the stream was
        dropped as too late by the windows.
        """
        if self._event_time is not None and self._value_format is not None:
            try:
                return self._event_time.extract(self._value_format.decode(record))
            except (FormatError, ValueError):
                pass
        elif record.timestamp_ms is not None:
            try:
                return timestamp_from_millis(record.timestamp_ms)
            except ValueError:
                pass
        self._fallbacks.inc()
        return watermark()

    def process(
        self,
        element: PartitionRead,
        # (Beam places the finalizer positionally: it must precede the keyword-only params.)
        bundle_finalizer=beam.DoFn.BundleFinalizerParam,
        tracker=beam.DoFn.RestrictionParam(_RESTRICTIONS),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(),
    ) -> Iterator[Any]:
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        restriction = tracker.current_restriction()
        topic, partition = element.topic, element.partition
        if restriction.start >= restriction.stop:
            bundle_finalizer.register(_nothing_to_commit)
            return
        consumer = self._get_consumer()
        tp = TopicPartition(topic, partition, restriction.start)
        if self._assigned != (topic, partition, restriction.start):
            # (A resumed read of the same partition keeps the consumer's prefetched records.)
            self._assigned = None
            try:
                consumer.assign([tp])
            except KafkaException as exc:
                raise wrap_kafka_error(
                    exc,
                    action=f"assigning {topic}[{partition}]",
                    connection=self._connection,
                    cls=KafkaConsumeError,
                ) from None
        next_offset = restriction.start
        claimed_any = False
        failed = False
        resume_at: int | None = None  # set when the consumer's queue holds nothing past next_offset
        began = time.monotonic()
        progressed = began  # the last time a record (or the end of the range) came in
        try:
            while True:
                try:
                    # A full batch when there is a backlog; at the tail, one blocking poll
                    # that returns as soon as a record arrives.
                    messages = consumer.consume(_CONSUME_BATCH, _BATCH_WAIT_S)
                    if not messages:
                        message = consumer.poll(self._poll_interval)
                        messages = [] if message is None else [message]
                except KafkaException as exc:
                    raise wrap_kafka_error(
                        exc,
                        action=f"reading {topic}[{partition}]",
                        connection=self._connection,
                        cls=KafkaConsumeError,
                    ) from None
                stop = tracker.current_restriction().stop  # a runner split may have moved it
                # One claim covers the batch: its last offset (inside the range) is claimed
                # first, and the batch's records are all at or before it.
                batch_last = max((m.offset() for m in messages if m.error() is None), default=-1)
                if element.end is not None and batch_last >= element.end:
                    _check_end_offset(consumer, tp, messages, self._connection)
                claimed_to = -1
                emitted = 0
                for msg in messages:
                    error = msg.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            continue
                        raise wrap_kafka_error(
                            KafkaException(error),
                            action=f"reading {topic}[{partition}] at offset {next_offset}",
                            connection=self._connection,
                            cls=KafkaConsumeError,
                        )
                    offset = msg.offset()
                    if offset < next_offset or msg.partition() != partition or msg.topic() != topic:
                        continue  # left over from an earlier assignment
                    if offset > claimed_to:
                        target = min(batch_last, stop - 1)
                        if target > offset and tracker.try_claim(target):
                            claimed_to = target
                        elif tracker.try_claim(offset):
                            claimed_to = offset
                        else:
                            self._records.inc(emitted)
                            return
                    claimed_any = True
                    next_offset = offset + 1
                    ts_type, ts_ms = msg.timestamp()
                    record = KafkaRecord(
                        topic,
                        partition,
                        offset,
                        msg.key(),
                        msg.value(),
                        ts_ms if ts_type else None,
                        tuple(msg.headers() or ()),
                    )
                    emitted += 1
                    yield TimestampedValue(
                        record, self._timestamp(record, watermark_estimator.current_watermark)
                    )
                self._records.inc(emitted)
                if next_offset >= stop:
                    return
                if messages:
                    progressed = time.monotonic()
                    if not self._bounded and progressed - began >= _MAX_BUNDLE_SECONDS:
                        # Let the runner commit (and finalize) what was read so far.
                        resume_at = next_offset
                        tracker.defer_remainder()
                        return
                else:
                    if self._caught_up_to_stop(consumer, tp, next_offset, stop, tracker):
                        return
                    stalled = time.monotonic() - progressed
                    if self._bounded and stop < UNBOUNDED_STOP and stalled > self._stall_timeout:
                        raise KafkaConsumeError(
                            f"bounded read of {topic}[{partition}] made no progress for "
                            f"{stalled:.0f} s at offset {next_offset} of {stop} (stall_timeout="
                            f"{self._stall_timeout:g}s): the broker is unreachable or lost the "
                            "records; failing the bundle rather than returning a short read"
                        )
                    if _read_ends(tracker.current_restriction()):
                        tracker.try_claim(next_offset)  # deadline or drain: ends the range here
                        return
                    if not self._bounded:
                        resume_at = next_offset
                        tracker.defer_remainder(Duration.of(self._poll_interval))
                        return
        except BaseException:
            failed = True
            raise
        finally:
            if resume_at is not None and not failed:
                self._assigned = (topic, partition, resume_at)
            else:
                self._assigned = None
                if not failed and self._read_id is not None and _read_ends(restriction):
                    # Done for good (deadline or drain), not cut by a runner's checkpoint.
                    WATERMARKS.finish(self._read_id, (topic, partition))
            if not failed:
                # Every bundle registers a callback: Prism finalizes every bundle of a step
                # that can ask for finalization, and the Python SDK fails (and logs at ERROR)
                # a finalization of a bundle that registered none.
                bundle_finalizer.register(
                    functools.partial(self._commit, topic, partition, next_offset)
                    if self._commit_on_finalize and claimed_any
                    else _nothing_to_commit
                )

    def _caught_up_to_stop(
        self, consumer: Any, tp: Any, next_offset: int, stop: int, tracker: Any
    ) -> bool:
        """Whether the consumer moved past ``stop`` without a record (control records, gaps)."""
        if stop >= UNBOUNDED_STOP:
            return False
        try:
            position = consumer.position([tp])[0].offset
        except Exception:  # position is an optimisation; keep polling when unknown
            return False
        if position is not None and position >= stop > next_offset:
            tracker.try_claim(stop - 1)  # nothing is left to emit in [next_offset, stop)
            return True
        return False

    def _commit(self, topic: str, partition: int, offset: int) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self._get_consumer().commit(
                offsets=[TopicPartition(topic, partition, offset)], asynchronous=False
            )
        except (KafkaException, KafkaIOError) as exc:
            self._commit_failures.inc()
            error = wrap_kafka_error(
                exc,
                action=f"committing offset {offset} of {topic}[{partition}]",
                connection=self._connection,
                cls=KafkaCommitError,
            )
            _LOG.warning("%s (the next run from start='committed' re-reads these records)", error)


def _split_of(element: Any) -> Any:
    return (element.topic, element.partition) if isinstance(element, PartitionRead) else element


def _nothing_to_commit() -> None:
    """The finalization callback of a bundle that has no offset to commit."""


class _CommitOffsetsFn(beam.DoFn):
    """(topic, partition, offset) -> committed to the group; side inputs only order the step."""

    def __init__(self, connection: KafkaConnection, group_id: str | None):
        self._connection = connection
        self._group_id = group_id

    def process(self, element, *args, **kwargs):  # (unannotated: Beam reads hints from them)
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        topic, partition, offset = element  # (args, kwargs: side inputs that only order it)
        consumer = Consumer(
            self._connection.client_config(
                {"group.id": self._group_id, "enable.auto.commit": False}
            )
        )
        try:
            consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        except KafkaException as exc:
            raise wrap_kafka_error(
                exc,
                action=f"committing offset {offset} of {topic}[{partition}]",
                connection=self._connection,
                cls=KafkaCommitError,
            ) from None
        finally:
            consumer.close()


@beam.DoFn.unbounded_per_element()
class _ReadPartitionUnboundedFn(_ReadPartitionFn):
    """The unbounded variant: the runner knows the output never ends."""


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as :class:`KafkaRecord` values: a splittable DoFn, a range per partition.

    Options (keyword-only):

    * ``bootstrap_servers``, ``topics`` (a name or a list), ``config`` (librdkafka settings,
      passed through; secrets masked everywhere) and ``group_id`` (the consumer group, needed for
      ``start="committed"`` and ``commit_on_finalize``).
    * ``start``: ``"earliest"``, ``"latest"``, ``"committed"``, a timezone-aware ``datetime``
      (the first offset whose timestamp is at or after it), or ``{(topic, partition): offset}``
      (other partitions start at the earliest offset).
    * bounded reads: ``stop_at_end`` (the end offsets seen at start), ``max_records`` (in total,
      spread over partitions at start) and ``max_duration`` (wall clock from start); without any
      of them the read is unbounded.
    * ``event_time`` (an ``EventTimeExtractor``; decodes values with ``value_format``, default
      JSON) or ``None`` for the Kafka timestamp; ``watermark`` (a ``BoundedOutOfOrderness``).
    * ``commit_on_finalize`` commits offsets to ``group_id`` after each bundle is finalized
      (streaming); ``commit_after_sinks`` (a bounded read) commits the offsets read through
      :meth:`commit_after` once the given sinks are written -- what the pipelines use for every
      bounded read.
    * ``stall_timeout``: a bounded read that gets no record for this long before its stop
      offset fails with :class:`~headwater.io.kafkaconfig.KafkaConsumeError` (broker gone or
      restarted empty) instead of polling forever or returning a short result.
    * ``connect_timeout``: how long to wait for the broker at pipeline start before failing
      with :class:`~headwater.io.kafkaconfig.KafkaConnectError`; ``poll_interval``: the wait of
      one poll, and the resume delay of a caught-up unbounded read.

    See the module docstring for parallelism, watermark and delivery guarantee.

    >>> with beam.Pipeline("FnApiRunner") as p:              # doctest: +SKIP
    ...     records = p | ReadFromKafka(bootstrap_servers="localhost:9092", topics="events",
    ...                                 stop_at_end=True)
    ...     routed = records | ApplyOrDeadLetter(JsonFormat().decode, stage="decode")
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        config: Mapping[str, Any] | None = None,
        start: Any = "earliest",
        stop_at_end: bool = False,
        max_records: int | None = None,
        max_duration: DurationLike | None = None,
        event_time: EventTimeExtractor | None = None,
        value_format: Format | str | None = None,
        watermark: BoundedOutOfOrderness | None = None,
        commit_on_finalize: bool = False,
        group_id: str | None = None,
        connect_timeout: DurationLike = 10.0,
        poll_interval: DurationLike = 1.0,
        stall_timeout: DurationLike = 60.0,
        commit_after_sinks: bool = False,
    ):
        super().__init__()
        self.connection = KafkaConnection(bootstrap_servers, config)
        if isinstance(topics, str):
            topics = [topics]
        if (
            not isinstance(topics, Sequence)
            or not topics
            or any(not isinstance(t, str) or not t for t in topics)
        ):
            raise ValueError(f"topics={topics!r} must be a topic name or a non-empty list of names")
        self.topics = list(dict.fromkeys(topics))
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError(f"group_id={group_id!r} must be a non-empty string")
        config_group = self.connection.config.get("group.id")
        if group_id and config_group and group_id != config_group:
            raise ValueError(
                f"group_id={group_id!r} disagrees with config['group.id']={config_group!r}"
            )
        self.group_id = group_id or config_group
        self.start = _validate_start(start, self.topics)
        if commit_on_finalize and commit_after_sinks:
            raise ValueError("commit_on_finalize=True and commit_after_sinks=True: choose one")
        if commit_after_sinks and not (
            stop_at_end or max_records is not None or max_duration is not None
        ):
            raise ValueError(
                "commit_after_sinks=True needs a bounded read (stop_at_end=True, max_records or "
                "max_duration); an unbounded read commits with commit_on_finalize=True"
            )
        if (start == "committed" or commit_on_finalize or commit_after_sinks) and not self.group_id:
            what = (
                "start='committed'"
                if start == "committed"
                else "commit_on_finalize=True"
                if commit_on_finalize
                else "commit_after_sinks=True"
            )
            raise ValueError(f"{what} needs group_id=... (the consumer group), got group_id=None")
        if not isinstance(stop_at_end, bool):
            raise ValueError(f"stop_at_end={stop_at_end!r} must be True or False")
        if not isinstance(commit_on_finalize, bool):
            raise ValueError(f"commit_on_finalize={commit_on_finalize!r} must be True or False")
        if max_records is not None and (
            isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1
        ):
            raise ValueError(f"max_records={max_records!r} must be a positive integer or None")
        self.stop_at_end = stop_at_end
        self.max_records = max_records
        self.max_duration = (
            None
            if max_duration is None
            else parse_duration(max_duration, name="max_duration", allow_zero=False)
        )
        if event_time is not None and not isinstance(event_time, EventTimeExtractor):
            raise ValueError(f"event_time={event_time!r} must be an EventTimeExtractor or None")
        if isinstance(value_format, str):
            value_format = make_format(value_format)
        if value_format is not None and not isinstance(value_format, Format):
            raise ValueError(f"value_format={value_format!r} must be a format or a format name")
        if value_format is not None and event_time is None:
            raise ValueError(
                f"value_format={value_format!r} is only used with event_time=...; records are "
                "emitted undecoded (decode them downstream)"
            )
        self.event_time = event_time
        self.value_format = value_format or (JsonFormat() if event_time is not None else None)
        if watermark is not None and not isinstance(watermark, BoundedOutOfOrderness):
            raise ValueError(f"watermark={watermark!r} must be a BoundedOutOfOrderness or None")
        self.watermark = watermark or BoundedOutOfOrderness(max_delay=0)
        self.commit_on_finalize = commit_on_finalize
        self.commit_after_sinks = commit_after_sinks
        self.connect_timeout = parse_duration(
            connect_timeout, name="connect_timeout", allow_zero=False
        )
        self.poll_interval = parse_duration(poll_interval, name="poll_interval", allow_zero=False)
        self.stall_timeout = parse_duration(stall_timeout, name="stall_timeout", allow_zero=False)
        self.partitions: list[PartitionRead] | None = None  # resolved in the driver (see expand)
        self._read_id = uuid.uuid4().hex  # tells this read's partitions from other reads'
        self._records: beam.PCollection | None = None

    @property
    def bounded(self) -> bool:
        """Whether the read ends by itself (``stop_at_end``, ``max_records``, ``max_duration``)."""
        return self.stop_at_end or self.max_records is not None or self.max_duration is not None

    def reader_fn(self, *, streaming: bool = False) -> _ReadPartitionFn:
        """The splittable DoFn that reads :class:`PartitionRead` elements (for tests, runners).

        In a ``streaming`` job a read bounded only by ``max_duration`` is read live like an
        unbounded one (checkpointing at the tail, so the watermark and the windows advance
        while it runs) and ends at its deadline, which drains the job.
        """
        live = streaming and not self.stop_at_end and self.max_records is None
        bounded = self.bounded and not live
        cls = _ReadPartitionFn if bounded else _ReadPartitionUnboundedFn
        return cls(
            self.connection,
            group_id=self.group_id,
            policy=self.watermark,
            event_time=self.event_time,
            value_format=self.value_format,
            commit_on_finalize=self.commit_on_finalize,
            poll_interval=self.poll_interval,
            bounded=bounded,
            stall_timeout=self.stall_timeout,
            read_id=None if bounded else self._read_id,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self.commit_after_sinks and self.max_duration is None:
            # The ranges are fixed in the driver, so what to commit is known before the run.
            self.partitions = list(_ListPartitionsFn(self).process(None))
            listed = pbegin | "Partitions" >> beam.Create(self.partitions, reshuffle=False)
        else:
            listed = (
                pbegin
                | "Impulse" >> beam.Impulse()
                | "ListPartitions" >> beam.ParDo(_ListPartitionsFn(self))
            )
        streaming = bool(pbegin.pipeline.options.view_as(StandardOptions).streaming)
        reader = self.reader_fn(streaming=streaming)
        self._records = (
            listed | "SpreadPartitions" >> beam.Reshuffle() | "ReadPartitions" >> beam.ParDo(reader)
        )
        # Beam's Python SDK marks a splittable DoFn's output bounded whatever the restriction;
        # steps that act only on unbounded input (late-data routing) must see the truth, or on
        # Prism they skip themselves and the windows silently drop late records.
        self._records.is_bounded = not isinstance(reader, _ReadPartitionUnboundedFn)
        return self._records

    def commit_after(self, pipeline: beam.Pipeline, *sinks: beam.PCollection) -> None:
        """Commits the read's end offsets once every ``sinks`` collection is complete.

        For ``commit_after_sinks=True`` (a bounded read): the commit step takes the sinks'
        outputs as side inputs, so the runner runs it only after they are fully written -- a run
        whose sink fails commits nothing, and a successful one commits exactly the end of what
        it read: the stop offsets resolved in the driver (``stop_at_end``, ``max_records``), or
        with ``max_duration`` (where the read ends is known only once it has) each partition's
        last offset read + 1. (``commit_on_finalize`` commits when the read's own bundles are
        finalized, which in batch is when the read stage ends, before later stages have written
        anything.) Without ``commit_after_sinks`` this is a no-op.
        """
        if not self.commit_after_sinks or self._records is None:
            return
        waits = {f"wait{i}": beam.pvalue.AsList(sink) for i, sink in enumerate(sinks)}
        if self.partitions is not None:
            offsets = pipeline | "OffsetsToCommit" >> beam.Create(
                [
                    (p.topic, p.partition, p.stop)
                    for p in self.partitions
                    if p.stop is not None and p.stop > p.start
                ]
            )
        else:
            offsets = (
                self._records
                | "NextOffsets" >> beam.Map(lambda r: ((r.topic, r.partition), r.offset + 1))
                | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
                | "EndOfRead" >> beam.CombinePerKey(max)
                | "OffsetsToCommit" >> beam.Map(lambda kv: (*kv[0], kv[1]))
            )
        _ = offsets | "CommitOffsets" >> beam.ParDo(
            _CommitOffsetsFn(self.connection, self.group_id), **waits
        )

    def __repr__(self) -> str:
        return (
            f"ReadFromKafka(topics={self.topics!r}, {self.connection!r}, "
            f"start={_start_label(self.start)!r}, bounded={self.bounded})"
        )


# -- writing ------------------------------------------------------------------------------


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"{what} must be bytes, str or None, got {type(value).__name__}")


class _WriteFn(beam.DoFn):
    def __init__(self, write: WriteToKafka):
        self._connection = write.connection
        self._topic = write.topic
        self._key_fn = write.key_fn
        self._value_fn = write.value_fn
        self._headers_fn = write.headers_fn
        self._timestamp_fn = write.timestamp_fn
        self._format = write.format
        self._flush_timeout = write.flush_timeout
        self._connect_timeout = write.connect_timeout
        self._producer: Any = None
        self._errors: list[str] = []
        self._failed = 0
        self._written = Metrics.counter(_NS, "kafka.records_written")

    def setup(self) -> None:
        from confluent_kafka import KafkaException, Producer

        check_reachable(self._connection, timeout=self._connect_timeout)
        try:
            self._producer = Producer(
                self._connection.client_config(
                    {"linger.ms": 5},
                    enable_idempotence=True,
                    acks="all",
                )
            )
        except (KafkaException, ValueError) as exc:
            raise wrap_kafka_error(
                exc, action="creating a Kafka producer", connection=self._connection
            ) from None

    def start_bundle(self) -> None:
        self._errors = []
        self._failed = 0

    def _on_delivery(self, error: Any, msg: Any) -> None:
        if error is not None:
            self._failed += 1
            if len(self._errors) < 5:
                where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else self._topic
                self._errors.append(
                    str(
                        wrap_kafka_error(
                            error,
                            action=f"delivering a record to {where}",
                            connection=self._connection,
                        )
                    )
                )

    def _fields(self, element: Any) -> tuple[Any, Any, Any, Any]:
        if self._value_fn is not None:
            value = self._value_fn(element)
            key = self._key_fn(element) if self._key_fn else None
            headers = self._headers_fn(element) if self._headers_fn else None
            ts = self._timestamp_fn(element) if self._timestamp_fn else None
            if isinstance(value, Mapping):
                value = self._format.encode(value)
            return key, value, headers, ts
        if isinstance(element, KafkaRecord):
            key, value, headers, ts = (
                element.key,
                element.value,
                element.headers,
                element.timestamp_ms,
            )
        elif isinstance(element, (bytes, str)):
            key, value, headers, ts = None, element, None, None
        elif isinstance(element, Mapping):
            key, value, headers, ts = None, self._format.encode(element), None, None
        else:
            raise ValueError(
                f"WriteToKafka got a {type(element).__name__}; give value_fn=... or write "
                "KafkaRecord, bytes, str or dict elements"
            )
        if self._key_fn is not None:
            key = self._key_fn(element)
        if self._headers_fn is not None:
            headers = self._headers_fn(element)
        if self._timestamp_fn is not None:
            ts = self._timestamp_fn(element)
        return key, value, headers, ts

    def process(self, element: Any) -> Iterator[Any]:
        from confluent_kafka import KafkaException

        key, value, headers, ts = self._fields(element)
        kwargs: dict[str, Any] = {
            "key": _as_bytes(key, "the key"),
            "value": _as_bytes(value, "the value"),
            "on_delivery": self._on_delivery,
        }
        if headers:
            kwargs["headers"] = list(headers)
        if ts is not None:
            kwargs["timestamp"] = int(ts)
        while True:
            try:
                self._producer.produce(self._topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let deliveries drain
            except KafkaException as exc:
                origin = ""
                if isinstance(element, KafkaRecord):
                    origin = f" (read from {element.topic}[{element.partition}]@{element.offset})"
                raise wrap_kafka_error(
                    exc,
                    action=f"producing a record to topic {self._topic!r}{origin}",
                    connection=self._connection,
                    cls=KafkaDeliveryError,
                ) from None
        self._producer.poll(0)
        self._written.inc()
        return iter(())

    def finish_bundle(self) -> None:
        remaining = self._producer.flush(self._flush_timeout)
        if self._failed:
            raise KafkaDeliveryError(
                f"{self._failed} record(s) were not delivered to topic {self._topic!r}; the "
                f"bundle fails so the runner retries it. First error(s): "
                + " | ".join(self._errors)
            )
        if remaining:
            raise KafkaDeliveryError(
                f"{remaining} record(s) were not acknowledged by Kafka within "
                f"flush_timeout={self._flush_timeout:g}s (topic {self._topic!r}); the bundle fails "
                "so the runner retries it",
                retriable=True,
            )

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._flush_timeout)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Writes elements to ``topic`` with an idempotent producer; a failed delivery fails the bundle.

    Elements are :class:`KafkaRecord` (key, value, headers and timestamp are kept; the record's
    own topic and partition are not -- Kafka's partitioner places it by key), ``bytes``/``str``
    (the value) or dicts (encoded with ``format``, JSON by default). ``value_fn`` (returning
    bytes, str or a dict), ``key_fn``, ``headers_fn`` (a list of ``(str, bytes)``) and
    ``timestamp_fn`` (epoch ms) override what comes from the element.

    Every bundle ends with a flush; a record not acknowledged (``acks=all``) within
    ``flush_timeout``, or refused by the client or the broker, raises
    :class:`~headwater.io.kafkaconfig.KafkaDeliveryError` so the runner retries the bundle:
    at-least-once, never fire-and-forget. ``enable.idempotence`` keeps a retry inside the
    producer from writing duplicates; a retried bundle may write its records again.

    >>> _ = p | beam.Create([{"id": 1}]) | WriteToKafka(     # doctest: +SKIP
    ...     bootstrap_servers="localhost:9092", topic="out", key_fn=lambda r: str(r["id"]))
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        config: Mapping[str, Any] | None = None,
        key_fn: Callable[[Any], Any] | None = None,
        value_fn: Callable[[Any], Any] | None = None,
        headers_fn: Callable[[Any], Iterable[tuple[str, bytes]]] | None = None,
        timestamp_fn: Callable[[Any], int | None] | None = None,
        format: Format | str | None = None,
        flush_timeout: DurationLike = 30.0,
        connect_timeout: DurationLike = 10.0,
    ):
        super().__init__()
        self.connection = KafkaConnection(bootstrap_servers, config)
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic={topic!r} must be a non-empty topic name")
        for key in ("enable.idempotence", "acks"):
            if key in self.connection.config:
                value = self.connection.config[key]
                if str(value).lower() not in ("true", "all", "-1"):
                    raise ValueError(
                        f"config[{key!r}]={value!r} would allow lost or duplicated records; "
                        "WriteToKafka always uses an idempotent producer with acks=all"
                    )
        for name, fn in (
            ("key_fn", key_fn),
            ("value_fn", value_fn),
            ("headers_fn", headers_fn),
            ("timestamp_fn", timestamp_fn),
        ):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name}={fn!r} is not callable")
        if isinstance(format, str):
            format = make_format(format)
        if format is not None and not isinstance(format, Format):
            raise ValueError(f"format={format!r} must be a format or a format name")
        self.topic = topic
        self.key_fn = key_fn
        self.value_fn = value_fn
        self.headers_fn = headers_fn
        self.timestamp_fn = timestamp_fn
        self.format = format or JsonFormat()
        self.flush_timeout = parse_duration(flush_timeout, name="flush_timeout", allow_zero=False)
        self.connect_timeout = parse_duration(
            connect_timeout, name="connect_timeout", allow_zero=False
        )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Produce" >> beam.ParDo(_WriteFn(self))

    def __repr__(self) -> str:
        return f"WriteToKafka(topic={self.topic!r}, {self.connection!r})"
