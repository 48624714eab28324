"""A replay timeline: records and control steps, in arrival order, as one ``TestStream``.

:func:`build_stream` turns a sequence of records into a
:class:`~apache_beam.testing.test_stream.TestStream`;
:func:`headwater.io.streamreplay.replay_stream`
and the harness (:mod:`headwater.testing.harness`) both build their streams with it.

Records
    Each record is stamped with its event time: ``event_time(record)`` when an extractor is
    given, else the record is a ``(value, event_time)`` pair. An event time is a Beam
    ``Timestamp``, epoch seconds (``int``/``float``) or a timezone-aware ``datetime``. A record
    whose extractor raises or returns ``None`` is still replayed (stamped at the current
    watermark, or the epoch before the first one), so a parse step downstream can turn it into a
    dead letter; a pair with an unusable event time is refused with a ``ValueError``.
The watermark policy (bounded out-of-orderness)
    With ``max_out_of_orderness`` set, every ``watermark_every`` records (and at the end) the
    watermark advances to ``max event time seen - max_out_of_orderness`` (rounded down to the
    millisecond), the cadence of :class:`headwater.windowing.watermark.BoundedOutOfOrderness`;
    with ``advance_processing_time`` processing time advances by as much, so early
    (processing-time) panes fire as at the original pace. ``None`` turns the policy off: only
    control steps move the watermark.
Control steps, placed among the records
    :class:`AdvanceWatermark` ``(to=T)``: the watermark to ``T`` (rounded down to the ms).
    :class:`AdvanceWatermarkPast` ``(window)`` or ``(window_spec, at=T)``: the watermark to the
    end of that window (rounded up to the ms), so its on-time pane fires now.
    :class:`AdvanceProcessingTime` ``(by=D)``: processing time by ``D`` (early panes).
    Records before a step are delivered before it. A watermark never goes back: a step whose
    target the watermark already reached does nothing (:attr:`Timeline.steps`
    say so), and the policy only moves it further when its own value is higher.
End
    The watermark goes to +infinity, closing every window.

>>> timeline = build_stream([("a", 5), AdvanceWatermarkPast("fixed:60s", at=5), ("b", 7)],
...                         max_out_of_orderness=None)
>>> timeline.steps
('1 record', 'watermark -> 1970-01-01T00:01:00Z', '1 record', 'watermark -> end')
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any

from apache_beam import coders
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from headwater.core.deadletter import utc_iso
from headwater.windowing.durations import DurationLike, parse_duration, to_beam_timestamp
from headwater.windowing.watermark import BoundedOutOfOrderness
from headwater.windowing.windows import WindowSpec, parse_window_spec

__all__ = [
    "AdvanceProcessingTime",
    "AdvanceWatermark",
    "AdvanceWatermarkPast",
    "Timeline",
    "build_stream",
    "resolve_window",
    "to_instant",
]

MAX_WATERMARK_EVERY = 1_000_000
_MS = 1_000

InstantLike = Timestamp | int | float | dt.datetime
WindowLike = beam_window.IntervalWindow | str | WindowSpec | beam_window.WindowFn


def to_instant(value: Any, *, name: str = "instant") -> Timestamp:
    """``value`` (a ``Timestamp``, epoch seconds, or an aware ``datetime``) as a ``Timestamp``."""
    if isinstance(value, Timestamp):
        return value
    if isinstance(value, dt.datetime):
        return to_beam_timestamp(value, name=name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name}={value!r} must be a finite number of epoch seconds")
        return Timestamp.of(value)
    raise ValueError(
        f"{name}={value!r} is not an instant; expected a Beam Timestamp, epoch seconds "
        "(int or float) or a timezone-aware datetime"
    )


def resolve_window(window: Any, at: Any = None) -> beam_window.IntervalWindow:
    """The window meant by ``window``: an ``IntervalWindow``, or a window spec + instant ``at``.

    A spec is a string (``"fixed:60s"``, ``"calendar:day@Europe/Berlin"``), a spec object or a
    Beam ``WindowFn``; it must put ``at`` in exactly one window (sliding windows do not: give the
    ``IntervalWindow``) and must not merge (a session's extent depends on its records).
    """
    if isinstance(window, beam_window.IntervalWindow):
        if at is not None:
            raise ValueError(f"at={at!r} is only for a window spec, not for window={window!r}")
        return window
    window_fn = window
    if isinstance(window_fn, str):
        window_fn = parse_window_spec(window_fn)
    if hasattr(window_fn, "window_fn") and not isinstance(window_fn, beam_window.WindowFn):
        window_fn = window_fn.window_fn()
    if not isinstance(window_fn, beam_window.WindowFn):
        raise ValueError(
            f"window={window!r} is not a window; expected an IntervalWindow, or a window spec "
            "('fixed:60s', a WindowSpec or a WindowFn) with at=<instant>"
        )
    if not isinstance(window_fn, beam_window.NonMergingWindowFn):
        raise ValueError(
            f"window={window!r} merges windows (sessions): a session's extent depends on its "
            "records; give the merged IntervalWindow(start, end) instead"
        )
    if at is None:
        raise ValueError(f"window={window!r} is a window spec: give at=<instant> inside it")
    instant = to_instant(at, name="at")
    assigned = list(window_fn.assign(beam_window.WindowFn.AssignContext(instant)))
    if len(assigned) != 1 or not isinstance(assigned[0], beam_window.IntervalWindow):
        raise ValueError(
            f"window={window!r} puts at={at!r} in {len(assigned)} windows "
            f"({', '.join(map(str, assigned))}); give the IntervalWindow you mean"
        )
    return assigned[0]


@dataclasses.dataclass(frozen=True)
class AdvanceWatermark:
    """Control step: advance the watermark to ``to`` (an instant; rounded down to the ms)."""

    to: InstantLike

    def __post_init__(self) -> None:
        to_instant(self.to, name="to")

    def target(self) -> Timestamp:
        """The watermark this step asks for."""
        return Timestamp(micros=to_instant(self.to, name="to").micros // _MS * _MS)


@dataclasses.dataclass(frozen=True)
class AdvanceWatermarkPast:
    """Control step: advance the watermark to the end of a window, firing its on-time pane.

    ``window`` is an ``IntervalWindow``, or a window spec (``"fixed:60s"``, a spec object, a
    ``WindowFn``) with ``at``, an instant inside the window. Checked at construction.
    """

    window: WindowLike
    at: InstantLike | None = None

    def __post_init__(self) -> None:
        resolve_window(self.window, self.at)

    def target(self) -> Timestamp:
        """The window's end, rounded up to the millisecond."""
        end = resolve_window(self.window, self.at).end.micros
        return Timestamp(micros=-(-end // _MS) * _MS)


@dataclasses.dataclass(frozen=True)
class AdvanceProcessingTime:
    """Control step: advance processing time by ``by`` (seconds, ``timedelta`` or ``'10s'``)."""

    by: DurationLike

    def __post_init__(self) -> None:
        parse_duration(self.by, name="by", allow_zero=False)

    def duration(self) -> Duration:
        """How far processing time moves, in whole milliseconds (at least one)."""
        micros = round(parse_duration(self.by, name="by") * 1_000_000)
        return Duration(micros=max(_MS, micros // _MS * _MS))


CONTROL_STEPS = (AdvanceWatermark, AdvanceWatermarkPast, AdvanceProcessingTime)


def _frozen_clock() -> float:
    return 0.0  # replay has no wall clock: idleness never applies


@dataclasses.dataclass(frozen=True)
class Timeline:
    """A built replay: the ``TestStream`` and, in order, what it replays (readable steps)."""

    stream: TestStream
    steps: tuple[str, ...]


class _Builder:
    def __init__(self, stream: TestStream, policy: BoundedOutOfOrderness | None, follow: bool):
        self.stream = stream
        self.steps: list[str] = []
        self.tracker = None if policy is None else policy.tracker(clock=_frozen_clock)
        self.follow = follow  # processing time follows the policy's watermark
        self.batch: list[TimestampedValue] = []
        self.watermark = MIN_TIMESTAMP

    def add(self, value: Any, timestamp: Timestamp | None) -> None:
        if timestamp is None:
            timestamp = self.watermark if self.watermark > MIN_TIMESTAMP else Timestamp(0)
        elif self.tracker is not None:
            self.tracker.observe(timestamp)
        self.batch.append(TimestampedValue(value, timestamp))

    def deliver(self) -> None:
        if self.batch:
            self.stream.add_elements(list(self.batch))
            count = len(self.batch)
            self.steps.append(f"{count} record" + ("s" if count > 1 else ""))
            self.batch.clear()

    def policy_step(self) -> None:
        self.deliver()
        if self.tracker is None:
            return
        target = self.tracker.watermark()
        if target > MIN_TIMESTAMP:
            # TestStream carries watermarks and processing time in whole milliseconds.
            target = Timestamp(micros=target.micros // _MS * _MS)
        previous = self.watermark
        if self.advance_to(target) and self.follow and previous > MIN_TIMESTAMP:
            self.stream.advance_processing_time(Duration(micros=(target - previous).micros))
            self.steps.append(f"processing time +{(target - previous).micros / 1e6:g}s")

    def advance_to(self, target: Timestamp, *, asked: str | None = None) -> bool:
        if target <= self.watermark:
            if asked is not None:
                self.steps.append(f"{asked}: already at {utc_iso(self.watermark.micros)}")
            return False
        self.stream.advance_watermark_to(target)
        self.steps.append(f"watermark -> {utc_iso(target.micros)}")
        self.watermark = target
        return True

    def control(self, step: Any) -> None:
        self.deliver()
        if isinstance(step, AdvanceProcessingTime):
            duration = step.duration()
            self.stream.advance_processing_time(duration)
            self.steps.append(f"processing time +{duration.micros / 1e6:g}s")
        else:
            self.advance_to(step.target(), asked=repr(step))


def build_stream(
    elements: Iterable[Any],
    *,
    event_time: Callable[[Any], Any] | None = None,
    max_out_of_orderness: DurationLike | None,
    watermark_every: int = 1_000,
    advance_processing_time: bool = True,
    coder: coders.Coder | None = None,
) -> Timeline:
    """Builds the replay of ``elements`` (records and control steps); see the module docstring.

    Args:
      elements: records in arrival order, control steps among them.
      event_time: record -> event time (may raise or return ``None`` for an unusable record);
        ``None`` when the records are ``(value, event_time)`` pairs.
      max_out_of_orderness: how far the watermark trails the newest event time, or ``None``
        for no policy (the watermark moves only with control steps, and at the end).
      watermark_every: how many records at most between two policy steps (and per bundle).
      advance_processing_time: processing time follows the policy's watermark advances.
    """
    if (
        not isinstance(watermark_every, int)
        or isinstance(watermark_every, bool)
        or not 1 <= watermark_every <= MAX_WATERMARK_EVERY
    ):
        raise ValueError(
            f"watermark_every={watermark_every!r} must be an integer in 1..{MAX_WATERMARK_EVERY}"
        )
    if event_time is not None and not callable(event_time):
        raise ValueError(f"event_time={event_time!r} must be a callable record -> event time")
    policy = (
        None
        if max_out_of_orderness is None
        else BoundedOutOfOrderness(max_delay=max_out_of_orderness)
    )
    builder = _Builder(
        TestStream(coder=coder or coders.FastPrimitivesCoder()),
        policy,
        bool(advance_processing_time),
    )
    for index, element in enumerate(elements):
        if isinstance(element, CONTROL_STEPS):
            builder.control(element)
            continue
        if event_time is None:
            builder.add(*_pair(element, index))
        else:
            builder.add(element, _extracted(event_time, element))
        if len(builder.batch) >= watermark_every:
            builder.policy_step()
    builder.policy_step()
    builder.stream.advance_watermark_to_infinity()
    builder.steps.append("watermark -> end")
    return Timeline(builder.stream, tuple(builder.steps))


def _pair(element: Any, index: int) -> tuple[Any, Timestamp]:
    if not isinstance(element, tuple) or len(element) != 2:
        raise ValueError(
            f"event {index}: {element!r:.80} is not a (record, event_time) pair; pass "
            "event_time=<record -> event time> to replay plain records"
        )
    return element[0], to_instant(element[1], name=f"event {index}'s event time")


def _extracted(event_time: Callable[[Any], Any], element: Any) -> Timestamp | None:
    try:
        value = event_time(element)
        return None if value is None else to_instant(value, name="event time")
    except Exception:  # the parse step downstream turns it into a dead letter
        return None
