"""The state of one columnar run: accepted rows, dedup, pre-aggregation and merge.

A block's rows that the vectorized checks accept (or the record path's code accepts, one by one)
are merged into :class:`AcceptedRows` in arrival order; :class:`ColumnarState` deduplicates them
(keep-first, event time, against the anchors carried in :class:`~headwater.columnar.idtable.
IdAnchors`), pre-aggregates the kept rows per (window, key) with ``pyarrow`` ``group_by``, and
merges the partials into one row per (window, key) at the end (or, in the replay, as windows
close). :class:`ColumnarOptions` is one run's configuration.

Dedup (keep-first, event time) is vectorized with numpy: within a block, a copy's anchor is the
running maximum of the earlier copies' event times (plus the anchor carried over from earlier
blocks), and the copy is a duplicate by :func:`headwater.windowing.rules.is_duplicate_v` -- the
record path's rule, exactly. The carried ``id -> anchor`` map is a numpy open-addressing table keyed
by a 64-bit hash of each id's bytes; every hit is confirmed by comparing the ids themselves
(ids whose hash another id holds go to a plain dict), so two different ids never share an
anchor. Windows are assigned by :mod:`headwater.windowing.rules` (integer arithmetic for fixed
and sliding windows, the zone's calendar for calendar windows), each block is pre-aggregated
with ``pyarrow`` ``group_by`` into partials, and the partials are merged at the end into one row
per (window, key), single-threaded so that float sums are the same every run. Session windows
have no per-instant rule: each row opens ``[ts, ts + gap)``, a block's rows are merged per key
into sessions before they are grouped, and every merge of partials merges the sessions again
(:func:`headwater.windowing.rules.merge_sessions_v`), so a session that spans blocks ends up
as one row, as the record path's GroupByKey makes it.
Integer sums are held in two int64 limbs (low 32 bits, the rest), so they never wrap around:
the exact sum is put together in Python, as the record path's, and converted to float once.
(Exact for values below 2**64 in magnitude -- JSON allows more; a block holding such a value
sums that field as floats.)

Dedup state: the record path's batch rule, whatever the blocks
    The record path in batch never forgets an id (its watermark only moves when the input is
    exhausted, so no expiry timer fires before then), so a copy is a duplicate exactly when
    :func:`headwater.windowing.rules.is_duplicate` says so against every earlier copy in
    arrival order (file, then line), however late in the input it comes and wherever blocks
    are cut. :class:`~headwater.columnar.batchids.BatchIds` keeps the ids: the ones within the
    horizon in memory, the settled ones on local disk. The stream replay
    (:mod:`headwater.columnar.replay`) forgets ids as a streaming run's timers would.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from headwater.columnar.batchids import BatchIds, GroupedIds
from headwater.columnar.ranges import start_ranges, starting_in
from headwater.core.deadletter import DeadLetter, dead_letter_for
from headwater.transforms.aggregate import MetricSpec, RecordCheck
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.parse import ParseFn
from headwater.transforms.process import MetricsCheck
from headwater.windowing import rules
from headwater.windowing.eventtime import MAX_EVENT_MICROS, EventTimeExtractor
from headwater.windowing.rules import NO_TIME

UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_INT64_MAX = int(np.iinfo(np.int64).max)
_LOW_BITS = 32  # an int sum is kept as two int64 limbs: the low 32 bits and the rest
_LOW_MASK = np.int64((1 << _LOW_BITS) - 1)
# Ints below this size fit the limbs: a high limb of at most 2**32, whose sums over fewer than
# 2**31 rows stay in int64. JSON ints beyond it (past 1.8e19) are summed as floats.
_LIMB_RANGE = 1 << 64
_TWO_63 = float(2**63)
INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


def dedup_field(dedup: DeduplicateById) -> str | None:
    """The top-level field ``dedup`` reads its ids from, or None (a nested path, ``id_fn`` ...)."""
    field = dedup.id_field
    return field if field is not None and "." not in field else None


# --------------------------------------------------------------------------------------------
# Blocks


@dataclasses.dataclass
class AcceptedRows:
    """Accepted rows of one block, in arrival order."""

    ts: np.ndarray  # int64 event time, micros
    ids: pa.Array | None  # string ids (None without dedup)
    keys: pa.Array  # key texts (strings, :func:`headwater.transforms.keys.key_text`)
    values: np.ndarray  # float64 [rows, fields] (int sums stay exact in ``int_values``)
    int_values: list[np.ndarray | None]  # per field, when all were ints: [rows, 2] int64 limbs
    positions: np.ndarray  # position of each row in the block (for emit_duplicates)
    grouped: GroupedIds | None = None  # the rows grouped by id, computed where they were decoded


@dataclasses.dataclass
class ColumnarOptions:
    file_format: str
    decode: Any
    event_time: EventTimeExtractor
    dedup: DeduplicateById | None
    window_fn: beam_window.WindowFn
    key_field: str
    metrics: tuple[MetricSpec, ...]
    max_record_bytes: int | None
    out_of_order_micros: int
    emit_duplicates: bool
    output: str | None = None
    output_format: str = "parquet"
    output_shards: int = 1
    dead_letter_output: str | None = None  # batch: the DoFn writes the dead-letter files
    dead_letter_format: str = "json"
    dead_letter_shards: int = 1
    # processes that write a run's window files, and that decode a large local JSON-lines
    # file (headwater.core.forked: forks this process; only the in-memory local runner's
    # process is known to be safe to fork)
    write_processes: int = 1
    decode_processes: int = 1

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.field for m in self.metrics if m.field is not None))

    @property
    def horizon_micros(self) -> int:
        return self.dedup.horizon_micros if self.dedup is not None else 0

    @functools.cached_property
    def session_gap(self) -> int | None:
        """The gap of session windows (micros), or None for windows with a per-instant rule."""
        fn = self.window_fn
        return fn.gap_size.micros if isinstance(fn, beam_window.Sessions) else None

    @functools.cached_property
    def assigner(self) -> rules.WindowAssigner:
        """The window rule of :attr:`window_fn` (:func:`headwater.windowing.rules.assigner`)."""
        return rules.assigner(self.window_fn)

    def window_starts(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Window start (micros) per window of the rows, and the row of each window.

        The rows are ``None`` when each row has exactly its own window (fixed windows).
        """
        starts, _, rows = self.assigner.windows_v(ts)
        return starts, None if len(rows) == len(ts) else rows

    def window_for(self, start: int) -> beam_window.IntervalWindow:
        """The window that starts at ``start``: its end by the window rule, not ``start + size``.

        Calendar windows have no size (a DST day is 23 or 25 hours, a month 28 to 31 days); the
        newest window holding ``start`` is the one that starts there, for every kind.
        """
        first, end = self.assigner.windows(start)[-1]
        assert first == start, f"no window starts at {start}"
        return beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))

    def window_of(self, start: int, end: int | None) -> beam_window.IntervalWindow:
        """A group's window: a session's own bounds (``end`` given), else :meth:`window_for`."""
        if end is None:
            return self.window_for(start)
        return beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=end))


#: The counters of a run's state (``ColumnarState.counts``), by their Beam names (namespace
#: ``headwater``): the outcomes, the record path's parse counters (the columnar paths count
#: what ``ParseFn`` would), and the rows that took the record path.
PARSED, REFUSED, SLOW_ROWS = "parse.ok", "parse.dead_letter", "columnar.slow_rows"
COUNTS = ("records_in", "output", "duplicate", "dead_letter", PARSED, REFUSED, SLOW_ROWS)


#: A row the record path's code accepted: event time (micros), id, key, metric values.
Accepted = tuple[int, str | None, Any, tuple[float, ...]]


class ColumnarState:
    """The state of one run: dedup anchors, partial aggregates, counters, slow-path helpers."""

    def __init__(self, options: ColumnarOptions):
        self.options = options
        self.metrics = options.metrics
        self.fields = options.fields
        self.parse = ParseFn(
            options.decode,
            options.event_time,
            (MetricsCheck(options.key_field, options.metrics),),
            options.max_record_bytes,
        )
        self._check = RecordCheck(options.key_field, options.metrics)
        self.id_of = options.dedup.id_of if options.dedup is not None else None
        self.ids = BatchIds(options.horizon_micros, options.out_of_order_micros)
        self._partials: list[pa.Table] = []  # w, k, n, then s h m x per field (see aggregate)
        self._compacted = 0  # rows of the partials after the last merge
        self.counts = dict.fromkeys(COUNTS, 0)  # added to the Beam counters as blocks end
        self.dead: list[DeadLetter] = []
        self.duplicates: list[Any] = []

    # --- the slow, exact path ------------------------------------------------------------

    def slow(self, element: Any) -> Accepted | None:
        """The record path's parse/check/id for one element: accepted values or a dead letter."""
        return self.settle(self.slow_result(element))

    def slow_result(self, element: Any) -> tuple[bool, Accepted | DeadLetter]:
        """:meth:`slow` without its effects: whether the element parsed, then its accepted
        values or its dead letter. It changes no state, so a parse thread may call it for the
        lines it sets aside; :meth:`settle` applies the results in arrival order."""
        out = self.parse.parse(element)
        if isinstance(out, DeadLetter):
            return False, out
        record, ts = out
        ident = None
        if self.id_of is not None:
            try:
                ident = self.id_of(record)
            except Exception as exc:  # the record path's _KeyByIdFn makes it a dead letter
                # of the parsed record (its payload canonical JSON, as in the record path)
                return True, dead_letter_for(record, stage="dedup", error=exc, event_time=ts)
        key, values = self._check.key_and_values(record)  # passed at parse: the key text
        return True, (ts.micros, ident, key, values)

    def settle(self, result: tuple[bool, Accepted | DeadLetter]) -> Accepted | None:
        """Counts a :meth:`slow_result` and keeps its dead letter; its accepted values."""
        parsed, outcome = result
        self.counts[PARSED if parsed else REFUSED] += 1
        if isinstance(outcome, DeadLetter):
            self.dead.append(outcome)
            return None
        return outcome

    # --- fast checks over a parsed table -------------------------------------------------

    def fast(self, table: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, dict[str, Any]]:
        """(accept mask, columns) for rows the vectorized checks accept as-is."""
        n = table.num_rows
        names = set(table.schema.names)
        ok = np.ones(n, dtype=bool)
        columns: dict[str, Any] = {}

        def column(name: str) -> Any:
            if name not in names:
                return None
            col = table.column(name)
            return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

        def accept(mask: Any) -> None:
            nonlocal ok
            ok &= np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)

        ts_col = column(self.options.event_time.field)
        if ts_col is None or ts_col.type not in INT_TYPES:
            return np.zeros(n, dtype=bool), columns
        scale = UNIT_MICROS[self.options.event_time.unit]
        raw = pc.fill_null(ts_col.cast(pa.int64()), -1).to_numpy()
        limit = MAX_EVENT_MICROS // scale
        ok &= (raw >= 0) & (raw <= limit)
        columns["ts"] = raw * scale
        if self.id_of is not None:
            id_col = column(dedup_field(self.options.dedup))  # type: ignore[arg-type]
            if id_col is None:
                return np.zeros(n, dtype=bool), columns
            if pa.types.is_string(id_col.type) or pa.types.is_large_string(id_col.type):
                accept(pc.greater(pc.utf8_length(id_col), 0))
                columns["ids"] = id_col.cast(pa.string())
            elif id_col.type in INT_TYPES:
                accept(pc.is_valid(id_col))
                columns["ids"] = id_col.cast(pa.string())
            else:
                return np.zeros(n, dtype=bool), columns
        key_col = column(self.options.key_field)
        if key_col is None:
            return np.zeros(n, dtype=bool), columns
        if pa.types.is_string(key_col.type) or pa.types.is_large_string(key_col.type):
            key_col = key_col.cast(pa.string())
            length = pc.utf8_length(key_col)
            accept(pc.greater(length, 0))
            accept(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(key_col)), length))
        elif key_col.type in INT_TYPES:  # an int's key text is its decimal digits (key_text)
            accept(pc.is_valid(key_col))
            key_col = key_col.cast(pa.string())
        else:
            return np.zeros(n, dtype=bool), columns
        columns["keys"] = key_col
        values = np.zeros((n, len(self.fields)), dtype=np.float64)
        ints: list[np.ndarray | None] = []
        for index, name in enumerate(self.fields):
            col = column(name)
            if col is None:
                return np.zeros(n, dtype=bool), columns
            if col.type in INT_TYPES:
                accept(pc.is_valid(col))
                as_int = pc.fill_null(col.cast(pa.int64()), 0).to_numpy()
                ints.append(_limbs(as_int))
                values[:, index] = as_int
            elif pa.types.is_floating(col.type):
                accept(pc.is_finite(col))
                as_float = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy()
                if bool((np.abs(as_float) >= _TWO_63).any()):
                    # JSON ints past int64 arrive as doubles: the record path's exact ints
                    return np.zeros(n, dtype=bool), columns
                values[:, index] = as_float
                ints.append(None)
            else:
                return np.zeros(n, dtype=bool), columns
        columns["values"] = values
        columns["ints"] = ints
        return ok, columns

    # --- one block of accepted rows ------------------------------------------------------

    def accepted(
        self,
        pieces: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]],
        slow_rows: list[tuple[int, tuple[int, str | None, Any, tuple[float, ...]]]],
    ) -> AcceptedRows | None:
        """Merges fast pieces ``(positions, mask, columns)`` and slow rows into arrival order."""
        positions, ts, ids, keys, values = [], [], [], [], []
        ints: list[list[np.ndarray | None]] = []
        fast = sum(int(np.count_nonzero(mask)) for _, mask, _ in pieces)
        # parsed as the record path's ParseFn would have (the rest counted by settle)
        self.counts[PARSED] += fast
        for where, mask, columns in pieces:
            if not mask.any():
                continue
            if mask.all():  # the usual case: every row of the piece passed the fast checks
                positions.append(where)
                ts.append(columns["ts"])
                if self.id_of is not None:
                    ids.append(columns["ids"])
                keys.append(columns["keys"])
                values.append(columns["values"])
                ints.append(list(columns["ints"]))
                continue
            take = np.flatnonzero(mask)
            positions.append(where[take])
            ts.append(columns["ts"][take])
            index = pa.array(take)
            if self.id_of is not None:
                ids.append(columns["ids"].take(index))
            keys.append(columns["keys"].take(index))
            values.append(columns["values"][take])
            ints.append([None if a is None else a[take] for a in columns["ints"]])
        if slow_rows:
            positions.append(np.array([p for p, _ in slow_rows], dtype=np.int64))
            ts.append(np.array([r[0] for _, r in slow_rows], dtype=np.int64))
            if self.id_of is not None:
                ids.append(pa.array([r[1] for _, r in slow_rows], type=pa.string()))
            slow_keys = [r[2] for _, r in slow_rows]
            keys.append(slow_keys)
            values.append(
                np.array([r[3] for _, r in slow_rows], dtype=np.float64).reshape(
                    len(slow_rows), len(self.fields)
                )
            )
            ints.append(
                [_exact_limbs([r[3][i] for _, r in slow_rows]) for i in range(len(self.fields))]
            )
        if not positions:
            return None
        all_positions = np.concatenate(positions)
        in_order = bool((all_positions[1:] > all_positions[:-1]).all())
        order: Any = slice(None) if in_order else np.argsort(all_positions, kind="stable")
        merged_keys = _merge_keys(keys)
        if not in_order:
            merged_keys = merged_keys.take(pa.array(order))
        merged_ids = pa.concat_arrays(ids) if ids else None
        if merged_ids is not None and not in_order:
            merged_ids = merged_ids.take(pa.array(order))
        merged_ints: list[np.ndarray | None] = []
        for i in range(len(self.fields)):
            parts: list[Any] = [part[i] for part in ints]
            whole = None if any(p is None for p in parts) else np.concatenate(parts)[order]
            merged_ints.append(whole)
        return AcceptedRows(
            ts=np.concatenate(ts)[order],
            ids=merged_ids,
            keys=merged_keys,
            values=np.concatenate(values)[order],
            int_values=merged_ints,
            positions=all_positions[order],
        )

    def deduplicate(self, rows: AcceptedRows) -> np.ndarray:
        """A keep mask: False for duplicates (keep-first, event time, horizon)."""
        if self.id_of is None:
            return np.ones(len(rows.ts), dtype=bool)
        return self.ids.keep(rows.ids, rows.ts, rows.grouped)

    def aggregate(self, rows: AcceptedRows, keep: np.ndarray) -> None:
        """Pre-aggregates the kept rows of a block per (window start, key).

        An int field's sum is kept in two int64 limbs (:func:`_limbs`), the low 32 bits (each
        row's limb is in ``[0, 2**32)``) and the rest, so that no partial or merged sum can wrap
        around below ``2**31`` rows per group (:meth:`_groups` checks it); the exact sum is
        ``high * 2**32 + low``, a Python int, converted to float once at output like the record
        path's. A float field's sum is the low limb itself (its high limb is 0).
        """
        take = np.flatnonzero(keep)
        if len(take) == 0:
            return
        ts = rows.ts[take]
        gap = self.options.session_gap
        starts, repeat = (ts, None) if gap is not None else self.options.window_starts(ts)
        values = rows.values[take]
        ints = [None if a is None else a[take] for a in rows.int_values]
        if repeat is not None:
            values = values[repeat]
            ints = [None if a is None else a[repeat] for a in ints]
            take = take[repeat]
        columns: dict[str, Any] = {"w": starts, "k": rows.keys.take(pa.array(take))}
        if gap is not None:  # each record's own session window, merged per key in _partial
            columns["w"], columns["e"] = rules.session_window(starts, gap)
        for i, limbs in enumerate(ints):
            # min and max over the float64 values: float() is monotonic, so the float of the
            # exact minimum is the minimum of the floats, which is what the rows carry
            columns[f"m{i}"] = values[:, i]
            if limbs is None:
                columns[f"s{i}"] = values[:, i]
                columns[f"h{i}"] = np.zeros(len(starts), dtype=np.int64)
            else:
                columns[f"s{i}"], columns[f"h{i}"] = limbs[:, 0], limbs[:, 1]
        aggs: list[tuple[str, str]] = [("w", "count")]
        for i in range(len(self.fields)):
            aggs += [(f"s{i}", "sum"), (f"h{i}", "sum"), (f"m{i}", "min"), (f"m{i}", "max")]
        self._partials.append(self._partial(pa.table(columns), aggs))
        held = sum(t.num_rows for t in self._partials)
        if len(self._partials) > 1 and held > 2 * self._compacted + (1 << 20):
            # merge the partials so that memory follows the number of groups, not of blocks
            self._partials = [self._merge(self._partials)]
            self._compacted = self._partials[0].num_rows

    def _partial(self, table: pa.Table, aggs: list[tuple[str, str]]) -> pa.Table:
        """``table`` grouped by (w, k) with ``aggs``: w, k, n, then s h m x per field.

        Session windows are merged per key first and grouped by (w, e, k); their ``e`` (the
        session's end) comes last.
        """
        sessions = self.options.session_gap is not None
        if sessions:
            table = _merged_sessions(table)
        group = ["w", "e", "k"] if sessions else ["w", "k"]
        grouped = table.group_by(group, use_threads=False).aggregate(aggs)
        names = ["w", "k", "n"]
        for i in range(len(self.fields)):
            names += [f"s{i}", f"h{i}", f"m{i}", f"x{i}"]
        columns = ["w", "k", *(f"{c}_{f}" for c, f in aggs)]
        if sessions:
            columns.append("e")
            names.append("e")
        return grouped.select(columns).rename_columns(names)

    def _merge(self, tables: list[pa.Table]) -> pa.Table:
        """Partials merged into one partial with the same columns."""
        aggs: list[tuple[str, str]] = [("n", "sum")]
        for i in range(len(self.fields)):
            aggs += [(f"s{i}", "sum"), (f"h{i}", "sum"), (f"m{i}", "min"), (f"x{i}", "max")]
        return self._partial(pa.concat_tables(tables, promote_options="permissive"), aggs)

    def merged(self, tables: list[pa.Table]) -> pa.Table:
        """Partials merged into one table of groups: ``w``, ``k``, ``n``, then ``s h m x`` per
        field (sum limbs, min, max: :func:`exact_sum`), and ``e`` last for sessions."""
        table = self._merge(tables)
        counts = table.column("n")
        if len(counts) and pc.max(counts).as_py() >= 1 << (63 - _LOW_BITS):
            raise OverflowError(
                "a (window, key) holds 2**31 records or more: its exact integer sums would need "
                "more than 64-bit limbs"
            )
        return table

    def _groups(self, tables: list[pa.Table]) -> list[list[Any]]:
        """Partials merged into columns: window start, key, count, then sum, min, max per field.

        Sums are the limbs put together: exact Python ints for int fields.
        """
        return group_columns(self.merged(tables), len(self.fields))

    def take_closed(self, limit_micros: int) -> list[tuple[Any, ...]]:
        """The merged groups of windows ending at or before ``limit_micros``, removed from state.

        Ends come from the window rule (calendar windows have no size): a window of the
        options has ended at ``limit`` iff it starts before the oldest window holding ``limit``.
        The replay (:mod:`headwater.columnar.replay`) calls it as the watermark passes
        window ends; batch calls :meth:`final` once.
        """
        if not self._partials:
            return []
        try:
            first_open = self.options.assigner.windows(int(limit_micros))[0][0]
        except ValueError:  # past the calendar's years (the final watermark): all have ended
            first_open = _INT64_MAX
        # window starts are int64: a limit past that range (the final watermark) closes them all
        bounded = pa.scalar(max(min(first_open, _INT64_MAX), NO_TIME), pa.int64())
        table = pa.concat_tables(self._partials, promote_options="permissive")
        ended = pc.less(table.column("w"), bounded)
        closed = table.filter(ended)
        rest = table.filter(pc.invert(ended))
        self._partials = [rest] if rest.num_rows else []
        self._compacted = rest.num_rows
        return list(zip(*self._groups([closed]), strict=True)) if closed.num_rows else []

    @property
    def held_rows(self) -> int:
        """Rows of the partial aggregates held (what :meth:`final_table` merges)."""
        return sum(table.num_rows for table in self._partials)

    def window_parts(self, count: int) -> list[tuple[int, int]]:
        """The held windows cut into up to ``count`` ranges of window starts ``(first, last)``,
        in order, of about as many partial rows each (a window in one range): what
        :meth:`final_table` merges, in parts. Not for sessions (they merge across starts)."""
        assert self.options.session_gap is None, "a session may merge with the next range's"
        if not self._partials:
            return []
        held = np.concatenate([table.column("w").to_numpy() for table in self._partials])
        return start_ranges(held, count)

    def final_table(self, windows: tuple[int, int] | None = None) -> pa.Table | None:
        """:meth:`final`'s groups as one :meth:`merged` table (None when there are none); with
        ``windows`` (a range of :meth:`window_parts`), the groups of those windows only."""
        tables = self._partials
        if windows is not None:
            tables = [starting_in(table, windows) for table in tables]
        return self.merged(tables) if tables else None

    def final(self) -> Iterator[tuple[Any, ...]]:
        """``(window start, key, count, sum, min, max, ...)`` per (window, key), merged.

        Session windows add the session's end last.
        """
        if not self._partials:
            return iter(())
        return iter(list(zip(*self._groups(self._partials), strict=True)))


def _merged_sessions(table: pa.Table) -> pa.Table:
    """``table`` (columns w, e, k ...) with each row's window replaced by its key's merged
    session (:func:`headwater.windowing.rules.merge_sessions_v`)."""
    if table.num_rows == 0:
        return table
    keys = table.column("k")
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    codes = keys.dictionary_encode().indices.to_numpy().astype(np.int64)
    starts = table.column("w").to_numpy()
    ends = table.column("e").to_numpy()
    order = np.lexsort((starts, codes))
    session, first, last = rules.merge_sessions_v(codes[order], starts[order], ends[order])
    merged_starts = np.empty_like(starts)
    merged_ends = np.empty_like(ends)
    merged_starts[order] = first[session]
    merged_ends[order] = last[session]
    table = table.set_column(table.schema.get_field_index("w"), "w", pa.array(merged_starts))
    return table.set_column(table.schema.get_field_index("e"), "e", pa.array(merged_ends))


def group_columns(table: pa.Table, fields: int) -> list[list[Any]]:
    """A :meth:`ColumnarState.merged` table as Python columns: window start, key, count, then
    sum (exact: an int field's an exact int), min, max per field, and a session's end last."""
    columns = [table.column(name).to_pylist() for name in ("w", "k", "n")]
    for i in range(fields):
        low, high = table.column(f"s{i}").to_pylist(), table.column(f"h{i}").to_pylist()
        columns.append(list(map(exact_sum, low, high)))
        columns += [table.column(f"m{i}").to_pylist(), table.column(f"x{i}").to_pylist()]
    if "e" in table.column_names:
        columns.append(table.column("e").to_pylist())
    return columns


def exact_sum(low: Any, high: int) -> Any:
    """A merged sum from its limbs: ``low + high * 2**32``, an exact int for an int field (a
    float field's sum is ``low``, its ``high`` 0)."""
    return low + (high << _LOW_BITS) if high else low


def _limbs(values: np.ndarray) -> np.ndarray:
    """int64 values as ``[rows, 2]`` limbs: the low 32 bits and the rest (``value >> 32``)."""
    return np.stack([values & _LOW_MASK, values >> _LOW_BITS], axis=1)


def _exact_limbs(values: list[Any]) -> np.ndarray | None:
    """Python ints (of magnitude below 2**64) as :func:`_limbs`; None when one is not."""
    if not all(type(v) is int and -_LIMB_RANGE <= v < _LIMB_RANGE for v in values):
        return None
    pairs = [(v & ((1 << _LOW_BITS) - 1), v >> _LOW_BITS) for v in values]
    return np.array(pairs, dtype=np.int64).reshape(len(values), 2)


def _merge_keys(keys: list[pa.Array | list[str]]) -> pa.Array:
    """The keys of a block's parts (Arrow string arrays, or key texts) as one string array."""
    return pa.concat_arrays(
        [part if isinstance(part, pa.Array) else pa.array(part, type=pa.string()) for part in keys]
    )
