"""The Kafka source's splittable-DoFn machinery, called directly (what Dataflow and Flink drive)."""

from __future__ import annotations

import datetime as dt
import inspect
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from headwater.core.records import origin_of, payload_of
from headwater.io.kafka import (
    KafkaConnection,
    KafkaRecord,
    PartitionRead,
    ReadFromKafka,
    WriteToKafka,
    request_drain,
    reset_drain,
)
from headwater.io.kafka.errors import KafkaIOError
from headwater.io.kafka.partitions import allocate, resolve_starts
from headwater.io.kafka.reader import ReadPartitionFn, ReadPartitionUnboundedFn
from headwater.io.kafka.restriction import (
    RESTRICTIONS,
    UNBOUNDED_STOP,
    PartitionRange,
    PartitionTracker,
)
from headwater.windowing.eventtime import EventTimeExtractor
from headwater.windowing.watermark import BoundedOutOfOrderness, WatermarkState


def test_kafka_record_gives_payload_and_origin():
    """payload_of/origin_of see a KafkaRecord's value and coordinates."""
    record = KafkaRecord("t", 2, 17, b"k", b"v", 5, (("h", b"x"),))
    assert payload_of(record) == b"v"
    assert origin_of(record) == {"topic": "t", "partition": 2, "offset": 17}


def test_initial_restriction_is_the_partition_offset_range():
    """A bounded partition read becomes [start, stop); an unbounded one ends at UNBOUNDED_STOP."""
    bounded = RESTRICTIONS.initial_restriction(PartitionRead("t", 0, 5, 12))
    unbounded = RESTRICTIONS.initial_restriction(PartitionRead("t", 1, 3, None))
    assert (bounded.start, bounded.stop) == (5, 12)
    assert (unbounded.start, unbounded.stop) == (3, UNBOUNDED_STOP)
    assert RESTRICTIONS.create_tracker(bounded).is_bounded()
    assert not RESTRICTIONS.create_tracker(unbounded).is_bounded()


def test_initial_split_keeps_one_restriction_per_partition():
    """The initial split does not cut a partition's range: one restriction per partition."""
    element = PartitionRead("t", 0, 0, 1000)
    restriction = RESTRICTIONS.initial_restriction(element)
    assert list(RESTRICTIONS.split(element, restriction)) == [restriction]
    assert RESTRICTIONS.restriction_size(element, restriction) == 1000


def test_truncate_drops_an_unbounded_restriction_on_drain():
    """On drain an unbounded range is dropped and a bounded one kept."""
    unbounded = PartitionRange(0, UNBOUNDED_STOP)
    bounded = PartitionRange(0, 10)
    assert RESTRICTIONS.truncate(None, unbounded) is None
    assert RESTRICTIONS.truncate(None, bounded) == bounded


def test_tracker_claims_inside_the_range_only():
    """Offsets in [start, stop) are claimed; the first one at stop ends the range."""
    tracker = PartitionTracker(PartitionRange(10, 13))
    assert [tracker.try_claim(o) for o in (10, 11, 12)] == [True, True, True]
    assert tracker.try_claim(13) is False
    tracker.check_done()


def test_tracker_checkpoint_hands_back_the_rest_with_the_deadline():
    """try_split(0) keeps [start, next) and returns [next, stop) with the same deadline."""
    deadline = time.time() + 3600
    tracker = PartitionTracker(PartitionRange(0, UNBOUNDED_STOP, deadline=deadline))
    assert tracker.try_claim(0)
    assert tracker.try_claim(1)
    primary, residual = tracker.try_split(0)
    assert (primary.start, primary.stop) == (0, 2)
    assert (residual.start, residual.stop, residual.deadline) == (2, UNBOUNDED_STOP, deadline)
    assert tracker.try_claim(2) is False
    tracker.check_done()


def test_tracker_dynamic_split_halves_the_remainder():
    """A runner split at 0.5 of the remainder cuts the range in the middle of what is left."""
    tracker = PartitionTracker(PartitionRange(0, 100))
    assert tracker.try_claim(0)
    primary, residual = tracker.try_split(0.5)
    assert (primary.stop, residual.start, residual.stop) == (50, 50, 100)
    assert tracker.current_restriction() == primary


def test_tracker_ends_the_range_at_the_deadline_without_residual():
    """Past the deadline a claim fails and the range is cut there, so the restriction is done."""
    now = [100.0]
    tracker = PartitionTracker(PartitionRange(0, 50, deadline=105.0), clock=lambda: now[0])
    assert tracker.try_claim(0)
    assert tracker.try_claim(1)
    now[0] = 106.0
    assert tracker.try_claim(2) is False
    assert (tracker.current_restriction().start, tracker.current_restriction().stop) == (0, 2)
    tracker.check_done()


def test_allocate_spreads_max_records_over_partitions():
    """max_records is taken round-robin from what partitions hold, then past their ends."""
    assert allocate(7, [0, 0, 0], [10, 10, 10], stop_at_end=False) == [3, 2, 2]
    assert allocate(7, [0, 0, 0], [1, 10, 0], stop_at_end=False) == [1, 6, 0]
    assert allocate(10, [0, 5], [2, 6], stop_at_end=True) == [2, 6]
    assert allocate(5, [0, 5], [2, 6], stop_at_end=False) == [3, 7]


def _reader(**options):
    options.setdefault("bootstrap_servers", "h:1")
    options.setdefault("topics", "t")
    return ReadFromKafka(**options)


def test_watermark_estimator_starts_at_min_timestamp():
    """The estimator's initial state is MIN_TIMESTAMP (checkpoint-safe), not None."""
    fn = _reader().reader_fn()
    state = fn.initial_estimator_state(PartitionRead("t", 0, 0), PartitionRange(0, 1))
    assert fn.create_watermark_estimator(state).current_watermark() == MIN_TIMESTAMP
    assert fn.estimator_state_coder().decode(fn.estimator_state_coder().encode(state)) == state


def test_watermark_estimator_holds_back_by_max_delay_under_disorder():
    """Out-of-order timestamps: watermark = max seen - max_delay, never moving back."""
    fn = _reader(watermark=BoundedOutOfOrderness(max_delay="10s")).reader_fn()
    estimator = fn.create_watermark_estimator(fn.initial_estimator_state(None, None))
    for seconds in (100, 95, 120, 101):
        estimator.observe_timestamp(Timestamp(seconds))
    assert estimator.current_watermark() == Timestamp(110)
    resumed = fn.create_watermark_estimator(estimator.get_estimator_state())
    assert resumed.current_watermark() == Timestamp(110)


def test_idle_partition_watermark_advances_with_the_clock():
    """A partition idle for idle_timeout advances its watermark to now - max_delay."""
    fn = _reader(watermark=BoundedOutOfOrderness(max_delay="5s", idle_timeout="1m")).reader_fn()
    idle_since = time.time() - 120
    state = (("t", 0), WatermarkState(Timestamp(50), Timestamp(55), idle_since))
    watermark = fn.create_watermark_estimator(state).current_watermark()
    assert watermark >= Timestamp(idle_since + 120 - 5 - 1)
    busy_state = WatermarkState(Timestamp(50), Timestamp(55), time.time())
    busy = fn.create_watermark_estimator((("t", 0), busy_state))
    assert busy.current_watermark() == Timestamp(50)


def test_reader_fn_kind_follows_boundedness():
    """Bounded options give the bounded DoFn; none of them gives the unbounded one."""
    assert type(_reader(stop_at_end=True).reader_fn()) is ReadPartitionFn
    assert type(_reader(max_records=5).reader_fn()) is ReadPartitionFn
    assert type(_reader(max_duration="1m").reader_fn()) is ReadPartitionFn
    assert type(_reader().reader_fn()) is ReadPartitionUnboundedFn


class _Msg:
    def __init__(self, offset, value=b"v", partition=0, ts=1_000):
        self._offset, self._value, self._partition, self._ts = offset, value, partition, ts

    def error(self):
        return None

    def offset(self):
        return self._offset

    def partition(self):
        return self._partition

    def topic(self):
        return "t"

    def key(self):
        return None

    def value(self):
        return self._value

    def timestamp(self):
        return (1, self._ts)

    def headers(self):
        return None


class _FakeConsumer:
    def __init__(self, batches, position=None):
        self.batches = list(batches)
        self.assigned = []
        self._position = position
        self.end = 1 + max((m.offset() for batch in self.batches for m in batch), default=-1)
        self.end_queries = 0

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        self.end_queries += 1
        return (0, self.end)

    def assign(self, tps):
        self.assigned.append((tps[0].partition, tps[0].offset))

    def consume(self, n, timeout):
        return self.batches.pop(0) if self.batches else []

    def poll(self, timeout):
        return None

    def position(self, tps):
        tps[0].offset = self._position if self._position is not None else -1001
        return tps


class _Finalizer:
    def __init__(self):
        self.callbacks = []

    def register(self, callback):
        self.callbacks.append(callback)


def _run(fn, consumer, restriction, element=None):
    fn._consumer = consumer
    fn._assigned = None
    view = RestrictionTrackerView(ThreadsafeRestrictionTracker(PartitionTracker(restriction)))
    finalizer = _Finalizer()
    element = element or PartitionRead("t", 0, restriction.start)
    estimator = fn.create_watermark_estimator(fn.initial_estimator_state(element, restriction))
    out = list(fn._read(element, view, estimator, finalizer.register))
    return out, view, finalizer


def test_process_emits_claimed_offsets_with_kafka_timestamps():
    """A bounded range emits each offset once, timestamped with the Kafka timestamp."""
    fn = _reader(stop_at_end=True).reader_fn()
    consumer = _FakeConsumer([[_Msg(0, ts=5_000), _Msg(1, ts=6_000)], [_Msg(2, ts=7_000)]])
    out, _, _ = _run(fn, consumer, PartitionRange(0, 3))
    assert [(tv.value.offset, tv.timestamp.micros // 1000) for tv in out] == [
        (0, 5_000),
        (1, 6_000),
        (2, 7_000),
    ]
    assert consumer.assigned == [(0, 0)]


def test_process_event_time_field_overrides_kafka_timestamp():
    """event_time reads the element timestamp from the decoded value."""
    fn = _reader(stop_at_end=True, event_time=EventTimeExtractor(field="at")).reader_fn()
    consumer = _FakeConsumer([[_Msg(0, value=b'{"at": 42000}'), _Msg(1, value=b"{}", ts=9)]])
    out, _, _ = _run(fn, consumer, PartitionRange(0, 2))
    assert out[0].timestamp.micros // 1000 == 42_000


def test_record_without_event_time_never_moves_the_watermark():
    """An unreadable record is stamped with the partition's watermark, not its Kafka time."""
    policy = BoundedOutOfOrderness(max_delay="5s")
    fn = _reader(event_time=EventTimeExtractor(field="at"), watermark=policy).reader_fn()
    now_ms = int(time.time() * 1000)
    consumer = _FakeConsumer([[_Msg(4, value=b'{"at": 42000}'), _Msg(5, value=b"junk", ts=now_ms)]])
    restriction = PartitionRange(4, UNBOUNDED_STOP)
    element = PartitionRead("t", 0, 4)
    estimator = fn.create_watermark_estimator(fn.initial_estimator_state(element, restriction))
    view = RestrictionTrackerView(ThreadsafeRestrictionTracker(PartitionTracker(restriction)))
    fn._consumer, fn._assigned = consumer, None
    out = []
    for tv in fn.process(element, view, watermark_estimator=estimator):
        estimator.observe_timestamp(tv.timestamp)  # what the SDK does with every output
        out.append(tv)
    assert out[1].timestamp == Timestamp(37)  # the watermark after the first record
    assert estimator.current_watermark() == Timestamp(37)


def test_unbounded_range_refuses_fractional_splits_but_checkpoints():
    """Splitting [n, inf) at a fraction would start a residual near 2**62: refused."""
    tracker = PartitionTracker(PartitionRange(5, UNBOUNDED_STOP))
    assert tracker.try_claim(5)
    assert tracker.try_split(0.5) is None
    primary, residual = tracker.try_split(0)
    assert (primary.stop, residual.start, residual.stop) == (6, 6, UNBOUNDED_STOP)
    bounded = PartitionTracker(PartitionRange(0, 10))
    assert bounded.try_split(0.5) is not None


def test_drain_ends_unbounded_ranges_at_the_next_claim_only():
    """request_drain: an unbounded range is cut at its next claim; a bounded one reads on."""
    unbounded = PartitionTracker(PartitionRange(0, UNBOUNDED_STOP))
    bounded = PartitionTracker(PartitionRange(0, 3))
    assert unbounded.try_claim(0)
    request_drain()
    try:
        assert unbounded.try_claim(1) is False
        unbounded.check_done()
        assert unbounded.current_restriction().stop == 1
        assert all(bounded.try_claim(i) for i in range(3))
    finally:
        reset_drain()
    assert PartitionTracker(PartitionRange(0, UNBOUNDED_STOP)).try_claim(0)


def test_unbounded_read_output_is_marked_unbounded():
    """The SDK marks an SDF's output bounded; an unbounded read corrects it (late routing)."""
    options = PipelineOptions(["--streaming"])
    p = beam.Pipeline(options=options)
    assert (p | "Live" >> _reader()).is_bounded is False
    assert (p | "Ends" >> _reader(stop_at_end=True)).is_bounded is True


def test_process_unbounded_checkpoints_when_caught_up():
    """Unbounded: an empty poll defers the remainder from the next offset (a checkpoint)."""
    fn = _reader(poll_interval="10ms").reader_fn()
    consumer = _FakeConsumer([[_Msg(4), _Msg(5)]])
    out, view, _ = _run(fn, consumer, PartitionRange(4, UNBOUNDED_STOP))
    assert [tv.value.offset for tv in out] == [4, 5]
    deferred = view._threadsafe_restriction_tracker.deferred_status()
    assert deferred is not None
    residual = deferred[0]
    assert (residual.start, residual.stop) == (6, UNBOUNDED_STOP)


class _ClockedConsumer(_FakeConsumer):
    """Each consume takes ``step`` seconds of a fake monotonic clock; on a ``live`` tail the
    partition's end offset is just past the records consumed so far."""

    def __init__(self, batches, clock, step, *, live):
        super().__init__(batches)
        self._clock, self._step, self._live = clock, step, live

    def consume(self, n, timeout):
        self._clock[0] += self._step
        batch = super().consume(n, timeout)
        if self._live and batch:
            self.end = batch[-1].offset() + 1
        return batch

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        assert cached, "the tail check must not ask the broker"
        return (0, self.end)


@pytest.mark.parametrize(
    ("batch", "live", "read"),
    [
        (2, True, 6),  # caught up (short batches, at the end offset): after 0.25 s
        (3, True, 15),  # full batches: after 5 s
        (2, False, 10),  # short batches behind the end offset (a slow fetch): after 5 s
    ],
    ids=["tail", "full-batches", "behind-the-end"],
)
def test_unbounded_read_hands_back_its_remainder_by_time(monkeypatch, batch, live, read):
    """An unbounded read ends its bundle after _TAIL_BUNDLE_SECONDS once it has caught up with
    the partition's end (so every partition of a live stream is read every few tenths of a
    second), and after _MAX_BUNDLE_SECONDS otherwise; the rest is deferred from the next offset."""
    from headwater.io.kafka import reader

    clock = [100.0]
    monkeypatch.setattr(reader, "_CONSUME_BATCH", 3)
    monkeypatch.setattr(reader.time, "monotonic", lambda: clock[0])
    fn = _reader().reader_fn()
    step = 0.1 if batch == 2 and live else 1.0  # seconds per consume
    batches = [[_Msg(o) for o in range(i * batch, (i + 1) * batch)] for i in range(40)]
    out, view, _ = _run(
        fn, _ClockedConsumer(batches, clock, step, live=live), PartitionRange(0, UNBOUNDED_STOP)
    )
    assert [tv.value.offset for tv in out] == list(range(read))
    residual = view._threadsafe_restriction_tracker.deferred_status()[0]
    assert (residual.start, residual.stop) == (read, UNBOUNDED_STOP)


def test_process_finishes_when_position_passes_stop_without_records():
    """Control records at the end (position past stop, no messages) end the bounded read."""
    fn = _reader(stop_at_end=True).reader_fn()
    consumer = _FakeConsumer([[_Msg(0)]], position=3)
    out, view, _ = _run(fn, consumer, PartitionRange(0, 3))
    assert [tv.value.offset for tv in out] == [0]
    view._threadsafe_restriction_tracker.check_done()


class _RetainedConsumer(_FakeConsumer):
    """A partition whose records before ``low`` the broker deleted (retention)."""

    def __init__(self, batches, low):
        super().__init__(batches)
        self.low = low

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        return (self.low, max(self.end, self.low))


@pytest.mark.parametrize(
    ("records", "stop", "read"),
    [
        ([], 2, []),  # the whole range is gone: the read ends (it used to stall, then fail)
        ([10, 11, 12], 13, [10, 11, 12]),  # the rest is read from the broker's first offset
    ],
    ids=["all-gone", "part-gone"],
)
def test_records_deleted_before_the_read_are_named_and_counted_not_waited_for(
    caplog, records, stop, read
):
    """Retention deleted offsets 0-9 between planning and reading a bounded range [0, stop)."""
    fn = _reader(stop_at_end=True, poll_interval="10ms").reader_fn()
    counted = []
    fn._deleted = type("C", (), {"inc": lambda self, n: counted.append(n)})()
    consumer = _RetainedConsumer([[_Msg(o) for o in records]] if records else [], low=10)
    out, view, _ = _run(fn, consumer, PartitionRange(0, stop))
    assert [tv.value.offset for tv in out] == read
    view._threadsafe_restriction_tracker.check_done()
    assert counted == [min(10, stop)]
    assert f"offsets 0 to {min(10, stop) - 1} of t[0] were deleted by the broker" in caplog.text


def test_process_registers_commit_of_next_offset_only_when_asked():
    """commit_on_finalize registers the commit; without it, the read takes no bundle finalizer:
    Prism would finalize each of its bundles, and the SDK fails those that registered nothing."""
    with_commit = _reader(stop_at_end=True, group_id="g", commit_on_finalize=True).reader_fn()
    assert "bundle_finalizer" in inspect.signature(with_commit.process).parameters
    _, _, finalizer = _run(with_commit, _FakeConsumer([[_Msg(0), _Msg(1)]]), PartitionRange(0, 2))
    assert len(finalizer.callbacks) == 1
    assert finalizer.callbacks[0].args == ("t", 0, 2)
    _, _, finalizer = _run(with_commit, _FakeConsumer([[]]), PartitionRange(2, 2))
    assert [getattr(c, "func", c).__name__ for c in finalizer.callbacks] == ["nothing_to_commit"]
    for read in (_reader(stop_at_end=True), _reader(group_id="g", commit_after_sinks=True)):
        for streaming in (False, True):
            fn = read.reader_fn(streaming=streaming)
            assert "bundle_finalizer" not in inspect.signature(fn.process).parameters
    unbounded = _reader(group_id="g", commit_on_finalize=True).reader_fn(streaming=True)
    assert "bundle_finalizer" in inspect.signature(unbounded.process).parameters
    assert unbounded.__class__.__name__ == "FinalizingUnboundedReadFn"


class _StartConsumer:
    def committed(self, tps, timeout):
        for tp, offset in zip(tps, [7, -1001], strict=True):
            tp.offset = offset
        return tps

    def offsets_for_times(self, tps, timeout):
        for tp, offset in zip(tps, [4, -1], strict=True):
            tp.offset = offset
        return tps


def test_committed_start_falls_back_to_earliest_and_times_to_end():
    """committed: the group's offset, else earliest; a datetime: its offset, else the end."""
    conn = KafkaConnection("h:1")
    parts, lows, highs = [("t", 0), ("t", 1)], [0, 2], [10, 20]
    assert resolve_starts(
        _StartConsumer(), conn, parts, lows, highs, start="committed", timeout=1
    ) == [7, 2]
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    assert resolve_starts(_StartConsumer(), conn, parts, lows, highs, start=when, timeout=1) == [
        4,
        20,
    ]
    assert resolve_starts(
        _StartConsumer(), conn, parts, lows, highs, start={("t", 1): 50}, timeout=1
    ) == [0, 20]


class _PassingCoordinator(_StartConsumer):
    """A group coordinator that answers ``errors`` (error codes, in order) before its offsets."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.asked = 0

    def committed(self, tps, timeout):
        from confluent_kafka import KafkaError, KafkaException

        self.asked += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return super().committed(tps, timeout)


def test_committed_start_asks_again_while_the_coordinator_moves_or_loads():
    """NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS (a restarted broker) are asked again;
    another error is raised at once, naming the start."""
    from confluent_kafka import KafkaError

    conn = KafkaConnection("h:1")
    parts, lows, highs = [("t", 0), ("t", 1)], [0, 2], [10, 20]
    passing = _PassingCoordinator(
        KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS
    )
    assert resolve_starts(passing, conn, parts, lows, highs, start="committed", timeout=5) == [7, 2]
    assert passing.asked == 3
    refused = _PassingCoordinator(KafkaError.GROUP_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaIOError, match="resolving start=committed"):
        resolve_starts(refused, conn, parts, lows, highs, start="committed", timeout=5)
    assert refused.asked == 1


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"topics": []}, "topics=\\[\\]"),
        ({"start": "newest"}, "start='newest'"),
        ({"start": dt.datetime(2024, 1, 1)}, "naive"),  # noqa: DTZ001 - the point of the test
        ({"start": {("other", 0): 1}}, "'other'"),
        ({"start": {("t", 0): -1}}, "-1"),
        ({"start": "committed"}, "group_id=None"),
        ({"commit_on_finalize": True}, "group_id=None"),
        ({"max_records": 0}, "max_records=0"),
        ({"max_duration": "0s"}, "max_duration='0s'"),
        ({"watermark": 5}, "watermark=5"),
        ({"event_time": "event_time"}, "event_time='event_time'"),
        ({"value_format": "json"}, "value_format=JsonFormat"),
        ({"group_id": "a", "config": {"group.id": "b"}}, "group_id='a'"),
        ({"connect_timeout": -1}, "connect_timeout=-1"),
    ],
)
def test_read_validation_names_the_bad_value(options, bad):
    """Each bad ReadFromKafka option raises ValueError naming it."""
    with pytest.raises(ValueError, match=bad):
        _reader(**options)


@pytest.mark.parametrize(
    ("options", "bad"),
    [
        ({"topic": ""}, "topic=''"),
        ({"config": {"enable.idempotence": False}}, "enable.idempotence"),
        ({"config": {"acks": 1}}, "'acks'"),
        ({"key_fn": 3}, "key_fn=3"),
        ({"format": "yaml"}, "'yaml'"),
        ({"flush_timeout": 0}, "flush_timeout=0"),
    ],
)
def test_write_validation_names_the_bad_value(options, bad):
    """Each bad WriteToKafka option raises ValueError naming it."""
    options.setdefault("topic", "t")
    with pytest.raises(ValueError, match=bad):
        WriteToKafka(bootstrap_servers="h:1", **options)


def test_stall_timeout_is_validated():
    """stall_timeout must be a positive duration; the error names it."""
    with pytest.raises(ValueError, match="stall_timeout"):
        ReadFromKafka(
            bootstrap_servers="localhost:9092", topics="t", stop_at_end=True, stall_timeout=0
        )


def test_commit_after_sinks_reports_ranges_when_read_live_and_excludes_finalize_commits():
    """commit_after_sinks: a bounded read commits after its sinks; a read that runs live
    (unbounded, or until max_duration in a streaming job) reports the ranges it consumed for the
    commit that follows the writes. It excludes finalize commits."""
    base = {"bootstrap_servers": "localhost:9092", "topics": "t", "group_id": "g"}
    for bound in ({"stop_at_end": True}, {"max_records": 5}, {"max_duration": 60}):
        read = ReadFromKafka(**base, **bound, commit_after_sinks=True)
        assert read.commit_after_sinks
        assert not read.reader_fn(streaming=False).reports_ranges
    assert (
        ReadFromKafka(**base, max_duration=60, commit_after_sinks=True)
        .reader_fn(streaming=True)
        .reports_ranges
    )
    unbounded = ReadFromKafka(**base, commit_after_sinks=True)
    assert unbounded.reader_fn(streaming=True).reports_ranges
    assert not ReadFromKafka(**base, commit_on_finalize=True).reader_fn().reports_ranges
    with pytest.raises(ValueError, match="choose one"):
        ReadFromKafka(**base, stop_at_end=True, commit_after_sinks=True, commit_on_finalize=True)
