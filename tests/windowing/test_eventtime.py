"""Tests for event-time extraction and AssignEventTime."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import re

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import TestWindowedValue, assert_that, equal_to
from apache_beam.transforms.window import IntervalWindow
from apache_beam.utils.timestamp import Timestamp

from headwater.core.deadletter import DeadLetter
from headwater.windowing.eventtime import (
    AssignEventTime,
    EventTimeError,
    EventTimeExtractor,
    timestamp_from_millis,
)

T0_MICROS = 1_700_000_000_123_000  # 2023-11-14T22:13:20.123Z


# -- numeric units ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "value", "micros"),
    [
        ("s", 1_700_000_000, 1_700_000_000_000_000),
        ("s", 1_700_000_000.123, T0_MICROS),
        ("s", "1700000000.123", T0_MICROS),
        ("s", " 1.700000000123e9 ", T0_MICROS),
        ("ms", 1_700_000_000_123, T0_MICROS),
        ("ms", 1_700_000_000_123.0, T0_MICROS),
        ("ms", "1700000000123", T0_MICROS),
        ("ms", "1700000000123.4", T0_MICROS + 400),
        ("us", T0_MICROS, T0_MICROS),
        ("us", str(T0_MICROS), T0_MICROS),
        ("us", "2.5", 2),  # below a microsecond: half-to-even
        ("ms", 0, 0),
    ],
)
def test_numeric_units_convert_to_beam_timestamps(unit, value, micros):
    """s/ms/us fields given as int, float or numeric string become the right Timestamp."""
    extractor = EventTimeExtractor(field="ts", unit=unit)
    assert extractor.extract({"ts": value}) == Timestamp(micros=micros)


def test_dotted_field_reads_nested_dicts():
    """A dotted field path reads a value nested in dicts."""
    extractor = EventTimeExtractor(field="meta.clock.ts", unit="ms")
    record = {"meta": {"clock": {"ts": 1_700_000_000_123}}, "ts": 5}
    assert extractor(record) == Timestamp(micros=T0_MICROS)


def test_default_field_is_event_time_in_ms():
    """Without options the extractor reads 'event_time' as epoch milliseconds."""
    assert EventTimeExtractor()({"event_time": 1_500}) == Timestamp(micros=1_500_000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "is not a number"),
        (False, "is not a number"),
        (float("nan"), "is not a finite number"),
        (float("inf"), "is not a finite number"),
        (float("-inf"), "is not a finite number"),
        ("nan", "is not a number"),
        ("inf", "is not a number"),
        ("12abc", "is not a number"),
        ("", "is not a number"),
        ("2024-01-01T00:00:00Z", "is not a number"),
        ([1, 2], "is not a number"),
        ({"ms": 1}, "is not a number"),
        (-1, "is before 1970-01-01"),
        ("-0.5", "is before 1970-01-01"),
        (253_402_300_800_000, "is after 9999-12-31"),
        ("1e999999", "is after 9999-12-31"),
        (2**80, "is after 9999-12-31"),
    ],
)
def test_numeric_unit_rejects_unusable_values(value, reason):
    """Bools, NaN, infinities, non-numbers, ISO strings and out-of-range instants are refused."""
    extractor = EventTimeExtractor(field="ts", unit="ms")
    with pytest.raises(EventTimeError, match=re.escape(reason)) as caught:
        extractor.extract({"ts": value})
    assert "'ts'" in str(caught.value)
    assert caught.value.field == "ts"


def test_last_representable_instant_is_accepted_in_every_numeric_unit():
    """9999-12-31T23:59:59.999999Z is the last event time accepted."""
    last = 253_402_300_799_999_999
    assert EventTimeExtractor(unit="us")({"event_time": last}) == Timestamp(micros=last)
    assert EventTimeExtractor(unit="s")({"event_time": 253_402_300_799}).micros < last
    with pytest.raises(EventTimeError, match="after 9999"):
        EventTimeExtractor(unit="us")({"event_time": last + 1})
    with pytest.raises(EventTimeError, match="after 9999"):
        EventTimeExtractor(unit="s")({"event_time": 253_402_300_800})


# -- ISO-8601 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("2023-11-14T22:13:20.123Z", T0_MICROS),
        ("2023-11-14T22:13:20.123+00:00", T0_MICROS),
        ("2023-11-14T23:13:20.123+01:00", T0_MICROS),
        ("2023-11-14T17:13:20.123-05:00", T0_MICROS),
        ("2023-11-14 22:13:20.123Z", T0_MICROS),
        ("1970-01-01T00:00:00Z", 0),
        (dt.datetime(2023, 11, 14, 22, 13, 20, 123_000, tzinfo=dt.timezone.utc), T0_MICROS),
    ],
)
def test_iso_unit_accepts_zoned_timestamps(value, micros):
    """ISO-8601 strings with Z or an offset (and aware datetimes) become the right instant."""
    assert EventTimeExtractor(unit="iso")({"event_time": value}) == Timestamp(micros=micros)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2023-11-14T22:13:20", "has no time zone"),
        ("2023-11-14", "has no time zone"),
        (dt.datetime(2023, 11, 14, 22, 13, 20), "has no time zone"),  # noqa: DTZ001
        ("14/11/2023 22:13", "is not an ISO-8601 timestamp"),
        ("yesterday", "is not an ISO-8601 timestamp"),
        (1_700_000_000_123, "is not an ISO-8601 string"),
        ("1969-12-31T23:59:59Z", "is before 1970-01-01"),
        ("9999-12-31T23:59:59-01:00", "is after 9999-12-31"),
    ],
)
def test_iso_unit_rejects_naive_unparsable_and_out_of_range_values(value, reason):
    """Naive, unparsable, numeric and out-of-range values under unit='iso' are refused."""
    with pytest.raises(EventTimeError, match=re.escape(reason)):
        EventTimeExtractor(unit="iso")({"event_time": value})


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({}, "event time field 'meta.ts' is missing"),
        ({"meta": {}}, "event time field 'meta.ts' is missing"),
        ({"meta": {"ts": None}}, "event time field 'meta.ts' is null"),
        ({"meta": [1]}, "'meta' is a list, not a mapping"),
        (b"raw", "the record is a bytes, not a mapping"),
    ],
)
def test_missing_or_unreachable_field_is_an_error_naming_the_path(record, message):
    """A missing, null or unreachable field raises EventTimeError naming the dotted path."""
    with pytest.raises(EventTimeError, match=re.escape(message)):
        EventTimeExtractor(field="meta.ts")(record)


def test_error_names_field_and_value_and_truncates_long_values():
    """The message names the field and the value, cut to a readable length."""
    with pytest.raises(EventTimeError) as caught:
        EventTimeExtractor(field="ts", unit="s")({"ts": "x" * 10_000})
    message = str(caught.value)
    assert message.startswith("event time field 'ts': 'xxxx")
    assert "..." in message
    assert len(message) < 200
    assert isinstance(caught.value, ValueError)


def test_error_survives_pickling():
    """EventTimeError keeps its message and field through pickle (workers ship exceptions)."""
    with pytest.raises(EventTimeError) as caught:
        EventTimeExtractor(field="a.b", unit="us")({"a": {"b": "soon"}})
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 -- our own bytes
    assert (str(copy), copy.field, copy.reason) == (
        str(caught.value),
        "a.b",
        caught.value.reason,
    )


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"unit": "sec"}, "unit='sec'"),
        ({"unit": "ns"}, "unit='ns'"),
        ({"field": ""}, "field=''"),
        ({"field": "meta..ts"}, "field='meta..ts'"),
        ({"field": ".ts"}, "field='.ts'"),
        ({"field": 3}, "field=3"),
    ],
)
def test_invalid_extractor_options_name_the_bad_value(kwargs, named):
    """Each invalid constructor option raises ValueError naming the option and its value."""
    with pytest.raises(ValueError, match=re.escape(named)):
        EventTimeExtractor(**kwargs)


def test_extractor_is_picklable_and_has_a_readable_repr():
    """The extractor survives Beam's pickler and shows its options."""
    extractor = EventTimeExtractor(field="meta.ts", unit="us")
    copy = pickler.loads(pickler.dumps(extractor))
    assert copy == extractor
    assert copy({"meta": {"ts": 7}}) == Timestamp(micros=7)
    assert repr(extractor) == "EventTimeExtractor(field='meta.ts', unit='us')"


def test_timestamp_from_millis_converts_and_checks_range():
    """Kafka-style epoch millis become Timestamps; -1 and non-integers are refused by value."""
    assert timestamp_from_millis(1_700_000_000_123) == Timestamp(micros=T0_MICROS)
    with pytest.raises(EventTimeError, match=r"timestamp_ms': -1 is before 1970"):
        timestamp_from_millis(-1)
    with pytest.raises(EventTimeError, match=r"'timestamp_ms': 1\.5 is not an integer"):
        timestamp_from_millis(1.5)  # type: ignore[arg-type]
    with pytest.raises(EventTimeError, match="True is not an integer"):
        timestamp_from_millis(True)


# -- AssignEventTime -------------------------------------------------------------------------


def test_assign_event_time_restamps_records_and_windows_follow():
    """Main output holds the unchanged dicts stamped with their event time."""
    records = [
        {"id": "a", "ts": "2023-11-14T22:13:21Z"},
        {"id": "b", "ts": "2023-11-14T22:13:35.5+00:00"},
        {"id": "c", "ts": "2023-11-14T23:13:29+01:00"},
    ]
    base = 1_700_000_000

    def expected(record, seconds):
        start = base + (seconds // 10) * 10
        return TestWindowedValue(
            record, Timestamp(base + seconds), [IntervalWindow(start, start + 10)]
        )

    with TestPipeline(runner="FnApiRunner") as p:
        routed = (
            p | beam.Create(records) | AssignEventTime(EventTimeExtractor(field="ts", unit="iso"))
        )
        windowed = routed.main | beam.WindowInto(beam.window.FixedWindows(10))
        assert_that(
            windowed,
            equal_to(
                [
                    expected(records[0], 1),
                    expected(records[1], 15.5),
                    expected(records[2], 9),
                ]
            ),
            reify_windows=True,
            label="CheckStamped",
        )
        assert_that(routed.dead_letter, equal_to([]), label="CheckNoDeadLetters")


def _summary(letter: DeadLetter) -> tuple[str, str, str, dict]:
    return (letter.stage, letter.error_type, letter.error_message, json.loads(letter.payload))


def test_records_without_usable_event_time_become_dead_letters():
    """Missing and bad event times go to dead_letter with stage event_time; the rest go on."""
    good = {"id": 1, "meta": {"ts": 1_700_000_000_123}}
    missing = {"id": 2, "meta": {}}
    bad = {"id": 3, "meta": {"ts": "later"}}
    with TestPipeline(runner="FnApiRunner") as p:
        routed = (
            p
            | beam.Create([good, missing, bad])
            | AssignEventTime(EventTimeExtractor(field="meta.ts", unit="ms"))
        )
        assert_that(
            routed.main | beam.Map(lambda r, t=beam.DoFn.TimestampParam: (r["id"], t.micros)),
            equal_to([(1, T0_MICROS)]),
            label="CheckMain",
        )
        assert_that(
            routed.dead_letter | beam.Map(_summary),
            equal_to(
                [
                    (
                        "event_time",
                        "EventTimeError",
                        "event time field 'meta.ts' is missing",
                        missing,
                    ),
                    (
                        "event_time",
                        "EventTimeError",
                        "event time field 'meta.ts': 'later' is not a number of ms since "
                        "1970-01-01T00:00:00Z",
                        bad,
                    ),
                ]
            ),
            label="CheckDeadLetters",
        )


def _seconds_field(record):
    return Timestamp(record["at"])


def test_assign_event_time_accepts_any_callable_and_dead_letters_its_failures():
    """A custom callable extractor stamps records; its exceptions become dead letters."""
    with TestPipeline(runner="FnApiRunner") as p:
        routed = p | beam.Create([{"at": 42}, {"when": 1}]) | AssignEventTime(_seconds_field)
        assert_that(
            routed.main | beam.Map(lambda r, t=beam.DoFn.TimestampParam: (r["at"], t)),
            equal_to([(42, Timestamp(42))]),
            label="CheckMain",
        )
        assert_that(
            routed.dead_letter | beam.Map(lambda d: (d.stage, d.error_type)),
            equal_to([("event_time", "KeyError")]),
            label="CheckDeadLetters",
        )


def test_assign_event_time_rejects_a_non_callable_extractor():
    """A non-callable extractor raises ValueError naming it."""
    with pytest.raises(ValueError, match=re.escape("extractor='meta.ts'")):
        AssignEventTime("meta.ts")  # type: ignore[arg-type]
