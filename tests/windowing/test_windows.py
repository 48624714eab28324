"""Window specs: parsing, canonical strings, the WindowFns they build, and validation."""

from __future__ import annotations

import datetime as dt
import re

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to_per_window
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from headwater.windowing.windows import (
    CalendarWindows,
    CalendarWindowSpec,
    FixedWindowSpec,
    SessionWindowSpec,
    SlidingWindowSpec,
    parse_window_spec,
)


def _streaming() -> TestPipeline:
    return TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("fixed:60s", FixedWindowSpec(60)),
        ("fixed:1h", FixedWindowSpec(3600)),
        ("fixed:500ms", FixedWindowSpec(0.5)),
        ("  FIXED : 90s ", FixedWindowSpec(90)),
        ("sliding:10m/1m", SlidingWindowSpec(600, 60)),
        ("sliding:1m/1m", SlidingWindowSpec(60, 60)),
        ("session:5m", SessionWindowSpec(300)),
        ("calendar:day@Europe/Berlin", CalendarWindowSpec("day", "Europe/Berlin")),
        ("calendar:week@UTC", CalendarWindowSpec("week", "UTC")),
        ("calendar:week-sunday@UTC", CalendarWindowSpec("week", "UTC", week_start="sunday")),
        ("calendar:month@America/New_York", CalendarWindowSpec("month", "America/New_York")),
    ],
)
def test_parse_window_spec_accepts_each_form(text, expected):
    """Every documented spec form parses to the matching dataclass."""
    assert parse_window_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("fixed:60s", "fixed:1m"),
        ("fixed:90s", "fixed:90s"),
        ("fixed:1h", "fixed:1h"),
        ("sliding:600s/60s", "sliding:10m/1m"),
        ("session:300s", "session:5m"),
        ("calendar:DAY@Europe/Berlin", "calendar:day@Europe/Berlin"),
        ("calendar:week-Sunday@UTC", "calendar:week-sunday@UTC"),
        ("calendar:month@America/New_York", "calendar:month@America/New_York"),
    ],
)
def test_str_is_canonical_and_round_trips(text, canonical):
    """str(spec) gives the canonical spec, which parses back to an equal spec."""
    spec = parse_window_spec(text)
    assert str(spec) == canonical
    assert parse_window_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("spec", "window_fn", "merging"),
    [
        (FixedWindowSpec(60), beam_window.FixedWindows(60), False),
        (SlidingWindowSpec(600, 60), beam_window.SlidingWindows(600, 60), False),
        (SessionWindowSpec(300), beam_window.Sessions(300), True),
        (CalendarWindowSpec("day", "UTC"), CalendarWindows("day", "UTC"), False),
    ],
)
def test_window_fn_and_merging_match_beam(spec, window_fn, merging):
    """Each spec builds the equivalent Beam WindowFn and reports whether it merges."""
    built = spec.window_fn()
    assert built == window_fn
    assert spec.merging is merging
    assert built.is_merging() is merging


def test_specs_accept_timedeltas_and_normalise_to_seconds():
    """Durations may be timedeltas or strings; fields hold float seconds."""
    assert FixedWindowSpec(dt.timedelta(minutes=1)).size == 60.0
    assert SlidingWindowSpec("1h", dt.timedelta(minutes=15)) == SlidingWindowSpec(3600, 900)
    assert SessionWindowSpec("1d").gap == 86400.0


def test_calendar_spec_builds_its_week_start():
    """A week spec with a week start builds a CalendarWindows with that week start."""
    fn = parse_window_spec("calendar:week-sunday@Asia/Tokyo").window_fn()
    assert fn == CalendarWindows("week", "Asia/Tokyo", week_start="sunday")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fixed",
        "fixed:",
        "fixed:abc",
        "fixed:-5s",
        "fixed:0s",
        "fixed:10y",
        "sliding:10m",
        "sliding:1m/10m",
        "sliding:10m/0s",
        "session:-1m",
        "session:0",
        "tumbling:1m",
        "calendar:day",
        "calendar:day@Mars/Olympus_Mons",
        "calendar:year@UTC",
        "calendar:day-sunday@UTC",
        "calendar:week-funday@UTC",
    ],
)
def test_invalid_specs_raise_value_error_quoting_the_spec(text):
    """A bad spec names itself and lists the accepted forms."""
    with pytest.raises(ValueError, match=re.escape(f"window spec {text!r}")) as error:
        parse_window_spec(text)
    assert "fixed:<size>" in str(error.value)
    assert "calendar:<day|week|month>@<IANA zone>" in str(error.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sliding:1m/10m", "period='10m' is longer than size='1m'"),
        ("fixed:0s", "must be greater than zero"),
        ("fixed:60", "size='60' has no unit (for seconds write '60s')"),
        ("fixed:-5s", "is not a duration"),
        ("calendar:day@Mars/Olympus_Mons", "'Mars/Olympus_Mons' is not a known IANA time zone"),
        ("tumbling:1m", "unknown window kind 'tumbling'"),
    ],
)
def test_invalid_specs_say_why(text, reason):
    """The error explains what is wrong with the spec, not only that it is wrong."""
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_window_spec(text)


def test_non_string_spec_is_refused_naming_it():
    """A spec that is not a string is refused with its value."""
    with pytest.raises(ValueError, match="window spec 60 is not a string"):
        parse_window_spec(60)


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: FixedWindowSpec(0), "size=0"),
        (lambda: SlidingWindowSpec(60, 120), "period=120"),
        (lambda: SessionWindowSpec(-1), "gap=-1"),
        (lambda: CalendarWindowSpec("day", "UTC", week_start="sunday"), "week_start='sunday'"),
    ],
)
def test_spec_constructors_validate_and_name_the_value(build, named):
    """Constructing a spec directly validates like the parser and names the bad field."""
    with pytest.raises(ValueError, match=re.escape(named)):
        build()


def test_specs_are_frozen():
    """Specs are immutable values (safe as defaults and dict keys)."""
    spec = FixedWindowSpec(60)
    with pytest.raises(AttributeError):
        spec.size = 30
    assert {spec: 1}[FixedWindowSpec("1m")] == 1


def test_session_spec_merges_within_the_gap_and_splits_across_it():
    """session:5m merges elements closer than 5 minutes and starts a new session after a gap."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue(("user", "a"), 0), TimestampedValue(("user", "b"), 240)])
        .add_elements([TimestampedValue(("user", "c"), 500), TimestampedValue(("other", "x"), 100)])
        .advance_watermark_to(700)
        .add_elements([TimestampedValue(("user", "d"), 900)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        sessions = (
            p
            | stream
            | beam.WindowInto(parse_window_spec("session:5m").window_fn())
            | beam.GroupByKey()
            | beam.MapTuple(lambda key, values: (key, sorted(values)))
        )
        assert_that(
            sessions,
            equal_to_per_window(
                {
                    IntervalWindow(0, 800): [("user", ["a", "b", "c"])],
                    IntervalWindow(900, 1200): [("user", ["d"])],
                    IntervalWindow(100, 400): [("other", ["x"])],
                }
            ),
            label="sessions per key",
        )


def test_fixed_and_sliding_specs_window_a_stream():
    """fixed:1m puts an element in one window; sliding:1m/30s in two overlapping ones."""
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements([TimestampedValue("e", 75)])
        .advance_watermark_to_infinity()
    )
    with _streaming() as p:
        events = p | stream
        fixed = events | "Fixed" >> beam.WindowInto(parse_window_spec("fixed:1m").window_fn())
        sliding = events | "Sliding" >> beam.WindowInto(
            parse_window_spec("sliding:1m/30s").window_fn()
        )
        assert_that(
            fixed,
            equal_to_per_window({IntervalWindow(60, 120): ["e"]}),
            label="one fixed window",
        )
        assert_that(
            sliding,
            equal_to_per_window({IntervalWindow(30, 90): ["e"], IntervalWindow(60, 120): ["e"]}),
            label="two sliding windows",
        )
