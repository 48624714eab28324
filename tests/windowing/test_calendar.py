"""Calendar windows: local days, weeks and months in IANA zones, DST-correct, on real runners."""

from __future__ import annotations

import datetime as dt
import pickle
import re
import zoneinfo

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners import pipeline_context
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow, TimestampedValue, WindowFn
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.windowing.windows import CalendarWindows

HOUR_MICROS = 3_600_000_000


def _ts(rfc3339: str) -> Timestamp:
    return Timestamp.from_rfc3339(rfc3339)


def _window(start: str, end: str) -> IntervalWindow:
    return IntervalWindow(_ts(start), _ts(end))


def _assign(fn: CalendarWindows, instant: Timestamp) -> IntervalWindow:
    [window] = fn.assign(WindowFn.AssignContext(instant))
    return window


def _streaming() -> TestPipeline:
    return TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))


def _stream_of(instants: list[str]) -> TestStream:
    stream = TestStream().advance_watermark_to(_ts(instants[0]) - 1)
    stream = stream.add_elements([TimestampedValue(("k", at), _ts(at)) for at in instants])
    return stream.advance_watermark_to_infinity()


class _DescribeWindow(beam.DoFn):
    """(local start date in the zone, window length in hours, grouped values) per window."""

    def __init__(self, zone: str):
        self._zone = zone

    def process(self, element, window=beam.DoFn.WindowParam):
        _, values = element
        start = dt.datetime.fromtimestamp(float(window.start), zoneinfo.ZoneInfo(self._zone))
        hours = (window.end - window.start).micros / HOUR_MICROS
        yield start.isoformat(), hours, tuple(sorted(values))


DST_DAYS = [
    pytest.param(
        "Europe/Berlin",
        # local 2024-03-30 23:30 CET, 03-31 01:30 CET, 03-31 03:30 CEST, 03-31 23:59:59, 04-01 00:00
        [
            "2024-03-30T22:30:00Z",
            "2024-03-31T00:30:00Z",
            "2024-03-31T01:30:00Z",
            "2024-03-31T21:59:59Z",
            "2024-03-31T22:00:00Z",
        ],
        {
            ("2024-03-30T00:00:00+01:00", 24.0): ("2024-03-30T22:30:00Z",),
            ("2024-03-31T00:00:00+01:00", 23.0): (
                "2024-03-31T00:30:00Z",
                "2024-03-31T01:30:00Z",
                "2024-03-31T21:59:59Z",
            ),
            ("2024-04-01T00:00:00+02:00", 24.0): ("2024-03-31T22:00:00Z",),
        },
        id="berlin-spring-forward-23h",
    ),
    pytest.param(
        "Europe/Berlin",
        # local 02:30 CEST and 02:30 CET (the repeated hour) both belong to 2024-10-27
        [
            "2024-10-26T21:59:59Z",
            "2024-10-26T22:00:00Z",
            "2024-10-27T00:30:00Z",
            "2024-10-27T01:30:00Z",
            "2024-10-27T22:59:59Z",
            "2024-10-27T23:00:00Z",
        ],
        {
            ("2024-10-26T00:00:00+02:00", 24.0): ("2024-10-26T21:59:59Z",),
            ("2024-10-27T00:00:00+02:00", 25.0): (
                "2024-10-26T22:00:00Z",
                "2024-10-27T00:30:00Z",
                "2024-10-27T01:30:00Z",
                "2024-10-27T22:59:59Z",
            ),
            ("2024-10-28T00:00:00+01:00", 24.0): ("2024-10-27T23:00:00Z",),
        },
        id="berlin-fall-back-25h",
    ),
    pytest.param(
        "America/New_York",
        # local 2024-03-10 01:30 EST and 03:30 EDT
        ["2024-03-10T04:59:59Z", "2024-03-10T06:30:00Z", "2024-03-10T07:30:00Z"],
        {
            ("2024-03-09T00:00:00-05:00", 24.0): ("2024-03-10T04:59:59Z",),
            ("2024-03-10T00:00:00-05:00", 23.0): ("2024-03-10T06:30:00Z", "2024-03-10T07:30:00Z"),
        },
        id="new-york-spring-forward-23h",
    ),
    pytest.param(
        "America/New_York",
        # local 01:30 EDT and 01:30 EST on 2024-11-03, then the next local midnight
        ["2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z", "2024-11-04T05:00:00Z"],
        {
            ("2024-11-03T00:00:00-04:00", 25.0): ("2024-11-03T05:30:00Z", "2024-11-03T06:30:00Z"),
            ("2024-11-04T00:00:00-05:00", 24.0): ("2024-11-04T05:00:00Z",),
        },
        id="new-york-fall-back-25h",
    ),
]


@pytest.mark.parametrize(("zone", "instants", "expected"), DST_DAYS)
def test_calendar_days_follow_dst_changes_on_streaming_runner(zone, instants, expected):
    """Days across a DST change are 23 h / 25 h windows starting at local midnight."""
    with _streaming() as p:
        grouped = (
            p
            | _stream_of(instants)
            | beam.WindowInto(CalendarWindows("day", zone))
            | beam.GroupByKey()
        )
        described = grouped | beam.ParDo(_DescribeWindow(zone))
        assert_that(
            described,
            equal_to([(start, hours, values) for (start, hours), values in expected.items()]),
            label="windows are local days of the right length",
        )


def test_calendar_day_windows_hold_elements_on_both_sides_of_the_berlin_change():
    """Elements before and after the 02:00 -> 03:00 jump share the 23 h day window."""
    instants = ["2024-03-30T22:59:59Z", "2024-03-30T23:00:00Z", "2024-03-31T01:00:00Z"]
    with _streaming() as p:
        windowed = (
            p
            | _stream_of(instants)
            | beam.WindowInto(CalendarWindows("day", "Europe/Berlin"))
            | beam.Values()
        )
        assert_that(
            windowed,
            equal_to_per_window(
                {
                    _window("2024-03-29T23:00:00Z", "2024-03-30T23:00:00Z"): [
                        "2024-03-30T22:59:59Z"
                    ],
                    _window("2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"): [
                        "2024-03-30T23:00:00Z",
                        "2024-03-31T01:00:00Z",
                    ],
                }
            ),
            label="per-window contents",
        )


def test_calendar_months_have_28_to_31_days():
    """Month windows are as long as the month: 28, 29 (leap February), 30 and 31 days."""
    instants = [
        "2023-02-01T00:00:00Z",
        "2023-02-28T23:59:59Z",
        "2024-02-29T12:00:00Z",
        "2024-04-30T23:59:59Z",
        "2024-01-01T00:00:00Z",
    ]
    with _streaming() as p:
        described = (
            p
            | _stream_of(sorted(instants))
            | beam.WindowInto(CalendarWindows("month", "UTC"))
            | beam.GroupByKey()
            | beam.ParDo(_DescribeWindow("UTC"))
            | beam.MapTuple(lambda start, hours, values: (start[:10], hours / 24, len(values)))
        )
        assert_that(
            described,
            equal_to(
                [
                    ("2023-02-01", 28.0, 2),
                    ("2024-01-01", 31.0, 1),
                    ("2024-02-01", 29.0, 1),
                    ("2024-04-01", 30.0, 1),
                ]
            ),
            label="month lengths in days",
        )


@pytest.mark.parametrize(
    ("zone", "instant", "start", "end"),
    [
        ("Europe/Berlin", "2024-03-15T12:00:00Z", "2024-02-29T23:00:00Z", "2024-03-31T22:00:00Z"),
        ("Europe/Berlin", "2024-10-31T22:59:59Z", "2024-09-30T22:00:00Z", "2024-10-31T23:00:00Z"),
        (
            "America/New_York",
            "2024-11-30T12:00:00Z",
            "2024-11-01T04:00:00Z",
            "2024-12-01T05:00:00Z",
        ),
        ("UTC", "2024-12-31T23:59:59Z", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"),
    ],
)
def test_calendar_month_spans_local_month_across_dst(zone, instant, start, end):
    """A local month containing a DST change is 1 h shorter or longer than its days."""
    fn = CalendarWindows("month", zone)
    assert _assign(fn, _ts(instant)) == _window(start, end)


def test_calendar_weeks_are_iso_weeks_in_the_zone():
    """Weeks start on local Monday; the Berlin week with the spring change lasts 167 h."""
    instants = ["2024-03-24T22:59:59Z", "2024-03-24T23:00:00Z", "2024-03-31T21:59:59Z"]
    with _streaming() as p:
        described = (
            p
            | _stream_of(instants)
            | beam.WindowInto(CalendarWindows("week", "Europe/Berlin"))
            | beam.GroupByKey()
            | beam.ParDo(_DescribeWindow("Europe/Berlin"))
        )
        assert_that(
            described,
            equal_to(
                [
                    ("2024-03-18T00:00:00+01:00", 168.0, ("2024-03-24T22:59:59Z",)),
                    (
                        "2024-03-25T00:00:00+01:00",
                        167.0,
                        ("2024-03-24T23:00:00Z", "2024-03-31T21:59:59Z"),
                    ),
                ]
            ),
            label="ISO weeks in Berlin",
        )


@pytest.mark.parametrize(
    ("week_start", "start", "end"),
    [
        ("monday", "2024-03-25T00:00:00Z", "2024-04-01T00:00:00Z"),
        ("sunday", "2024-03-31T00:00:00Z", "2024-04-07T00:00:00Z"),
        ("saturday", "2024-03-30T00:00:00Z", "2024-04-06T00:00:00Z"),
    ],
)
def test_week_start_moves_the_week_boundary(week_start, start, end):
    """A Sunday belongs to the week that starts on the configured weekday."""
    fn = CalendarWindows("week", "UTC", week_start=week_start)
    assert _assign(fn, _ts("2024-03-31T12:00:00Z")) == _window(start, end)


def test_day_without_local_midnight_starts_at_the_transition():
    """Havana skips 00:00-01:00 on 2024-03-10: the day starts at 01:00 CDT and lasts 23 h."""
    fn = CalendarWindows("day", "America/Havana")
    day = _window("2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z")
    assert _assign(fn, _ts("2024-03-10T05:00:00Z")) == day
    assert _assign(fn, _ts("2024-03-11T03:59:59Z")) == day
    assert _assign(fn, _ts("2024-03-10T04:59:59Z")) == _window(
        "2024-03-09T05:00:00Z", "2024-03-10T05:00:00Z"
    )


def test_day_with_two_local_midnights_starts_at_the_first():
    """Havana repeats 00:00-01:00 on 2024-11-03: the day starts at the first midnight (25 h)."""
    fn = CalendarWindows("day", "America/Havana")
    day = _window("2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z")
    assert _assign(fn, _ts("2024-11-03T04:00:00Z")) == day
    assert _assign(fn, _ts("2024-11-03T05:30:00Z")) == day
    assert _assign(fn, _ts("2024-11-03T03:59:59Z")).end == day.start


def test_midnight_inside_a_gap_starts_the_day_at_the_transition():
    """Toronto jumped 23:30 -> 00:30 on 1919-03-31: that day starts at the jump, 23.5 h long."""
    fn = CalendarWindows("day", "America/Toronto")
    day = _window("1919-03-31T04:30:00Z", "1919-04-01T04:00:00Z")
    assert _assign(fn, _ts("1919-03-31T04:30:00Z")) == day
    assert _assign(fn, _ts("1919-03-31T04:45:00Z")) == day
    assert _assign(fn, _ts("1919-03-31T04:29:59Z")).end == day.start


def test_fall_back_across_midnight_keeps_windows_a_partition():
    """Goose Bay fell back 00:01 -> 23:01 on 1987-10-25: the repeated evening joins the new day."""
    fn = CalendarWindows("day", "America/Goose_Bay")
    day = _window("1987-10-25T03:00:00Z", "1987-10-26T04:00:00Z")
    assert _assign(fn, _ts("1987-10-25T03:00:00Z")) == day  # 00:00 ADT, the first midnight
    assert _assign(fn, _ts("1987-10-25T03:30:00Z")) == day  # 23:30 AST of the 24th, again
    assert _assign(fn, _ts("1987-10-25T04:00:00Z")) == day  # 00:00 AST, the second midnight
    assert _assign(fn, _ts("1987-10-25T02:59:59Z")).end == day.start


def test_skipped_local_date_gets_no_window():
    """Samoa skipped 2011-12-30: the days before and after it are adjacent windows."""
    fn = CalendarWindows("day", "Pacific/Apia")
    before = _assign(fn, _ts("2011-12-30T09:59:59Z"))
    after = _assign(fn, _ts("2011-12-30T10:00:00Z"))
    assert before == _window("2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z")
    assert after == _window("2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z")


_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "America/Scoresbysund",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Apia",
    "Africa/Casablanca",
    "America/Toronto",
    "America/Goose_Bay",
]


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(_ZONES),
    unit=st.sampled_from(["day", "week", "month"]),
    micros=st.integers(
        min_value=-2_208_988_800 * 1_000_000,  # 1900-01-01
        max_value=4_102_444_800 * 1_000_000,  # 2100-01-01
    ),
)
def test_calendar_windows_partition_time(zone, unit, micros):
    """Every instant lies in exactly one window, and consecutive windows touch."""
    fn = CalendarWindows(unit, zone)
    instant = Timestamp(micros=micros)
    window = _assign(fn, instant)
    assert window.start <= instant < window.end
    assert _assign(fn, window.end).start == window.end
    assert _assign(fn, window.start) == window
    assert _assign(fn, Timestamp(micros=window.end.micros - 1)) == window


@settings(max_examples=200, deadline=None)
@given(day=st.dates(min_value=dt.date(1981, 1, 1), max_value=dt.date(2099, 12, 31)))
def test_berlin_days_start_at_local_midnight(day):
    """Where local midnight always exists, a day window is [midnight, next midnight)."""
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    start = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    noon = dt.datetime.combine(day, dt.time(12), tzinfo=zone)
    window = _assign(CalendarWindows("day", "Europe/Berlin"), Timestamp.of(noon.timestamp()))
    assert window == IntervalWindow(Timestamp.of(start.timestamp()), Timestamp.of(end.timestamp()))


def test_calendar_windows_run_on_fn_api_runner_in_batch():
    """The pickled WindowFn works on the portable FnApiRunner: local days group correctly."""
    instants = ["2024-10-26T21:59:59Z", "2024-10-27T00:30:00Z", "2024-10-27T01:30:00Z"]
    with TestPipeline(runner="FnApiRunner") as p:
        described = (
            p
            | beam.Create([("k", at) for at in instants])
            | beam.Map(lambda kv: TimestampedValue(kv, _ts(kv[1])))
            | beam.WindowInto(CalendarWindows("day", "Europe/Berlin"))
            | beam.GroupByKey()
            | beam.ParDo(_DescribeWindow("Europe/Berlin"))
        )
        assert_that(
            described,
            equal_to(
                [
                    ("2024-10-26T00:00:00+02:00", 24.0, ("2024-10-26T21:59:59Z",)),
                    (
                        "2024-10-27T00:00:00+02:00",
                        25.0,
                        ("2024-10-27T00:30:00Z", "2024-10-27T01:30:00Z"),
                    ),
                ]
            ),
            label="batch grouping by local day",
        )


def test_calendar_windows_round_trip_through_the_runner_api():
    """to_runner_api / from_runner_api (Beam's pickled WindowFn URN) keep the fn equal."""
    fn = CalendarWindows("week", "America/New_York", week_start="sunday")
    context = pipeline_context.PipelineContext()
    proto = fn.to_runner_api(context)
    assert proto.urn == "beam:window_fn:pickled_python:v1"
    restored = WindowFn.from_runner_api(proto, context)
    assert restored == fn
    assert _assign(restored, _ts("2024-11-03T12:00:00Z")) == _assign(
        fn, _ts("2024-11-03T12:00:00Z")
    )
    assert pickle.loads(pickle.dumps(fn)) == fn  # noqa: S301 -- our own bytes


def test_equality_hash_and_repr_follow_the_parameters():
    """Equal parameters make equal, hash-equal fns; any difference makes them unequal."""
    fn = CalendarWindows("day", "Europe/Berlin")
    assert fn == CalendarWindows("day", zoneinfo.ZoneInfo("Europe/Berlin"))
    assert hash(fn) == hash(CalendarWindows("day", "Europe/Berlin"))
    assert fn != CalendarWindows("day", "Europe/Paris")
    assert fn != CalendarWindows("week", "Europe/Berlin")
    assert CalendarWindows("week", "UTC") != CalendarWindows("week", "UTC", week_start="sunday")
    assert repr(fn) == "CalendarWindows('day', 'Europe/Berlin')"
    assert CalendarWindows("day", dt.timezone.utc) == CalendarWindows("day", "UTC")
    assert not fn.is_merging()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"unit": "year", "timezone": "UTC"}, "'year'"),
        ({"unit": "hour", "timezone": "UTC"}, "'hour'"),
        ({"unit": "day", "timezone": "Mars/Olympus_Mons"}, "'Mars/Olympus_Mons'"),
        ({"unit": "day", "timezone": ""}, "timezone=''"),
        ({"unit": "day", "timezone": None}, "timezone=None"),
        ({"unit": "day", "timezone": "localtime"}, "'localtime'"),
        (
            {"unit": "day", "timezone": dt.timezone(dt.timedelta(hours=2))},
            "timedelta(seconds=7200)",
        ),
        ({"unit": "week", "timezone": "UTC", "week_start": "funday"}, "'funday'"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs, named):
    """A bad unit, unknown or non-IANA zone, or bad week start names the offending value."""
    with pytest.raises(ValueError, match=re.escape(named)):
        CalendarWindows(**kwargs)


def test_timestamp_outside_the_calendar_range_is_refused_with_its_value():
    """An element without an event timestamp (MIN_TIMESTAMP) fails loudly, naming it."""
    fn = CalendarWindows("day", "UTC")
    with pytest.raises(ValueError, match=re.escape(str(MIN_TIMESTAMP))):
        fn.assign(WindowFn.AssignContext(MIN_TIMESTAMP))
