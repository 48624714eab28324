"""The event-time core end to end: parse -> dedup -> window/late -> metrics, with accounting."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from headwater.core.records import SourceRecord
from headwater.devtools.reference import windowed_metrics_reference
from headwater.devtools.workload import generate
from headwater.io.streamreplay import replay_stream
from headwater.testing.assertions import assert_accounting
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics, ProcessEvents
from headwater.windowing.eventtime import EventTimeExtractor


def _streaming() -> TestPipeline:
    return TestPipeline(
        runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True), blocking=True
    )


def _metrics(window: str = "fixed:60s", **overrides):
    options = {
        "decode": json.loads,
        "event_time": EventTimeExtractor(field="event_time", unit="ms"),
        "dedup": DeduplicateById(id_field="event_id", horizon="10m"),
        "window": window,
        "allowed_lateness": 0,
        "key_field": "user_id",
        "metrics": "count,sum:amount",
    }
    options.update(overrides)
    return ComputeWindowedMetrics(**options)


def _row_key(row):
    return (row["window_start"], row["key"], row["count"], round(row["sum_amount"], 6))


def _expected_rows(reference):
    return [
        (r["window_start"], r["key"], r["count"], round(r["sum_amount"], 6))
        for r in reference["rows"].values()
    ]


def test_batch_metrics_equal_plain_python_on_generated_workload():
    """FnApiRunner batch output and counters equal the plain-Python computation."""
    events = list(generate(4_000, seed=7, malformed_frac=0.02))
    lines = [e.line for e in events]
    reference = windowed_metrics_reference(lines, window_s=60)
    assert reference["duplicate"] > 0
    assert reference["dead_letter"] > 0
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    records = [
        SourceRecord(line, {"file": "events.jsonl", "line": i}) for i, line in enumerate(lines, 1)
    ]
    out = p | beam.Create(records) | _metrics()
    assert_that(out.rows | beam.Map(_row_key), equal_to(_expected_rows(reference)), label="rows")
    assert_that(out.late, equal_to([]), label="nothing is late in batch")
    result = p.run()
    result.wait_until_finish()
    assert_accounting(
        result,
        records_in=len(lines),
        output=reference["output"],
        duplicate=reference["duplicate"],
        dead_letter=reference["dead_letter"],
        late=0,
    )


def test_dead_letters_keep_original_bytes_origin_and_stage():
    """Each malformed line becomes one dead letter with its bytes, file/line and stage."""
    lines = [
        b'{"event_id":"a","user_id":"u1","event_time":1000,"amount":1}',
        b'{"event_id":"b","user_id":"u1","event_time":',
        b'{"event_id":"c","user_id":"u1","amount":1}',
        b'{"event_id":"d","user_id":"u1","event_time":1000,"amount":"x"}',
    ]
    records = [SourceRecord(line, {"file": "f", "line": i}) for i, line in enumerate(lines, 1)]
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    out = p | beam.Create(records) | _metrics()
    assert_that(
        out.dead_letter | beam.Map(lambda d: (d.payload, d.origin["line"], d.stage)),
        equal_to([(lines[1], 2, "decode"), (lines[2], 3, "event_time"), (lines[3], 4, "validate")]),
        label="dead letters",
    )
    result = p.run()
    result.wait_until_finish()
    assert_accounting(result, records_in=4, output=1, dead_letter=3, duplicate=0, late=0)


@pytest.mark.slow
def test_stream_replay_routes_exactly_the_late_events_and_rows_match_reference():
    """Replayed as a stream, the generator's late events (and only they) go to late."""
    events = list(generate(3_000, seed=11, malformed_frac=0.01, late_frac=0.02))
    lines = [e.line for e in events]
    # The first 1,000 records are replayed before the first watermark advance, when nothing is
    # late yet; every late-tagged record after that is 2-5 minutes behind the watermark.
    late_lines = [e.line for i, e in enumerate(events) if e.tag == "late" and i >= 1_000]
    assert late_lines
    extractor = EventTimeExtractor(field="event_time", unit="ms")

    def event_time(record):
        return extractor.extract(json.loads(record.payload))

    stream = replay_stream(
        [SourceRecord(line, {"line": i}) for i, line in enumerate(lines, 1)],
        event_time=event_time,
        max_out_of_orderness="5s",
    )
    reference = windowed_metrics_reference(lines, window_s=10, late_lines=frozenset(late_lines))
    p = _streaming()
    out = p | stream | _metrics(window="fixed:10s")
    assert_that(
        out.late | "LateRecords" >> beam.Map(lambda d: json.loads(d.payload)),
        equal_to([json.loads(line) for line in late_lines]),
        label="late records",
    )
    assert_that(
        out.late | "LateIsLate" >> beam.Map(lambda d: d.lateness_ms >= 120_000 - 6_000),
        equal_to([True] * len(late_lines)),
        label="lateness_ms",
    )
    assert_that(out.rows | beam.Map(_row_key), equal_to(_expected_rows(reference)), label="rows")
    result = p.run()
    assert_accounting(
        result,
        records_in=len(lines),
        output=reference["output"],
        duplicate=reference["duplicate"],
        dead_letter=reference["dead_letter"],
        late=len(late_lines),
    )


def test_duplicate_of_a_closed_window_is_a_duplicate_not_late():
    """Dedup runs before windowing: a re-delivery after its window closed counts as duplicate."""
    original = b'{"event_id":"a","user_id":"u","event_time":1000,"amount":2}'
    other = b'{"event_id":"b","user_id":"u","event_time":200000,"amount":3}'
    stream = replay_stream(
        [original, other, original],
        event_time=lambda b: EventTimeExtractor(field="event_time").extract(json.loads(b)),
        max_out_of_orderness="0s",
        watermark_every=1,
    )
    p = _streaming()
    out = p | stream | _metrics()
    assert_that(
        out.duplicate,
        equal_to([{"event_id": "a", "user_id": "u", "event_time": 1000, "amount": 2}]),
        label="duplicate",
    )
    assert_that(out.late, equal_to([]), label="late")
    result = p.run()
    assert_accounting(result, records_in=3, output=2, duplicate=1, dead_letter=0, late=0)


def test_session_windows_merge_and_every_record_is_counted():
    """Session windows merge records within the gap; accounting holds on a stream."""
    records = [
        {"event_id": str(i), "user_id": "u", "event_time": t, "amount": 1}
        for i, t in enumerate([0, 60_000, 120_000, 900_000])
    ]
    lines = [json.dumps(r).encode() for r in records]
    stream = replay_stream(
        lines,
        event_time=lambda b: EventTimeExtractor().extract(json.loads(b)),
        max_out_of_orderness="1s",
    )
    p = _streaming()
    out = p | stream | _metrics(window="session:5m")
    assert_that(
        out.rows | beam.Map(lambda r: (r["window_end"] - r["window_start"], r["count"])),
        equal_to([(dt.timedelta(minutes=7), 3), (dt.timedelta(minutes=5), 1)]),
        label="sessions",
    )
    result = p.run()
    assert_accounting(result, records_in=4, output=4, duplicate=0, dead_letter=0, late=0)


def test_process_events_without_dedup_keeps_every_copy():
    """With dedup=None every copy is output and nothing is counted as duplicate."""
    line = b'{"event_id":"a","user_id":"u","event_time":1000,"amount":2}'
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    out = (
        p
        | beam.Create([line, line])
        | ProcessEvents(
            decode=json.loads,
            event_time=EventTimeExtractor(),
            window="fixed:60s",
            allowed_lateness="0s",
        )
    )
    assert_that(out.main | beam.Map(lambda r: r["event_id"]), equal_to(["a", "a"]), label="main")
    result = p.run()
    assert_accounting(result, records_in=2, output=2, duplicate=0, dead_letter=0, late=0)


def test_invalid_allowed_lateness_is_refused_at_construction():
    """A negative allowed lateness raises ValueError naming it."""
    with pytest.raises(ValueError, match="allowed_lateness"):
        _metrics(allowed_lateness=-1)


def test_record_larger_than_the_limit_is_a_dead_letter_not_a_crash():
    """max_record_bytes turns an oversized record into a decode dead letter with its bytes."""
    small = b'{"event_id":"a","user_id":"u","event_time":1000,"amount":2}'
    huge = b'{"event_id":"b","user_id":"u","event_time":1000,"amount":2,"pad":"' + b"x" * 5000
    huge += b'"}'
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    out = p | beam.Create([small, huge]) | _metrics(max_record_bytes=1024)
    assert_that(
        out.dead_letter | beam.Map(lambda d: (d.stage, d.error_type, len(d.payload))),
        equal_to([("decode", "RecordTooLargeError", len(huge))]),
        label="dead letter",
    )
    result = p.run()
    assert_accounting(result, records_in=2, output=1, dead_letter=1, duplicate=0, late=0)


def test_early_trigger_on_bounded_input_in_batch_is_refused_naming_it():
    """An early trigger in a batch pipeline is a ValueError naming the trigger, not a crash."""
    p = TestPipeline(runner="FnApiRunner")
    with pytest.raises(ValueError, match=r"trigger='early:10s,late' in a batch pipeline: early"):
        _ = p | beam.Create([b'{"event_id":"a"}']) | _metrics(trigger="early:10s")


@pytest.mark.parametrize("shards", [0, 4097, True, "16"])
def test_a_shard_count_out_of_range_is_refused_at_construction(shards):
    """ProcessEvents checks its late-routing shard count when built, as DeduplicateById and
    RouteLateData do (one rule: core.shards.shard_count_problem), not only once applied."""
    with pytest.raises(ValueError, match=r"shards=.* must be a whole number from 1 to 4096"):
        ProcessEvents(decode=json.loads, event_time=None, window="fixed:60s",
                      allowed_lateness=0, shards=shards)  # fmt: skip
