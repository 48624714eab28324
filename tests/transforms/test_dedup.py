"""DeduplicateById: ids, horizons in event and processing time, keep-first/last, dead letters.

Streaming tests drive time with ``TestStream`` on the BundleBasedDirectRunner; batch tests run on
the FnApiRunner, which feeds a ``Create(reshuffle=False)`` to the stateful step in input order
(one bundle), so arrival order is the list order there too. Every test checks that
``main + duplicate + dead_letter`` is exactly the input.
"""

from __future__ import annotations

import json
import random
import uuid

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct import direct_runner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import FixedWindows, IntervalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from headwater.core.accounting import Accounting
from headwater.core.records import SourceRecord
from headwater.transforms import dedup
from headwater.transforms.dedup import (
    DeduplicateById,
    Deduplicated,
    InvalidIdError,
    MissingIdError,
)

HORIZON = 60  # seconds, unless a test says otherwise
# The BundleBasedDirectRunner does not hold the watermark for user timers: a keep="last" copy
# flushed by the final jump to infinity would reach assert_that's GroupByKey behind a watermark
# of +inf and be dropped there. Streaming keep-last tests move time past every horizon first.
_PAST_HORIZONS = 1_000


def _streaming() -> TestPipeline:
    return TestPipeline(
        runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True), blocking=True
    )


def _batch() -> TestPipeline:
    return TestPipeline(runner="FnApiRunner", blocking=True)


def _rec(id_, n):
    return {"id": id_, "n": n}


def _tv(id_, n, ts):
    return TimestampedValue(_rec(id_, n), ts)


def _create(p, timestamped, label="Input"):
    """A batch source: the TimestampedValues in list order."""
    pairs = [(tv.value, tv.timestamp.micros) for tv in timestamped]
    return (
        p
        | label >> beam.Create(pairs, reshuffle=False)
        | f"{label}Stamp" >> beam.MapTuple(lambda r, us: TimestampedValue(r, Timestamp(micros=us)))
    )


def _ns_at(pcoll, label):
    """(n, event time in whole seconds) of each record."""
    return pcoll | label >> beam.Map(
        lambda r, ts=beam.DoFn.TimestampParam: (r["n"], ts.micros // 1_000_000)
    )


def _canon(record) -> str:
    return json.dumps(record, sort_keys=True)


def _assert_identity(out: Deduplicated, inputs, label="main + duplicate + dead_letter == input"):
    """The three outputs together are exactly the input records."""
    back = out.dead_letter | f"{label} payload" >> beam.Map(lambda d: json.loads(d.payload))
    everything = (out.main, out.duplicate, back) | f"{label} flatten" >> beam.Flatten()
    assert_that(
        everything | f"{label} canon" >> beam.Map(_canon),
        equal_to([_canon(r) for r in inputs]),
        label=label,
    )


def _values(timestamped):
    return [tv.value for tv in timestamped]


# --- construction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"horizon": 60}, "id_field=None"),
        ({"id_field": "id", "id_fn": len, "horizon": 60}, "id_field='id'"),
        ({"id_field": "id", "content_hash": True, "horizon": 60}, "content_hash=True"),
        ({"content_hash": "yes", "horizon": 60}, "content_hash='yes'"),
        ({"id_field": "", "horizon": 60}, "id_field=''"),
        ({"id_field": "user..id", "horizon": 60}, "id_field='user..id'"),
        ({"id_field": 3, "horizon": 60}, "id_field=3"),
        ({"id_fn": "id", "horizon": 60}, "id_fn='id'"),
        ({"id_field": "id", "keep": "newest", "horizon": 60}, "keep='newest'"),
        ({"id_field": "id", "time_domain": "ingest", "horizon": 60}, "time_domain='ingest'"),
        ({"id_field": "id", "horizon": 0}, "horizon=0"),
        ({"id_field": "id", "horizon": -5}, "horizon=-5"),
        ({"id_field": "id", "horizon": "soon"}, "horizon='soon'"),
    ],
)
def test_invalid_options_name_the_bad_value(kwargs, named):
    """Every construction error is a ValueError that names the offending value."""
    with pytest.raises(ValueError, match=named.replace("(", r"\(").replace(".", r"\.")):
        DeduplicateById(**kwargs)


def test_configuration_is_readable_through_public_properties():
    """id_field, id_of, keep, time_domain and horizon_micros report what was configured."""
    by_field = DeduplicateById(id_field="user.id", keep="last", horizon="2m")
    assert (by_field.id_field, by_field.keep, by_field.time_domain) == ("user.id", "last", "event")
    assert by_field.horizon_micros == 120_000_000
    assert by_field.id_of({"user": {"id": 7}}) == "7"
    by_fn = DeduplicateById(id_fn=len, time_domain="processing", horizon=1)
    assert (by_fn.id_field, by_fn.keep, by_fn.time_domain) == (None, "first", "processing")
    assert by_fn.id_of("abc") == "3"


def test_horizon_is_required():
    """There is no default horizon: state must be bounded by an explicit choice."""
    with pytest.raises(TypeError, match="horizon"):
        DeduplicateById(id_field="id")  # type: ignore[call-arg]


def test_windowed_input_is_refused():
    """Applying it after WindowInto fails at construction, naming the window function."""
    p = _batch()
    windowed = p | beam.Create([_rec(1, 1)]) | beam.WindowInto(FixedWindows(30))
    with pytest.raises(ValueError, match="FixedWindows"):
        _ = windowed | DeduplicateById(id_field="id", horizon=HORIZON)


# --- event time: streaming and batch ---------------------------------------------------------


def test_duplicates_in_the_same_bundle_are_removed():
    """Copies that arrive together: the first arrival is kept, the others are duplicates."""
    events = [_tv("a", 1, 10), _tv("b", 2, 11), _tv("a", 3, 12), _tv("a", 4, 9)]
    with _streaming() as p:
        stream = TestStream().advance_watermark_to(0).add_elements(events)
        out = (
            p
            | stream.advance_watermark_to_infinity()
            | DeduplicateById(id_field="id", horizon=HORIZON)
        )
        assert_that(_ns_at(out.main, "main at"), equal_to([(1, 10), (2, 11)]), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(3, 12), (4, 9)]), label="dups")
        _assert_identity(out, _values(events))


@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_duplicate_in_a_later_bundle_is_removed(pipeline):
    """A copy arriving after the watermark moved on (still within the horizon) is removed."""
    first, later = [_tv("a", 1, 10), _tv("b", 2, 20)], [_tv("a", 3, 45), _tv("c", 4, 50)]
    with pipeline() as p:
        if pipeline is _streaming:
            stream = (
                TestStream()
                .advance_watermark_to(0)
                .add_elements(first)
                .advance_watermark_to(40)
                .add_elements(later)
                .advance_watermark_to_infinity()
            )
            records = p | stream
        else:
            records = _create(p, first + later)
        out = records | DeduplicateById(id_field="id", horizon=HORIZON)
        assert_that(
            _ns_at(out.main, "main at"), equal_to([(1, 10), (2, 20), (4, 50)]), label="main"
        )
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(3, 45)]), label="dups")
        _assert_identity(out, _values(first + later))


@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_duplicate_falling_into_another_window_is_removed(pipeline):
    """Dedup runs before windowing: a copy that lands in a later fixed window is still removed."""
    events = [_tv("a", 1, 10), _tv("b", 2, 25), _tv("a", 3, 45), _tv("c", 4, 50)]
    with pipeline() as p:
        if pipeline is _streaming:
            stream = (
                TestStream()
                .advance_watermark_to(0)
                .add_elements(events[:2])
                .advance_watermark_to(31)
                .add_elements(events[2:])
                .advance_watermark_to_infinity()
            )
            records = p | stream
        else:
            records = _create(p, events)
        out = records | DeduplicateById(id_field="id", horizon=HORIZON)
        windowed = out.main | beam.WindowInto(FixedWindows(30)) | beam.Map(lambda r: r["n"])
        assert_that(
            windowed,
            equal_to_per_window({IntervalWindow(0, 30): [1, 2], IntervalWindow(30, 60): [4]}),
            label="main per window",
        )
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(3, 45)]), label="dups")
        _assert_identity(out, _values(events))


@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_older_copy_arriving_later_is_a_duplicate(pipeline):
    """A copy whose event time is before the kept one's, arriving after it, is a duplicate."""
    events = [_tv("a", 1, 100), _tv("a", 2, 40), _tv("a", 3, 150), _tv("a", 4, 165)]
    # 40 <= 100 + 60 (older copy); 150 <= 100 + 60; 165 > 100 + 60 but <= 150 + 60 (newest anchor)
    with pipeline() as p:
        if pipeline is _streaming:
            stream = TestStream().advance_watermark_to(0).add_elements(events[:1])
            for event in events[1:]:
                stream = stream.add_elements([event])
            records = p | stream.advance_watermark_to_infinity()
        else:
            records = _create(p, events)
        out = records | DeduplicateById(id_field="id", horizon=HORIZON)
        assert_that(_ns_at(out.main, "main at"), equal_to([(1, 100)]), label="main")
        assert_that(
            _ns_at(out.duplicate, "dup at"),
            equal_to([(2, 40), (3, 150), (4, 165)]),
            label="dups keep their own timestamps",
        )
        _assert_identity(out, _values(events))


@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_keep_last_emits_the_last_arrival_with_its_own_timestamp(pipeline):
    """keep='last': the last copy to arrive comes out (at its event time), earlier ones are dups."""
    events = [_tv("a", 1, 10), _tv("b", 2, 12), _tv("a", 3, 20), _tv("a", 4, 15)]
    with pipeline() as p:
        if pipeline is _streaming:
            stream = (
                TestStream()
                .advance_watermark_to(0)
                .add_elements(events[:2])
                .advance_watermark_to(14)
                .add_elements(events[2:])
                .advance_watermark_to(_PAST_HORIZONS)
                .advance_watermark_to_infinity()
            )
            records = p | stream
        else:
            records = _create(p, events)
        out = records | DeduplicateById(id_field="id", keep="last", horizon=HORIZON)
        assert_that(_ns_at(out.main, "main at"), equal_to([(2, 12), (4, 15)]), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(1, 10), (3, 20)]), label="dups")
        _assert_identity(out, _values(events))


def test_keep_last_emits_when_the_watermark_passes_the_horizon():
    """keep='last' holds the copy until anchor + horizon, then a new copy starts a new episode."""
    with _streaming() as p:
        stream = (
            TestStream()
            .advance_watermark_to(0)
            .add_elements([_tv("a", 1, 10), _tv("a", 2, 30)])
            .advance_watermark_to(91)  # past 30 + 60: the timer emits copy 2 and forgets "a"
            .add_elements([_tv("a", 3, 80), _tv("a", 4, 100)])  # 80 <= 90, but "a" is gone
            .advance_watermark_to(_PAST_HORIZONS)
            .advance_watermark_to_infinity()
        )
        out = p | stream | DeduplicateById(id_field="id", keep="last", horizon=HORIZON)
        assert_that(_ns_at(out.main, "main at"), equal_to([(2, 30), (4, 100)]), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(1, 10), (3, 80)]), label="dups")
        _assert_identity(out, [_rec("a", 1), _rec("a", 2), _rec("a", 3), _rec("a", 4)])


@pytest.mark.parametrize("keep", ["first", "last"])
@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_repeat_after_the_event_time_horizon_is_kept(pipeline, keep):
    """A copy later than anchor + horizon starts a new episode, in streaming and batch alike."""
    events = [_tv("a", 1, 10), _tv("a", 2, 75), _tv("a", 3, 130), _tv("a", 4, 140)]
    # 75 > 10 + 60: new; 130 <= 75 + 60: duplicate; 140 <= 130 + 60: duplicate.
    with pipeline() as p:
        if pipeline is _streaming:
            stream = (
                TestStream()
                .advance_watermark_to(0)
                .add_elements(events[:1])
                .advance_watermark_to(71)  # the timer at 70 clears the id
                .add_elements(events[1:2])
                .advance_watermark_to(100)
                .add_elements(events[2:])
                .advance_watermark_to(_PAST_HORIZONS)
                .advance_watermark_to_infinity()
            )
            records = p | stream
        else:
            records = _create(p, events)  # the watermark never moves: explicit comparison
        out = records | DeduplicateById(id_field="id", keep=keep, horizon=HORIZON)
        kept = [(1, 10), (2, 75)] if keep == "first" else [(1, 10), (4, 140)]
        dups = [(3, 130), (4, 140)] if keep == "first" else [(2, 75), (3, 130)]
        assert_that(_ns_at(out.main, "main at"), equal_to(kept), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to(dups), label="dups")
        _assert_identity(out, _values(events))


def test_id_is_forgotten_once_the_watermark_passes_its_horizon():
    """State is bounded: after the timer, a copy within the old horizon finds nothing (kept)."""
    with _streaming() as p:
        stream = (
            TestStream()
            .advance_watermark_to(0)
            .add_elements([_tv("a", 1, 10)])
            .advance_watermark_to(200)  # the timer at 70 has fired and cleared "a"
            .add_elements([_tv("a", 2, 50), _tv("b", 3, 60)])  # late by the horizon's measure
            .advance_watermark_to_infinity()
        )
        out = p | stream | DeduplicateById(id_field="id", horizon=HORIZON)
        assert_that(_ns_at(out.main, "main at"), equal_to([(1, 10), (2, 50), (3, 60)]), label="m")
        assert_that(out.duplicate, equal_to([]), label="no duplicates")
        _assert_identity(out, [_rec("a", 1), _rec("a", 2), _rec("b", 3)])


# --- processing time ------------------------------------------------------------------------


class _RecordingTestClock(direct_runner.TestClock):
    """The DirectRunner's TestStream clock, remembered so the DoFn can read it."""

    latest: _RecordingTestClock | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _RecordingTestClock.latest = self


def _runner_processing_time() -> Timestamp:
    assert _RecordingTestClock.latest is not None
    return Timestamp.of(_RecordingTestClock.latest.time())


@pytest.fixture
def runner_clock(monkeypatch):
    """Makes the dedup DoFn read processing time from the TestStream's clock."""
    monkeypatch.setattr(direct_runner, "TestClock", _RecordingTestClock)
    monkeypatch.setattr(dedup, "_processing_now", _runner_processing_time)


def test_processing_time_horizon_counts_from_the_last_copy(runner_clock):
    """An id is remembered for the horizon after its most recent copy, in processing time."""
    with _streaming() as p:
        stream = (
            TestStream()
            .advance_watermark_to(0)
            .add_elements([_tv("a", 1, 10)])  # processing time 0: kept
            .advance_processing_time(60)
            .add_elements([_tv("a", 2, 11)])  # 60 after copy 1: duplicate, remembered to 160
            .advance_processing_time(60)
            .add_elements([_tv("a", 3, 12)])  # 120 after copy 1, 60 after copy 2: duplicate
            .advance_processing_time(101)
            .add_elements([_tv("a", 4, 13)])  # 101 after copy 3: forgotten, kept
            .advance_watermark_to_infinity()
        )
        out = p | stream | DeduplicateById(id_field="id", horizon=100, time_domain="processing")
        assert_that(_ns_at(out.main, "main at"), equal_to([(1, 10), (4, 13)]), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(2, 11), (3, 12)]), label="dups")
        _assert_identity(out, [_rec("a", n) for n in (1, 2, 3, 4)])


def test_processing_time_keep_last_emits_when_the_timer_fires(runner_clock):
    """keep='last' in processing time: the last copy of each id comes out when the id expires."""
    with _streaming() as p:
        stream = (
            TestStream()
            .advance_watermark_to(0)
            .add_elements([_tv("a", 1, 10), _tv("a", 2, 5)])
            .advance_processing_time(101)  # "a" expires: copy 2 is emitted
            .add_elements([_tv("a", 3, 20), _tv("b", 4, 21)])
            .advance_processing_time(101)  # both expire (see _PAST_HORIZONS)
            .advance_watermark_to_infinity()
        )
        out = (
            p
            | stream
            | DeduplicateById(id_field="id", keep="last", horizon=100, time_domain="processing")
        )
        assert_that(_ns_at(out.main, "main at"), equal_to([(2, 5), (3, 20), (4, 21)]), label="main")
        assert_that(_ns_at(out.duplicate, "dup at"), equal_to([(1, 10)]), label="dups")
        _assert_identity(out, [_rec("a", 1), _rec("a", 2), _rec("a", 3), _rec("b", 4)])


@pytest.mark.parametrize(("keep", "kept"), [("first", [1, 4]), ("last", [3, 4])])
def test_processing_time_in_batch_keeps_one_copy_per_id(keep, kept):
    """On the FnApiRunner, processing-time dedup keeps one copy per id of a bounded input."""
    events = [_tv("a", 1, 10), _tv("a", 2, 500), _tv("a", 3, 5), _tv("b", 4, 7)]
    with _batch() as p:
        out = _create(p, events) | DeduplicateById(
            id_field="id", keep=keep, horizon="1h", time_domain="processing"
        )
        assert_that(out.main | beam.Map(lambda r: r["n"]), equal_to(kept), label="main")
        _assert_identity(out, _values(events))


# --- ids --------------------------------------------------------------------------------


def test_ids_are_compared_as_strings():
    """1, 1.0, '1' and b'1' are one id; 1.5 and '1.5' another; a UUID matches its text."""
    u = uuid.UUID(int=7)
    events = [
        _tv(1, 1, 10), _tv("1", 2, 11), _tv(1.0, 3, 12), _tv(b"1", 4, 13),
        _tv(1.5, 5, 14), _tv("1.5", 6, 15),
        _tv(str(u), 7, 16), _tv(u, 8, 17),
    ]  # fmt: skip
    with _batch() as p:
        records = _create(p, events)
        out = records | DeduplicateById(id_fn=lambda r: r["id"], horizon=HORIZON)
        assert_that(out.main | beam.Map(lambda r: r["n"]), equal_to([1, 5, 7]), label="main")
        assert_that(
            out.duplicate | beam.Map(lambda r: r["n"]), equal_to([2, 3, 4, 6, 8]), label="dups"
        )
        back = out.dead_letter | "payload" >> beam.Map(lambda d: d.payload)
        everything = (out.main, out.duplicate) | beam.Flatten() | beam.Map(lambda r: r["n"])
        assert_that(everything, equal_to(list(range(1, 9))), label="identity")
        assert_that(back, equal_to([]), label="no dead letters")


def test_id_field_follows_a_dotted_path():
    """id_field='user.id' reads nested dicts."""
    events = [
        TimestampedValue({"user": {"id": 7}, "n": 1}, 10),
        TimestampedValue({"user": {"id": 8}, "n": 2}, 11),
        TimestampedValue({"user": {"id": "7"}, "n": 3}, 12),
    ]
    with _batch() as p:
        out = _create(p, events) | DeduplicateById(id_field="user.id", horizon=HORIZON)
        assert_that(out.main | beam.Map(lambda r: r["n"]), equal_to([1, 2]), label="main")
        assert_that(out.duplicate | beam.Map(lambda r: r["n"]), equal_to([3]), label="dups")
        _assert_identity(out, _values(events))


def test_id_fn_builds_a_composite_id():
    """id_fn may return a tuple: (tenant, id) pairs dedup per tenant."""
    events = [
        TimestampedValue({"tenant": "x", "id": 1, "n": 1}, 10),
        TimestampedValue({"tenant": "y", "id": 1, "n": 2}, 11),
        TimestampedValue({"tenant": "x", "id": "1", "n": 3}, 12),
    ]
    with _batch() as p:
        out = _create(p, events) | DeduplicateById(
            id_fn=lambda r: (r["tenant"], r["id"]), horizon=HORIZON
        )
        assert_that(out.main | beam.Map(lambda r: r["n"]), equal_to([1, 2]), label="main")
        assert_that(out.duplicate | beam.Map(lambda r: r["n"]), equal_to([3]), label="dups")
        _assert_identity(out, _values(events))


def test_content_hash_matches_equal_records_whatever_their_key_order():
    """content_hash=True: dicts equal as JSON are duplicates, key order does not matter."""
    events = [
        TimestampedValue({"a": 1, "b": [1, 2], "n": 0}, 10),
        TimestampedValue({"n": 0, "b": [1, 2], "a": 1}, 11),
        TimestampedValue({"a": 1, "b": [2, 1], "n": 0}, 12),
        TimestampedValue({"a": 1, "b": [1, 2], "n": 0}, 500),  # past the horizon: kept again
    ]
    with _batch() as p:
        out = _create(p, events) | DeduplicateById(content_hash=True, horizon=HORIZON)
        assert_that(
            out.main | "main ts" >> beam.Map(lambda r, ts=beam.DoFn.TimestampParam: ts.micros),
            equal_to([10_000_000, 12_000_000, 500_000_000]),
            label="main",
        )
        assert_that(
            out.duplicate | "dup ts" >> beam.Map(lambda r, ts=beam.DoFn.TimestampParam: ts.micros),
            equal_to([11_000_000]),
            label="dups",
        )
        _assert_identity(out, _values(events))


def test_content_hash_of_raw_records_uses_their_bytes_not_their_origin():
    """Bytes and SourceRecords hash their payload: a redelivery from another offset is a dup."""
    events = [
        TimestampedValue(SourceRecord(b'{"x":1}', {"file": "f", "line": 1}), 10),
        TimestampedValue(SourceRecord(b'{"x":1}', {"file": "f", "line": 2}), 11),
        TimestampedValue(SourceRecord(b'{"x":2}', {"file": "f", "line": 3}), 12),
        TimestampedValue(b'{"x":2}', 13),
        TimestampedValue(b'{"x":3}', 14),
    ]
    with _streaming() as p:
        stream = TestStream().advance_watermark_to(0).add_elements(events)
        out = (
            p
            | stream.advance_watermark_to_infinity()
            | DeduplicateById(content_hash=True, horizon=HORIZON)
        )
        at = beam.DoFn.TimestampParam
        assert_that(
            out.main | "main ts" >> beam.Map(lambda r, ts=at: ts.micros // 1_000_000),
            equal_to([10, 12, 14]),
            label="main",
        )
        assert_that(
            out.duplicate | "dup ts" >> beam.Map(lambda r, ts=at: ts.micros // 1_000_000),
            equal_to([11, 13]),
            label="dups",
        )
        everything = (out.main, out.duplicate) | beam.Flatten()
        assert_that(everything, equal_to(_values(events)), label="identity")
        assert_that(out.dead_letter, equal_to([]), label="no dead letters")


@pytest.mark.parametrize("pipeline", [_streaming, _batch], ids=["streaming", "batch"])
def test_records_without_a_usable_id_become_dead_letters(pipeline):
    """Missing, None, empty, non-mapping or bool ids and id_fn failures go to dead_letter."""
    events = [
        TimestampedValue({"user": {"id": 1}, "n": 1}, 10),
        TimestampedValue({"user": {}, "n": 2}, 11),
        TimestampedValue({"user": {"id": None}, "n": 3}, 12),
        TimestampedValue({"user": {"id": ""}, "n": 4}, 13),
        TimestampedValue({"user": "someone", "n": 5}, 14),
        TimestampedValue({"n": 6}, 15),
        TimestampedValue(["not", "a", "dict"], 16),
        TimestampedValue({"user": {"id": True}, "n": 8}, 17),
        TimestampedValue({"user": {"id": 1}, "n": 9}, 18),
    ]
    with pipeline() as p:
        if pipeline is _streaming:
            stream = TestStream().advance_watermark_to(0).add_elements(events)
            records = p | stream.advance_watermark_to_infinity()
        else:
            records = _create(p, events)
        out = records | DeduplicateById(id_field="user.id", horizon=HORIZON)
        assert_that(out.main | beam.Map(lambda r: r["n"]), equal_to([1]), label="main")
        assert_that(out.duplicate | beam.Map(lambda r: r["n"]), equal_to([9]), label="dups")
        missing, invalid = MissingIdError.__name__, InvalidIdError.__name__
        assert_that(
            out.dead_letter
            | beam.Map(lambda d: (d.stage, d.error_type, d.event_time[:19], d.payload[:40])),
            equal_to(
                [
                    ("dedup", missing, "1970-01-01T00:00:11", b'{"n":2,"user":{}}'),
                    ("dedup", missing, "1970-01-01T00:00:12", b'{"n":3,"user":{"id":null}}'),
                    ("dedup", missing, "1970-01-01T00:00:13", b'{"n":4,"user":{"id":""}}'),
                    ("dedup", missing, "1970-01-01T00:00:14", b'{"n":5,"user":"someone"}'),
                    ("dedup", missing, "1970-01-01T00:00:15", b'{"n":6}'),
                    ("dedup", missing, "1970-01-01T00:00:16", b'["not","a","dict"]'),
                    ("dedup", invalid, "1970-01-01T00:00:17", b'{"n":8,"user":{"id":true}}'),
                ]
            ),
            label="dead letters",
        )
        _assert_identity(out, _values(events))


def test_dead_letter_messages_name_the_field_and_the_failing_id_fn():
    """A dead letter says what was wrong; an id_fn exception keeps its own type and message."""

    def picky(record):
        if record["n"] == 2:
            raise KeyError("tenant")
        return record.get("id")

    events = [_tv("a", 1, 10), _tv("a", 2, 11), TimestampedValue({"n": 3}, 12)]
    with _batch() as p:
        out = _create(p, events) | DeduplicateById(id_fn=picky, horizon=HORIZON)
        assert_that(
            out.dead_letter | beam.Map(lambda d: (d.error_type, d.error_message)),
            equal_to([("KeyError", "'tenant'"), ("MissingIdError", "id_fn's result is None")]),
            label="dead letters",
        )
        _assert_identity(out, _values(events))

    fields = DeduplicateById(id_field="user.id", horizon=HORIZON)._id_of
    with pytest.raises(MissingIdError, match=r"id field 'user\.id' is missing"):
        fields({"user": {}})
    with pytest.raises(MissingIdError, match=r"'user' is a str, not a mapping"):
        fields({"user": "x"})
    with pytest.raises(InvalidIdError, match="is a list"):
        fields({"user": {"id": [1]}})


# --- counters and scale ---------------------------------------------------------------------


def test_counts_duplicates_under_its_own_counter_not_the_accounting_one():
    """dedup.duplicate and dedup.dead_letter count; the accounting 'duplicate' is left alone."""
    events = [_tv("a", 1, 10), _tv("a", 2, 11), _tv("a", 3, 12), TimestampedValue({"n": 4}, 13)]
    p = _batch()
    out = _create(p, events) | DeduplicateById(id_field="id", horizon=HORIZON)
    _assert_identity(out, _values(events))
    result = p.run()
    result.wait_until_finish()

    def counter(name):
        query = MetricsFilter().with_namespace("headwater").with_name(name)
        return sum(c.committed or 0 for c in result.metrics().query(query)["counters"])

    assert (counter("dedup.duplicate"), counter("dedup.dead_letter")) == (2, 1)
    assert Accounting.from_result(result).duplicate == 0


def _reference(arrivals, horizon_s, keep):
    """The documented event-time semantics in plain Python, over arrivals in order."""
    held: dict[str, list] = {}  # id -> [anchor, kept record]
    main, duplicate = [], []
    for record, ts in arrivals:
        key = str(record["id"])
        state = held.get(key)
        if state is not None and ts <= state[0] + horizon_s:
            state[0] = max(state[0], ts)
            if keep == "first":
                duplicate.append(record)
            else:
                duplicate.append(state[1])
                state[1] = record
            continue
        if state is not None and keep == "last":
            main.append(state[1])
        held[key] = [ts, record]
        if keep == "first":
            main.append(record)
    if keep == "last":
        main.extend(state[1] for state in held.values())
    return main, duplicate


@pytest.mark.parametrize("keep", ["first", "last"])
def test_batch_equals_plain_python_on_generated_records(keep):
    """Thousands of generated records: FnApiRunner output equals the dict-based computation."""
    rng = random.Random(11)
    arrivals, clock = [], 0.0
    for n in range(3_000):
        clock += rng.expovariate(10.0)  # ~10 records/s, 300 s of event time
        ts = round(max(0.0, clock + rng.uniform(-20, 5)), 3)  # out of order by up to 20 s
        id_ = rng.randrange(250)
        arrivals.append(({"id": id_ if rng.random() < 0.5 else str(id_), "n": n}, ts))
    arrivals.append(({"id": None, "n": -1}, 1.0))
    main, duplicate = _reference(arrivals[:-1], 30, keep)
    episodes = len(main) - len({str(r["id"]) for r in main})
    assert len(duplicate) > 1_000  # the data exercises both rules
    assert episodes > 100
    with _batch() as p:
        records = _create(p, [TimestampedValue(r, ts) for r, ts in arrivals])
        out = records | DeduplicateById(id_field="id", keep=keep, horizon="30s")
        assert_that(
            out.main | beam.Map(lambda r: r["n"]), equal_to([r["n"] for r in main]), label="main"
        )
        assert_that(
            out.duplicate | beam.Map(lambda r: r["n"]),
            equal_to([r["n"] for r in duplicate]),
            label="duplicates",
        )
        assert_that(
            out.dead_letter | beam.Map(lambda d: d.error_type),
            equal_to(["MissingIdError"]),
            label="dead letter",
        )
        _assert_identity(out, [r for r, _ in arrivals])


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_a_stream_equals_plain_python_whatever_the_shard_count(shards):
    """A stream of thousands of records, out of order within the watermark's bound, ids coming
    back within and after the horizon, the watermark far past many expiries (sweeps, a bag
    rewritten): the sharded step's main and duplicates are the rule's in arrival order, each
    with its own event time."""
    rng = random.Random(shards)
    stream, arrivals, clock, watermark = TestStream(), [], 0, 0  # (milliseconds)
    for _ in range(40):
        batch = []
        for _ in range(rng.randrange(20, 80)):
            clock += round(rng.expovariate(4.0) * 1000)
            ts = max(watermark, clock - rng.randrange(10_000))  # never behind the watermark
            record = {"id": rng.randrange(120), "n": len(arrivals)}
            arrivals.append((record, ts))
            batch.append(TimestampedValue(record, Timestamp(micros=ts * 1000)))
        stream = stream.add_elements(batch)
        if clock - 10_000 > watermark:
            watermark = clock - 10_000
            stream = stream.advance_watermark_to(Timestamp(micros=watermark * 1000))
    stream = stream.advance_watermark_to_infinity()
    main, duplicate = _reference(arrivals, 30_000, "first")
    assert len(duplicate) > 300  # both rules ...
    assert len(main) - 120 > 100  # ... and many episodes
    at = {r["n"]: ts * 1000 for r, ts in arrivals}
    with _streaming() as p:
        out = p | stream | DeduplicateById(id_field="id", horizon="30s", shards=shards)

        def stamped(pcoll, label):
            return pcoll | label >> beam.Map(
                lambda r, t=beam.DoFn.TimestampParam: (r["n"], t.micros)
            )

        assert_that(
            stamped(out.main, "MainAt"), equal_to([(r["n"], at[r["n"]]) for r in main]), label="m"
        )
        assert_that(
            stamped(out.duplicate, "DupAt"),
            equal_to([(r["n"], at[r["n"]]) for r in duplicate]),
            label="d",
        )


class _Cell:
    """A state cell that logs every request a runner would get for it."""

    def __init__(self):
        self.value, self.requests = None, []

    def read(self):
        self.requests.append("read")
        return self.value

    def write(self, value):
        self.requests.append("write")
        self.value = value

    def clear(self):
        self.requests.append("clear")
        self.value = None


class _Bag(_Cell):
    """A bag state cell holding at most one value, logging its requests."""

    def read(self):
        self.requests.append("read")
        return [] if self.value is None else [self.value]

    def add(self, value):
        self.requests.append("add")
        self.value = value


class _Timer:
    def set(self, when):
        self.at = when

    def clear(self):
        self.at = None


@pytest.mark.parametrize("keep", ["first", "last"])
def test_an_expiring_id_touches_only_the_cells_its_keep_writes(keep):
    """Each state request is a round trip on Prism: a new id's anchor is one append (no clear
    first); keep="first" never writes ``held``, so neither reading nor clearing it is asked
    for; keep="last" reads, flushes and clears it."""
    fn = dedup._DeduplicateEventTimeFn(keep, HORIZON * 1_000_000)
    anchor, held, timer = _Bag(), _Cell(), _Timer()
    kept = list(fn.process(("a", {"v": 1}), Timestamp(5), anchor, held, timer))
    flushed = list(fn.expire(timer.at, anchor, held, timer))
    assert anchor.value is None
    assert anchor.requests == ["read", "add", "read", "clear"]
    if keep == "first":
        assert (kept, flushed, held.requests) == ([{"v": 1}], [], [])
    else:
        assert (kept, [f.value for f in flushed]) == ([], [{"v": 1}])
        assert held.requests == ["write", "read", "clear"]
