"""The harness for users' own transforms: control steps, policy, outputs, accounting, errors."""

from __future__ import annotations

import datetime as dt
import doctest
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from headwater import runners
from headwater.io import timeline
from headwater.io.formats import JsonFormat
from headwater.testing import harness
from headwater.testing.harness import (
    AdvanceProcessingTime,
    AdvanceWatermark,
    AdvanceWatermarkPast,
    StreamHarness,
    run_transform,
)
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ProcessEvents
from headwater.windowing.eventtime import EventTimeExtractor
from headwater.windowing.late import WindowWithLateRouting

FIRST_MINUTE = IntervalWindow(0, 60)


class CountPerMinute(beam.PTransform):
    """A user transform: records per 1-minute window, late records routed to ``late``."""

    def __init__(self, *, allowed_lateness=0, trigger_fn=None):
        super().__init__()
        self._window = WindowWithLateRouting(
            FixedWindows(60), allowed_lateness=allowed_lateness, trigger=trigger_fn
        )

    def expand(self, records):
        routed = records | "Window" >> self._window
        counts = routed.main | "Count" >> beam.combiners.Count.Globally().without_defaults()
        return {"main": counts, "late": routed.late}


def _counts(result):
    return {(str(p.window), p.timing): p.values for p in result.panes()}


def test_watermark_past_window_closes_it_before_the_next_record():
    """AdvanceWatermarkPast fires the on-time pane; a record of that window after it is late."""
    events = [("a", 10), ("b", 20), AdvanceWatermarkPast("fixed:60s", at=0), ("c", 30)]
    result = run_transform(CountPerMinute(), events, max_out_of_orderness=None)
    assert result.values(window=FIRST_MINUTE, timing="ON_TIME") == [2]
    assert [(d.payload, d.window) for d in result.late] == [
        (b"c", "1970-01-01T00:00:00Z/1970-01-01T00:01:00Z")
    ]
    assert result.late[0].lateness_ms == 30_000


def test_without_the_step_the_same_record_is_on_time():
    """The control case: with no step the watermark stays back and all three are counted."""
    events = [("a", 10), ("b", 20), ("c", 30)]
    result = run_transform(CountPerMinute(), events, max_out_of_orderness=None)
    assert result.values(window=FIRST_MINUTE, timing="ON_TIME") == [3]
    assert result.late == []


def test_advance_watermark_to_an_instant_closes_windows_ending_before_it():
    """AdvanceWatermark(to=T) moves the watermark to T; the steps show it."""
    events = [("a", 10), AdvanceWatermark(to=61), ("b", 50), ("c", 70)]
    result = run_transform(CountPerMinute(), events, max_out_of_orderness=None)
    assert _counts(result) == {("[0.0, 60.0)", "ON_TIME"): (1,), ("[60.0, 120.0)", "ON_TIME"): (1,)}
    assert [d.payload for d in result.late] == [b"b"]
    assert "watermark -> 1970-01-01T00:01:01Z" in result.steps


def test_processing_time_step_fires_an_early_pane():
    """AdvanceProcessingTime lets an AfterProcessingTime early trigger fire mid-window."""
    early = trigger.AfterWatermark(
        early=trigger.AfterProcessingTime(10), late=trigger.AfterCount(1)
    )
    events = [("a", 10), AdvanceProcessingTime(by="15s"), ("b", 20)]
    result = run_transform(
        CountPerMinute(trigger_fn=early),
        events,
        max_out_of_orderness=None,
        advance_processing_time=False,
    )
    assert [(p.window, p.index, p.values) for p in result.early_panes] == [(FIRST_MINUTE, 0, (1,))]
    assert [(p.index, p.values) for p in result.on_time_panes] == [(1, (1,))]


def test_policy_advances_the_watermark_every_n_records():
    """Bounded out-of-orderness per record makes a straggler late; per 3 records it is not."""
    events = [("a", 10), ("b", 70), ("c", 30)]
    per_record = run_transform(CountPerMinute(), events, max_out_of_orderness="5s")
    per_three = run_transform(
        CountPerMinute(), events, max_out_of_orderness="5s", watermark_every=3
    )
    assert [d.payload for d in per_record.late] == [b"c"]
    assert per_three.late == []
    assert per_three.values(window=FIRST_MINUTE) == [2]


def test_watermark_never_goes_back():
    """A step behind the watermark does nothing and says so in the steps."""
    events = [("a", 10), AdvanceWatermark(to=120), AdvanceWatermarkPast(FIRST_MINUTE)]
    result = run_transform(CountPerMinute(), events, max_out_of_orderness=None)
    assert result.values(window=FIRST_MINUTE) == [1]
    assert any("already at 1970-01-01T00:02:00Z" in step for step in result.steps)


def test_panes_for_a_window_spec_and_instant_equal_the_interval_window():
    """panes_for accepts a spec with an instant inside the window, or the window itself."""
    result = run_transform(CountPerMinute(), [("a", 10), ("b", 65)], max_out_of_orderness=None)
    assert result.panes_for("fixed:60s", at=59) == result.panes_for(FIRST_MINUTE)
    assert result.windows() == [FIRST_MINUTE, IntervalWindow(60, 120)]


def _write_events(path: Path) -> Path:
    lines = [
        json.dumps({"id": "e1", "t": 10}),
        json.dumps({"id": "e2", "t": 20}),
        json.dumps({"id": "e1", "t": 10}),  # a re-delivered copy
        "not json {",
        json.dumps({"id": "e3", "t": 90}),
        json.dumps({"id": "e4", "t": 30}),  # behind the watermark: its window closed at 60
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run_process_events(path: Path, runner: str):
    """headwater's ProcessEvents over the raw lines of ``path``, one watermark step per line."""
    seconds = EventTimeExtractor(field="t", unit="s")
    process = ProcessEvents(
        decode=JsonFormat().decode,
        event_time=seconds,
        window="fixed:60s",
        allowed_lateness=0,
        dedup=DeduplicateById(id_field="id", horizon="10m"),
    )
    harness_ = StreamHarness(
        max_out_of_orderness=0, event_time=seconds, lines="bytes", runner=runner
    )
    return harness_.run(process, path)


def test_headwater_outputs_give_dead_letters_duplicates_late_and_accounting(tmp_path):
    """ProcessEvents over a file of raw lines: every outcome lands in its place and is counted."""
    path = _write_events(tmp_path / "events.jsonl")
    result = _run_process_events(path, "BundleBasedDirectRunner")
    assert sorted(r["id"] for r in result.values(window=FIRST_MINUTE)) == ["e1", "e2"]
    assert [d.stage for d in result.dead_letters] == ["decode"]
    assert dict(result.dead_letters[0].origin)["line"] == 4
    assert [r["id"] for r in result.duplicates] == ["e1"]
    assert [(json.loads(d.payload)["id"], d.lateness_ms) for d in result.late] == [("e4", 30_000)]
    result.assert_accounting(records_in=6, output=3, duplicate=1, dead_letter=1, late=1)


def _count_per_window(records):
    """A user pipeline function: records per 1-minute window."""
    return (
        records
        | "Window" >> beam.WindowInto(FixedWindows(60))
        | "Count" >> beam.combiners.Count.Globally().without_defaults()
    )


def test_json_lines_file_feeds_decoded_records(tmp_path):
    """lines='json' feeds each line as a dict to a pipeline function; the extractor stamps it."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 5}\n{"t": 65}\n{"t": 70}\n', encoding="utf-8")
    result = run_transform(
        _count_per_window,
        path,
        max_out_of_orderness=None,
        event_time=EventTimeExtractor(field="t", unit="s"),
    )
    assert result.main == "main"
    assert result.values(window=FIRST_MINUTE) == [1]
    assert result.values(window="fixed:60s", at=60) == [2]


def test_bad_json_line_is_named_with_its_file_and_line(tmp_path):
    """lines='json' refuses a line that is not JSON, naming file:line and lines='bytes'."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 5}\n{oops\n', encoding="utf-8")
    harness_ = StreamHarness(max_out_of_orderness=None, event_time=EventTimeExtractor(field="t"))
    with pytest.raises(ValueError, match=r"events.jsonl:2 is not JSON .*lines='bytes'"):
        harness_.run(_count_per_window, path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"runner": "FlinkRunner"}, r"runner='FlinkRunner' is not one of"),
        ({"lines": "csv"}, r"lines='csv' is not one of 'json', 'bytes'"),
        ({"watermark_every": 0}, r"watermark_every=0 must be a positive integer"),
        ({"watermark_every": True}, r"watermark_every=True must be a positive integer"),
        ({"max_out_of_orderness": "soon"}, r"max_out_of_orderness='soon' is not a duration"),
        ({"event_time": "t"}, r"event_time='t' must be a callable"),
        ({"advance_processing_time": "yes"}, r"advance_processing_time='yes' is not a bool"),
        ({"pipeline_args": "--streaming"}, r"pipeline_args='--streaming' must be a list"),
        (
            {"pipeline_args": ["--environment_type=DOCKER"]},
            r"--environment_type=DOCKER runs workers outside this process",
        ),
    ],
)
def test_bad_options_are_refused_at_construction(options, message):
    """Every option is checked when the harness is built; the error names the bad value."""
    options = {"max_out_of_orderness": None, **options}
    with pytest.raises(ValueError, match=message):
        StreamHarness(**options)


def test_prism_without_a_binary_says_how_to_build_it(monkeypatch, tmp_path):
    """runner='PrismRunner' with no binary anywhere fails at construction, saying how to build."""
    monkeypatch.delenv(runners.PRISM_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(runners.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ValueError, match=r"Prism is not built: run `make tools`"):
        StreamHarness(max_out_of_orderness=None, runner="PrismRunner")


def test_prism_location_in_pipeline_args_is_checked(tmp_path):
    """A --prism_location that is not an executable is named."""
    missing = tmp_path / "prism"
    with pytest.raises(ValueError, match=r"--prism_location='.*prism' is not an executable"):
        StreamHarness(
            max_out_of_orderness=None,
            runner="PrismRunner",
            pipeline_args=[f"--prism_location={missing}"],
        )


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (["a"], r"event 0: 'a' is not a \(record, event_time\) pair"),
        ([("a", "noon")], r"event 0's event time='noon' is not an instant"),
        ({"a": 1}, r"is not a list of events or a path"),
        ("no/such/file.jsonl", r"events='no/such/file.jsonl' is not a file"),
    ],
)
def test_bad_events_are_named(events, message):
    """Events that are not pairs, instants that are not instants, and missing files are named."""
    with pytest.raises(ValueError, match=message):
        run_transform(_count_per_window, events, max_out_of_orderness=None)


def test_file_without_event_time_is_refused(tmp_path):
    """A file's lines carry no event time of their own: an extractor is required."""
    path = tmp_path / "events.jsonl"
    path.write_text('{"t": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"is a file: give event_time="):
        run_transform(_count_per_window, path, max_out_of_orderness=None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AdvanceWatermarkPast("fixed:60s"), r"is a window spec: give at=<instant>"),
        (
            lambda: AdvanceWatermarkPast("sliding:60s/30s", at=40),
            r"puts at=40 in 2 windows",
        ),
        (lambda: AdvanceWatermarkPast("session:5m", at=40), r"merges windows \(sessions\)"),
        (lambda: AdvanceWatermarkPast(FIRST_MINUTE, at=5), r"at=5 is only for a window spec"),
        (lambda: AdvanceWatermarkPast(60), r"window=60 is not a window"),
        (lambda: AdvanceWatermark(to="noon"), r"to='noon' is not an instant"),
        (lambda: AdvanceProcessingTime(by=0), r"by=0 must be greater than zero"),
    ],
)
def test_bad_control_steps_are_refused_when_written(make, message):
    """A control step that cannot mean one instant or duration fails where it is written."""
    with pytest.raises(ValueError, match=message):
        make()


class _SplitLateFn(beam.DoFn):
    """A user DoFn with a tagged output: records before 60 s go to ``early``."""

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        if timestamp < 60:
            yield beam.pvalue.TaggedOutput("early", element)
        else:
            yield element


def test_tagged_outputs_of_a_pardo_are_outputs_by_tag():
    """A ParDo(...).with_outputs result gives ``main`` and one output per declared tag."""
    split = beam.ParDo(_SplitLateFn()).with_outputs("early")
    result = run_transform(split, [("a", 10), ("b", 70)], max_out_of_orderness=None)
    assert (result.values(), result.values("early")) == (["b"], ["a"])


def test_calendar_day_step_closes_the_local_day():
    """A calendar spec resolves to the zone's local day, 23 h long on a spring-forward date."""
    step = AdvanceWatermarkPast(
        "calendar:day@Europe/Berlin", at=dt.datetime(2024, 3, 31, 12, tzinfo=dt.timezone.utc)
    )
    assert step.target() == Timestamp.of(
        dt.datetime(2024, 3, 31, 22, tzinfo=dt.timezone.utc).timestamp()
    )


def test_transform_returning_a_list_is_refused():
    """Outputs must be a PCollection, a NamedTuple or a dict of them; others are named."""
    with pytest.raises(ValueError, match=r"returned list; expected a PCollection"):
        run_transform(lambda records: [records], [("a", 1)], max_out_of_orderness=None)
    with pytest.raises(ValueError, match=r"neither a PTransform nor a function"):
        run_transform(42, [("a", 1)], max_out_of_orderness=None)


def test_unknown_output_and_timing_are_named():
    """Reading an output the transform does not have, or a made-up timing, names the choices."""
    result = run_transform(CountPerMinute(), [("a", 1)], max_out_of_orderness=None)
    with pytest.raises(ValueError, match=r"output='rows' is not an output .* 'main', 'late'"):
        result.values("rows")
    with pytest.raises(ValueError, match=r"timing='soon' is not one of EARLY, ON_TIME"):
        result.panes(timing="soon")


def test_module_examples_run():
    """The examples in the harness's and the timeline's docstrings run as written."""
    for module in (harness, timeline):
        outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert outcome.attempted > 0
        assert outcome.failed == 0, module.__name__


@pytest.mark.integration
def test_same_transform_on_prism_gives_the_same_outcomes(tmp_path):
    """On Prism the windows, late output, dead letters and accounting match the DirectRunner."""
    path = _write_events(tmp_path / "events.jsonl")
    results = {runner: _run_process_events(path, runner) for runner in harness.RUNNERS}
    direct, prism = results["BundleBasedDirectRunner"], results["PrismRunner"]

    def outcome(result):
        return (
            {str(w): sorted(r["id"] for r in result.values(window=w)) for w in result.windows()},
            sorted(json.loads(d.payload)["id"] for d in result.late),
            [d.stage for d in result.dead_letters],
            result.accounting,
        )

    assert outcome(prism) == outcome(direct)
    assert prism.accounting.records_in == 6


@pytest.mark.integration
def test_control_steps_and_panes_on_prism():
    """On Prism a watermark step closes the window: one on-time pane, the straggler is late."""
    events = [("a", 10), ("b", 20), AdvanceWatermarkPast("fixed:60s", at=0), ("c", 30)]
    result = run_transform(
        CountPerMinute(), events, max_out_of_orderness=None, runner="PrismRunner"
    )
    assert [(p.window, p.timing, p.values) for p in result.panes()] == [
        (FIRST_MINUTE, "ON_TIME", (2,))
    ]
    assert [d.payload for d in result.late] == [b"c"]
