"""Stream replay: file order, bounded-out-of-orderness watermark, processing time."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import (
    ElementEvent,
    ProcessingTimeEvent,
    WatermarkEvent,
)
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from headwater.core.records import SourceRecord
from headwater.io.streamreplay import read_lines, replay_stream
from headwater.testing.assertions import ReifyPanes


def _seconds(record):
    return Timestamp(record["t"])


def test_watermark_trails_max_event_time_by_max_out_of_orderness():
    """After each batch the watermark is max seen - max_out_of_orderness, then +inf."""
    records = [{"t": t} for t in (10, 4, 12, 30, 20)]
    stream = replay_stream(
        records,
        event_time=_seconds,
        max_out_of_orderness="5s",
        watermark_every=2,
        advance_processing_time=False,
    )
    marks = [e.new_watermark for e in stream._events if isinstance(e, WatermarkEvent)]
    assert marks == [Timestamp(5), Timestamp(25), MAX_TIMESTAMP]


def test_elements_keep_arrival_order_and_carry_event_time():
    """Elements come out in the given order stamped with their event time."""
    records = [{"t": t} for t in (3, 1, 2)]
    stream = replay_stream(records, event_time=_seconds, max_out_of_orderness=0, watermark_every=10)
    batches = [e.timestamped_values for e in stream._events if isinstance(e, ElementEvent)]
    assert [(tv.value, tv.timestamp) for batch in batches for tv in batch] == [
        ({"t": 3}, Timestamp(3)),
        ({"t": 1}, Timestamp(1)),
        ({"t": 2}, Timestamp(2)),
    ]


def test_processing_time_advances_with_the_watermark():
    """Processing time moves by as much as the watermark did, so early panes can fire."""
    records = [{"t": t} for t in (100, 160, 400)]
    stream = replay_stream(records, event_time=_seconds, max_out_of_orderness=0, watermark_every=1)
    advances = [e.advance_by for e in stream._events if isinstance(e, ProcessingTimeEvent)]
    assert [a.micros / 1e6 for a in advances] == [60.0, 240.0]


def test_record_without_event_time_is_replayed_at_the_watermark():
    """An unusable record is still emitted (for a dead-letter step), stamped at the watermark."""
    records = [{"t": 50}, {"oops": True}]
    stream = replay_stream(
        records, event_time=_seconds, max_out_of_orderness="10s", watermark_every=1
    )
    stamped = [
        (tv.value, tv.timestamp)
        for e in stream._events
        if isinstance(e, ElementEvent)
        for tv in e.timestamped_values
    ]
    assert stamped == [({"t": 50}, Timestamp(50)), ({"oops": True}, Timestamp(40))]


def test_replayed_stream_closes_windows_and_late_record_misses_its_pane():
    """Through a real streaming pipeline, a record behind the watermark misses its window."""
    records = [{"t": t} for t in (1, 2, 70, 3)]  # 3 arrives after the watermark passed 60
    stream = replay_stream(
        records, event_time=_seconds, max_out_of_orderness="5s", watermark_every=1
    )
    with TestPipeline(
        runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True)
    ) as p:
        counts = (
            p
            | stream
            | beam.WindowInto(beam.window.FixedWindows(60))
            | beam.Map(lambda r: ("k", 1))
            | beam.CombinePerKey(sum)
            | ReifyPanes()
        )
        assert_that(counts, equal_to([("ON_TIME", ("k", 2)), ("ON_TIME", ("k", 1))]), label="panes")


def test_read_lines_gives_file_and_line_origins(tmp_path):
    """Lines become SourceRecords with their file and 1-based line; blank lines are skipped."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a":1}\n\n{"a":2}\r\n')
    assert list(read_lines(path)) == [
        SourceRecord(b'{"a":1}', {"file": str(path), "line": 1}),
        SourceRecord(b'{"a":2}', {"file": str(path), "line": 3}),
    ]


@pytest.mark.parametrize("every", [0, -1, 2.5])
def test_bad_watermark_every_is_refused(every):
    """watermark_every must be a positive integer; the error names it."""
    with pytest.raises(ValueError, match="watermark_every"):
        replay_stream([], event_time=_seconds, max_out_of_orderness=0, watermark_every=every)


def test_sub_millisecond_event_times_give_whole_millisecond_watermarks():
    """Watermarks and processing-time advances are whole milliseconds, as TestStream needs."""
    records = [{"t": 1.0004}, {"t": 2.5007}]
    stream = replay_stream(records, event_time=_seconds, max_out_of_orderness=0, watermark_every=1)
    marks = [e.new_watermark for e in stream._events if isinstance(e, WatermarkEvent)]
    assert marks[:2] == [Timestamp(micros=1_000_000), Timestamp(micros=2_500_000)]
    for event in stream._events:  # raises if any event is not in whole milliseconds
        if not isinstance(event, ElementEvent):
            event.to_runner_api(stream.coder)
