"""The Kafka source's splittable DoFn: reads one partition's offset range with ``assign()``.

See :mod:`headwater.io.kafka` for its parallelism, watermark and delivery guarantee.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Duration, Timestamp

from headwater.core.accounting import NAMESPACE
from headwater.core.stamps import in_global_window
from headwater.io.formats import Format, FormatError
from headwater.io.kafka.backlog import cached_offsets, partition_lag
from headwater.io.kafka.commit import commit_or_warn, nothing_to_commit
from headwater.io.kafka.config import KafkaConnection, make_consumer
from headwater.io.kafka.errors import (
    KafkaConsumeError,
    wrap_kafka_error,
)
from headwater.io.kafka.ledger import offset_runs
from headwater.io.kafka.record import KafkaRecord, PartitionRead
from headwater.io.kafka.restriction import RESTRICTIONS, UNBOUNDED_STOP, read_ends
from headwater.io.partitionwatermarks import WATERMARKS, SharedWatermarkProvider
from headwater.windowing.eventtime import EventTimeExtractor, timestamp_from_millis
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = [
    "READ_RANGES",
    "ReadPartitionFn",
    "ReadPartitionUnboundedFn",
    "ReadRange",
    "check_end_offset",
    "reader_class",
    "split_read_ranges",
]


class ReadRange(NamedTuple):
    """With ``report_ranges``, the reader's report of one consumed batch, among its records:
    ``key`` ``(topic, partition)``, ``notice`` ``("read", base, start, stop, runs)``, ``runs``
    the ``(first, last + 1)`` runs of offsets holding its records
    (:class:`headwater.io.kafka.ledger.OffsetLedger`). :func:`split_read_ranges` takes them out.
    """

    key: tuple[str, int]
    notice: tuple[Any, ...]


#: The tag of the reports :func:`split_read_ranges` takes out of the records.
READ_RANGES = "read_ranges"


class _SplitRangesFn(beam.DoFn):
    def process(self, element: Any) -> Iterator[Any]:
        if isinstance(element, ReadRange):
            yield beam.pvalue.TaggedOutput(READ_RANGES, (element.key, element.notice))
        else:
            yield element


def split_read_ranges(read: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
    """The reader's output as ``records`` (main) and its :class:`ReadRange` reports
    (``READ_RANGES``). (They share the reader's one output, so that its step keeps its label.)"""
    return read | "SplitReadRanges" >> beam.ParDo(_SplitRangesFn()).with_outputs(
        READ_RANGES, main="records"
    )


_LOG = logging.getLogger(__name__)

_CONSUME_BATCH = 1000
_BATCH_WAIT_S = 0.05
# An unbounded read hands its remainder back to the runner (which then sees its records and its
# watermark) after reading a partition this long: with a backlog, long bundles carry many
# records each ...
_MAX_BUNDLE_SECONDS = 5.0
# ... and after this long once it has caught up with the partition's end offset: on a live tail
# every partition is read every few tenths of a second, so records and the watermark move on at
# once (5 s per partition, Prism reading the partitions one after another, held a stream's
# watermark 10-15 s back, and its window files about 30 s behind the input).
_TAIL_BUNDLE_SECONDS = 0.25


def check_end_offset(
    consumer: Any, tp: Any, messages: Sequence[Any], connection: KafkaConnection
) -> None:
    """Refuses a broker whose end offset (high watermark) is behind the records it returned.

    Kafka never returns a record at or past a partition's high watermark, so a record there
    proves the broker reports a wrong end offset (Tansu, ``headwater dev-broker``, reports the
    base offset of the last record batch + 1 once a producer batches records): a read that
    stops at that end would silently return part of the partition. Called when a bounded read
    sees records at or past the end offset it was given at start (records written since then
    are normal), it asks the broker again and raises
    :class:`~headwater.io.kafka.KafkaConsumeError` if a record is at or past the answer.
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


class ReadPartitionFn(beam.DoFn):
    """Reads one partition's offset range with ``assign()``; the source's splittable DoFn.

    It is its own watermark-estimator provider (the policy is per transform); restrictions come
    from :class:`PartitionRestrictions`.
    """

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group_id: str | None,
        policy: BoundedOutOfOrderness,
        event_time: EventTimeExtractor | None,
        value_format: Format | None,
        poll_interval: float,
        stall_timeout: float = 60.0,
        bounded: bool,
        clock: Callable[[], float] | None = None,
        read_id: str | None = None,
        report_ranges: bool = False,
    ):
        self._connection = connection
        # Each consumed batch as a READ_RANGES output (headwater.io.kafka.ledger): what a
        # commit that follows the writes needs to know it has seen every record of a range.
        self.reports_ranges = report_ranges
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
        self._poll_interval = poll_interval
        self._stall_timeout = stall_timeout
        self._bounded = bounded
        self._consumer: Any = None
        self._assigned: tuple[str, int, int] | None = None
        self._records = Metrics.counter(NAMESPACE, "kafka.records_read")
        self._fallbacks = Metrics.counter(NAMESPACE, "kafka.event_time_fallback")
        self._deleted = Metrics.counter(NAMESPACE, "kafka.offsets_deleted_before_read")

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
            self._consumer = make_consumer(self._connection, self._group_id)
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
        tracker=beam.DoFn.RestrictionParam(RESTRICTIONS),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(),
    ) -> Iterator[Any]:
        # (No bundle finalizer: a step that takes one is finalized by Prism bundle by bundle,
        # and the SDK fails each finalization of a bundle that registered nothing -- "Bundle is
        # not in a finalizable state". Only commit_on_finalize needs it: FinalizingReadFn.)
        yield from self._read(element, tracker, watermark_estimator, None)

    def _read(
        self,
        element: PartitionRead,
        tracker: Any,
        watermark_estimator: Any,
        finalize: Callable[[Callable[[], None]], None] | None,
    ) -> Iterator[Any]:
        """Reads ``element``'s restriction; ``finalize`` registers the bundle's commit."""
        from confluent_kafka import KafkaError, KafkaException, TopicPartition

        restriction = tracker.current_restriction()
        topic, partition = element.topic, element.partition
        if restriction.start >= restriction.stop:
            if finalize is not None:
                finalize(nothing_to_commit)
            return
        consumer = self._get_consumer()
        lag = partition_lag(topic, partition)  # consumer-lag gauges: headwater.io.kafka.backlog
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
        range_from = next_offset  # the next range to report begins here
        offsets: list[int] = []  # ... and its records are at these offsets
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
                    check_end_offset(consumer, tp, messages, self._connection)
                claimed_to = -1
                emitted = 0
                emitted_bytes = 0
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
                    if offset > next_offset:  # a gap: compaction, transaction markers ... or
                        next_offset = self._skip_deleted(consumer, tp, next_offset, stop)
                    if offset > claimed_to:
                        target = min(batch_last, stop - 1)
                        if target > offset and tracker.try_claim(target):
                            claimed_to = target
                        elif tracker.try_claim(offset):
                            claimed_to = offset
                        else:
                            self._records.inc(emitted)
                            lag.observe(emitted_bytes, emitted)
                            yield from self._range(element, range_from, next_offset, offsets)
                            return
                    claimed_any = True
                    if self.reports_ranges:
                        offsets.append(offset)
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
                    emitted_bytes += len(record.payload)
                    at = self._timestamp(record, watermark_estimator.current_watermark)
                    yield in_global_window(record, at.micros)  # (read from an Impulse)
                self._records.inc(emitted)
                lag.observe(emitted_bytes, emitted)
                yield from self._range(element, range_from, next_offset, offsets)
                range_from, offsets = next_offset, []
                lag.report(consumer, next_offset)  # (the end offset: at a bounded rate)
                if next_offset >= stop:
                    return
                if messages:
                    progressed = time.monotonic()
                    if not self._bounded and self._hand_back(
                        progressed - began, consumer, tp, next_offset, len(messages)
                    ):
                        # Let the runner commit (and finalize) what was read so far.
                        resume_at = next_offset
                        tracker.defer_remainder()
                        return
                else:
                    if self._caught_up_to_stop(consumer, tp, next_offset, stop, tracker):
                        yield from self._range(element, next_offset, stop, [])  # no record
                        return
                    skipped = self._skip_deleted(consumer, tp, next_offset, stop)
                    if skipped >= stop > next_offset:  # the rest of the range no longer exists
                        tracker.try_claim(stop - 1)
                        yield from self._range(element, range_from, stop, [])
                        return
                    next_offset = skipped
                    stalled = time.monotonic() - progressed
                    if self._bounded and stop < UNBOUNDED_STOP and stalled > self._stall_timeout:
                        raise KafkaConsumeError(
                            f"bounded read of {topic}[{partition}] made no progress for "
                            f"{stalled:.0f} s at offset {next_offset} of {stop} (stall_timeout="
                            f"{self._stall_timeout:g}s): the broker is unreachable or lost the "
                            "records; failing the bundle rather than returning a short read"
                        )
                    if read_ends(tracker.current_restriction()):
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
                if not failed and self._read_id is not None and read_ends(restriction):
                    # Done for good (deadline or drain), not cut by a runner's checkpoint.
                    WATERMARKS.finish(self._read_id, (topic, partition))
            if not failed:
                lag.report(consumer, next_offset)
            if not failed and finalize is not None:
                # Every bundle registers a callback: Prism finalizes every bundle of a step
                # that can ask for finalization, and the Python SDK fails (and logs at ERROR)
                # a finalization of a bundle that registered none.
                finalize(
                    functools.partial(self._commit, topic, partition, next_offset)
                    if claimed_any
                    else nothing_to_commit
                )

    def _skip_deleted(self, consumer: Any, tp: Any, next_offset: int, stop: int) -> int:
        """Where the read goes on: past the records the broker deleted before this read reached
        them (retention, a delete-records call), up to ``stop``; else ``next_offset``.

        Deleted: the partition's first offset, as the broker last told the consumer (no round
        trip), is past ``next_offset``. The consumer goes on from there by itself (it resets to
        the earliest offset); the loss is not silent: a warning names the offsets and
        ``kafka.offsets_deleted_before_read`` counts them. (A bounded read used to wait
        ``stall_timeout`` for such records and then fail.)
        """
        offsets = cached_offsets(consumer, tp)
        low = next_offset if offsets is None else offsets[0]
        if low <= next_offset:
            return next_offset
        self._deleted.inc(min(low, stop) - next_offset)
        _LOG.warning(
            "offsets %d to %d of %s[%d] were deleted by the broker (retention, or deleted "
            "records) before this read reached them; it goes on from offset %d (counted as "
            "kafka.offsets_deleted_before_read)",
            next_offset,
            min(low, stop) - 1,
            tp.topic,
            tp.partition,
            low,
        )
        return min(low, stop)

    @staticmethod
    def _hand_back(spent: float, consumer: Any, tp: Any, next_offset: int, got: int) -> bool:
        """Whether an unbounded read that has read for ``spent`` seconds hands its remainder
        back now: after ``_MAX_BUNDLE_SECONDS``, or after ``_TAIL_BUNDLE_SECONDS`` once it has
        caught up: its last consume returned ``got`` < a full batch and ``next_offset`` is at
        the partition's end offset as the consumer last heard it (no broker round trip)."""
        if spent >= _MAX_BUNDLE_SECONDS:
            return True
        if spent < _TAIL_BUNDLE_SECONDS or got >= _CONSUME_BATCH:
            return False
        offsets = cached_offsets(consumer, tp)  # (None: not known to be caught up)
        return offsets is not None and offsets[1] <= next_offset

    def _range(
        self, element: PartitionRead, start: int, stop: int, offsets: list[int]
    ) -> Iterator[Any]:
        """The READ_RANGES report of ``[start, stop)`` (records at ``offsets``), when asked for."""
        if self.reports_ranges and stop > start:
            key = (element.topic, element.partition)
            # (No timestamp of its own: the committer does not read it, and the reader's
            # watermark estimator must not see one.)
            notice = ("read", element.start, start, stop, offset_runs(offsets))
            yield ReadRange(key, notice)

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
        commit_or_warn(self._get_consumer(), self._connection, topic, partition, offset)


def _split_of(element: Any) -> Any:
    return (element.topic, element.partition) if isinstance(element, PartitionRead) else element


@beam.DoFn.unbounded_per_element()
class ReadPartitionUnboundedFn(ReadPartitionFn):
    """The unbounded variant: the runner knows the output never ends."""


def _finalizing_process(
    self: ReadPartitionFn,
    element: PartitionRead,
    # (Beam places the finalizer positionally: it must precede the keyword-only params.)
    bundle_finalizer=beam.DoFn.BundleFinalizerParam,
    tracker=beam.DoFn.RestrictionParam(RESTRICTIONS),
    watermark_estimator=beam.DoFn.WatermarkEstimatorParam(),
) -> Iterator[Any]:
    """The reader's ``process`` with a bundle finalizer: each bundle registers its commit."""
    yield from self._read(element, tracker, watermark_estimator, bundle_finalizer.register)


class FinalizingReadFn(ReadPartitionFn):
    """:class:`ReadPartitionFn` committing each partition's next offset when the runner
    finalizes the bundle that read it (``commit_on_finalize``)."""

    process = _finalizing_process  # type: ignore[assignment]  # (one more parameter)


@beam.DoFn.unbounded_per_element()
class FinalizingUnboundedReadFn(ReadPartitionUnboundedFn):
    """:class:`ReadPartitionUnboundedFn` committing on bundle finalization, likewise."""

    process = _finalizing_process  # type: ignore[assignment]


def reader_class(*, bounded: bool, commit_on_finalize: bool) -> type[ReadPartitionFn]:
    """The reading DoFn for a bounded or unbounded read, with a bundle finalizer only when it
    commits on finalization."""
    if commit_on_finalize:
        return FinalizingReadFn if bounded else FinalizingUnboundedReadFn
    return ReadPartitionFn if bounded else ReadPartitionUnboundedFn
