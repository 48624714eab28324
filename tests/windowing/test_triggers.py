"""Trigger presets: the Beam triggers they build, the panes they produce, and validation."""

from __future__ import annotations

import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners import pipeline_context
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.utils.windowed_value import PaneInfoTiming

from headwater.windowing.triggers import TriggerSpec, parse_trigger_spec, window_into
from headwater.windowing.windows import FixedWindowSpec

_TIMING = {
    PaneInfoTiming.EARLY: "early",
    PaneInfoTiming.ON_TIME: "on_time",
    PaneInfoTiming.LATE: "late",
}


def _streaming() -> TestPipeline:
    return TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))


class _DescribePane(beam.DoFn):
    """(pane index, pane timing, window start, sorted values) for each grouped output."""

    def process(self, element, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        _, values = element
        yield pane.index, _TIMING[pane.timing], float(window.start), sorted(values)


def _panes(p, stream, **window_into_kwargs):
    return (
        p
        | stream
        | window_into(FixedWindowSpec(60), **window_into_kwargs)
        | beam.GroupByKey()
        | beam.ParDo(_DescribePane())
    )


# -- the Beam triggers ------------------------------------------------------------------------


def test_on_time_preset_is_after_watermark_alone():
    """The default preset fires once, when the watermark passes the end of the window."""
    spec = TriggerSpec()
    assert spec.trigger() == beam_trigger.AfterWatermark()
    assert spec.accumulation_mode() == beam_trigger.AccumulationMode.DISCARDING


def test_early_and_late_preset_builds_repeated_subtriggers():
    """early:N is a repeated AfterProcessingTime(N), late a repeated AfterCount(1)."""
    built = TriggerSpec(early_every="30s", late_firings=True, accumulating=True).trigger()
    assert isinstance(built, beam_trigger.AfterWatermark)
    assert isinstance(built.early, beam_trigger.Repeatedly)
    assert isinstance(built.early.underlying, beam_trigger.AfterProcessingTime)
    assert built.early.underlying.delay == 30
    assert built.late == beam_trigger.Repeatedly(beam_trigger.AfterCount(1))


def test_accumulating_preset_uses_accumulating_mode():
    """accumulating=True selects ACCUMULATING panes."""
    assert (
        TriggerSpec(accumulating=True).accumulation_mode()
        == beam_trigger.AccumulationMode.ACCUMULATING
    )


def test_trigger_survives_the_runner_api():
    """The built trigger round-trips through its runner-API proto (what portable runners get)."""
    built = TriggerSpec(early_every=10, late_firings=True).trigger()
    context = pipeline_context.PipelineContext()
    restored = beam_trigger.TriggerFn.from_runner_api(built.to_runner_api(context), context)
    assert repr(restored) == repr(built)
    assert repr(built) == "AfterWatermark(early=AfterProcessingTime(delay=10), late=AfterCount(1))"


# -- spec strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("on_time", TriggerSpec(), "on_time"),
        ("early:10s", TriggerSpec(early_every=10), "early:10s"),
        ("early:1m,late", TriggerSpec(early_every=60, late_firings=True), "early:1m,late"),
        ("late", TriggerSpec(late_firings=True), "late"),
        ("on_time,late", TriggerSpec(late_firings=True), "late"),
        ("on_time,accumulating", TriggerSpec(accumulating=True), "on_time,accumulating"),
        ("late, discarding", TriggerSpec(late_firings=True), "late"),
        (
            "accumulating,late,early:10s",
            TriggerSpec(early_every=10, late_firings=True, accumulating=True),
            "early:10s,late,accumulating",
        ),
    ],
)
def test_parse_trigger_spec_and_canonical_string_round_trip(text, expected, canonical):
    """Each accepted form parses; str() is canonical and parses back to an equal spec."""
    spec = parse_trigger_spec(text)
    assert spec == expected
    assert str(spec) == canonical
    assert parse_trigger_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("sometimes", "unknown part 'sometimes'"),
        ("early", "unknown part 'early'"),
        ("early:0s", "early_every='0s' must be greater than zero"),
        ("early:-1s", "early_every='-1s' is not a duration"),
        ("early:abc", "early_every='abc' is not a duration"),
        ("early:500ms", "early_every='500ms' is not a whole number of seconds"),
        ("late,late", "'late' is given twice"),
        ("late:5s", "'late:5s' takes no argument"),
        ("on_time,early:10s", "'on_time' means no early panes"),
        ("accumulating,discarding", "not both"),
    ],
)
def test_invalid_trigger_specs_raise_value_error_quoting_the_spec(text, reason):
    """A bad spec names itself, says why, and lists the accepted forms."""
    with pytest.raises(ValueError, match=re.escape(f"trigger spec {text!r}")) as error:
        parse_trigger_spec(text)
    assert reason in str(error.value)
    assert "early:<duration>" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"early_every": 0}, "early_every=0"),
        ({"early_every": 1.5}, "early_every=1.5"),
        ({"early_every": "soon"}, "early_every='soon'"),
        ({"late_firings": "yes"}, "late_firings='yes'"),
        ({"accumulating": 1}, "accumulating=1"),
    ],
)
def test_trigger_spec_validates_and_names_the_value(kwargs, named):
    """TriggerSpec refuses bad options with a ValueError naming the option and value."""
    with pytest.raises(ValueError, match=re.escape(named)):
        TriggerSpec(**kwargs)


def test_trigger_spec_options_are_keyword_only():
    """Options are keyword-only, so a bare positional cannot be misread."""
    with pytest.raises(TypeError):
        TriggerSpec(10)


# -- lateness safety --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lateness", "late_firings"),
    [(0, False), ("0s", False), (1, True), ("5m", True)],
)
def test_for_lateness_turns_late_firings_on_exactly_when_lateness_is_allowed(
    lateness, late_firings
):
    """for_lateness gives late firings iff allowed lateness > 0, keeping the other options."""
    spec = TriggerSpec.for_lateness(lateness, early_every="10s", accumulating=True)
    assert spec == TriggerSpec(early_every=10, late_firings=late_firings, accumulating=True)


def test_with_lateness_never_turns_late_firings_off():
    """with_lateness adds late firings for lateness > 0 and keeps an explicit 'late' at 0."""
    assert TriggerSpec().with_lateness(60).late_firings is True
    assert TriggerSpec().with_lateness(0).late_firings is False
    assert TriggerSpec(late_firings=True).with_lateness(0).late_firings is True


def test_for_lateness_names_a_bad_lateness():
    """A negative allowed lateness is refused, naming it."""
    with pytest.raises(ValueError, match=re.escape("allowed_lateness='-1m'")):
        TriggerSpec.for_lateness("-1m")


def test_window_into_enables_late_firings_when_lateness_is_allowed():
    """window_into upgrades an on-time preset to late firings when allowed_lateness > 0."""
    windowing = window_into("fixed:1m", trigger="on_time", allowed_lateness="2m").windowing
    assert windowing.triggerfn == beam_trigger.AfterWatermark(late=beam_trigger.AfterCount(1))
    assert windowing.allowed_lateness == 120
    assert windowing.windowfn == FixedWindows(60)
    on_time = window_into("fixed:1m", trigger="on_time", allowed_lateness=0).windowing
    assert on_time.triggerfn == beam_trigger.AfterWatermark()


def test_beam_refuses_the_unsafe_combination_window_into_avoids():
    """Plain AfterWatermark() with allowed lateness is rejected by Beam's GroupByKey."""
    p = beam.Pipeline("FnApiRunner")
    windowed = (
        p
        | beam.Create([("k", 1)])
        | beam.WindowInto(
            FixedWindows(60),
            trigger=TriggerSpec().trigger(),
            accumulation_mode=TriggerSpec().accumulation_mode(),
            allowed_lateness=60,
        )
    )
    with pytest.raises(ValueError, match="Unsafe trigger"):
        _ = windowed | beam.GroupByKey()


@pytest.mark.parametrize(
    ("window", "trigger", "named"),
    [
        (42, None, "window=42"),
        ("fixed:1m", 42, "trigger=42"),
        ("fixed:1m", "sometimes", "trigger spec 'sometimes'"),
        ("weekly", None, "window spec 'weekly'"),
    ],
)
def test_window_into_names_bad_arguments(window, trigger, named):
    """window_into refuses a bad window or trigger, naming it."""
    with pytest.raises(ValueError, match=re.escape(named)):
        window_into(window, trigger=trigger)


# -- panes on a streaming runner --------------------------------------------------------------


def test_early_panes_fire_every_n_seconds_of_processing_time_before_the_on_time_pane():
    """early:10s emits a pane 10 s of processing time after each pane's first element."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue(("k", 1), 10)])
        .advance_processing_time(5)  # not yet 10 s: no pane
        .add_elements([TimestampedValue(("k", 2), 20)])
        .advance_processing_time(5)  # 10 s after the first element: early pane [1, 2]
        .add_elements([TimestampedValue(("k", 3), 30)])
        .advance_processing_time(10)  # early pane [3]
        .add_elements([TimestampedValue(("k", 4), 40)])
        .advance_watermark_to(60)  # on-time pane [4]
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        assert_that(
            _panes(p, stream, trigger="early:10s"),
            equal_to(
                [
                    (0, "early", 0.0, [1, 2]),
                    (1, "early", 0.0, [3]),
                    (2, "on_time", 0.0, [4]),
                ]
            ),
            label="two early panes then the on-time pane",
        )


def test_without_early_panes_processing_time_fires_nothing():
    """The on-time preset ignores processing time and emits a single on-time pane."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue(("k", 1), 10)])
        .advance_processing_time(30)
        .add_elements([TimestampedValue(("k", 2), 20)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        assert_that(
            _panes(p, stream, trigger="on_time"),
            equal_to([(0, "on_time", 0.0, [1, 2])]),
            label="one on-time pane",
        )


def _late_stream() -> TestStream:
    return (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue(("k", 1), 10), TimestampedValue(("k", 2), 20)])
        .advance_watermark_to(60)  # on-time pane for [0, 60)
        .add_elements([TimestampedValue(("k", 3), 30)])  # late, within 60 s of lateness
        .advance_watermark_to(100)
        .add_elements([TimestampedValue(("k", 4), 40)])  # late, still within (100 <= 60 + 60)
        .advance_watermark_to_infinity()
    )


@pytest.mark.parametrize(
    ("trigger", "expected"),
    [
        (
            "late",
            [(0, "on_time", 0.0, [1, 2]), (1, "late", 0.0, [3]), (2, "late", 0.0, [4])],
        ),
        (
            "late,accumulating",
            [
                (0, "on_time", 0.0, [1, 2]),
                (1, "late", 0.0, [1, 2, 3]),
                (2, "late", 0.0, [1, 2, 3, 4]),
            ],
        ),
    ],
    ids=["discarding", "accumulating"],
)
def test_late_elements_within_allowed_lateness_produce_late_panes(trigger, expected):
    """Each late element inside the allowed lateness yields a late pane (new or accumulated)."""
    with _streaming() as p:
        assert_that(
            _panes(p, _late_stream(), trigger=trigger, allowed_lateness=60),
            equal_to(expected),
            label="on-time pane then late panes",
        )


def test_on_time_preset_with_allowed_lateness_still_emits_late_panes():
    """window_into turns on late firings for 'on_time' with lateness, so nothing vanishes."""
    with _streaming() as p:
        assert_that(
            _panes(p, _late_stream(), trigger="on_time", allowed_lateness=60),
            equal_to([(0, "on_time", 0.0, [1, 2]), (1, "late", 0.0, [3]), (2, "late", 0.0, [4])]),
            label="late elements are not dropped",
        )


def test_accumulating_early_panes_carry_everything_so_far():
    """With accumulating, each early pane and the on-time pane repeat the earlier elements."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue(("k", 1), 10)])
        .advance_processing_time(10)
        .add_elements([TimestampedValue(("k", 2), 20)])
        .advance_processing_time(10)
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        assert_that(
            _panes(p, stream, trigger="early:10s,accumulating"),
            equal_to(
                [
                    (0, "early", 0.0, [1]),
                    (1, "early", 0.0, [1, 2]),
                    (2, "on_time", 0.0, [1, 2]),
                ]
            ),
            label="accumulated panes",
        )
