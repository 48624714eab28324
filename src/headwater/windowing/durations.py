"""Durations and instants as headwater options accept them.

A duration is given as seconds (``int``/``float``), a :class:`datetime.timedelta`, or a compact
string with a unit: ``500ms``, ``60s``, ``10m``, ``1h``, ``1d``. A string without a unit
(``"60"``, as in ``--dedup_horizon=10`` or ``fixed:60``) is refused, not guessed: on the command
line it is as likely to mean minutes or milliseconds as seconds.
Instants are timezone-aware :class:`datetime.datetime` values; naive datetimes are refused
because their meaning depends on the machine that runs the pipeline.
"""

from __future__ import annotations

import datetime as dt
import re

from apache_beam.utils.timestamp import Duration, Timestamp

__all__ = [
    "parse_duration",
    "to_beam_duration",
    "to_beam_timestamp",
    "format_duration",
    "ACCEPTED_FORMS",
]

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d)\s*$")
_BARE_NUMBER_RE = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")
ACCEPTED_FORMS = "a number with a unit (us, ms, s, m, h, d), e.g. '500ms', '60s', '10m', '1h', '1d'"

DurationLike = int | float | str | dt.timedelta


def parse_duration(
    value: DurationLike, *, name: str = "duration", allow_zero: bool = True
) -> float:
    """Returns ``value`` in seconds; raises ``ValueError`` naming ``name`` and the bad value.

    >>> parse_duration("10m")
    600.0
    >>> parse_duration(dt.timedelta(milliseconds=500))
    0.5
    """
    if isinstance(value, bool):
        raise ValueError(
            f"{name}={value!r} is not a duration; expected seconds, a timedelta or e.g. '60s'"
        )
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if not match:
            if _BARE_NUMBER_RE.match(value):
                raise ValueError(
                    f"{name}={value!r} has no unit (for seconds write '{value.strip()}s'); "
                    f"expected {ACCEPTED_FORMS}"
                )
            raise ValueError(f"{name}={value!r} is not a duration; expected {ACCEPTED_FORMS}")
        seconds = float(match.group(1)) * _UNITS_S[match.group(2)]
    else:
        raise ValueError(
            f"{name}={value!r} is not a duration; expected seconds, a timedelta or e.g. '60s'"
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{name}={value!r} must be a finite duration")
    if seconds < 0:
        raise ValueError(f"{name}={value!r} must not be negative")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{name}={value!r} must be greater than zero")
    return seconds


def to_beam_duration(
    value: DurationLike, *, name: str = "duration", allow_zero: bool = True
) -> Duration:
    """Like :func:`parse_duration`, as a Beam :class:`~apache_beam.utils.timestamp.Duration`."""
    seconds = parse_duration(value, name=name, allow_zero=allow_zero)
    return Duration(micros=round(seconds * 1_000_000))


def to_beam_timestamp(value: dt.datetime, *, name: str = "timestamp") -> Timestamp:
    """A timezone-aware datetime as a Beam timestamp; naive datetimes raise ``ValueError``."""
    if not isinstance(value, dt.datetime):
        raise ValueError(f"{name}={value!r} is not a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value!r} is a naive datetime; give it a timezone (e.g. UTC)")
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Timestamp(micros=micros)


def format_duration(seconds: float) -> str:
    """The compact form of a duration, the inverse of :func:`parse_duration` (``600 -> '10m'``)."""
    micros = round(seconds * 1_000_000)
    for unit, size in (
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ):
        if micros and micros % size == 0:
            return f"{micros // size}{unit}"
    return f"{micros}us"
