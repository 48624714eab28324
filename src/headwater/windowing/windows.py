"""Window specs and calendar windows.

Input: any timestamped ``PCollection`` (bounded or unbounded). Output: the same elements, each
assigned to windows; nothing is dropped or reordered here. What happens to late data is decided
where the windows are consumed (the GroupByKey's allowed lateness and the trigger, see
:mod:`headwater.windowing.triggers`), not here.

Two things live in this module:

* :class:`CalendarWindows`, a Beam ``WindowFn`` for local calendar days, weeks and months in an
  IANA time zone. Beam's Python SDK has none: ``FixedWindows(86400)`` gives UTC days, which are
  wrong for a Berlin or New York business day, and a fixed size cannot describe a 23 h or 25 h
  day across a DST change or months of 28 to 31 days.
* Window specs, the ``--window`` syntax of the CLI and the pipelines, parsed by
  :func:`parse_window_spec` into small frozen dataclasses that build the Beam ``WindowFn``::

      fixed:60s                        FixedWindowSpec(size=60.0)
      sliding:10m/1m                   SlidingWindowSpec(size=600.0, period=60.0)
      session:5m                       SessionWindowSpec(gap=300.0)
      calendar:day@Europe/Berlin       CalendarWindowSpec("day", "Europe/Berlin")
      calendar:week@UTC                ISO weeks, starting on Monday
      calendar:week-sunday@UTC         weeks starting on Sunday
      calendar:month@America/New_York

  ``str(spec)`` is the canonical spec string and parses back to an equal spec.

Calendar window boundaries
--------------------------
The window of local date ``D`` (or of the week or month that starts on ``D``) is
``[B(D), B(next))``, where ``B(D)`` is the first instant at which the wall clock of the zone shows
date ``D`` or later. Where local midnight exists once, ``B(D)`` is that midnight. Where it does
not exist (a DST gap at midnight, e.g. America/Havana on 2024-03-10, whose day starts at 01:00),
``B(D)`` is the instant of the transition, the first instant of that date. Where midnight happens
twice (a fall-back to midnight, e.g. America/Havana on 2024-11-03), ``B(D)`` is the first of the
two. Where midnight falls inside a gap that starts before it (America/Toronto, 1919-03-31,
23:30 -> 00:30), ``B(D)`` is the transition instant, shown as 00:30. Windows are therefore
contiguous and never overlap: every instant belongs to exactly one window, the one whose
``[start, end)`` contains it, and a date the zone skipped entirely (Pacific/Apia, 2011-12-30)
simply gets no window. In the rare fall-back that crosses midnight (America/Goose_Bay,
1987-10-25, 00:01 -> 23:01) the repeated hour of the previous evening lies after ``B(D)`` and so
belongs to the new day's window.

Calendar windows support instants whose local date lies between the years 1 and 9999 (the range
of :mod:`datetime`); assigning an element outside it -- typically one that never got an event
timestamp, such as ``beam.Create`` output at ``MIN_TIMESTAMP`` -- raises ``ValueError``.

Time zone data comes from :mod:`zoneinfo` (the system's tz database, or the ``tzdata`` package
where the system has none), so workers must have it installed.

Portability: ``CalendarWindows`` travels through the runner API as Beam's pickled-Python
``WindowFn`` URN (what Beam does for every user ``WindowFn``); window assignment runs in the
Python SDK harness, and windows are encoded with the standard ``IntervalWindowCoder``, so any
runner (FnApiRunner, the DirectRunner, Dataflow, Flink) can group by them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import zoneinfo
from typing import ClassVar

from apache_beam.coders.coders import IntervalWindowCoder
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from headwater.windowing.durations import format_duration, parse_duration, to_beam_duration
from headwater.windowing.rules import CALENDAR_UNITS, WEEKDAYS, calendar_window

__all__ = [
    "CALENDAR_UNITS",
    "WEEKDAYS",
    "CalendarWindowSpec",
    "CalendarWindows",
    "FixedWindowSpec",
    "SessionWindowSpec",
    "SlidingWindowSpec",
    "WindowSpec",
    "parse_window_spec",
]


def _zone_key(timezone: object) -> str:
    """The IANA key of ``timezone`` (a key string or a ``ZoneInfo``); ``ValueError`` otherwise."""
    if timezone is dt.timezone.utc:
        return "UTC"
    if isinstance(timezone, zoneinfo.ZoneInfo):
        if timezone.key is None:
            raise ValueError(
                f"timezone={timezone!r} has no IANA key (built from a file); "
                "give the zone's name, e.g. 'Europe/Berlin'"
            )
        key = timezone.key
    elif isinstance(timezone, str):
        key = timezone.strip()
    else:
        raise ValueError(
            f"timezone={timezone!r} is not an IANA time zone; give a zone name such as "
            "'Europe/Berlin', 'America/New_York' or 'UTC' (fixed offsets and naive or "
            "machine-local zones are not accepted)"
        )
    if not key or key.lower() == "localtime":
        raise ValueError(
            f"timezone={timezone!r} is not an IANA time zone; give a zone name such as "
            "'Europe/Berlin' (the machine's local zone differs between workers)"
        )
    try:
        zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ValueError(
            f"timezone={timezone!r} is not a known IANA time zone "
            "(e.g. 'Europe/Berlin', 'America/New_York', 'UTC')"
        ) from error
    return key


class CalendarWindows(beam_window.NonMergingWindowFn):
    """Assigns each element to its local calendar day, week or month in an IANA time zone.

    Windows are ``IntervalWindow(start, end)`` with ``start``/``end`` the UTC instants of the local
    boundaries (see the module docstring for days without a local midnight), so a Berlin day is
    23 h long on 2024-03-31 and 25 h long on 2024-10-27, and a month is 28 to 31 days long.

    Args:
      unit: ``"day"``, ``"week"`` or ``"month"``.
      timezone: an IANA zone name (``"Europe/Berlin"``, ``"UTC"``) or a ``zoneinfo.ZoneInfo``.
      week_start: the first day of a week, ``"monday"`` (ISO weeks, the default) .. ``"sunday"``;
        only meaningful for ``unit="week"``.

    >>> from apache_beam.utils.timestamp import Timestamp
    >>> fn = CalendarWindows("day", "Europe/Berlin")
    >>> [w] = fn.assign(fn.AssignContext(Timestamp.from_rfc3339("2024-03-31T12:00:00Z")))
    >>> w.start.to_rfc3339(), (w.end - w.start).micros // 3_600_000_000
    ('2024-03-30T23:00:00Z', 23)
    """

    def __init__(self, unit: str, timezone: str | zoneinfo.ZoneInfo, *, week_start: str = "monday"):
        if not isinstance(unit, str) or unit.strip().lower() not in CALENDAR_UNITS:
            raise ValueError(
                f"unit={unit!r} is not a calendar unit; expected one of {CALENDAR_UNITS}"
            )
        if not isinstance(week_start, str) or week_start.strip().lower() not in WEEKDAYS:
            raise ValueError(
                f"week_start={week_start!r} is not a weekday; expected one of {WEEKDAYS}"
            )
        self.unit = unit.strip().lower()
        self.timezone = _zone_key(timezone)
        self.week_start = week_start.strip().lower()
        self._zone = zoneinfo.ZoneInfo(self.timezone)
        self._week_start_index = WEEKDAYS.index(self.week_start)

    def assign(
        self, context: beam_window.WindowFn.AssignContext
    ) -> list[beam_window.IntervalWindow]:
        micros = Timestamp.of(context.timestamp).micros
        try:
            start, end = calendar_window(micros, self.unit, self.timezone, self._week_start_index)
        except ValueError as error:
            raise ValueError(
                f"timestamp {Timestamp(micros=micros)} has no calendar {self.unit} in "
                f"{self.timezone}: calendar windows cover the years 1..9999 only; give elements "
                "their event timestamps before windowing"
            ) from error
        return [beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))]

    def get_window_coder(self) -> IntervalWindowCoder:
        return IntervalWindowCoder()

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, CalendarWindows)
            and (self.unit, self.timezone, self.week_start)
            == (other.unit, other.timezone, other.week_start)
        )

    def __hash__(self) -> int:
        return hash((type(self), self.unit, self.timezone, self.week_start))

    def __repr__(self) -> str:
        extra = "" if self.week_start == "monday" else f", week_start={self.week_start!r}"
        return f"CalendarWindows({self.unit!r}, {self.timezone!r}{extra})"

    def __getstate__(self) -> dict[str, str]:
        return {"unit": self.unit, "timezone": self.timezone, "week_start": self.week_start}

    def __setstate__(self, state: dict[str, str]) -> None:
        self.__init__(state["unit"], state["timezone"], week_start=state["week_start"])  # type: ignore[misc]


# -- window specs -------------------------------------------------------------------------------

_ACCEPTED_FORMS = (
    "fixed:<size> (e.g. fixed:60s), sliding:<size>/<period> (e.g. sliding:10m/1m), "
    "session:<gap> (e.g. session:5m), calendar:<day|week|month>@<IANA zone> "
    "(e.g. calendar:day@Europe/Berlin, calendar:week-sunday@UTC)"
)


def _positive_seconds(value: object, name: str) -> float:
    return parse_duration(value, name=name, allow_zero=False)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class FixedWindowSpec:
    """Tumbling windows of ``size`` seconds (aligned to the epoch), e.g. ``fixed:1h``.

    >>> FixedWindowSpec("1h")
    FixedWindowSpec(size=3600.0)
    >>> str(FixedWindowSpec(60))
    'fixed:1m'
    """

    size: float
    kind: ClassVar[str] = "fixed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", _positive_seconds(self.size, "size"))

    @property
    def merging(self) -> bool:
        return False

    def window_fn(self) -> beam_window.FixedWindows:
        return beam_window.FixedWindows(to_beam_duration(self.size))

    def __str__(self) -> str:
        return f"fixed:{format_duration(self.size)}"


@dataclasses.dataclass(frozen=True)
class SlidingWindowSpec:
    """Windows of ``size`` seconds starting every ``period`` seconds, e.g. ``sliding:10m/1m``.

    ``period`` must not exceed ``size`` (a longer period would leave gaps no window covers).

    >>> str(SlidingWindowSpec(600, 60))
    'sliding:10m/1m'
    """

    size: float
    period: float
    kind: ClassVar[str] = "sliding"

    def __post_init__(self) -> None:
        size = _positive_seconds(self.size, "size")
        period = _positive_seconds(self.period, "period")
        if period > size:
            raise ValueError(
                f"period={self.period!r} is longer than size={self.size!r}; a sliding window's "
                "period must not exceed its size"
            )
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "period", period)

    @property
    def merging(self) -> bool:
        return False

    def window_fn(self) -> beam_window.SlidingWindows:
        return beam_window.SlidingWindows(
            to_beam_duration(self.size), to_beam_duration(self.period)
        )

    def __str__(self) -> str:
        return f"sliding:{format_duration(self.size)}/{format_duration(self.period)}"


@dataclasses.dataclass(frozen=True)
class SessionWindowSpec:
    """Per-key sessions that close after ``gap`` seconds without elements, e.g. ``session:5m``.

    >>> SessionWindowSpec("5m").merging
    True
    """

    gap: float
    kind: ClassVar[str] = "session"

    def __post_init__(self) -> None:
        object.__setattr__(self, "gap", _positive_seconds(self.gap, "gap"))

    @property
    def merging(self) -> bool:
        return True

    def window_fn(self) -> beam_window.Sessions:
        return beam_window.Sessions(to_beam_duration(self.gap))

    def __str__(self) -> str:
        return f"session:{format_duration(self.gap)}"


@dataclasses.dataclass(frozen=True)
class CalendarWindowSpec:
    """Local calendar days, weeks or months in an IANA zone (:class:`CalendarWindows`).

    >>> str(CalendarWindowSpec("day", "Europe/Berlin"))
    'calendar:day@Europe/Berlin'
    >>> str(CalendarWindowSpec("week", "UTC", week_start="sunday"))
    'calendar:week-sunday@UTC'
    """

    unit: str
    timezone: str
    week_start: str = "monday"
    kind: ClassVar[str] = "calendar"

    def __post_init__(self) -> None:
        fn = CalendarWindows(self.unit, self.timezone, week_start=self.week_start)
        if fn.unit != "week" and fn.week_start != "monday":
            raise ValueError(
                f"week_start={self.week_start!r} only applies to unit='week', not unit={fn.unit!r}"
            )
        object.__setattr__(self, "unit", fn.unit)
        object.__setattr__(self, "timezone", fn.timezone)
        object.__setattr__(self, "week_start", fn.week_start)

    @property
    def merging(self) -> bool:
        return False

    def window_fn(self) -> CalendarWindows:
        return CalendarWindows(self.unit, self.timezone, week_start=self.week_start)

    def __str__(self) -> str:
        unit = self.unit if self.week_start == "monday" else f"{self.unit}-{self.week_start}"
        return f"calendar:{unit}@{self.timezone}"


WindowSpec = FixedWindowSpec | SlidingWindowSpec | SessionWindowSpec | CalendarWindowSpec

_SPEC_RE = re.compile(r"^\s*(?P<kind>[A-Za-z_]+)\s*:\s*(?P<body>.*?)\s*$")
_CALENDAR_RE = re.compile(r"^(?P<unit>[A-Za-z]+)(?:-(?P<week_start>[A-Za-z]+))?@(?P<zone>\S+)$")


def parse_window_spec(spec: str) -> WindowSpec:
    """Parses a ``--window`` spec (see the module docstring); ``ValueError`` quotes a bad one.

    >>> parse_window_spec("sliding:10m/1m")
    SlidingWindowSpec(size=600.0, period=60.0)
    >>> parse_window_spec("calendar:month@America/New_York").window_fn()
    CalendarWindows('month', 'America/New_York')
    """
    if not isinstance(spec, str):
        raise ValueError(f"window spec {spec!r} is not a string; accepted forms: {_ACCEPTED_FORMS}")
    match = _SPEC_RE.match(spec)
    try:
        if not match:
            raise ValueError("expected <kind>:<parameters>")
        kind, body = match.group("kind").lower(), match.group("body")
        if kind == "fixed":
            return FixedWindowSpec(body)  # type: ignore[arg-type]
        if kind == "sliding":
            size, sep, period = body.partition("/")
            if not sep:
                raise ValueError("a sliding window needs <size>/<period>")
            return SlidingWindowSpec(size, period)  # type: ignore[arg-type]
        if kind == "session":
            return SessionWindowSpec(body)  # type: ignore[arg-type]
        if kind == "calendar":
            calendar_match = _CALENDAR_RE.match(body)
            if not calendar_match:
                raise ValueError("a calendar window needs <unit>@<IANA zone>")
            return CalendarWindowSpec(
                calendar_match.group("unit"),
                calendar_match.group("zone"),
                week_start=calendar_match.group("week_start") or "monday",
            )
        raise ValueError(f"unknown window kind {kind!r}")
    except ValueError as error:
        raise ValueError(
            f"window spec {spec!r} is not valid: {error}; accepted forms: {_ACCEPTED_FORMS}"
        ) from error
