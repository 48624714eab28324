"""Late-data routing: records too late for their windows go to a ``late`` output, never a drop.

Over 600 lines: the argument that every record lands in exactly one place (windows or ``late``),
with its limits, is written out below next to the code it is about.

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
    A window ``W`` *closes* at ``close(W) = W.end + allowed_lateness``, the GroupByKey's drop rule
    (:func:`headwater.windowing.rules.is_late`, the rule every engine calls). DoFns cannot read
    the watermark, so the router learns a lower bound of it, ``known_wm``, from event-time
    timers: a *clock* that walks through every time at which some window can close -- for
    fixed, sliding and calendar windows every window end (+ allowed lateness), whether or not a
    record fell into that window; for sessions the multiples of the gap. When one of the clock's
    timers fires at ``T``, the watermark has reached ``T``: ``known_wm = T``. The clock keeps its
    next 16 ticks armed (one timer each, tagged by its time), not just the next one: a runner fires
    every tick the watermark has passed in one round (one bundle of the routing step), so the
    clock walks up to 16 window periods per round and keeps up with a watermark that moves
    faster than the rounds (with one tick per round, a clock that starts 16 ticks before the
    data, or walks after a drain or a jump, could only catch up one window period per round).
    The earliest armed tick holds the watermark, as the single one did.

    The router assigns each record its windows itself (``window_fn.assign``; for ``Sessions`` the
    pre-merge window ``[t, t + gap)``, which is what the GroupByKey checks before merging). If
    every window has ``close(W) <= known_wm`` the record is late; otherwise it goes to ``main``.
    A sliding-window record is late only when *all* its windows have closed; while one is open it
    goes to ``main``, and its share in windows that already closed is dropped by the GroupByKey
    as Beam does (it is not re-emitted to ``late``).

    ``lateness_ms = (known_wm - event_time) // 1000``: how far (whole milliseconds, rounded
    down) the record's event time is behind the watermark as the router knew it when the record
    arrived. ``known_wm`` trails the real watermark by less than one clock step (one window
    period; one gap for sessions) once the clock has caught up (after a jump of the watermark it
    takes a few rounds: see the ladder below), so this is a lower bound, within one step of the
    truth while the watermark moves smoothly.
    The ``window`` of a late record is the last of its windows to close.

Shards: no hot key
    The router is ``shards`` keys (default 16), each with its own clock. A spreader deals the
    records round robin over them (each worker starting at a random shard), so the routing work
    spreads over as many workers as there are shards; ``headwater/late_routing.shard_<i>``
    counts each shard's records. Every spreader instance also sends each shard a *start note*
    with its first record, so every shard's clock starts with the data whether or not a record
    has reached that shard yet: no idle shard judges without a clock. A shard whose clock runs
    ignores later notes. Records in the wall clock's future send no note.
    A record travels to its shard stamped with the last close at or before its event time, and
    the router stamps it back: Prism hands a key's data and timers over in timestamp order, so
    a record stamped with its own event time would wait behind the shard's tick at the close
    just before it until the watermark passed that tick (see :class:`_SpreadFn`).
    A spreader's bundle sends each shard one element: its notes and records in order, stamped
    with the earliest of their carriers (the runner's per-element cost is paid per shard and
    bundle). The verdicts are the ones the records would get alone: a record is late only if a
    tick at or after one of its closes has fired before it arrived, and every close of a record
    lies after its event time; the batch still comes before every tick at or after its stamp,
    so before every such tick of each of its records. Only ticks before a record's closes can
    change sides, and they cannot make it late.

The ladder: a clock that follows any jump of the watermark
    Besides its next ticks the clock keeps a *ladder* of probes armed above them: at level
    ``k`` the first close at or after the next multiple of ``span * 2**k`` (``span``: one window
    period), up to the wall clock (plus ``clock_horizon``), and the end of time itself (the
    global window's end, where the watermark goes only when the input ends). When
    the watermark jumps ``D`` window periods past the clock (a replay of past data resuming after
    a silence, a source that skipped ahead), the round that fires fires every probe it passed,
    and the clock learns the largest: it catches up in about ``log2(D)`` rounds instead of
    ``D / 16``, and never has to stop or be moved. The probes are aligned, so a clock that
    moves one tick re-arms about two of them. Once the end-of-time probe fires (the input
    ended, or a drain), every window has closed and the clock stops.

Guarantee
    Every record either reaches its windows' panes downstream (on time, or as a late pane inside
    the allowed lateness) or the ``late`` output: never both, never neither -- for every record
    that reaches its shard after the shard's clock has started. Why: a record goes to ``main``
    only while one of its closes ``c`` is ahead of ``known_wm``. The clock always keeps the
    first close after ``known_wm`` armed (every tick it has not seen fire stays armed, and
    after each firing it arms the first close after what it learnt), so an armed tick at or
    before ``c`` has not fired, and the watermark has not reached ``c`` -- on runners where
    timers hold the output watermark (Dataflow, Flink, Prism) because the armed timer holds the
    windowing step's watermark at or below it, and on the single-worker
    ``BundleBasedDirectRunner`` because a due timer fires before the next input bundle. This
    is per shard: each shard's armed timer holds the router's output watermark, so any number of
    shards and workers keep it. It holds through silences of any length, in past event time
    too, and while the clock catches up after a jump: the armed first close holds the watermark
    below every close the clock has not learnt. For sessions the record's own close is not on
    the clock's grid, so :class:`WindowWithLateRouting` gives the GroupByKey one extra gap of
    allowed lateness: a session record up to one gap beyond ``allowed_lateness`` may come out in
    a late pane instead of ``late`` -- still counted, never dropped.

    When the clock runs. A shard's clock starts ``clock_horizon`` (at most 16 window periods)
    before the first window close of the data (the first start note, or the shard's first
    record if that comes first) and runs until the end-of-time probe fires. It arms up to 16
    ticks ahead while they are within ``clock_horizon`` of the newest close seen, or within a
    day before the wall clock (a live stream: one tick per window period through a silence);
    beyond, its first tick and the ladder follow the watermark.

    What is not verified, and counted. A record whose closes all lie before the clock's start
    and which arrives before the clock's first tick fires (a record older than ``clock_horizon``
    before the data's first windows, at the very start of a stream) cannot be judged: the
    watermark may have passed its window before the shard existed. It goes to ``main`` and is
    counted as ``headwater/late_routing.unverified`` (a warning is logged once per worker; the
    run summary shows the count). If its window had expired, the GroupByKey drops it. The
    columnar replay, which knows the watermark exactly, sends such a record to ``late``.

    Cost. A record's event time costs that record and nothing more: an old record never
    starts a clock earlier, and a record in the wall clock's future (a producer with a wrong
    clock) does not extend a clock. Timer firings: one per shard per window period (per gap for
    sessions) of watermark progress while the watermark moves smoothly; a jump of ``D``
    periods costs about ``log2(D)`` rounds of at most 16 ticks and the ladder's probes (one per
    doubling of the window period up to the wall clock: about 20 for a replay of one-minute
    windows from two years ago, one on a live stream), and the end of the input one last round.

    In batch the watermark stays at the minimum until the input is exhausted and then jumps to
    the maximum, so nothing can be late: for bounded input the routing step is skipped and
    ``late`` is empty.

State
    Bounded and tiny: per shard ``known_wm``, the span of armed ticks (at most 16 timers), the
    ladder's probes (one per doubling of the window period up to the wall clock, and the end of
    time) and the newest close seen.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import IterableCoder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import userstate
from apache_beam.transforms import window as beam_window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from headwater.core.accounting import LATE_ROUTING_SHARD, NAMESPACE
from headwater.core.batches import ShardBatches
from headwater.core.bundlestate import BundleState
from headwater.core.deadletter import DeadLetter, dead_letter_for, utc_iso
from headwater.core.shards import DEFAULT_SHARDS, checked_shard_count
from headwater.core.stamps import in_global_window
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

_MIN_MICROS = MIN_TIMESTAMP.micros
_LOG = logging.getLogger(__name__)
# A clock within this much of the wall clock is a live stream's: it keeps ticking through
# silences of any length (one tick per window period), and stops only past the wall clock.
_LIVE_MICROS = 24 * 3600 * 1_000_000
# The end of time: the clock's last probe; once it fires every window has closed.
_END_MICROS = beam_window.GlobalWindow().max_timestamp().micros
# A clock starts at most this many ticks before the data's first close (see _start_for).
_LEAD_TICKS = 16
# A clock keeps this many ticks armed ahead of the watermark it knows: a runner fires every due
# tick of a round together (a round -- one bundle of the routing step -- walks up to this many
# window periods), so the clock keeps up with a watermark that moves faster than a round.
_LOOKAHEAD_TICKS = 16


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
        """The first close time strictly after ``micros`` (for sessions: multiples of the gap)."""
        if self._gap_micros is not None:
            return (micros // self._gap_micros + 1) * self._gap_micros
        return min(self.closes(self.windows(micros - self._lateness_micros)))

    def first_at_or_after(self, micros: int) -> int:
        """The first close time at or after ``micros``."""
        return self.next_after(micros - 1)

    def last_at_or_before(self, micros: int) -> int:
        """The last close time at or before ``micros``: a record's carrier timestamp into the
        router (see :class:`_SpreadFn`). ``micros`` itself where the grid ends (year 9999)."""
        try:
            first = self.next_after(micros)
            back = max(1, self.next_after(first) - first)  # one step of the grid, near here
            last = self.next_after(micros - back)
            while last > micros:  # the step before was longer (a month, a DST day)
                back *= 2
                last = self.next_after(micros - back)
            while (following := self.next_after(last)) <= micros:
                last = following
        except (OverflowError, ValueError):
            return micros
        return last


def _future_after(wall_seconds: float, horizon_micros: int) -> int:
    """Event times past this are in the wall clock's future (a producer's wrong clock): they
    neither start nor extend a clock."""
    return round(wall_seconds * 1_000_000) + horizon_micros


class _Start(NamedTuple):
    """A spreader's note to every shard: records have begun at ``micros`` of event time."""

    micros: int


class _Stamped(NamedTuple):
    """A record on its way to its shard with its event time; it travels stamped with the last
    close at or before that (see :class:`_SpreadFn`)."""

    micros: int
    record: Any


class _SpreadFn(beam.DoFn):
    """Deals records round robin over the router's shards; tells every shard where data begins.

    Each instance (one per worker thread) sends a :class:`_Start` to every shard with its first
    record (not from the wall clock's future): so every shard's clock runs from the start of the
    data, idle or not. A shard whose clock runs already ignores the note.

    A record travels as :class:`_Stamped` (its event time inside), carried by the last close
    of the clock's grid at or before its event time; the router stamps it back. A bundle's
    notes and records go to each shard as one batch, in order, timestamped with the earliest
    carrier among them (:class:`~headwater.core.batches.ShardBatches`). Prism
    hands a key's data and timers to the DoFn in timestamp order (data first at a tie) and
    fires no timer past the watermark, so a record stamped with its own event time would wait
    behind every armed tick before it: one just past a window's close waited until the
    watermark passed that close (up to ``max_out_of_orderness`` of a live stream, and for good
    if the stream then went quiet). Stamped with that close it comes before its tick.
    """

    def __init__(self, shards: int, horizon_micros: int, clock: _Clock):
        self._shards = shards
        self._horizon_micros = horizon_micros
        self._clock = clock
        self._noted = False  # this instance sent its start note
        self._next = 0
        self._future = _future_after(time.time(), horizon_micros)
        self._spread = [
            Metrics.counter(NAMESPACE, f"{LATE_ROUTING_SHARD}{i}") for i in range(shards)
        ]
        self._batches = ShardBatches()
        self._carried = (1, 0)  # [close, next close): the event times the last carrier covers

    def setup(self) -> None:
        self._next = random.randrange(self._shards)  # workers start on different shards

    def _carrier(self, micros: int) -> int:
        """:meth:`_Clock.last_at_or_before`, remembered over the grid step it falls in (the
        records of a stream mostly fall in the step of the one before)."""
        low, high = self._carried
        if low <= micros < high:
            return low
        low = self._clock.last_at_or_before(micros)
        try:
            on_grid = self._clock.first_at_or_after(low) == low
            high = self._clock.next_after(low) if on_grid else low
        except (OverflowError, ValueError):  # where the grid ends: nothing to remember
            high = low
        self._carried = (low, high)
        return low

    def start_bundle(self) -> None:
        self._future = _future_after(time.time(), self._horizon_micros)  # once per bundle
        self._batches = ShardBatches()

    def finish_bundle(self):
        yield from self._batches.drain()

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        micros = timestamp.micros
        carrier = self._carrier(micros)
        future = micros > self._future  # a producer's wrong clock: no note
        if not future and not self._noted:
            self._noted = True
            for shard in range(self._shards):
                full = self._batches.add(shard, _Start(micros), carrier)
                if full is not None:
                    yield full
        shard = self._next
        self._next = (shard + 1) % self._shards
        self._spread[shard].inc()
        full = self._batches.add(shard, _Stamped(micros, element), carrier)
        if full is not None:
            yield full


class _RouteLateFn(beam.DoFn):
    """One shard: a clock of event-time timers that never stops until the end of time."""

    KNOWN_WM = userstate.ReadModifyWriteStateSpec("known_wm", VarIntCoder())
    # (first, last): the clock's armed ticks, every close on its grid from first to last.
    ARMED = userstate.ReadModifyWriteStateSpec("armed", TupleCoder([VarIntCoder(), VarIntCoder()]))
    NEWEST_CLOSE = userstate.ReadModifyWriteStateSpec("newest_close", VarIntCoder())
    # The ladder's probes, level by level (timer tag "ladder<level>"); see _arm_ladder.
    LADDER = userstate.ReadModifyWriteStateSpec("ladder", IterableCoder(VarIntCoder()))
    TICK = userstate.TimerSpec("tick", TimeDomain.WATERMARK)

    def __init__(
        self,
        window_fn: beam_window.WindowFn,
        lateness_micros: int,
        horizon_micros: int,
        wall_clock: Callable[[], float] = time.time,
    ):
        self._window_fn = window_fn
        self._lateness_micros = lateness_micros
        self._horizon_micros = horizon_micros
        self._wall_clock = wall_clock
        self._wall: int | None = None
        self._clock = _Clock(window_fn, lateness_micros)
        first = self._clock.next_after(0)
        self._span = max(1, self._clock.next_after(first) - first)  # the ladder's unit
        # Every read, write and clear of this DoFn's state goes through it (core.bundlestate).
        self._cells = BundleState()
        # Session closes fall between the clock's ticks (one gap apart), fixed ones on them.
        self._off_grid_micros = (
            window_fn.gap_size.micros if isinstance(window_fn, beam_window.Sessions) else 0
        )
        self._main = Metrics.counter(NAMESPACE, "late_routing.main")
        self._late = Metrics.counter(NAMESPACE, "late_routing.late")
        self._unverified = Metrics.counter(NAMESPACE, "late_routing.unverified")
        self._ticks = Metrics.counter(NAMESPACE, "late_routing.ticks")
        # Its max is the newest watermark any shard has seen (--metrics_port's watermark lag).
        self._watermark = Metrics.distribution(NAMESPACE, "watermark_ms")
        self._warned = False

    def process(
        self,
        element,
        timestamp=beam.DoFn.TimestampParam,
        known_state=beam.DoFn.StateParam(KNOWN_WM),
        armed_state=beam.DoFn.StateParam(ARMED),
        newest_state=beam.DoFn.StateParam(NEWEST_CLOSE),
        timer=beam.DoFn.TimerParam(TICK),
        ladder_state=beam.DoFn.StateParam(LADDER),
    ):
        _, items = element
        if not isinstance(items, list):  # one item alone (a job updated in flight may hold some)
            items = [items]
        states = (known_state, armed_state, newest_state, timer, ladder_state)
        for item in items:
            yield from self._route(item, timestamp, *states)

    def _route(
        self,
        record: Any,
        timestamp: Timestamp,
        known_state: Any,
        armed_state: Any,
        newest_state: Any,
        timer: Any,
        ladder_state: Any,
    ) -> Any:
        """One item of a shard's batch: a start note, or a record routed to main or late."""
        # A bare record is stamped with its event time (a job updated in flight may hold some).
        if isinstance(record, _Stamped):
            timestamp = Timestamp(micros=record.micros)
            record = record.record
        elif isinstance(record, _Start):
            timestamp = Timestamp(micros=record.micros)
        known_wm = self._cells.read(known_state)
        armed = self._cells.read(armed_state)
        armed_at = None if armed is None else armed[0]
        windows = self._clock.windows(timestamp.micros, record)
        closes = self._clock.closes(windows)
        if isinstance(record, _Start):
            if min(closes) > self._future():
                return  # a note from the wall clock's future (a producer's wrong clock)
            self._note_newest(newest_state, max(closes))
            if armed_at is None and known_wm is None:  # the first note starts the clock
                start = self._start_for(min(closes))
                newest = self._cells.read(newest_state)
                self._start_clock(timer, armed_state, ladder_state, start, newest)
            return
        if known_wm is None:
            known_wm = _MIN_MICROS
        open_closes = [c for c in closes if not rules.is_late(c, known_wm)]
        if not open_closes:
            self._late.inc()
            late = self._late_record(record, timestamp, known_wm, windows)
            yield beam.pvalue.TaggedOutput("late", in_global_window(late, timestamp.micros))
            return
        self._note_newest(newest_state, max(open_closes))
        future = min(open_closes) > self._future()
        if armed_at is None and known_wm == _MIN_MICROS and future:
            pass  # on time; a clock started in the wall clock's future would never tick
        elif armed_at is None and known_wm == _MIN_MICROS:  # came before its shard's note
            start = self._start_for(min(open_closes))
            newest = self._cells.read(newest_state)
            self._start_clock(timer, armed_state, ladder_state, start, newest)
        elif armed_at is None or max(open_closes) + self._off_grid_micros < armed_at:
            # Its closes lie before the clock's first tick, which has not fired yet (a record
            # older than clock_horizon before the data's first windows).
            self._unverify()
        self._main.inc()
        yield in_global_window(record, timestamp.micros)

    def _start_clock(
        self, timer: Any, armed_state: Any, ladder_state: Any, start: int, newest: Any
    ) -> None:
        """Starts the clock at ``start`` (a close on its grid): ``start``, the ticks after it
        (see :meth:`_arm_ahead`) and the ladder above them are armed."""
        timer.set(Timestamp(micros=start), dynamic_timer_tag=str(start))
        self._arm_ahead(timer, armed_state, ladder_state, (start, start), newest)

    def _arm_ahead(
        self,
        timer: Any,
        armed_state: Any,
        ladder_state: Any,
        armed: tuple[int, int],
        newest: int | None,
    ) -> None:
        """Arms ``armed[0]`` (the first close after the watermark the clock knows) whatever
        comes, the next ticks up to ``_LOOKAHEAD_TICKS`` while :meth:`_keeps_ticking` (those
        after ``armed[1]`` are new), and the ladder above the last; writes the armed span."""
        first, last = armed
        tick = first
        for _ in range(_LOOKAHEAD_TICKS):
            if tick > _END_MICROS:
                break
            if tick > last:
                if tick > first and not self._keeps_ticking(tick, newest):
                    break
                timer.set(Timestamp(micros=tick), dynamic_timer_tag=str(tick))
                last = tick
            tick = self._clock.next_after(tick)
        if last >= first:
            self._cells.write(armed_state, (first, last))
        else:
            self._cells.clear(armed_state)  # past the end of time: the clock has stopped
        self._arm_ladder(timer, ladder_state, max(first, last))

    def _arm_ladder(self, timer: Any, ladder_state: Any, above: int) -> None:
        """Arms the ladder above ``above``: at level ``k`` the first close at or after the next
        multiple of ``span * 2**k``, up to the wall clock (plus ``clock_horizon``), and the end
        of time itself.

        A watermark that jumps D window periods past the clock (the data resumed after a
        silence, a replay jumped ahead) fires the probes it passed, so the clock learns it in
        about log2(D) rounds instead of D/16; the probes are aligned, so a clock that moves one
        tick re-arms about two of them, not all. Beyond the wall clock only the end of time is
        probed: the watermark gets there only when the input ends (data from the wall clock's
        future does not move the clock), so a live stream's ladder is that one probe.
        """
        armed = list(self._cells.read(ladder_state) or ())
        probes: list[int] = []
        size = self._span
        ceiling = min(self._future(), _END_MICROS)
        while True:
            try:
                probe = self._clock.first_at_or_after((above // size + 1) * size)
            except (OverflowError, ValueError):  # a calendar grid ends at year 9999
                break
            if probe >= ceiling:
                break
            if not probes or probe > probes[-1]:
                probes.append(probe)
            size *= 2
        probes.append(_END_MICROS)
        for level, probe in enumerate(probes):
            if level >= len(armed) or armed[level] != probe:
                timer.set(Timestamp(micros=probe), dynamic_timer_tag=f"ladder{level}")
        for level in range(len(probes), len(armed)):
            timer.clear(dynamic_timer_tag=f"ladder{level}")
        if probes != armed:
            self._cells.write(ladder_state, probes)

    def _keeps_ticking(self, tick: int, newest: int | None) -> bool:
        """Whether the clock arms more than its first tick up to ``tick``: within
        ``clock_horizon`` of the newest close seen, or on a live stream (within a day before
        the wall clock). Beyond, the first tick and the ladder follow the watermark."""
        if newest is not None and tick <= newest + self._horizon_micros:
            return True
        wall = self._wall_micros()
        return wall - _LIVE_MICROS <= tick <= wall

    def _start_for(self, close: int) -> int:
        """Where a clock starts for data whose earliest close is ``close``: ``clock_horizon``
        before it, but at most ``_LEAD_TICKS`` ticks (short windows would walk a long lead
        before any window could close, delaying every result)."""
        first = self._clock.first_at_or_after(close)
        step = max(1, self._clock.next_after(first) - first)
        return self._clock.first_at_or_after(close - min(self._horizon_micros, _LEAD_TICKS * step))

    def _note_newest(self, newest_state: Any, close: int) -> None:
        # A close in the wall clock's future (a producer's wrong clock) does not extend the
        # clock: that record costs itself and nothing more.
        if close > self._future():
            return
        newest = self._cells.read(newest_state)
        if newest is None or close > newest:
            self._cells.write(newest_state, close)

    def start_bundle(self) -> None:
        self._wall = None  # read the wall clock once per bundle, not per record
        self._cells.reset()

    def finish_bundle(self) -> None:
        self._cells.reset()

    def _wall_micros(self) -> int:
        if self._wall is None:
            self._wall = round(self._wall_clock() * 1_000_000)
        return self._wall

    def _future(self) -> int:
        return _future_after(self._wall_micros() / 1_000_000, self._horizon_micros)

    def _unverify(self) -> None:
        """A record judged on time before its shard's clock could vouch for it: the windowing
        step may drop it."""
        self._unverified.inc()
        if not self._warned:
            self._warned = True
            _LOG.warning(
                "late routing: a record older than the stream's first windows reached its shard "
                "before the shard's clock first ticked; it went on to its window unverified. "
                "Counted as headwater/late_routing.unverified; raise clock_horizon to cover "
                "such records."
            )

    @userstate.on_timer(TICK)
    def on_tick(
        self,
        fired_at=beam.DoFn.TimestampParam,
        known_state=beam.DoFn.StateParam(KNOWN_WM),
        armed_state=beam.DoFn.StateParam(ARMED),
        newest_state=beam.DoFn.StateParam(NEWEST_CLOSE),
        timer=beam.DoFn.TimerParam(TICK),
        ladder_state=beam.DoFn.StateParam(LADDER),
    ):
        self._ticks.inc()
        previous = self._cells.read(known_state)
        known_wm = max(fired_at.micros, _MIN_MICROS if previous is None else previous)
        self._cells.write(known_state, known_wm)
        self._watermark.update(known_wm // 1000)  # the watermark has reached known_wm
        if known_wm >= _END_MICROS:  # the end of time: every window has closed
            self._cells.clear(armed_state)
            return
        armed = self._cells.read(armed_state)
        if armed is None or armed[1] <= known_wm:  # every armed tick has fired
            following = self._clock.next_after(known_wm)
            armed = (following, following - 1)
        elif armed[0] <= known_wm:  # (a round may fire its ticks in any order)
            armed = (self._clock.next_after(known_wm), armed[1])
        newest = self._cells.read(newest_state)
        self._arm_ahead(timer, armed_state, ladder_state, armed, newest)

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
    ``clock_horizon`` is how far before the first and past the newest window the clock ticks;
    ``shards`` how many keys (each with its own clock) the routing is spread over.
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
        shards: int = DEFAULT_SHARDS,
    ):
        super().__init__()
        self._window_fn = _check_window_fn(window_fn)
        self._lateness_micros = _lateness_micros(allowed_lateness)
        self._horizon_micros = round(parse_duration(clock_horizon, name="clock_horizon") * 1e6)
        self._shards = checked_shard_count(shards)
        self.sharded = False  # once applied: whether the records went by shard (a stream)

    def expand(self, pcoll):
        if not isinstance(pcoll.windowing.windowfn, beam_window.GlobalWindows):
            raise ValueError(
                f"RouteLateData needs its input in the global window, got "
                f"{pcoll.windowing.windowfn!r}; route late data before beam.WindowInto"
            )
        self.sharded = not pcoll.is_bounded
        if pcoll.is_bounded:
            # Batch: the watermark only moves once all input is in, so nothing is late.
            return LateRouted(pcoll, pcoll.pipeline | "NoLateData" >> beam.Create([]))
        routed = (
            pcoll
            | "SpreadOverShards"
            >> beam.ParDo(
                _SpreadFn(
                    self._shards,
                    self._horizon_micros,
                    _Clock(self._window_fn, self._lateness_micros),
                )
            ).with_output_types(typehints.KV[int, typehints.Any])
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
        shards: int = DEFAULT_SHARDS,
    ):
        super().__init__()
        self._route = RouteLateData(
            window_fn, allowed_lateness=allowed_lateness, clock_horizon=clock_horizon, shards=shards
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

    @property
    def sharded(self) -> bool:
        """Once applied: whether late routing went by shard (see :class:`RouteLateData`)."""
        return self._route.sharded

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
