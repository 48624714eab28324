"""Late-data routing: records too late for their windows go to a ``late`` output, never a drop.

Beam's GroupByKey drops an element whose window has expired (``input watermark > window.end +
allowed_lateness``) and only bumps a runner counter. headwater routes such records *before* the
windowing step instead, because a DoFn downstream of the GroupByKey never sees them.

Input
    A PCollection in the **global window** whose elements (usually decoded record dicts) carry
    their event time as the element timestamp. Bounded or unbounded.
Outputs (:class:`LateRouted`)
    ``main``: the same elements, unchanged, with the same timestamps, still in the global window
    (:class:`RouteLateData`) or already windowed (:class:`WindowWithLateRouting`).
    ``late``: one :class:`~headwater.core.deadletter.DeadLetter` per late record, with
    ``stage="late"``, ``error_type="LateData"``, the record's ``event_time``, the ``window``
    (``"<start ISO>/<end ISO>"``) and ``lateness_ms``; timestamped like the record, global window.
Ordering
    None within or across outputs (as everywhere in Beam).

How lateness is decided
    A window ``W`` *closes* at ``close(W) = W.end + allowed_lateness``, the GroupByKey's drop rule.
    DoFns cannot read the watermark, so the router learns a lower bound of it, ``known_wm``, from
    event-time timers: a *clock* that walks through every time at which some window can close --
    for fixed, sliding and calendar windows every window end (+ allowed lateness), whether or not
    a record fell into that window; for sessions a grid of one gap. When the clock's timer fires
    at ``T``, the watermark has reached ``T``: ``known_wm = T`` and the timer is re-armed at the
    next close time. All routing state lives under one key, so the clock is one clock: it knows
    of every window that any record has touched.

    The router assigns each record its windows itself (``window_fn.assign``; for ``Sessions`` the
    pre-merge window ``[t, t + gap)``, which is what the GroupByKey checks before merging). If
    every window has ``close(W) <= known_wm`` the record is late; otherwise it goes to ``main``.
    A sliding-window record is late only when *all* its windows have closed; while one is open it
    goes to ``main``, and its share in windows that already closed is dropped by the GroupByKey
    as Beam does (it is not re-emitted to ``late``).

    ``lateness_ms = (known_wm - event_time) // 1000``: how far (whole milliseconds, rounded
    down) the record's event time is behind the watermark as the router knew it when the record
    arrived. ``known_wm`` trails the real watermark by less than one clock step (one window
    period; one gap for sessions), so this is a lower bound within one step of the truth.
    The ``window`` of a late record is the last of its windows to close.

Guarantee
    Every record either reaches its windows' panes downstream (on time, or as a late pane inside
    the allowed lateness) or the ``late`` output: never both, never neither. Why: a record goes
    to ``main`` only while one of its closes ``c`` is ahead of ``known_wm``; the clock's next
    tick is at or before ``c`` and has not fired, so the watermark has not reached ``c`` --
    on runners where timers hold the output watermark (Dataflow, Flink, Prism) because the
    armed timer holds the windowing step's watermark at or below it, and on the single-worker
    ``BundleBasedDirectRunner`` because a due timer fires before the next input bundle. For
    sessions the record's own close is not on the clock's grid, so :class:`WindowWithLateRouting`
    gives the GroupByKey one extra gap of allowed lateness: a session record up to one gap beyond
    ``allowed_lateness`` may come out in a late pane instead of ``late`` -- still counted, never
    dropped.

    The clock starts ``clock_horizon`` (default 10 min of event time) before the earliest window
    close of the first records and runs up to ``clock_horizon`` beyond the newest window close
    seen, then stops until the next record. Records that reach the router before its first tick
    and are more than ``clock_horizon`` older than the first records, and records arriving after
    the watermark moved on *without records reaching the router* for longer than
    ``clock_horizon`` (every source idle and advanced by wall clock, or only rejected records),
    are judged without a running clock and go to ``main``. Keep ``clock_horizon`` above the
    disorder and the silences you expect.

    In batch the watermark stays at the minimum until the input is exhausted and then jumps to
    the maximum, so nothing can be late: for bounded input the routing step is skipped and
    ``late`` is empty.

State
    Bounded and tiny: one key holding ``known_wm``, the armed tick and the newest close seen.
    Timer firings: one per window period (one per gap for sessions) of event-time progress, from
    ``clock_horizon`` before the first window to ``clock_horizon`` past the newest, so a drained
    or finished stream does not walk the clock to the end of time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import userstate
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from headwater.core.deadletter import DeadLetter, dead_letter_for, utc_iso
from headwater.windowing import rules
from headwater.windowing.durations import DurationLike, format_duration, parse_duration

__all__ = [
    "LATE_ERROR_TYPE",
    "LATE_STAGE",
    "LateRouted",
    "RouteLateData",
    "WindowWithLateRouting",
    "late_dead_letter",
]

LATE_STAGE = "late"
LATE_ERROR_TYPE = "LateData"

_NAMESPACE = "headwater"
_MIN_MICROS = MIN_TIMESTAMP.micros


class LateRouted(NamedTuple):
    """The outputs of late-data routing: records for the windows, and late dead letters."""

    main: beam.PCollection
    late: beam.PCollection


def _window_str(window: Any) -> str:
    return f"{utc_iso(window.start.micros)}/{utc_iso(window.end.micros)}"


def late_dead_letter(
    record: Any,
    *,
    timestamp: Timestamp,
    known_wm: int,
    window: Any,
    close: int,
    lateness_micros: int,
) -> DeadLetter:
    """The ``late`` envelope of ``record``: its window closed at ``close`` (micros) before it came.

    ``known_wm`` (micros) is the watermark as the router knew it; ``lateness_ms`` is how far
    (whole milliseconds, rounded down) the record's event time is behind it. Shared by the record
    path's router and the columnar replay, so both write the same envelope.
    """
    lateness_ms = rules.lateness_ms(known_wm, timestamp.micros)
    window_str = _window_str(window)
    reason = (
        f"event time {utc_iso(timestamp.micros)} is at least {lateness_ms} ms behind the "
        f"watermark (>= {utc_iso(known_wm)}); window {window_str} closed at {utc_iso(close)} "
        f"(window end + allowed lateness {format_duration(lateness_micros / 1e6)})"
    )
    envelope = dead_letter_for(
        record,
        stage=LATE_STAGE,
        error=reason,
        event_time=timestamp,
        window=window_str,
        lateness_ms=lateness_ms,
    )
    return dataclasses.replace(envelope, error_type=LATE_ERROR_TYPE)


class _Clock:
    """The times at which a window of ``window_fn`` can close: the router's timer grid.

    Fixed, sliding and calendar windows are assigned by :func:`headwater.windowing.rules.assigner`
    (the rule every engine uses); sessions and other WindowFns by their own ``assign``.
    """

    def __init__(self, window_fn: beam_window.WindowFn, lateness_micros: int):
        self._window_fn = window_fn
        self._lateness_micros = lateness_micros
        self._gap_micros = (
            window_fn.gap_size.micros if isinstance(window_fn, beam_window.Sessions) else None
        )
        try:
            self._assigner: rules.WindowAssigner | None = rules.assigner(window_fn)
        except ValueError:  # sessions (pre-merge windows) or a WindowFn of the user's own
            self._assigner = None

    def windows(self, micros: int, record: Any = None) -> list[tuple[int, int]]:
        """``(start, end)`` of each window of an instant (pre-merge for sessions)."""
        if self._assigner is not None:
            return self._assigner.windows(micros)
        context = beam_window.WindowFn.AssignContext(Timestamp(micros=micros), record)
        return [(w.start.micros, w.end.micros) for w in self._window_fn.assign(context)]

    def closes(self, windows: list[tuple[int, int]]) -> list[int]:
        """When each of the windows closes."""
        return [rules.window_close(end, self._lateness_micros) for _, end in windows]

    def next_after(self, micros: int) -> int:
        """The first close time strictly after ``micros``."""
        if self._gap_micros is not None:
            return micros + self._gap_micros
        return min(self.closes(self.windows(micros - self._lateness_micros)))

    def first_at_or_after(self, micros: int) -> int:
        """The first close time at or after ``micros``."""
        return micros if self._gap_micros is not None else self.next_after(micros - 1)


class _RouteLateFn(beam.DoFn):
    """One key: a clock of event-time timers walking every window close time."""

    KNOWN_WM = userstate.ReadModifyWriteStateSpec("known_wm", VarIntCoder())
    ARMED_AT = userstate.ReadModifyWriteStateSpec("armed_at", VarIntCoder())
    NEWEST_CLOSE = userstate.ReadModifyWriteStateSpec("newest_close", VarIntCoder())
    TICK = userstate.TimerSpec("tick", TimeDomain.WATERMARK)

    def __init__(self, window_fn: beam_window.WindowFn, lateness_micros: int, horizon_micros: int):
        self._window_fn = window_fn
        self._lateness_micros = lateness_micros
        self._horizon_micros = horizon_micros
        self._clock = _Clock(window_fn, lateness_micros)
        self._main = Metrics.counter(_NAMESPACE, "late_routing.main")
        self._late = Metrics.counter(_NAMESPACE, "late_routing.late")

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        known_state=beam.DoFn.StateParam(KNOWN_WM),
        armed_state=beam.DoFn.StateParam(ARMED_AT),
        newest_state=beam.DoFn.StateParam(NEWEST_CLOSE),
        timer=beam.DoFn.TimerParam(TICK),
    ):
        _, record = element
        known_wm = known_state.read()
        if known_wm is None:
            known_wm = _MIN_MICROS
        windows = self._clock.windows(timestamp.micros, record)
        open_closes = [c for c in self._clock.closes(windows) if not rules.is_late(c, known_wm)]
        if not open_closes:
            self._late.inc()
            yield beam.pvalue.TaggedOutput(
                "late", self._late_record(record, timestamp, known_wm, windows)
            )
            return
        newest = newest_state.read()
        newest_close = max(open_closes)
        if newest is None or newest_close > newest:
            newest_state.write(newest_close)
        armed_at = armed_state.read()
        if known_wm == _MIN_MICROS:
            # Not ticked yet: start the clock clock_horizon before the earliest close seen, so
            # stragglers up to that far behind the first records are judged by a running clock.
            wanted = self._clock.first_at_or_after(min(open_closes) - self._horizon_micros)
            rearm = armed_at is None or wanted < armed_at
        else:
            # Ticking (or stopped past the horizon): resume at the next close on the grid.
            wanted = self._clock.next_after(known_wm)
            rearm = armed_at is None
        if rearm:
            timer.set(Timestamp(micros=wanted))
            armed_state.write(wanted)
        self._main.inc()
        yield record

    @userstate.on_timer(TICK)
    def on_tick(
        self,
        fired_at=beam.DoFn.TimestampParam,
        known_state=beam.DoFn.StateParam(KNOWN_WM),
        armed_state=beam.DoFn.StateParam(ARMED_AT),
        newest_state=beam.DoFn.StateParam(NEWEST_CLOSE),
        timer=beam.DoFn.TimerParam(TICK),
    ):
        previous = known_state.read()
        known_wm = max(fired_at.micros, _MIN_MICROS if previous is None else previous)
        known_state.write(known_wm)
        following = self._clock.next_after(known_wm)
        newest = newest_state.read()
        if newest is not None and following <= newest + self._horizon_micros:
            timer.set(Timestamp(micros=following))
            armed_state.write(following)
        else:
            armed_state.clear()  # stopped: the next record restarts the clock

    def _late_record(
        self, record: Any, timestamp: Timestamp, known_wm: int, windows: list[tuple[int, int]]
    ) -> DeadLetter:
        close, start, end = rules.latest_close(windows, self._lateness_micros)
        return late_dead_letter(
            record,
            timestamp=timestamp,
            known_wm=known_wm,
            window=beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end)),
            close=close,
            lateness_micros=self._lateness_micros,
        )


def _key_by_clock(element: Any) -> tuple[int, Any]:
    return 0, element


def _check_window_fn(window_fn: Any) -> beam_window.WindowFn:
    if isinstance(window_fn, beam_window.Sessions):
        return window_fn
    if isinstance(window_fn, beam_window.WindowFn) and not isinstance(
        window_fn, beam_window.NonMergingWindowFn
    ):
        raise ValueError(
            f"window_fn={window_fn!r} merges windows; of the merging WindowFns only Sessions "
            "is supported (the router needs to know where windows can close)"
        )
    if not isinstance(window_fn, beam_window.WindowFn) or isinstance(
        window_fn, beam_window.GlobalWindows
    ):
        raise ValueError(
            f"window_fn={window_fn!r} must be a Beam WindowFn with finite windows "
            "(FixedWindows, SlidingWindows, Sessions, calendar windows); the global window "
            "never closes, so nothing could be late"
        )
    return window_fn


def _lateness_micros(allowed_lateness: DurationLike) -> int:
    seconds = parse_duration(allowed_lateness, name="allowed_lateness")
    return round(seconds * 1_000_000)


class RouteLateData(beam.PTransform):
    """Sends records whose windows have all closed to ``late``, the rest on to ``main``.

    ``window_fn`` is the WindowFn the caller applies next (``beam.WindowInto(window_fn, ...,
    allowed_lateness=...)`` with the *same* ``allowed_lateness``, plus one gap for sessions --
    or use :class:`WindowWithLateRouting`, which does both); ``allowed_lateness`` is seconds, a
    ``timedelta`` or a string such as ``'30s'`` (required: there is no safe default);
    ``clock_horizon`` is how far before the first and past the newest window the clock ticks.
    The input must be in the global window with event times as timestamps. Bounded input
    passes through unchanged (nothing is late in batch). See the module docstring for the
    exact rule, the guarantee and the state bound.

    >>> import apache_beam as beam
    >>> from apache_beam.transforms.window import FixedWindows, TimestampedValue
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     routed = (p | beam.Create([{"v": 1}])
    ...               | beam.Map(lambda r: TimestampedValue(r, 10))
    ...               | RouteLateData(FixedWindows(60), allowed_lateness="0s"))
    ...     _ = routed.main | beam.Map(print)
    {'v': 1}
    """

    def __init__(
        self,
        window_fn: beam_window.WindowFn,
        *,
        allowed_lateness: DurationLike,
        clock_horizon: DurationLike = "10m",
    ):
        super().__init__()
        self._window_fn = _check_window_fn(window_fn)
        self._lateness_micros = _lateness_micros(allowed_lateness)
        self._horizon_micros = round(parse_duration(clock_horizon, name="clock_horizon") * 1e6)

    def expand(self, pcoll):
        if not isinstance(pcoll.windowing.windowfn, beam_window.GlobalWindows):
            raise ValueError(
                f"RouteLateData needs its input in the global window, got "
                f"{pcoll.windowing.windowfn!r}; route late data before beam.WindowInto"
            )
        if pcoll.is_bounded:
            # Batch: the watermark only moves once all input is in, so nothing is late.
            return LateRouted(pcoll, pcoll.pipeline | "NoLateData" >> beam.Create([]))
        routed = (
            pcoll
            | "KeyByClock"
            >> beam.Map(_key_by_clock).with_output_types(typehints.KV[int, typehints.Any])
            | "Route"
            >> beam.ParDo(
                _RouteLateFn(self._window_fn, self._lateness_micros, self._horizon_micros)
            ).with_outputs("late", main="main")
        )
        return LateRouted(routed.main, routed.late)


class WindowWithLateRouting(beam.PTransform):
    """:class:`RouteLateData` followed by ``beam.WindowInto`` with the same allowed lateness.

    ``trigger`` defaults to ``AfterWatermark(late=AfterCount(1))``, so that a record inside the
    allowed lateness produces a late pane instead of vanishing (Beam's ``AfterWatermark()``
    without late firings discards it). That holds for ``allowed_lateness=0`` too: a runner whose
    timers hold the watermark can let the windowing step's watermark reach ``W.end`` exactly
    before the router's timer at ``W.end`` fires, and the GroupByKey then still accepts a record
    of ``W`` that only a late firing emits. A ``trigger`` given here should have late firings
    for the same reason. ``accumulation_mode`` defaults to discarding; ``timestamp_combiner`` to
    Beam's default (end of window). For ``Sessions`` the window step gets one gap more allowed
    lateness than the router (see the module docstring). Returns :class:`LateRouted` with
    ``main`` windowed.

    >>> import apache_beam as beam
    >>> from apache_beam.transforms.window import FixedWindows, TimestampedValue
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     routed = (p | beam.Create([("k", 1), ("k", 2)])
    ...               | beam.Map(lambda kv: TimestampedValue(kv, 10))
    ...               | WindowWithLateRouting(FixedWindows(60), allowed_lateness="1m"))
    ...     _ = routed.main | beam.CombinePerKey(sum) | beam.Map(print)
    ('k', 3)
    """

    def __init__(
        self,
        window_fn: beam_window.WindowFn,
        *,
        allowed_lateness: DurationLike,
        trigger: beam_trigger.TriggerFn | None = None,
        accumulation_mode: Any = None,
        timestamp_combiner: Any = None,
        clock_horizon: DurationLike = "10m",
    ):
        super().__init__()
        self._route = RouteLateData(
            window_fn, allowed_lateness=allowed_lateness, clock_horizon=clock_horizon
        )
        self._window_fn = window_fn
        self._lateness_micros = _lateness_micros(allowed_lateness)
        if isinstance(window_fn, beam_window.Sessions):
            # A session record's close is not on the router's clock grid: one gap of slack
            # keeps the GroupByKey from dropping what the router let through.
            self._lateness_micros += window_fn.gap_size.micros
        if trigger is not None and not isinstance(trigger, beam_trigger.TriggerFn):
            raise ValueError(f"trigger={trigger!r} is not a Beam trigger")
        if trigger is None:
            trigger = beam_trigger.AfterWatermark(late=beam_trigger.AfterCount(1))
        self._trigger = trigger
        modes = (
            beam_trigger.AccumulationMode.DISCARDING,
            beam_trigger.AccumulationMode.ACCUMULATING,
        )
        if accumulation_mode is None:
            accumulation_mode = beam_trigger.AccumulationMode.DISCARDING
        elif accumulation_mode not in modes:
            raise ValueError(
                f"accumulation_mode={accumulation_mode!r} is not AccumulationMode.DISCARDING "
                "or AccumulationMode.ACCUMULATING"
            )
        self._accumulation_mode = accumulation_mode
        combiners = (
            beam_window.TimestampCombiner.OUTPUT_AT_EOW,
            beam_window.TimestampCombiner.OUTPUT_AT_EARLIEST,
            beam_window.TimestampCombiner.OUTPUT_AT_LATEST,
            beam_window.TimestampCombiner.OUTPUT_AT_EARLIEST_TRANSFORMED,
        )
        if timestamp_combiner is not None and timestamp_combiner not in combiners:
            raise ValueError(
                f"timestamp_combiner={timestamp_combiner!r} is not a TimestampCombiner"
            )
        self._timestamp_combiner = timestamp_combiner

    def expand(self, pcoll):
        routed = pcoll | "RouteLate" >> self._route
        windowed = routed.main | "Window" >> beam.WindowInto(
            self._window_fn,
            trigger=self._trigger,
            accumulation_mode=self._accumulation_mode,
            timestamp_combiner=self._timestamp_combiner,
            allowed_lateness=Duration(micros=self._lateness_micros),
        )
        return LateRouted(windowed, routed.late)
