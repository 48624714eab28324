"""Durations and instants as options accept them."""

from __future__ import annotations

import datetime as dt

import pytest
from apache_beam.utils.timestamp import Duration, Timestamp

from headwater.windowing.durations import (
    format_duration,
    parse_duration,
    to_beam_duration,
    to_beam_timestamp,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("60s", 60.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        (2, 2.0),
        (1.5, 1.5),
        (dt.timedelta(minutes=2), 120.0),
        ("250us", 0.00025),
    ],
)
def test_parse_duration_accepts_every_form(value, seconds):
    """Seconds, timedeltas and unit strings all parse to seconds."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["-1s", -3, "ten", "5 weeks", "", None, True, float("nan")])
def test_parse_duration_rejects_bad_values_naming_them(value):
    """A bad duration raises ValueError naming the option and the value."""
    with pytest.raises(ValueError, match=r"horizon="):
        parse_duration(value, name="horizon")


@pytest.mark.parametrize("value", ["10", "60", " 1.5 ", "0"])
def test_a_string_without_a_unit_is_refused_showing_the_accepted_forms(value):
    """'10' could mean seconds, minutes or milliseconds: refused, naming the forms accepted."""
    with pytest.raises(ValueError, match=r"horizon=.* has no unit .*'60s'.*'10m'") as caught:
        parse_duration(value, name="horizon")
    assert f"'{value.strip()}s'" in str(caught.value)


def test_bare_numbers_in_python_are_seconds():
    """In Python, an int or float is seconds (only strings must carry a unit)."""
    assert parse_duration(15) == 15.0
    assert parse_duration(0.25) == 0.25


def test_zero_is_refused_when_not_allowed():
    """allow_zero=False refuses 0 with a message that says so."""
    with pytest.raises(ValueError, match="greater than zero"):
        parse_duration("0s", name="gap", allow_zero=False)


def test_beam_conversions():
    """Durations and aware datetimes convert exactly to Beam types; naive ones are refused."""
    assert to_beam_duration("1500ms") == Duration(micros=1_500_000)
    aware = dt.datetime(2024, 3, 31, 1, 0, tzinfo=dt.timezone.utc)
    assert to_beam_timestamp(aware) == Timestamp(1_711_846_800)
    with pytest.raises(ValueError, match="naive"):
        to_beam_timestamp(dt.datetime(2024, 3, 31))  # noqa: DTZ001 - the point of the test


@pytest.mark.parametrize("text", ["500ms", "1m", "10m", "1h", "1d", "90s"])
def test_format_duration_round_trips(text):
    """format_duration is the inverse of parse_duration for canonical strings."""
    assert format_duration(parse_duration(text)) == text
