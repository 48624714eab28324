"""The rules, written once: deduplication, window assignment and lateness.

Every engine -- the record path's DoFns, the columnar batch path and the columnar replay --
decides with these functions, so two engines cannot disagree about what a duplicate is, which
window an instant falls into or when a record is late. Each rule comes in a scalar form (one
record, plain ints) and a vector form (numpy ``int64`` arrays, for the columnar engines); the
property tests in ``tests/windowing/test_rules.py`` check the two agree on random inputs, DST
days included.

Times are integer microseconds since the epoch (Beam's ``Timestamp.micros``) throughout.

Deduplication (event time)
    Per id, ``anchor`` is the newest event time among the copies seen so far. A copy with event
    time ``ts`` is a duplicate iff ``ts <= anchor + horizon`` (:func:`is_duplicate`). In a
    stream an id is forgotten once the watermark reaches :func:`dedup_forget_at`: its expiry
    :func:`dedup_expiry` (``anchor + horizon`` rounded up to the millisecond, timers'
    precision) rounded up to the sweep grid :func:`dedup_grid` (a minute, or a sixteenth of the
    horizon if longer), where the step keyed by shards of ids sweeps (:func:`is_forgotten`).
    In batch nothing is forgotten (the watermark only reaches the end of time after the input),
    so the answer depends only on the input order.

Window assignment
    :func:`assigner` turns a window function or spec (fixed, sliding, calendar) into a
    :class:`WindowAssigner` whose ``windows(ts)`` gives ``[(start, end), ...]`` for one instant
    and ``windows_v(ts)`` the same for an array (``starts, ends, rows``: ``rows[i]`` is the index
    of the instant that window ``i`` was assigned for, sliding windows giving several). Fixed
    windows are ``[ts - (ts - offset) mod size, + size)``; sliding windows every start
    ``s = ts - (ts - offset) mod period - k * period`` with ``s + size > ts``, oldest first;
    calendar windows the local day, week or month of the instant
    (:mod:`headwater.windowing.windows` says where a DST-changed day starts).

Sessions (merging windows)
    A record at ``ts`` opens the window ``[ts, ts + gap)`` (:func:`session_window`); per key, a
    window joins the session before it iff it starts *before* that session's end (windows that
    only touch stay apart), and the session spans its first start to its latest end
    (:func:`merge_sessions`, :func:`merge_sessions_v`). This is Beam's ``Sessions`` merge, which
    the record path's GroupByKey runs; ``tests/windowing/test_rules.py`` checks both forms
    against it on random inputs. The result does not depend on the order windows are merged in.

Lateness
    A window closes at :func:`window_close` ``= end + allowed_lateness`` (the GroupByKey's drop
    rule). A record is late iff every window it belongs to has closed at the watermark a router
    knows: ``close <= watermark`` (:func:`is_late`), and it is :func:`lateness_ms` behind it.
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
import functools
import zoneinfo
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_TIMER_MICROS",
    "NO_TIME",
    "WindowAssigner",
    "assigner",
    "calendar_window",
    "closes_v",
    "latest_close",
    "merge_sessions",
    "merge_sessions_v",
    "running_max_v",
    "session_window",
    "timer_at",
    "dedup_expiry",
    "dedup_expiry_v",
    "dedup_forget_at",
    "dedup_forget_at_v",
    "dedup_grid",
    "is_duplicate",
    "is_duplicate_v",
    "is_forgotten",
    "is_forgotten_v",
    "is_late",
    "is_late_v",
    "lateness_ms",
    "lateness_ms_v",
    "window_close",
]

NO_TIME = np.iinfo(np.int64).min
"""The vector forms' "no anchor / no time" (an ``int64`` below any real instant)."""

MAX_TIMER_MICROS = 9_223_371_950_454_774_000
"""Timers cannot be set past Beam's end of the global window (in whole milliseconds)."""


# -- timers -------------------------------------------------------------------------------------


def timer_at(micros: Any) -> Any:
    """The first whole millisecond at or after ``micros`` (an int or an ``int64`` array): when
    a timer meant for that instant fires (timers carry milliseconds, and must not fire early).

    >>> timer_at(1_000_001), timer_at(1_000_000)
    (1001000, 1000000)
    """
    return _round_up(micros, 1000)


def _round_up(micros: Any, step: int) -> Any:
    """``micros`` (an int or an ``int64`` array) rounded up to a multiple of ``step``."""
    return -(-micros // step) * step


# -- deduplication ------------------------------------------------------------------------------


def dedup_expiry(anchor: int, horizon: int) -> int:
    """When an id with newest copy ``anchor`` is forgotten: its event-time timer's firing time.

    ``anchor + horizon`` rounded up to the millisecond (timers carry milliseconds), so the timer
    never fires before it.

    >>> dedup_expiry(1_000_001, 2_000_000)
    3001000
    """
    return min(timer_at(anchor + horizon), MAX_TIMER_MICROS)


def dedup_expiry_v(anchors: np.ndarray, horizon: int) -> np.ndarray:
    """:func:`dedup_expiry` of an array of anchors (``NO_TIME`` stays ``NO_TIME``)."""
    expiry = np.minimum(timer_at(anchors + horizon), MAX_TIMER_MICROS)
    return np.where(anchors == NO_TIME, NO_TIME, expiry)


def dedup_grid(horizon: int) -> int:
    """The grid (micros) on which a stream forgets ids: a minute, or a sixteenth of ``horizon``
    (in whole milliseconds) if that is longer.

    >>> dedup_grid(600_000_000), dedup_grid(86_400_000_000)
    (60000000, 5400000000)
    """
    return max(60_000_000, timer_at(horizon // 16))


def dedup_forget_at(anchor: int, horizon: int) -> int:
    """When a stream forgets an id with newest copy ``anchor``: :func:`dedup_expiry` rounded up
    to :func:`dedup_grid` (where the sweeps are).

    >>> dedup_forget_at(10_000_000, 30_000_000), dedup_forget_at(30_000_000, 30_000_000)
    (60000000, 60000000)
    """
    grid = dedup_grid(horizon)
    return min(_round_up(dedup_expiry(anchor, horizon), grid), MAX_TIMER_MICROS)


def dedup_forget_at_v(anchors: np.ndarray, horizon: int) -> np.ndarray:
    """:func:`dedup_forget_at` of an array of anchors (``NO_TIME`` stays ``NO_TIME``)."""
    grid = dedup_grid(horizon)
    forget = np.minimum(_round_up(dedup_expiry_v(anchors, horizon), grid), MAX_TIMER_MICROS)
    return np.where(anchors == NO_TIME, NO_TIME, forget)


def is_duplicate(ts: int, anchor: int | None, horizon: int) -> bool:
    """Whether a copy at ``ts`` is a duplicate of an id whose newest copy is at ``anchor``.

    >>> is_duplicate(10, 5, 5), is_duplicate(11, 5, 5), is_duplicate(1, None, 5)
    (True, False, False)
    """
    return anchor is not None and ts <= anchor + horizon


def is_duplicate_v(ts: np.ndarray, anchors: np.ndarray, horizon: int) -> np.ndarray:
    """:func:`is_duplicate` over arrays; an anchor of ``NO_TIME`` means "no earlier copy"."""
    return (anchors != NO_TIME) & (ts <= anchors + horizon)


def is_forgotten(anchor: int, horizon: int, watermark: int) -> bool:
    """Whether a stream has forgotten an id at ``anchor`` by ``watermark``: its sweep at
    :func:`dedup_forget_at` has fired.

    >>> is_forgotten(0, 1_000, 59_999_999), is_forgotten(0, 1_000, 60_000_000)
    (False, True)
    """
    return dedup_forget_at(anchor, horizon) <= watermark


def is_forgotten_v(anchors: np.ndarray, horizon: int, watermark: np.ndarray | int) -> np.ndarray:
    """:func:`is_forgotten` over arrays (``NO_TIME`` anchors are never "forgotten")."""
    return (anchors != NO_TIME) & (dedup_forget_at_v(anchors, horizon) <= watermark)


# -- per-group running maxima ------------------------------------------------------------------


def running_max_v(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per row, the largest of ``values`` over the rows of its group up to and including it.

    ``groups`` are non-negative ``int64`` codes in ascending order (rows sorted by group). Each
    group's composite values (``group * span + value``) lie above the previous group's, so one
    running maximum over all rows serves every group.

    >>> running_max_v(np.array([0, 0, 0, 1, 1]), np.array([5, 3, 9, 1, 0])).tolist()
    [5, 5, 9, 1, 1]
    """
    if len(values) == 0:
        return np.asarray(values, dtype=np.int64)
    low = int(values.min())
    span = int(values.max()) - low + 1
    if span * (int(groups[-1]) + 1) < 1 << 62:
        running = np.maximum.accumulate(groups * span + (values - low))
        return running - groups * span + low
    distinct, ranks = np.unique(values, return_inverse=True)  # ranks keep the products small
    span = len(distinct)
    return distinct[np.maximum.accumulate(groups * span + ranks) - groups * span]


# -- sessions -----------------------------------------------------------------------------------


def session_window(ts: Any, gap: int) -> tuple[Any, Any]:
    """The window a record at ``ts`` (an int or an ``int64`` array) opens: ``[ts, ts + gap)``,
    before merging."""
    return ts, ts + gap


def merge_sessions(windows: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """One key's windows merged into sessions, oldest first.

    >>> merge_sessions([(0, 10), (5, 15), (15, 25), (40, 50)])
    [(0, 15), (15, 25), (40, 50)]
    """
    sessions: list[tuple[int, int]] = []
    for start, end in sorted(windows):
        if sessions and start < sessions[-1][1]:
            first, reach = sessions[-1]
            sessions[-1] = (first, max(reach, end))
        else:
            sessions.append((start, end))
    return sessions


def merge_sessions_v(
    groups: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`merge_sessions` for many keys at once: ``(session, session_starts, session_ends)``.

    The rows are sorted by ``(groups, starts)`` (``groups`` as :func:`running_max_v` takes
    them); ``session[i]`` is the index of row ``i``'s merged session, whose bounds are
    ``session_starts[session[i]]`` and ``session_ends[session[i]]``.
    """
    n = len(starts)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    reach = running_max_v(groups, ends)  # the end of the session so far, per row
    opens = np.ones(n, dtype=bool)
    opens[1:] = (groups[1:] != groups[:-1]) | (starts[1:] >= reach[:-1])
    session = np.cumsum(opens) - 1
    firsts = np.flatnonzero(opens)
    return session, starts[firsts], np.maximum.reduceat(ends, firsts)


# -- lateness -----------------------------------------------------------------------------------


def window_close(end: int, allowed_lateness: int) -> int:
    """When a window ending at ``end`` closes: after it, its GroupByKey drops new elements."""
    return end + allowed_lateness


def is_late(close: int, watermark: int) -> bool:
    """Whether a window that closes at ``close`` has closed at ``watermark``.

    >>> is_late(60, 59), is_late(60, 60)
    (False, True)
    """
    return close <= watermark


def is_late_v(close: np.ndarray, watermark: np.ndarray | int) -> np.ndarray:
    """:func:`is_late` over arrays."""
    return close <= watermark


def lateness_ms(watermark: int, ts: int) -> int:
    """How far (whole milliseconds, rounded down) event time ``ts`` is behind ``watermark``."""
    return (watermark - ts) // 1000


def lateness_ms_v(watermark: np.ndarray | int, ts: np.ndarray) -> np.ndarray:
    """:func:`lateness_ms` over arrays."""
    return (watermark - ts) // 1000


# -- window assignment --------------------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_DAY = dt.timedelta(days=1)
_DAY_MICROS = 86_400_000_000
CALENDAR_UNITS = ("day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEKDAYS_INDEX = {day: i for i, day in enumerate(WEEKDAYS)}


def _micros_of(instant: dt.datetime) -> int:
    delta = instant - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _local_at(micros: int, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    """The zone's wall clock at an instant; ``OverflowError`` outside the years 1..9999."""
    return (_EPOCH + dt.timedelta(microseconds=micros)).astimezone(zone)


def _first_instant(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    """The first instant at which the zone's wall clock shows ``day`` or later."""
    midnight = dt.datetime.combine(day, dt.time(), tzinfo=zone)
    before = _micros_of(midnight.replace(fold=0))
    after = _micros_of(midnight.replace(fold=1))
    low, high = min(before, after), max(before, after)
    if _local_at(low, zone).replace(tzinfo=None) == midnight.replace(tzinfo=None):
        return low  # midnight exists: once, or twice (the first occurrence)
    # Midnight falls in a gap: find the forward jump to the microsecond.
    while high - low > 1:
        middle = (low + high) // 2
        if _local_at(middle, zone).date() >= day:
            high = middle
        else:
            low = middle
    return high


def _unit_start(day: dt.date, unit: str, week_start: int) -> dt.date:
    if unit == "day":
        return day
    if unit == "week":
        return day - dt.timedelta(days=(day.weekday() - week_start) % 7)
    return day.replace(day=1)


def _next_start(start: dt.date, unit: str) -> dt.date:
    if unit == "day":
        return start + _ONE_DAY
    if unit == "week":
        return start + dt.timedelta(days=7)
    return (start + dt.timedelta(days=calendar.monthrange(start.year, start.month)[1])).replace(
        day=1
    )


@functools.lru_cache(maxsize=4096)
def _bounds(zone_key: str, unit: str, start: dt.date) -> tuple[int, int]:
    zone = zoneinfo.ZoneInfo(zone_key)
    return _first_instant(start, zone), _first_instant(_next_start(start, unit), zone)


def calendar_window(micros: int, unit: str, zone_key: str, week_start: int = 0) -> tuple[int, int]:
    """``(start, end)`` of the local calendar ``unit`` containing the instant ``micros``.

    ``ValueError`` when the instant's local date is outside the years 1..9999.

    >>> calendar_window(1_711_886_400_000_000, "day", "Europe/Berlin")  # 2024-03-31T12:00Z
    (1711839600000000, 1711922400000000)
    """
    try:
        zone = zoneinfo.ZoneInfo(zone_key)
        start_day = _unit_start(_local_at(micros, zone).date(), unit, week_start)
        start, end = _bounds(zone_key, unit, start_day)
        # A fall-back across midnight steps the wall clock back into the previous date after
        # the next window began: move on to the window that contains the instant.
        while micros >= end:
            start_day = _next_start(start_day, unit)
            start, end = _bounds(zone_key, unit, start_day)
    except (OverflowError, ValueError) as error:
        raise ValueError(
            f"timestamp {micros} us has no calendar {unit} in {zone_key}: calendar windows "
            "cover the years 1..9999 only"
        ) from error
    return start, end


@dataclasses.dataclass(frozen=True)
class WindowAssigner:
    """Window assignment for one window kind, in scalar and vector form.

    ``kind`` is ``"fixed"``, ``"sliding"`` or ``"calendar"``; ``size``/``period``/``offset`` are
    microseconds (fixed and sliding); ``unit``/``zone``/``week_start`` describe calendar windows.
    """

    kind: str
    size: int = 0
    period: int = 0
    offset: int = 0
    unit: str = ""
    zone: str = ""
    week_start: int = 0

    def windows(self, ts: int) -> list[tuple[int, int]]:
        """The ``(start, end)`` windows of one instant (oldest first for sliding windows)."""
        if self.kind == "fixed":
            start = ts - (ts - self.offset) % self.size
            return [(start, start + self.size)]
        if self.kind == "sliding":
            last = ts - (ts - self.offset) % self.period
            starts = range(last, ts - self.size, -self.period)
            return [(s, s + self.size) for s in reversed(starts)]
        return [calendar_window(ts, self.unit, self.zone, self.week_start)]

    def windows_v(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, ends, rows)`` for an array of instants: window ``i`` is ``rows[i]``'s."""
        ts = np.asarray(ts, dtype=np.int64)
        if self.kind == "fixed":
            starts = ts - np.mod(ts - self.offset, self.size)
            return starts, starts + self.size, np.arange(len(ts))
        if self.kind == "sliding":
            last = ts - np.mod(ts - self.offset, self.period)
            copies = -(-self.size // self.period)
            rows = np.repeat(np.arange(len(ts)), copies)
            back = np.tile(np.arange(copies - 1, -1, -1, dtype=np.int64) * self.period, len(ts))
            starts = last[rows] - back
            inside = starts + self.size > ts[rows]
            starts, rows = starts[inside], rows[inside]
            return starts, starts + self.size, rows
        bounds = self._calendar_bounds(ts)
        index = np.searchsorted(bounds, ts, side="right") - 1
        return bounds[index], bounds[index + 1], np.arange(len(ts))

    def _calendar_bounds(self, ts: np.ndarray) -> np.ndarray:
        """Sorted window boundaries covering every instant of ``ts`` (one pass per UTC day)."""
        if len(ts) == 0:
            return np.zeros(1, dtype=np.int64)
        edges: set[int] = set()
        for day in np.unique(np.floor_divide(ts, _DAY_MICROS)).tolist():
            first, last = day * _DAY_MICROS, (day + 1) * _DAY_MICROS - 1
            start, end = calendar_window(first, self.unit, self.zone, self.week_start)
            edges.update((start, end))
            while end <= last:
                start, end = calendar_window(end, self.unit, self.zone, self.week_start)
                edges.update((start, end))
        return np.array(sorted(edges), dtype=np.int64)


def assigner(window: Any) -> WindowAssigner:
    """The :class:`WindowAssigner` of a Beam ``WindowFn`` or a headwater window spec.

    ``ValueError`` for merging (session) or global windows, which have no per-instant rule.

    >>> from apache_beam.transforms.window import FixedWindows
    >>> assigner(FixedWindows(60)).windows(61_000_000)
    [(60000000, 120000000)]
    """
    fn = window.window_fn() if hasattr(window, "window_fn") else window
    kind = type(fn).__name__
    if kind == "FixedWindows":
        return WindowAssigner("fixed", size=fn.size.micros, offset=fn.offset.micros)
    if kind == "SlidingWindows":
        return WindowAssigner(
            "sliding", size=fn.size.micros, period=fn.period.micros, offset=fn.offset.micros
        )
    if kind == "CalendarWindows":
        return WindowAssigner(
            "calendar", unit=fn.unit, zone=fn.timezone, week_start=WEEKDAYS_INDEX[fn.week_start]
        )
    raise ValueError(
        f"window {window!r} has no per-instant assignment rule; expected fixed, sliding or "
        "calendar windows (sessions merge per key)"
    )


def closes_v(
    assign: WindowAssigner, ts: np.ndarray, allowed_lateness: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per instant, the latest close among its windows, and that window's ``(start, end)``.

    A record is late iff this close is at or before the watermark: every window has closed.
    """
    starts, ends, rows = assign.windows_v(ts)
    # rows ascend and each instant's windows come oldest first: its last one closes last
    last = np.searchsorted(rows, np.arange(len(ts)), side="right") - 1
    return ends[last] + allowed_lateness, starts[last], ends[last]  # window_close, per row


def latest_close(windows: Sequence[tuple[int, int]], allowed_lateness: int) -> tuple[int, int, int]:
    """Scalar :func:`closes_v`: ``(close, start, end)`` of the window that closes last."""
    start, end = max(windows, key=lambda w: (w[1], w[0]))
    return window_close(end, allowed_lateness), start, end
