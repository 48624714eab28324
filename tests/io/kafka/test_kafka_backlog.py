"""The Kafka source's backlog against Apache Kafka: remaining messages from end offsets, as a
runner reads them (tracker progress, restriction sizes), and the consumer-lag gauges on Prism."""

from __future__ import annotations

import math
import pickle
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.runners.worker import statesampler
from apache_beam.utils import counters

from headwater import runners
from headwater.core.accounting import NAMESPACE
from headwater.devtools.produce import produce_lines
from headwater.io.kafka import ReadFromKafka, read_partitions, request_drain, reset_drain
from headwater.io.kafka.backlog import (
    END_OFFSETS,
    LAG_BYTES,
    LAG_MESSAGES,
    EndOffsets,
    PartitionLag,
    lag_metric_name,
    partition_lag,
)
from headwater.io.kafka.config import make_consumer
from headwater.io.kafka.restriction import (
    RESTRICTIONS,
    UNBOUNDED_STOP,
    PartitionRange,
    PartitionTracker,
)

pytestmark = pytest.mark.integration

BACKLOG = 500


def _backlog(bootstrap: str, topic: str, count: int = BACKLOG) -> None:
    items = [(None, f'{{"n": {i}, "pad": "{"x" * (i % 7)}"}}'.encode()) for i in range(count)]
    assert produce_lines(bootstrap, topic, items, partitions=1) == {0: count}


def _progress(tracker) -> tuple[float, float]:
    progress = tracker.current_progress()
    return progress.completed_work, progress.remaining_work


class _CountingConsumer:
    """A real consumer that counts its end-offset queries."""

    def __init__(self, consumer):
        self.consumer = consumer
        self.queries = 0

    def get_watermark_offsets(self, *args, **kwargs):
        self.queries += 1
        return self.consumer.get_watermark_offsets(*args, **kwargs)


def test_tracker_reports_the_backlog_as_remaining_messages(kafka_bootstrap, make_kafka_topic):
    """An unbounded range's size reports end offset - position, in messages (its progress is
    Beam's fraction of the range: Prism splits at NaN fractions on message progress)."""
    topic = make_kafka_topic(partitions=1)
    _backlog(kafka_bootstrap, topic)
    read = ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic)
    [element] = read_partitions(read.connection, read.topics)
    restriction = RESTRICTIONS.initial_restriction(element)
    tracker = RESTRICTIONS.create_tracker(restriction)
    assert RESTRICTIONS.restriction_size(element, restriction) == 1.0  # no end offset known yet
    consumer = make_consumer(read.connection, None)
    try:
        assert END_OFFSETS.refresh(consumer, topic, 0) == BACKLOG
    finally:
        consumer.close()
    assert RESTRICTIONS.restriction_size(element, restriction) == BACKLOG
    assert tracker.try_claim(119)
    primary, residual = tracker.try_split(0)  # a checkpoint hands the rest back
    assert RESTRICTIONS.restriction_size(element, residual) == BACKLOG - 120
    assert RESTRICTIONS.restriction_size(element, primary) == 120
    assert _progress(tracker) == (120, 0)  # the primary (bounded now): all of it read


def test_reader_learns_the_end_offset_and_reports_nothing_left_once_read(
    kafka_bootstrap, make_kafka_topic
):
    """The reader queries the end offset itself; after reading the backlog 0 remain."""
    topic = make_kafka_topic(partitions=1)
    _backlog(kafka_bootstrap, topic)
    read = ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic)
    [element] = read_partitions(read.connection, read.topics)
    fn = read.reader_fn(streaming=True)
    fn.setup()
    restriction = RESTRICTIONS.initial_restriction(element)
    estimator = fn.create_watermark_estimator(fn.initial_estimator_state(element, restriction))

    read_count = 0
    deadline = time.monotonic() + 60
    try:
        while True:  # one bundle per pass, resumed from the checkpoint's residual, as a runner
            tracker = RESTRICTIONS.create_tracker(restriction)
            safe = ThreadsafeRestrictionTracker(tracker)
            view = RestrictionTrackerView(safe)
            read_count += sum(1 for _ in fn.process(element, view, estimator))
            deferred = safe.deferred_status()
            assert deferred is not None, "an unbounded read ends its bundle with a checkpoint"
            restriction = deferred[0]
            if read_count >= BACKLOG or time.monotonic() > deadline:
                break
    finally:
        fn.teardown()
    assert read_count == BACKLOG
    assert END_OFFSETS.latest(topic, 0) == BACKLOG
    assert restriction.start == BACKLOG
    # Nothing left: the least size, never 0 (runners divide by sizes and fractions).
    assert RESTRICTIONS.restriction_size(element, restriction) < 0.01
    # The residual's own tracker, before any claim: a finite fraction, nothing read yet.
    progress = RESTRICTIONS.create_tracker(restriction).current_progress()
    assert progress.completed_work == 0
    assert math.isfinite(progress.fraction_completed)


def test_end_offsets_are_queried_at_a_bounded_rate(kafka_bootstrap, make_kafka_topic):
    """Within the interval the known end offset is reused; after it, the consumer is asked."""
    topic = make_kafka_topic(partitions=1)
    _backlog(kafka_bootstrap, topic, 10)
    now = [100.0]
    ends = EndOffsets(interval=5.0, clock=lambda: now[0])
    read = ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic)
    consumer = _CountingConsumer(make_consumer(read.connection, None))
    try:
        assert [ends.refresh(consumer, topic, 0) for _ in range(50)] == [10] * 50
        queries = consumer.queries
        assert queries <= 2  # the cached value, then (before any fetch) the broker
        _backlog(kafka_bootstrap, topic, 5)
        now[0] += 4.9
        assert ends.refresh(consumer, topic, 0) == 10
        assert consumer.queries == queries
        now[0] += 0.2
        assert ends.refresh(consumer, topic, 0) == 15
        assert consumer.queries > queries
    finally:
        consumer.consumer.close()


def test_end_offsets_refuse_a_negative_interval():
    """A negative query interval is refused, naming the value."""
    with pytest.raises(ValueError, match=r"interval=-1 must be >= 0 seconds"):
        EndOffsets(interval=-1)


def _gauge(result, name: str) -> int | None:
    """The gauge's value in the running job's metrics, asked of the job service now.

    (A portable result's ``metrics()`` keeps its first answer, so ask the Job API each time.)
    """
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import PortableMetrics

    request = beam_job_api_pb2.GetJobMetricsRequest(job_id=result._job_id)
    metrics = PortableMetrics(result._job_service.GetJobMetrics(request))
    found = metrics.query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    values = [g.committed or g.attempted for g in found["gauges"]]
    values = [v for v in values if v is not None]
    return values[-1].value if values else None


@pytest.mark.slow
def test_consumer_lag_reaches_zero_on_prism_once_the_backlog_is_read(
    kafka_bootstrap, make_kafka_topic
):
    """On Prism a streaming read of a known backlog reports consumer lag 0 once all is read."""
    topic = make_kafka_topic(partitions=1)
    _backlog(kafka_bootstrap, topic)
    options = PipelineOptions(["--streaming", "--environment_type=LOOPBACK"])
    runners.prepare(options, streaming=True, unbounded=True)
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | ReadFromKafka(bootstrap_servers=kafka_bootstrap, topics=topic, poll_interval=0.2)
        | beam.Map(lambda record: record.offset)
    )
    reset_drain()
    result = pipeline.run()
    try:
        messages = lag_metric_name(LAG_MESSAGES, topic, 0)
        seen = []
        deadline = time.monotonic() + 120
        while not seen or seen[-1] != 0:
            assert time.monotonic() < deadline, f"{messages} never reached 0: {seen}"
            value = _gauge(result, messages)
            if value is not None and (not seen or seen[-1] != value):
                seen.append(value)
            time.sleep(0.2)
        assert all(0 <= lag <= BACKLOG for lag in seen), seen
        assert _gauge(result, lag_metric_name(LAG_BYTES, topic, 0)) == 0
    finally:
        request_drain()
        result.wait_until_finish()
        reset_drain()


def test_a_range_keeps_its_partition_through_splits_and_pickling():
    """Split halves, a deadline cut and a pickled copy of a range still name its partition."""
    whole = PartitionRange(0, UNBOUNDED_STOP, 5.0, ("t", 3))
    primary, residual = whole.split_at(7)
    assert (primary.key, residual.key) == (("t", 3), ("t", 3))
    assert pickle.loads(pickle.dumps(residual)).key == ("t", 3)  # noqa: S301 (our own bytes)
    cut = PartitionTracker(PartitionRange(0, UNBOUNDED_STOP, 5.0, ("t", 3)), clock=lambda: 9.0)
    assert not cut.try_claim(4)  # past the deadline: the range ends at 4
    assert cut.current_restriction().key == ("t", 3)


def test_a_bounded_range_reports_its_progress_in_messages():
    """A bounded range's tracker reports offsets claimed and offsets left before its stop."""
    tracker = PartitionTracker(PartitionRange(10, 30, None, ("t", 0)))
    assert _progress(tracker) == (0, 20)
    assert tracker.try_claim(14)
    assert _progress(tracker) == (5, 15)


class _EndAt:
    """A consumer stand-in whose partition ends at ``end`` (the real query is tested above)."""

    def __init__(self, end):
        self.end = end

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return (0, self.end)


def _gauges(report) -> dict[str, int]:
    """The headwater gauges ``report()`` sets, read from a metrics container as a worker's."""
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    statesampler.set_current_tracker(sampler)
    container = MetricsContainer("read")
    sampler.start()
    try:
        with sampler.scoped_state("read", "process", metrics_container=container):
            report()
    finally:
        sampler.stop()
        statesampler.set_current_tracker(None)
    updates = container.get_cumulative()
    return {key.metric.name: data.value for key, data in updates.gauges.items()}


def test_lag_gauges_count_messages_and_estimate_bytes():
    """Lag = end - next offset; bytes = lag x the mean value size read; 0 and 0 when caught up."""
    lag = PartitionLag("events", 2)
    lag.observe(300, 3)  # a mean of 100 bytes
    messages = lag_metric_name(LAG_MESSAGES, "events", 2)
    size = lag_metric_name(LAG_BYTES, "events", 2)
    assert _gauges(lambda: lag.report(_EndAt(100), 40, EndOffsets())) == {
        messages: 60,
        size: 6000,
    }
    assert _gauges(lambda: lag.report(_EndAt(100), 100, EndOffsets())) == {messages: 0, size: 0}
    unread = PartitionLag("events", 3)  # nothing read yet: no size to estimate from
    assert _gauges(lambda: unread.report(_EndAt(5), 0, EndOffsets())) == {
        lag_metric_name(LAG_MESSAGES, "events", 3): 5
    }
    empty = PartitionLag("events", 4)  # an empty partition: no record, and nothing to read
    assert _gauges(lambda: empty.report(_EndAt(0), 0, EndOffsets())) == {
        lag_metric_name(LAG_MESSAGES, "events", 4): 0,
        lag_metric_name(LAG_BYTES, "events", 4): 0,
    }
    assert messages.split("/") == [LAG_MESSAGES, "events", "2"]


def test_the_mean_value_size_is_kept_per_partition_for_the_process():
    """Reader instances share one lag per partition, so a new one estimates bytes at once."""
    first = partition_lag("shared-topic", 0)
    first.observe(50, 1)
    assert partition_lag("shared-topic", 0) is first
    assert partition_lag("shared-topic", 1) is not first
    size = lag_metric_name(LAG_BYTES, "shared-topic", 0)
    gauges = _gauges(lambda: partition_lag("shared-topic", 0).report(_EndAt(4), 0, EndOffsets()))
    assert gauges[size] == 200
