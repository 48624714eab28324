"""Tests for headwater.windowing.late: late records go to the late output, never a silent drop.

The router keeps one clock of event-time timers that walks every window close, so a late
record is recognised whether or not any other record fell into its window.
"""

from __future__ import annotations

import json
import random
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import (
    TestWindowedValue,
    assert_that,
    equal_to,
    equal_to_per_window,
)
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms.window import (
    FixedWindows,
    GlobalWindow,
    GlobalWindows,
    IntervalWindow,
    Sessions,
    SlidingWindows,
    TimestampCombiner,
    TimestampedValue,
)
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from headwater.core import batches as batches_module
from headwater.testing.harness import AdvanceWatermark, run_transform
from headwater.windowing.late import (
    LATE_ERROR_TYPE,
    LATE_STAGE,
    LateRouted,
    RouteLateData,
    WindowWithLateRouting,
    _Clock,
    _RouteLateFn,
    _SpreadFn,
    _Stamped,
    _Start,
)
from headwater.windowing.windows import CalendarWindows

US = 1
MS = 1_000
S = 1_000_000


def _ts(micros: int) -> Timestamp:
    return Timestamp(micros=micros)


def _rec(rid: int, micros: int, key: str = "k") -> TimestampedValue:
    return TimestampedValue({"id": rid, "key": key}, _ts(micros))


def _streaming() -> TestPipeline:
    return TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))


def _window(start_s: float, end_s: float) -> IntervalWindow:
    return IntervalWindow(_ts(round(start_s * S)), _ts(round(end_s * S)))


class _PaneSummaryFn(beam.DoFn):
    """(key, count) -> (count, pane timing) so tests can tell on-time from late panes."""

    def process(self, element, pane=beam.DoFn.PaneInfoParam):
        yield element[1], pane.timing


def _counts_per_pane(main):
    return (
        main
        | "ToKV" >> beam.Map(lambda r: (r["key"], 1))
        | "Count" >> beam.CombinePerKey(sum)
        | "Pane" >> beam.ParDo(_PaneSummaryFn())
    )


def _late_fields(late):
    return late | "LateFields" >> beam.Map(
        lambda d: (d.payload, d.stage, d.error_type, d.event_time, d.window, d.lateness_ms)
    )


def _payload(rid: int, key: str = "k") -> bytes:
    return f'{{"id":{rid},"key":"{key}"}}'.encode()


def test_on_time_elements_reach_their_window_pane():
    """Records that arrive before their window closes are counted in that window's on-time pane."""
    stream = (
        TestStream()
        .advance_watermark_to(_ts(0))
        .add_elements([_rec(1, 10 * S), _rec(2, 20 * S), _rec(3, 70 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness="30s")
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {
                    _window(0, 60): [(2, PaneInfoTiming.ON_TIME)],
                    _window(60, 120): [(1, PaneInfoTiming.ON_TIME)],
                }
            ),
            label="PanesPerWindow",
        )
        assert_that(routed.late, equal_to([]), label="NothingLate")


def test_element_after_window_close_goes_to_late_output():
    """A record arriving after W.end + allowed lateness is a LateData dead letter, not a pane."""
    stream = (
        TestStream()
        .advance_watermark_to(_ts(0))
        .add_elements([_rec(1, 10 * S)])
        .advance_watermark_to(_ts(100 * S))  # past the close at 60s + 30s
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness=30)
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window({_window(0, 60): [(1, PaneInfoTiming.ON_TIME)]}),
            label="OnlyTheOnTimeRecordIsCounted",
        )
        # known_wm is the close time whose timer fired (90s), not the watermark (100s):
        # lateness_ms is a lower bound, 90s - 20s.
        assert_that(
            _late_fields(routed.late),
            equal_to(
                [
                    (
                        _payload(2),
                        LATE_STAGE,
                        LATE_ERROR_TYPE,
                        "1970-01-01T00:00:20Z",
                        "1970-01-01T00:00:00Z/1970-01-01T00:01:00Z",
                        70_000,
                    )
                ]
            ),
            label="LateRecord",
        )


def test_late_record_message_names_times_not_payload():
    """The late record's message explains the decision with times and never includes the payload."""
    stream = (
        TestStream()
        .add_elements([TimestampedValue({"id": 1, "secret": "s3cr3t"}, _ts(10 * S))])
        .advance_watermark_to(_ts(60 * S))
        .add_elements([TimestampedValue({"id": 2, "secret": "s3cr3t"}, _ts(30 * S))])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | RouteLateData(FixedWindows(60), allowed_lateness=0)
        messages = routed.late | beam.Map(lambda d: d.error_message)
        assert_that(
            messages,
            equal_to(
                [
                    "event time 1970-01-01T00:00:30Z is at least 30000 ms behind the watermark "
                    "(>= 1970-01-01T00:01:00Z); window 1970-01-01T00:00:00Z/1970-01-01T00:01:00Z "
                    "closed at 1970-01-01T00:01:00Z (window end + allowed lateness 0us)"
                ]
            ),
            label="Message",
        )


def test_element_within_allowed_lateness_makes_late_pane_not_late_record():
    """A record after W.end but before W.end + allowed lateness produces a LATE pane."""
    stream = (
        TestStream()
        .advance_watermark_to(_ts(0))
        .add_elements([_rec(1, 10 * S)])
        .advance_watermark_to(_ts(70 * S))  # on-time pane fired, window open until 90s
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness="30s")
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {_window(0, 60): [(1, PaneInfoTiming.ON_TIME), (1, PaneInfoTiming.LATE)]}
            ),
            label="OnTimeThenLatePane",
        )
        assert_that(routed.late, equal_to([]), label="NoLateRecord")


@pytest.mark.parametrize("lateness_s", [0, 30])
def test_just_before_close_is_still_in_the_window(lateness_s):
    """At watermark W.end + L - 1ms the window is open: the record makes a pane, not late.

    TestStream moves the watermark in whole milliseconds only; the microsecond boundary is
    covered by ``test_rule_boundary_is_exact_to_the_microsecond``.
    """
    close = (60 + lateness_s) * S
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S)])
        .advance_watermark_to(_ts(close - 1 * MS))
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    expected = (
        [(2, PaneInfoTiming.ON_TIME)]
        if lateness_s == 0
        else [(1, PaneInfoTiming.ON_TIME), (1, PaneInfoTiming.LATE)]
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness=lateness_s)
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window({_window(0, 60): expected}),
            label="BothRecordsInPanes",
        )
        assert_that(routed.late, equal_to([]), label="NoLateRecord")


@pytest.mark.parametrize("lateness_s", [0, 30])
def test_exactly_at_close_is_late(lateness_s):
    """At watermark W.end + L exactly the window has closed: the record is a late record."""
    close = (60 + lateness_s) * S
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S)])
        .advance_watermark_to(_ts(close))
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness=lateness_s)
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window({_window(0, 60): [(1, PaneInfoTiming.ON_TIME)]}),
            label="OnlyOnTimeRecordCounted",
        )
        assert_that(
            routed.late | beam.Map(lambda d: (d.payload, d.lateness_ms)),
            equal_to([(_payload(2), (close - 20 * S) // MS)]),
            label="LateRecord",
        )


def test_sliding_element_is_late_only_when_all_its_windows_closed():
    """A sliding-window record with one open window stays main; with none it is late."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 40 * S)])  # windows [0,60) and [30,90)
        .advance_watermark_to(_ts(61 * S))  # [0,60) closed, [30,90) open
        .add_elements([_rec(2, 45 * S)])
        .advance_watermark_to(_ts(90 * S))  # both closed
        .add_elements([_rec(3, 50 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(SlidingWindows(60, 30), allowed_lateness=0)
        # Record 2's share in the expired window [0,60) is dropped by Beam, not re-emitted late.
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {
                    _window(0, 60): [(1, PaneInfoTiming.ON_TIME)],
                    _window(30, 90): [(2, PaneInfoTiming.ON_TIME)],
                }
            ),
            label="PartiallyClosedRecordInItsOpenWindow",
        )
        assert_that(
            routed.late | beam.Map(lambda d: (d.payload, d.window, d.lateness_ms)),
            equal_to([(_payload(3), "1970-01-01T00:00:30Z/1970-01-01T00:01:30Z", 40_000)]),
            label="FullyClosedRecordIsLateWithItsLastWindow",
        )


def test_session_windows_use_the_pre_merge_window():
    """Sessions: a record is late when its own [t, t+gap) window closed, else it merges."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 100 * S), _rec(2, 130 * S)])
        # past [100,110) + 5s, and the clock's tick at 120 s (its grid: multiples of the gap)
        .advance_watermark_to(_ts(120 * S))
        .add_elements([_rec(3, 99 * S), _rec(4, 128 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(Sessions(10), allowed_lateness=5)
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {
                    _window(100, 110): [(1, PaneInfoTiming.ON_TIME)],
                    _window(128, 140): [(2, PaneInfoTiming.ON_TIME)],
                }
            ),
            label="OpenSessionAbsorbsTheRecord",
        )
        assert_that(
            routed.late | beam.Map(lambda d: (d.payload, d.window, d.lateness_ms)),
            equal_to([(_payload(3), "1970-01-01T00:01:39Z/1970-01-01T00:01:49Z", 21_000)]),
            label="ClosedProtoWindowIsLate",
        )


def test_earlier_window_arriving_later_rearms_the_timer():
    """A record of an earlier window, seen after a later one, still has its close detected."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 70 * S)])  # arms the timer at 120s
        .add_elements([_rec(2, 10 * S)])  # earlier close, 60s: the timer must move there
        .advance_watermark_to(_ts(60 * S))
        .add_elements([_rec(3, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | RouteLateData(FixedWindows(60), allowed_lateness=0)
        assert_that(
            routed.late | beam.Map(lambda d: (d.payload, d.lateness_ms)),
            equal_to([(_payload(3), 40_000)]),
            label="LateAfterEarlierClose",
        )


def test_late_record_of_a_window_that_never_had_a_record_is_late():
    """The clock ticks through empty windows too: a straggler for one of them is late."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S)])
        .add_elements([_rec(2, 250 * S)])
        .advance_watermark_to(_ts(200 * S))
        .add_elements([_rec(3, 130 * S)])  # window [120, 180) never had a record
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | WindowWithLateRouting(FixedWindows(60), allowed_lateness=0)
        assert_that(
            routed.late | beam.Map(lambda d: (d.payload, d.lateness_ms, d.window)),
            equal_to([(_payload(3), 50_000, "1970-01-01T00:02:00Z/1970-01-01T00:03:00Z")]),
            label="EmptyWindowStraggler",
        )
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {
                    _window(0, 60): [(1, PaneInfoTiming.ON_TIME)],
                    _window(240, 300): [(1, PaneInfoTiming.ON_TIME)],
                }
            ),
            label="OnTimePanes",
        )


def test_late_record_close_in_time_to_an_on_time_one_is_late():
    """Two records of one window a millisecond apart: the second, after the close, is late."""
    first, second = 10 * S, 10 * S + 1 * MS
    stream = (
        TestStream()
        .add_elements([_rec(1, first)])
        .advance_watermark_to(_ts(60 * S))
        .add_elements([_rec(2, second)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | RouteLateData(FixedWindows(60), allowed_lateness=0)
        assert_that(
            routed.late | beam.Map(lambda d: d.payload), equal_to([_payload(2)]), label="Late"
        )


def _mixed_stream(seed: int, window_s: int, lateness_s: int):
    """A stream where every window gets an on-time record before its close, plus stragglers.

    Returns the TestStream, the number of records and the expected late (id, lateness_ms).
    With one shard and every window registered, a record is late exactly when its window's
    close (end + lateness) is at or behind the watermark, and the router's bound ``known_wm``
    is the greatest window close at or behind the watermark.
    """
    rnd = random.Random(seed)
    stream = TestStream()
    expected_late = []
    rid = 0
    for wm_s in range(0, 120, 3):
        stream = stream.advance_watermark_to(_ts(wm_s * S))
        batch = [_rec(rid, wm_s * S + rnd.randrange(0, 3 * S, MS))]  # on time, registers W
        rid += 1
        for _ in range(rnd.randint(1, 3)):
            micros = max(0, wm_s * S - rnd.randrange(0, 40 * S, 250 * MS))
            end = (micros // (window_s * S) + 1) * window_s * S
            close = end + lateness_s * S
            if close <= wm_s * S:
                known = (wm_s - lateness_s) // window_s * window_s * S + lateness_s * S
                expected_late.append((rid, (known - micros) // MS))
            batch.append(_rec(rid, micros))
            rid += 1
        stream = stream.add_elements(batch)
    return stream.advance_watermark_to_infinity(), rid, expected_late


@pytest.mark.parametrize(("seed", "shards"), [(1, 1), (2, 1), (1, 16), (2, 5)])
def test_every_record_is_in_exactly_one_place(seed, shards):
    """main + late == input, late records are exactly the closed-window ones, main all in panes."""
    stream, total, expected_late = _mixed_stream(seed, window_s=10, lateness_s=5)
    assert 0 < len(expected_late) < total
    with _streaming() as p:
        routed = p | stream | RouteLateData(FixedWindows(10), allowed_lateness=5, shards=shards)
        windowed = routed.main | "Window" >> beam.WindowInto(
            FixedWindows(10),
            trigger=beam_trigger.AfterWatermark(late=beam_trigger.AfterCount(1)),
            accumulation_mode=beam_trigger.AccumulationMode.DISCARDING,
            allowed_lateness=5,
        )
        main_count = (
            routed.main
            | "AtEnd"
            >> beam.WindowInto(
                GlobalWindows(),
                trigger=beam_trigger.AfterWatermark(),
                accumulation_mode=beam_trigger.AccumulationMode.DISCARDING,
            )
            | "CountMain" >> beam.combiners.Count.Globally()
        )
        in_panes = (
            windowed
            | "One" >> beam.Map(lambda _: ("all", 1))
            | "CountPerPane" >> beam.CombinePerKey(sum)
            | "Regroup"
            >> beam.WindowInto(
                GlobalWindows(),
                trigger=beam_trigger.AfterWatermark(),
                accumulation_mode=beam_trigger.AccumulationMode.DISCARDING,
            )
            | "Values" >> beam.Values()
            | "SumPanes" >> beam.CombineGlobally(sum)
        )
        assert_that(main_count, equal_to([total - len(expected_late)]), label="MainCount")
        assert_that(in_panes, equal_to([total - len(expected_late)]), label="AllMainInPanes")
        assert_that(
            routed.late | beam.Map(lambda d: (int(d.payload.split(b",")[0][6:]), d.lateness_ms)),
            equal_to(expected_late),
            label="ExactlyTheClosedWindowRecordsAreLate",
        )


def test_main_output_is_unchanged_in_the_global_window():
    """RouteLateData passes records on unchanged: same timestamp, still in the global window."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S), _rec(2, 70 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = p | stream | RouteLateData(FixedWindows(60), allowed_lateness=0)
        assert_that(
            routed.main,
            equal_to(
                [
                    TestWindowedValue({"id": 1, "key": "k"}, _ts(10 * S), [GlobalWindow()]),
                    TestWindowedValue({"id": 2, "key": "k"}, _ts(70 * S), [GlobalWindow()]),
                ]
            ),
            reify_windows=True,
            label="Unchanged",
        )


def test_batch_nothing_is_late():
    """In batch the watermark jumps to the end only after all input, so no record is late."""
    times = [5 * S, 65 * S, 7 * S, 3600 * S, 1 * S]
    with TestPipeline(runner="FnApiRunner") as p:
        routed = (
            p
            | beam.Create(list(enumerate(times)))
            | beam.Map(lambda it: TimestampedValue({"id": it[0], "key": "k"}, _ts(it[1])))
            | WindowWithLateRouting(FixedWindows(60), allowed_lateness=0)
        )
        assert_that(routed.late, equal_to([]), label="NothingLate")
        assert_that(
            routed.main | beam.Map(lambda r: ("k", 1)) | beam.CombinePerKey(sum),
            equal_to_per_window(
                {
                    _window(0, 60): [("k", 3)],
                    _window(60, 120): [("k", 1)],
                    _window(3600, 3660): [("k", 1)],
                }
            ),
            label="AllInWindows",
        )


def test_accumulating_mode_repeats_earlier_records_in_late_pane():
    """accumulation_mode=ACCUMULATING makes the late pane include the on-time records."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S)])
        .advance_watermark_to(_ts(70 * S))
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = (
            p
            | stream
            | WindowWithLateRouting(
                FixedWindows(60),
                allowed_lateness=30,
                accumulation_mode=beam_trigger.AccumulationMode.ACCUMULATING,
            )
        )
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {_window(0, 60): [(1, PaneInfoTiming.ON_TIME), (2, PaneInfoTiming.LATE)]}
            ),
            label="AccumulatedLatePane",
        )


def test_trigger_option_replaces_the_default():
    """A given trigger is used: Repeatedly(AfterCount(1)) fires one EARLY pane per record."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S)])
        .add_elements([_rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = (
            p
            | stream
            | WindowWithLateRouting(
                FixedWindows(60),
                allowed_lateness=0,
                trigger=beam_trigger.Repeatedly(beam_trigger.AfterCount(1)),
            )
        )
        assert_that(
            _counts_per_pane(routed.main),
            equal_to_per_window(
                {_window(0, 60): [(1, PaneInfoTiming.EARLY), (1, PaneInfoTiming.EARLY)]}
            ),
            label="PanePerRecord",
        )


def test_timestamp_combiner_option_sets_pane_timestamps():
    """timestamp_combiner=OUTPUT_AT_EARLIEST stamps the pane with its earliest record's time."""
    stream = (
        TestStream()
        .add_elements([_rec(1, 10 * S), _rec(2, 20 * S)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        routed = (
            p
            | stream
            | WindowWithLateRouting(
                FixedWindows(60),
                allowed_lateness=0,
                timestamp_combiner=TimestampCombiner.OUTPUT_AT_EARLIEST,
            )
        )
        stamped = (
            routed.main
            | beam.Map(lambda r: (r["key"], 1))
            | beam.CombinePerKey(sum)
            | beam.Map(lambda kv, ts=beam.DoFn.TimestampParam: (kv, ts))
        )
        assert_that(
            stamped,
            equal_to([(("k", 2), _ts(10 * S))]),
            label="EarliestTimestamp",
        )


def test_step_labels_are_stable():
    """The composite's steps carry fixed labels (Dataflow update matches on them)."""
    p = beam.Pipeline("FnApiRunner")
    _ = (
        p
        | "Input" >> TestStream().add_elements([{"id": 1}])
        | "Late" >> WindowWithLateRouting(FixedWindows(60), allowed_lateness=0)
    )
    _ = (
        p
        | "Bounded" >> beam.Create([{"id": 1}])
        | "BatchLate" >> WindowWithLateRouting(FixedWindows(60), allowed_lateness=0)
    )
    labels = set()

    class _Collect(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            labels.add(node.full_label)

        def enter_composite_transform(self, node):
            labels.add(node.full_label)

    p.visit(_Collect())
    assert {"Late/RouteLate/SpreadOverShards", "Late/RouteLate/Route", "Late/Window"} <= labels
    assert "BatchLate/RouteLate/NoLateData" in labels  # bounded input: nothing can be late


def test_late_routed_is_a_named_pair():
    """LateRouted exposes main and late by name."""
    assert LateRouted._fields == ("main", "late")


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"window_fn": "60s"}, "window_fn='60s'"),
        ({"window_fn": GlobalWindows()}, "window_fn=<apache_beam.transforms.window.GlobalWindows"),
        ({"allowed_lateness": -1}, "allowed_lateness=-1"),
        ({"allowed_lateness": "soon"}, "allowed_lateness='soon'"),
        ({"clock_horizon": "-1h"}, "clock_horizon='-1h'"),
        ({"shards": 0}, "shards=0"),
        ({"shards": "4"}, "shards='4'"),
    ],
)
def test_route_late_data_rejects_bad_options(kwargs, bad):
    """Each invalid option raises ValueError naming the option and its value."""
    options = {"window_fn": FixedWindows(60), "allowed_lateness": 0, **kwargs}
    window_fn = options.pop("window_fn")
    with pytest.raises(ValueError, match=bad.replace("(", r"\(").replace(".", r"\.")):
        RouteLateData(window_fn, **options)


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"trigger": "after-watermark"}, "trigger='after-watermark'"),
        ({"accumulation_mode": "discarding"}, "accumulation_mode='discarding'"),
        ({"timestamp_combiner": "earliest"}, "timestamp_combiner='earliest'"),
        ({"allowed_lateness": "1x"}, "allowed_lateness='1x'"),
        ({"clock_horizon": "forever"}, "clock_horizon='forever'"),
    ],
)
def test_window_with_late_routing_rejects_bad_options(kwargs, bad):
    """Each invalid option raises ValueError naming the option and its value."""
    options = {"allowed_lateness": 0, **kwargs}
    with pytest.raises(ValueError, match=bad):
        WindowWithLateRouting(FixedWindows(60), **options)


def test_allowed_lateness_is_required():
    """There is no default allowed lateness: leaving it out is a TypeError."""
    with pytest.raises(TypeError, match="allowed_lateness"):
        RouteLateData(FixedWindows(60))  # type: ignore[call-arg]


def test_input_must_be_in_the_global_window():
    """Routing after WindowInto is refused with a message naming the input's WindowFn."""
    p = beam.Pipeline("FnApiRunner")
    windowed = p | beam.Create([1]) | beam.WindowInto(FixedWindows(60))
    with pytest.raises(
        ValueError, match=r"global window, got <apache_beam\.transforms\.window\.Fixed"
    ):
        _ = windowed | RouteLateData(FixedWindows(60), allowed_lateness=0)


class _FakeValue:
    def __init__(self):
        self.value = None

    def read(self):
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


class _FakeTimer:
    """The armed ticks by tag, as a runner keeps them."""

    def __init__(self):
        self.armed: dict[str, Timestamp] = {}

    def set(self, when, dynamic_timer_tag=""):
        self.armed[dynamic_timer_tag] = when

    def clear(self, dynamic_timer_tag=""):
        self.armed.pop(dynamic_timer_tag, None)

    @property
    def at(self) -> Timestamp | None:
        """The next tick to fire."""
        return min(self.armed.values(), default=None)

    def fire(self, fn, *states):
        """Fires the next tick (the runner drops it from the armed ones first)."""
        tag = min(self.armed, key=self.armed.__getitem__)
        fn.on_tick(self.armed.pop(tag), *states)

    def fire_round(self, watermark_micros, fn, *states) -> int:
        """Fires every armed timer the watermark has passed, as one round of a runner
        (latest first: a round may fire them in any order); returns how many fired."""
        due = sorted(
            (tag for tag, at in self.armed.items() if at.micros <= watermark_micros),
            key=self.armed.__getitem__,
            reverse=True,
        )
        fired = [self.armed.pop(tag) for tag in due]
        for at in fired:
            fn.on_tick(at, *states)
        return len(fired)

    def ticks(self) -> list[int]:
        """The clock's armed ticks (micros), without the ladder's probes."""
        return sorted(t.micros for tag, t in self.armed.items() if not tag.startswith("ladder"))

    def probes(self) -> list[int]:
        """The ladder's armed probes (micros), level by level."""
        levels = sorted(int(tag[6:]) for tag in self.armed if tag.startswith("ladder"))
        return [self.armed[f"ladder{level}"].micros for level in levels]


@pytest.mark.parametrize(
    ("window_fn", "lateness_s", "span_s"),
    [
        (FixedWindows(60), 0, 60),
        (FixedWindows(60), 90, 60),
        (SlidingWindows(60, 20, offset=7), 5, 20),
        (Sessions(10), 3, 10),
        (CalendarWindows("month", "Europe/Berlin"), 0, 31 * 86_400),
        (CalendarWindows("day", "America/New_York"), 3_600, 86_400),  # DST days: 23 h, 25 h
    ],
)
def test_a_records_carrier_is_the_last_close_of_the_grid_at_or_before_its_event_time(
    window_fn, lateness_s, span_s
):
    """The spreader stamps a record with the last close at or before its event time; walked
    from three of the grid's longest steps before, on random instants and on closes."""
    clock = _Clock(window_fn, lateness_s * S)
    rng = random.Random(5)
    instants = [rng.randrange(1_700_000_000 * S, 1_800_000_000 * S) for _ in range(60)]
    instants += [clock.next_after(t) for t in instants[:20]]  # exactly on a close
    instants += [1_710_054_000 * S + h * 3_600 * S for h in range(-3, 30)]  # around a DST jump
    for micros in instants:
        walked = clock.first_at_or_after(micros - 3 * span_s * S)
        while clock.next_after(walked) <= micros:
            walked = clock.next_after(walked)
        assert clock.last_at_or_before(micros) == walked <= micros, micros


def test_the_spreader_sends_each_shard_one_batch_per_bundle_stamped_with_its_earliest_carrier():
    """What leaves the spreader: per shard, one (shard, [items]) per bundle, the start notes
    first, then _Stamped(event time, record) in arrival order, stamped with the earliest
    carrier among the items."""
    clock = _Clock(FixedWindows(60), 0)
    fn = _SpreadFn(4, 60 * S, clock)
    fn.setup()
    fn.start_bundle()
    times = [130 * S + 7, 70 * S, 250 * S, 200 * S, 190 * S]
    for micros in times:
        assert list(fn.process({"t": micros}, _ts(micros))) == []  # nothing before the end
    batches = {v.value[0]: v for v in fn.finish_bundle()}
    assert sorted(batches) == [0, 1, 2, 3]
    records = []
    for shard, batch in batches.items():
        items = batch.value[1]
        assert items[0] == _Start(130 * S + 7)  # the note comes first, on every shard
        assert all(isinstance(item, _Stamped) for item in items[1:])
        carriers = [clock.last_at_or_before(item.micros) for item in items]
        assert batch.timestamp == _ts(min(carriers)), shard
        assert batch.windows == (GlobalWindow(),)
        records += items[1:]
    assert sorted(r.micros for r in records) == sorted(times)
    assert all(r.record == {"t": r.micros} for r in records)
    # round robin: the fifth record shares a shard with the first, after it
    fifth = next(b.value[1] for b in batches.values() if len(b.value[1]) == 3)
    assert [item.micros for item in fifth[1:]] == [130 * S + 7, 190 * S]
    assert list(fn.finish_bundle()) == []  # drained


@pytest.mark.parametrize(
    "window_fn",
    [
        FixedWindows(60),
        SlidingWindows(600, 60),
        Sessions(300),
        CalendarWindows("month", "Europe/Berlin"),
        CalendarWindows("day", "America/New_York"),
    ],
    ids=["fixed", "sliding", "session", "month", "day-dst"],
)
def test_the_spreaders_remembered_carrier_is_the_clocks(window_fn):
    """The spreader remembers the grid step of its last carrier; every record still travels
    with the clock's own last close at or before its event time, in order or not."""
    clock = _Clock(window_fn, 30 * S)
    fn = _SpreadFn(1, 60 * S, clock)
    rng = random.Random(7)
    base = 1_710_000_000 * S  # around a DST change in March 2024
    instants = sorted(base + rng.randrange(0, 90 * 86_400) * S for _ in range(300))
    instants += [base + rng.randrange(0, 90 * 86_400 * S) for _ in range(300)]  # any order
    for close in [clock.next_after(t) for t in instants[:50]]:  # around a close, in order
        instants += [close - 1, close, close + 1]
    for micros in instants:
        assert fn._carrier(micros) == clock.last_at_or_before(micros), micros


def test_a_full_shard_batch_leaves_in_the_middle_of_a_bundle(monkeypatch):
    """A shard's batch holds at most BATCH_LIMIT items: a fuller one leaves at once."""
    monkeypatch.setattr(batches_module, "BATCH_LIMIT", 3)
    fn = _SpreadFn(1, 60 * S, _Clock(FixedWindows(60), 0))
    fn.setup()
    fn.start_bundle()
    out = [v for micros in (5 * S, 65 * S, 7 * S) for v in fn.process({}, _ts(micros))]
    assert [(v.value[0], len(v.value[1]), v.timestamp) for v in out] == [(0, 3, _ts(0))]
    assert [item.micros for item in out[0].value[1][1:]] == [5 * S, 65 * S]
    assert [len(v.value[1]) for v in fn.finish_bundle()] == [1]


def _route(fn, value, micros, *cells):
    """Sends ``value`` of event time ``micros`` to the router as the spreader does (stamped
    with a carrier the router must not read: the start of time) and unstamps what comes out,
    checking that each output carries ``micros`` again."""
    carried = value if isinstance(value, _Start) else _Stamped(micros, value)
    out = []
    for item in fn.process((0, [carried]), MIN_TIMESTAMP, *cells):
        tagged = isinstance(item, TaggedOutput)
        stamped = item.value if tagged else item
        assert isinstance(stamped, WindowedValue), item
        assert stamped.timestamp == _ts(micros)
        assert stamped.windows == (GlobalWindow(),)
        out.append(TaggedOutput(item.tag, stamped.value) if tagged else stamped.value)
    return out


def test_rule_boundary_is_exact_to_the_microsecond():
    """Known watermark W.end+L-1us leaves W open; W.end+L closes it (the DoFn driven directly)."""
    fn = _RouteLateFn(FixedWindows(60), 30 * S, 60 * S)
    known, armed, newest, timer = _FakeValue(), _FakeValue(), _FakeValue(), _FakeTimer()
    catching = _FakeValue()

    def route(micros):
        return _route(fn, {"t": micros}, micros, known, armed, newest, timer, catching)

    assert route(20 * S) == [{"t": 20 * S}]
    assert (newest.read(), timer.at) == (90 * S, _ts(30 * S))  # starts one horizon early
    fn.on_tick(
        _ts(90 * S - 1 * US), known, armed, newest, timer, catching
    )  # a tick 1us before close
    assert route(25 * S) == [{"t": 25 * S}]
    fn.on_tick(_ts(90 * S), known, armed, newest, timer, catching)
    assert (known.read(), armed.read()) == (90 * S, (150 * S, 150 * S))
    assert _ts(150 * S) in timer.armed.values()
    [late] = route(30 * S)
    assert isinstance(late, TaggedOutput)
    assert late.tag == "late"
    assert late.value.lateness_ms == 60_000


def test_clock_walks_the_grid_then_keeps_its_next_tick_and_a_ladder():
    """Ticks start a horizon before the first close and step by window; past the horizon the
    clock keeps only its next tick, and a ladder of probes up to the end of time."""
    fn = _RouteLateFn(FixedWindows(60), 0, 120 * S)
    known, armed, newest, ladder, timer = (*(_FakeValue() for _ in range(4)), _FakeTimer())
    _route(fn, {}, 10 * S, known, armed, newest, timer, ladder)
    # armed ahead: every tick up to a horizon past the newest close, at most 16
    assert armed.read() == (-60 * S, 180 * S)
    assert timer.ticks() == [t * S for t in (-60, 0, 60, 120, 180)]
    # the ladder: the first close at or after the next multiple of 60 s * 2**k above 180 s
    assert timer.probes() == list(ladder.read())
    assert timer.probes()[:4] == [240 * S, 480 * S, 960 * S, 1920 * S]
    assert timer.probes()[-1] == GlobalWindow().max_timestamp().micros  # the end of time
    ticks = []
    while timer.at.micros <= 180 * S:
        ticks.append(timer.at.micros // S)
        timer.fire(fn, known, armed, newest, timer, ladder)
    assert ticks == [-60, 0, 60, 120, 180]
    assert (known.read(), armed.read()) == (180 * S, (240 * S, 240 * S))  # the next tick only
    assert timer.ticks() == [240 * S]


def test_a_watermark_jump_is_learnt_in_a_few_rounds_and_stragglers_are_judged_exactly():
    """The watermark jumps a day (1,440 windows) past the clock, e.g. a replay of past data
    resuming after a silence: the ladder's probes teach the clock the jump in a few rounds,
    not 90 rounds of 16 ticks, and a straggler from the silence is late, not unverified."""
    fn = _RouteLateFn(FixedWindows(60), 0, 300 * S, wall_clock=lambda: 30 * 24 * 3600.0)
    known, armed, newest, ladder, timer = (*(_FakeValue() for _ in range(4)), _FakeTimer())

    def route(value, micros):
        return _route(fn, value, micros, known, armed, newest, timer, ladder)

    unverified: list[None] = []
    fn._unverify = lambda: unverified.append(None)
    assert route(_Start(10 * S), 10 * S) == []
    assert route({"id": 0}, 10 * S) == [{"id": 0}]
    day = 24 * 3600 * S
    rounds = fired = 0
    while timer.at.micros <= day:
        fired += timer.fire_round(day, fn, known, armed, newest, timer, ladder)
        rounds += 1
    assert known.read() == day  # the last close the watermark passed
    assert rounds <= 14
    assert fired < 200
    assert min(timer.armed.values()) == _ts(day + 60 * S)  # the next close holds the watermark
    [late] = route({"id": 1}, 3600 * S)  # from the silence: its window closed long ago
    assert late.tag == "late"
    assert late.value.lateness_ms == (day - 3600 * S) // 1000
    assert route({"id": 2}, day + S) == [{"id": 2}]
    assert unverified == []


class _CountingValue(_FakeValue):
    """A state cell that counts its reads: each is a round trip to a runner without a cache."""

    def __init__(self):
        super().__init__()
        self.reads = 0

    def read(self):
        self.reads += 1
        return super().read()


def test_a_bundle_reads_each_state_cell_once_and_the_next_bundle_reads_it_again():
    """Prism hands out no cache tokens, so every read of a cell not written in the bundle asks
    the runner. The router reads its clock once per bundle and shard, not once per record (it
    did per record: most of the SDK harness's time on Prism); a new bundle reads afresh."""
    fn = _RouteLateFn(FixedWindows(60), 0, 120 * S)
    known, armed, newest, catching = cells = [_CountingValue() for _ in range(4)]
    timer = _FakeTimer()

    def route(micros, n=0):
        return _route(fn, {"n": n}, micros, known, armed, newest, timer, catching)

    fn.start_bundle()
    route(10 * S)  # starts the clock
    fn.finish_bundle()
    for cell in cells:
        cell.reads = 0
    fn.start_bundle()
    timer.fire(fn, known, armed, newest, timer, catching)  # the clock learns -60 s
    routed = [route((70 + n) * S, n) for n in range(50)]
    fn.finish_bundle()
    assert routed == [[{"n": n}] for n in range(50)]
    assert [cell.reads for cell in cells] == [1, 1, 1, 1]
    known.value = 3_600 * S  # the cell moved on outside this bundle (another worker's ticks)
    fn.start_bundle()
    [late] = route(80 * S)
    fn.finish_bundle()
    assert late.tag == "late"
    assert known.reads == 2


def _counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_namespace("headwater").with_name(name))
    return sum(c.committed or 0 for c in found["counters"])


def test_records_are_dealt_evenly_over_the_shards():
    """No hot key: the router's records spread round robin, counted per shard."""
    stream = TestStream().add_elements([_rec(i, i * S) for i in range(64)])
    p = _streaming()
    _ = (
        p
        | stream.advance_watermark_to_infinity()
        | RouteLateData(FixedWindows(60), allowed_lateness=0, shards=4)
    )
    result = p.run()
    result.wait_until_finish()
    assert [_counter(result, f"late_routing.shard_{i}") for i in range(4)] == [16] * 4


def _minute(micros: int) -> int:
    return micros // (60 * S) * 60 * S


@pytest.mark.parametrize("live", [True, False], ids=["live", "past"])
def test_a_silence_longer_than_the_horizon_on_idle_shards(live):
    """Every shard's clock follows the watermark through a long silence, idle shards included,
    live or in past event time (a replay of history), so stragglers after it are late, exactly
    as the columnar replay judges them; none is unverified."""
    base = _minute(round(time.time() * S)) - 60 * 60 * S if live else 0
    stragglers = [_rec(100 + i, base + 20 * 60 * S + i * S) for i in range(16)]
    stream = (
        TestStream()
        .add_elements([_rec(1, base + 10 * S), _rec(2, base + 11 * S)])  # 14 shards get none
        .advance_watermark_to(_ts(base + 61 * S))
        .advance_watermark_to(_ts(base + 40 * 60 * S))  # a 39-minute silence, horizon 5 min
        .add_elements([*stragglers, _rec(3, base + 40 * 60 * S + 10 * S)])
        .advance_watermark_to_infinity()
    )
    p = _streaming()
    routed = (
        p
        | stream
        | WindowWithLateRouting(FixedWindows(60), allowed_lateness=0, clock_horizon="5m", shards=16)
    )
    late_ids = routed.late | beam.Map(lambda d: int(d.payload.split(b",")[0][6:]))
    assert_that(late_ids, equal_to([100 + i for i in range(16)]), label="Late")
    on_time = routed.main | "Ids" >> beam.Map(lambda r: r["id"])
    assert_that(on_time, equal_to([1, 2, 3]), "Main")
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "late_routing.unverified") == 0
    assert _counter(result, "late_routing.late") == 16


def test_an_ancient_or_future_record_costs_itself_and_nothing_more():
    """Event time 0 before the first tick and a year-2300 record: no clock walks to them."""
    base = _minute(round(time.time() * S)) - 5 * 60 * S
    year_2300 = 10_413_792_000 * S
    stream = (
        TestStream()
        .add_elements([_rec(1, base + 10 * S)])
        .add_elements([_rec(2, 0), _rec(3, year_2300)])
        .advance_watermark_to(_ts(base + 2 * 60 * S))
        .add_elements([_rec(4, 30 * S)])  # after the first tick: late
        .advance_watermark_to_infinity()
    )
    p = _streaming()
    routed = (
        p
        | stream
        | WindowWithLateRouting(FixedWindows(60), allowed_lateness=0, clock_horizon="5m", shards=4)
    )
    assert_that(routed.late | beam.Map(lambda d: d.payload), equal_to([_payload(4)]), label="Late")
    assert_that(
        _counts_per_pane(routed.main) | "Counts" >> beam.Map(lambda c: c[0]),
        equal_to([1, 1, 1]),
        label="ThreePanes",
    )
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "late_routing.unverified") == 1  # event time 0, before any tick
    # Per shard: the minutes from 5 before the data on, and the ladder's probes (one per
    # doubling up to the end of time) -- no walk from event time 0 (29 million minutes) or
    # to the year 2300.
    assert 0 < _counter(result, "late_routing.ticks") <= 4 * 128


@pytest.mark.integration
def test_a_silence_in_past_event_time_on_prism_routes_stragglers_exactly():
    """On Prism (16 shards, 14 of them idle before the silence): after a 39-minute silence in
    1970's event time, with a 5-minute clock horizon, the stragglers from inside the silence
    are late and the rest is on time -- the clock followed the watermark; nothing unverified."""
    events = [
        ({"id": 1}, 10),
        ({"id": 2}, 11),
        AdvanceWatermark(to=61),
        AdvanceWatermark(to=40 * 60),
        *(({"id": 100 + i}, 20 * 60 + i) for i in range(16)),
        ({"id": 3}, 40 * 60 + 10),
    ]
    routing = WindowWithLateRouting(
        FixedWindows(60), allowed_lateness=0, clock_horizon="5m", shards=16
    )
    result = run_transform(routing, events, max_out_of_orderness=None, runner="PrismRunner")
    assert sorted(r["id"] for r in result.values()) == [1, 2, 3]
    assert sorted(json.loads(d.payload)["id"] for d in result.late) == list(range(100, 116))
    assert _counter(result.pipeline_result, "late_routing.unverified") == 0


def test_routing_reports_whether_it_went_by_shard():
    """A stream is routed by shard, a bounded input is not (nothing is late in batch); the
    window step reports the router's answer (the --stream_shards check reads it)."""
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True))
    stream = pipeline | TestStream().add_elements([TimestampedValue({"k": 1}, 5)])
    bounded = pipeline | beam.Create([{"k": 1}])
    for pcoll, expected in ((stream, True), (bounded, False)):
        window = WindowWithLateRouting(FixedWindows(60), allowed_lateness=0)
        route = RouteLateData(FixedWindows(60), allowed_lateness=0)
        assert (window.sharded, route.sharded) == (False, False)  # not applied yet
        _ = pcoll | f"Window{expected}" >> window
        _ = pcoll | f"Route{expected}" >> route
        assert (window.sharded, route.sharded) == (expected, expected)
