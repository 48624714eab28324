"""Stream replay on the columnar path: what a streaming run of ``windowed_metrics`` outputs, fast.

``--replay_as_stream`` replays files as a stream: records arrive in file order, and every
``watermark_every`` records the watermark advances to ``max event time seen -
max_out_of_orderness`` (:func:`headwater.io.streamreplay.replay_stream`, the bounded-out-of-
orderness policy). The record path runs that stream through Beam's streaming DirectRunner
(``TestStream``), one record at a time: under a thousand events per second. For the
configurations below, :class:`ReplayWindowedMetricsColumnar` computes the same outcome over Arrow
blocks in one DoFn on the batch runner, replaying the stream's watermark itself:

``rows``         one row per (window, key) with every record that reached the window while it was
                 open -- the on-time pane, emitted (and, with ``output=``, written to that window's
                 files, named and laid out as :class:`~headwater.io.fileio.WriteWindowedFiles`
                 names them) as soon as the replayed watermark passes the window's end;
``late``         each record whose window had closed when it arrived: the record path's envelope
                 (``stage="late"``, ``LateData``, ``window``, ``lateness_ms``), built by the same
                 code (:func:`headwater.windowing.late.late_dead_letter`);
``duplicate``    duplicates (with ``emit_duplicates=True``; always counted);
``dead_letter``  the record path's dead letters, built by its own parse code.

The rules, record by record in arrival order, with ``W`` the watermark the stream had emitted
before the record's group of ``watermark_every`` records (``-inf`` for the first group):

- dedup (``keep="first"``, event time): an id is forgotten once ``W`` reaches its forget time
  (:func:`headwater.windowing.rules.is_forgotten`: when the record path's sweep fires); otherwise
  a copy is a duplicate by :func:`headwater.windowing.rules.is_duplicate`, and the anchor is the
  newest event time of the id's copies. Duplicates are decided before lateness, as on the record
  path.
- lateness: a kept record whose window has closed at ``W`` is late
  (:func:`headwater.windowing.rules.is_late`; allowed lateness is 0 on this path, so a window
  closes at its end); ``lateness_ms`` is measured from the last window end at or before ``W`` -- the
  record path's router learns the watermark from a timer at each window end and reports the same
  lower bound.
- a window's row is final when ``W`` passes its end: no later record can enter it.

These are the record path's rules on the streaming DirectRunner, where every timer due at a
watermark fires before the next records arrive; the tests replay generated and adversarial
streams through both and compare rows, late envelopes and counters. Where the two can differ
the record path counts it: a record older than ``clock_horizon`` before the data's first
windows that reaches its router shard before the shard's clock first ticks goes on unverified
(``headwater/late_routing.unverified``, in the run summary) and the GroupByKey drops it if its
window has expired. This path knows the watermark exactly, so such a record goes to ``late``.
(Silences of any length are judged alike by both: the router's clock follows the watermark
through them.)

Accounting: ``records_in == output + duplicate + dead_letter + late``, counted in bulk per
block under the ``headwater`` namespace, like the record path.

Supported (:func:`replay_unsupported_reason`; the pipeline falls back to the ``TestStream``
replay otherwise): what :func:`~headwater.columnar.columnar_supported` accepts, with
fixed or calendar windows and ``allowed_lateness=0`` (late panes and overlapping windows depend
on how the streaming runner bundles records, which a replay cannot reproduce faithfully).

State is bounded as in a streaming run: ids are dropped from the dedup table once their expiry
is behind ``W``, and each window's partial aggregates are released when the window is emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from headwater.columnar.batch import ComputeColumnarFn
from headwater.columnar.state import (
    ColumnarOptions,
    ColumnarState,
)
from headwater.core.deadletter import DeadLetter
from headwater.io.fileio import (
    match_files,
)
from headwater.io.formats import JsonFormat
from headwater.io.streamreplay import RecordEventTime
from headwater.windowing import rules
from headwater.windowing.late import late_dead_letter
from headwater.windowing.rules import NO_TIME

_MIN_MICROS = MIN_TIMESTAMP.micros
_END_MICROS = MAX_TIMESTAMP.micros
_PRUNE_AT_LEAST = 1 << 16  # ids held before the dedup table is first pruned
_ALLOWED_LATENESS = 0  # the only allowed lateness the replay takes (replay_unsupported_reason)


class ReplayState(ColumnarState):
    """A run's state plus the replayed stream: element count, newest event time, watermark."""

    def __init__(self, options: ColumnarOptions, watermark_every: int):
        super().__init__(options)
        self.every = watermark_every
        self.elements = 0  # records that entered the stream so far (the replay's ordinal)
        self.max_seen = NO_TIME  # newest event time observed, micros
        self.watermark = _MIN_MICROS  # the last watermark the stream emitted, micros
        self.late: list[DeadLetter] = []
        self.late_count = 0
        # id -> anchor, record by record (the batch path's id table works block by block)
        self._seen: dict[str, int] = {}
        self._pruned_at = 0
        self.assign = options.assigner

    def watermarks_before(self, event_times: np.ndarray) -> np.ndarray:
        """Per element of a block (event time or ``NO_TIME``): the watermark before its group.

        Advances the stream past the block: the element count, the newest event time and the
        emitted watermark (only at group ends, monotone, floored to the millisecond).
        """
        n = len(event_times)
        running = np.maximum.accumulate(np.maximum(event_times, self.max_seen)) if n else None
        ordinals = self.elements + np.arange(n, dtype=np.int64)
        ends = np.flatnonzero((ordinals + 1) % self.every == 0)
        if len(ends):
            seen = running[ends]  # type: ignore[index]
            emitted = np.where(
                seen == NO_TIME,
                _MIN_MICROS,
                (seen - self.options.out_of_order_micros) // 1000 * 1000,
            )
            emitted = np.maximum.accumulate(np.maximum(emitted, self.watermark))
        else:
            emitted = np.empty(0, dtype=np.int64)
        groups_before = np.searchsorted(ends, np.arange(n), side="left")
        before = np.where(
            groups_before == 0,
            self.watermark,
            emitted[np.maximum(groups_before - 1, 0)] if len(ends) else self.watermark,
        )
        if n:
            self.max_seen = int(running[-1])  # type: ignore[index]
        if len(ends):
            self.watermark = int(emitted[-1])
        self.elements += n
        return before

    def deduplicate_replayed(self, ids: list[str], ts: list[int], watermarks: list[int]) -> Any:
        """Keep mask over rows in arrival order: the record path's dedup with a replayed clock."""
        horizon = self.options.horizon_micros
        anchors = self._seen
        keep = np.ones(len(ids), dtype=bool)
        for i, (ident, t, watermark) in enumerate(zip(ids, ts, watermarks, strict=True)):
            anchor = anchors.get(ident)
            if anchor is not None and rules.is_forgotten(anchor, horizon, watermark):
                anchor = None  # its timer fired before this copy arrived: forgotten
            if rules.is_duplicate(t, anchor, horizon):
                keep[i] = False
                anchors[ident] = max(anchors[ident], t)
            else:
                anchors[ident] = t
        self._prune()
        return keep

    def _prune(self) -> None:
        if len(self._seen) < max(2 * self._pruned_at, _PRUNE_AT_LEAST):
            return
        horizon, watermark = self.options.horizon_micros, self.watermark
        self._seen = {
            k: a for k, a in self._seen.items() if not rules.is_forgotten(a, horizon, watermark)
        }
        self._pruned_at = len(self._seen)

    def known_watermark(self, watermark: int) -> int:
        """The last window end at or before ``watermark``: what the record path's router knows.

        Fixed and calendar windows tile time, and the record path's clock ticks at every window
        end (:class:`headwater.windowing.late.WindowWithLateRouting`): that end is the start of
        the window holding ``watermark``.
        """
        [(start, _)] = self.assign.windows(watermark)
        return start


class ReplayColumnarFn(ComputeColumnarFn):
    """A glob -> rows as windows close, late envelopes, dead letters, duplicates, file paths."""

    _sizes_ids = False  # the replay forgets ids as a stream does (ReplayState)
    _may_fork_decoding = False  # its late envelopes and watermark read the blocks' records

    def __init__(self, options: ColumnarOptions, watermark_every: int):
        super().__init__(options)
        self._every = watermark_every
        self._event_time = RecordEventTime(
            JsonFormat() if options.file_format == "json" else None, options.event_time
        )

    def process(self, pattern: str) -> Iterator[Any]:

        state = ReplayState(self._options, self._every)
        for path in match_files(pattern):
            for _ in self._blocks_of(state, path):
                self._blocks.inc()
                yield from self._flush(state)
                yield from self._emit(state.take_closed(state.watermark))
        yield from self._flush(state)
        # The end of the stream: the watermark goes to +infinity and closes every window.
        yield from self._emit(state.take_closed(_END_MICROS))

    def _emit(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        if self._options.output is None:
            yield from self._rows(groups)
            return
        for path in self._write(groups):
            yield beam.pvalue.TaggedOutput("written", path)

    def _flush(self, state: ColumnarState) -> Iterator[Any]:
        assert isinstance(state, ReplayState)
        yield from super()._flush(state)
        if state.late_count:
            self._counters["late"].inc(state.late_count)
            state.late_count = 0
        for letter in state.late:
            yield beam.pvalue.TaggedOutput("late", letter)
        state.late.clear()

    def _finish_block(self, state, elements, rows, element) -> None:
        assert isinstance(state, ReplayState)
        # The stream's watermark: every record that has an event time moves it, including the
        # ones that become dead letters later (the replay stamps records before parsing them).
        event_times = np.full(len(elements), NO_TIME, dtype=np.int64)
        accepted = np.zeros(len(elements), dtype=bool)
        if rows is not None:
            where = np.searchsorted(elements, rows.positions)
            event_times[where] = rows.ts
            accepted[where] = True
        for i in np.flatnonzero(~accepted).tolist():
            stamp = self._replay_time(element(int(elements[i])))
            if stamp is not None:
                event_times[i] = stamp
        before = state.watermarks_before(event_times)
        if rows is None:
            return
        row_watermarks = before[where]
        if state.id_of is not None:
            keep = state.deduplicate_replayed(
                rows.ids.to_pylist(),
                rows.ts.tolist(),
                row_watermarks.tolist(),
            )
        else:
            keep = np.ones(len(rows.ts), dtype=bool)
        closes, _, _ = rules.closes_v(state.assign, rows.ts, _ALLOWED_LATENESS)
        late = keep & rules.is_late_v(closes, row_watermarks)
        main = keep & ~late
        kept, n_late = int(keep.sum()), int(late.sum())
        state.counts["output"] += kept - n_late
        state.counts["duplicate"] += len(keep) - kept
        state.late_count += n_late
        for i in np.flatnonzero(late).tolist():
            state.late.append(
                self._late_letter(state, element(int(rows.positions[i])), row_watermarks[i])
            )
        if self._options.emit_duplicates and kept < len(keep):
            for position in rows.positions[~keep].tolist():
                state.duplicates.append(self._decoded(element(position)))
        state.aggregate(rows, main)

    def _replay_time(self, element: Any) -> int | None:
        try:
            stamp = self._event_time(element)
        except Exception:  # no usable event time: the stream does not observe it
            return None
        return None if stamp is None else int(stamp.micros)

    def _late_letter(self, state: ReplayState, element: Any, watermark: int) -> DeadLetter:
        """The record path's late envelope (parse first: the router gets the parsed record).

        The row was accepted (and counted as parsed) with its block: parsing it again here for
        its record counts nothing.
        """
        parsed = state.parse.parse(element)
        assert not isinstance(parsed, DeadLetter), "an accepted row parses"
        record, timestamp = parsed
        windows = state.assign.windows(timestamp.micros)
        close, start, end = rules.latest_close(windows, _ALLOWED_LATENESS)
        window = beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))
        return late_dead_letter(
            record,
            timestamp=timestamp,
            known_wm=state.known_watermark(int(watermark)),
            window=window,
            close=close,
            lateness_micros=_ALLOWED_LATENESS,
        )
