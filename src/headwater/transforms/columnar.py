"""The columnar fast path of ``windowed_metrics``: files in batch, decoded into Arrow, vectorized.

:class:`ComputeWindowedMetricsColumnar` is
:class:`~headwater.transforms.process.ComputeWindowedMetrics` for the case that dominates
backfills -- JSON-lines or Parquet *files* read in *batch* -- computed over blocks of records
instead of one record at a time. It is applied to the pipeline itself
(it reads the files) and returns the same :class:`~headwater.transforms.process.MetricsResult`:

``rows``         one dict per (window, key): ``window_start``, ``window_end`` (tz-aware UTC
                 datetimes), ``key``, one column per metric; each row in its own window, timestamped
                 at the window's end, exactly as the record path emits them in batch;
``late``         always empty (in batch nothing is late, as on the record path);
``duplicate``    the duplicate records (decoded again from their bytes), only with
                 ``emit_duplicates=True`` -- otherwise empty, and the ``duplicate`` counter still
                 counts every one of them;
``dead_letter``  one :class:`~headwater.transforms.deadletter.DeadLetter` per rejected record, built
                 by the record path's own code (same stage, error type, message, original bytes,
                 ``file``/``line`` or ``file``/``record`` origin), plus one ``read`` dead letter
                 per corrupt Parquet file.

Accounting is the record path's: ``records_in``, ``output``, ``duplicate``, ``dead_letter`` and
``late`` (namespace ``headwater``) are incremented in bulk, once per block, so that
``records_in == output + duplicate + dead_letter + late`` holds and every counter equals the
record path's for the same input. Read dead letters (corrupt files) are counted here too.

How it works
    One DoFn reads the matched files in sorted order (arrival order = file order, line order), in
    blocks of a few MiB. A JSON block is parsed with ``pyarrow.json`` (multi-threaded); when the
    parser refuses a block (one malformed line refuses all of it), the block is bisected down to
    small pieces and the pieces that still fail are handled line by line. Event time, id, key and
    aggregated fields are then checked with vectorized kernels; every row the fast checks do not
    accept (a missing or odd-typed field, a float event time, a non-finite amount, a blank-padded
    key, invalid UTF-8 ...) goes through the record path's own parse/check/id code, which either
    accepts it with exactly the record path's values or produces exactly its dead letter.

    Dedup (keep-first, event time) is vectorized with numpy: within a block, a copy's anchor is the
    running maximum of the earlier copies' event times (plus the anchor carried over from earlier
    blocks in a dict), and the copy is a duplicate iff ``event_time <= anchor + horizon`` -- the
    record path's rule, exactly. Windows (fixed or sliding) are assigned with integer arithmetic,
    each block is pre-aggregated with ``pyarrow`` ``group_by`` into partials, and the partials are
    merged at the end into one row per (window, key).

Bounded dedup state
    The carried ``id -> anchor`` dict forgets an id once ``anchor + horizon`` is behind the
    watermark a streaming run would have -- the newest event time seen before the block minus
    ``max_out_of_orderness`` -- so the state is bounded by the horizon, not by the input. A copy
    that arrives *after* that point is kept as a new first copy, as a streaming run would keep it
    (its timer would have fired). The record path in batch never forgets (its watermark only jumps
    at the end), so the two paths agree whenever every copy arrives before the stream has moved
    ``horizon + max_out_of_orderness`` past the id's newest copy; within a block nothing is
    forgotten.

What it supports (:func:`columnar_supported` says whether a configuration qualifies; the
pipelines fall back to the record path otherwise): JSON lines (decoded with
:class:`~headwater.io.formats.JsonFormat`) or Parquet files, batch; an
:class:`~headwater.windowing.eventtime.EventTimeExtractor` in ``s``/``ms``/``us`` on a top-level
field; dedup ``None`` or :class:`~headwater.transforms.dedup.DeduplicateById` by a top-level
``id_field``, ``keep="first"``, ``time_domain="event"``; fixed or sliding windows; the on-time
trigger; no extra checks; top-level key and metric fields; count/sum/min/max/mean.

Parallelism: the files are read by one worker, in order (dedup needs the arrival order); pyarrow's
JSON reader and kernels use several threads. Float sums are added per block, then across blocks,
so they may differ from a sequential sum in the last bits (as the record path's may).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from headwater.io.fileio import (
    WRITE_FORMATS,
    _encode_avro,
    _encode_parquet,
    _file_name,
    canonical_json,
    match_files,
    stable_shard,
    window_directory,
    write_atomically,
)
from headwater.io.formats import JsonFormat
from headwater.records import DecodedRecord, SourceRecord
from headwater.transforms.accounting import NAMESPACE
from headwater.transforms.aggregate import MetricSpec, parse_metrics
from headwater.transforms.deadletter import DeadLetter, dead_letter_for
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.parse import _ParseFn
from headwater.transforms.process import MetricsResult, _MetricsCheck, _trigger_spec, _window_fn
from headwater.windowing.durations import DurationLike, parse_duration
from headwater.windowing.eventtime import MAX_EVENT_MICROS, EventTimeExtractor

__all__ = [
    "COLUMNAR_FORMATS",
    "ComputeWindowedMetricsColumnar",
    "columnar_supported",
    "columnar_unsupported_reason",
]

_LOG = logging.getLogger(__name__)

#: File formats the columnar path reads.
COLUMNAR_FORMATS = ("json", "parquet")

_UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_READ_CHUNK = 8 << 20  # bytes read from a file at a time
_BLOCK_BYTES = 4 << 20  # JSON bytes parsed per pyarrow call
_MIN_BISECT_LINES = 256  # below this a refused piece is parsed line by line
_PARQUET_BATCH_ROWS = 65_536
_NONE = np.iinfo(np.int64).min  # "no anchor" in int64 arrays
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_INT_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32())


# --------------------------------------------------------------------------------------------
# Which configurations qualify


def columnar_unsupported_reason(
    *,
    file_format: str,
    decode: Any,
    event_time: Any,
    window: Any,
    allowed_lateness: DurationLike = 0,
    key_field: str,
    metrics: str | Iterable[MetricSpec],
    dedup: DeduplicateById | None = None,
    trigger: Any = None,
    checks: Iterable[Any] = (),
    max_record_bytes: int | None = None,
    streaming: bool = False,
) -> str | None:
    """Why the columnar path cannot run this configuration, or ``None`` when it can.

    Takes :class:`~headwater.transforms.process.ComputeWindowedMetrics`' arguments plus the file
    format and whether the run is streaming.
    """
    del allowed_lateness, max_record_bytes  # nothing is late in batch; sizes are checked per line
    if streaming:
        return "streaming runs take the record path (late routing, watermarks, panes)"
    if file_format not in COLUMNAR_FORMATS:
        return f"format {file_format!r} is not one of {', '.join(COLUMNAR_FORMATS)}"
    if file_format == "json" and not isinstance(decode, JsonFormat):
        return f"decode={decode!r} is not JsonFormat()"
    if not isinstance(event_time, EventTimeExtractor) or event_time.unit not in _UNIT_MICROS:
        return f"event_time={event_time!r} is not an EventTimeExtractor in s, ms or us"
    if "." in event_time.field:
        return f"event time field {event_time.field!r} is nested"
    if dedup is not None:
        if not isinstance(dedup, DeduplicateById):
            return f"dedup={dedup!r} is not a DeduplicateById"
        if _dedup_field(dedup) is None:
            return "dedup is not by a top-level id_field"
        if dedup._keep != "first" or dedup._time_domain != "event":
            return "dedup is not keep='first' in event time"
    if list(checks):
        return "extra checks run per record"
    if not isinstance(key_field, str) or not key_field or "." in key_field:
        return f"key_field={key_field!r} is not a top-level field"
    try:
        specs = parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics)
    except ValueError as exc:
        return str(exc)
    if any(s.field is not None and "." in s.field for s in specs):
        return "a metric reads a nested field"
    try:
        window_fn = _window_fn(window) if window is not None else None
    except ValueError as exc:
        return str(exc)
    if not isinstance(window_fn, (beam_window.FixedWindows, beam_window.SlidingWindows)):
        return f"window={window!r} is not fixed or sliding"
    try:
        spec = _trigger_spec(trigger)
    except ValueError as exc:
        return str(exc)
    if spec.early_every is not None:
        return "early panes fire per record"
    return None


def columnar_supported(**options: Any) -> bool:
    """Whether :class:`ComputeWindowedMetricsColumnar` can run this configuration.

    Takes the arguments of :func:`columnar_unsupported_reason`.

    >>> from headwater.io.formats import JsonFormat
    >>> columnar_supported(file_format="json", decode=JsonFormat(), window="fixed:60s",
    ...                    event_time=EventTimeExtractor(field="t", unit="ms"),
    ...                    key_field="user", metrics="count,sum:amount")
    True
    >>> columnar_supported(file_format="avro", decode=JsonFormat(), window="fixed:60s",
    ...                    event_time=EventTimeExtractor(), key_field="user", metrics="count")
    False
    """
    return columnar_unsupported_reason(**options) is None


def _dedup_field(dedup: DeduplicateById) -> str | None:
    id_of = getattr(dedup, "_id_of", None)
    path = getattr(id_of, "_path", None)
    if type(id_of).__name__ != "_FieldId" or not isinstance(path, str) or "." in path:
        return None
    return path


# --------------------------------------------------------------------------------------------
# Blocks


@dataclasses.dataclass
class _Accepted:
    """Accepted rows of one block, in arrival order."""

    ts: np.ndarray  # int64 event time, micros
    ids: pa.Array | None  # string ids (None without dedup)
    keys: pa.Array | list[Any]  # Arrow keys, or Python keys when types are mixed
    values: np.ndarray  # float64 [rows, fields] (int sums stay exact in ``int_values``)
    int_values: list[np.ndarray | None]  # per field: the int64 values when all were ints
    positions: np.ndarray  # position of each row in the block (for emit_duplicates)


def _invalid_utf8_lines(block: bytes, ranges: Any) -> list[int]:
    """Indexes of the lines of ``block`` that are not valid UTF-8 (usually none)."""
    bad: list[int] = []
    position = 0
    while position < len(block):
        try:
            block[position:].decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            line = int(np.searchsorted(ranges.starts, position + exc.start, side="right")) - 1
            bad.append(line)
            position = int(ranges.next_starts[line])
    return bad


class _Ranges:
    """Line boundaries of a JSON block: starts, ends (no newline, no ``\\r``), next starts."""

    def __init__(self, block: bytes):
        buf = np.frombuffer(block, dtype=np.uint8)
        newlines = np.flatnonzero(buf == 10)
        self.next_starts = newlines + 1
        self.starts = np.concatenate(([0], self.next_starts[:-1])).astype(np.int64)
        ends = newlines.astype(np.int64)
        nonempty = ends > self.starts
        carriage = np.zeros(len(ends), dtype=bool)
        carriage[nonempty] = buf[ends[nonempty] - 1] == 13
        ends[carriage] -= 1
        self.ends = ends
        self.lengths = ends - self.starts
        first = np.zeros(len(ends), dtype=np.uint8)
        has = self.lengths > 0
        first[has] = buf[self.starts[has]]
        self.first = first


class _Columnar:
    """The state of one run: dedup anchors, partial aggregates, counters, slow-path helpers."""

    def __init__(self, options: _Options):
        self.options = options
        self.metrics = options.metrics
        self.fields = options.fields
        self._parse = _ParseFn(
            options.decode,
            options.event_time,
            (_MetricsCheck(options.key_field, options.metrics),),
            options.max_record_bytes,
        )
        self._id_of = options.dedup._id_of if options.dedup is not None else None
        self._anchors: dict[str, int] = {}
        self._evicted_at = 0
        self._max_seen = _NONE
        self._partials: dict[str, list[pa.Table]] = {}
        self._python_acc: dict[tuple[int, Any], list[Any]] = {}
        self._compacted: dict[str, int] = {}
        self.counts = dict.fromkeys(("records_in", "output", "duplicate", "dead_letter"), 0)
        self.dead: list[DeadLetter] = []
        self.duplicates: list[Any] = []

    # --- the slow, exact path ------------------------------------------------------------

    def slow(self, element: Any) -> tuple[int, str | None, Any, tuple[float, ...]] | None:
        """The record path's parse/check/id for one element: accepted values or a dead letter."""
        for out in self._parse.process(element):
            if isinstance(out, beam.pvalue.TaggedOutput):
                self.dead.append(out.value)
                return None
            record, ts = out.value, out.timestamp
        ident = None
        if self._id_of is not None:
            try:
                ident = self._id_of(record)
            except Exception as exc:  # the record path's _KeyByIdFn makes it a dead letter
                self.dead.append(dead_letter_for(element, stage="dedup", error=exc, event_time=ts))
                return None
        values = tuple(record[f] for f in self.fields)
        return ts.micros, ident, record[self.options.key_field], values

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
        if ts_col is None or ts_col.type not in _INT_TYPES:
            return np.zeros(n, dtype=bool), columns
        scale = _UNIT_MICROS[self.options.event_time.unit]
        raw = pc.fill_null(ts_col.cast(pa.int64()), -1).to_numpy()
        limit = MAX_EVENT_MICROS // scale
        ok &= (raw >= 0) & (raw <= limit)
        columns["ts"] = raw * scale
        if self._id_of is not None:
            id_col = column(_dedup_field(self.options.dedup))  # type: ignore[arg-type]
            if id_col is None:
                return np.zeros(n, dtype=bool), columns
            if pa.types.is_string(id_col.type) or pa.types.is_large_string(id_col.type):
                accept(pc.greater(pc.utf8_length(id_col), 0))
                columns["ids"] = id_col.cast(pa.string())
            elif id_col.type in _INT_TYPES:
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
        elif key_col.type in _INT_TYPES:
            key_col = key_col.cast(pa.int64())
            accept(pc.is_valid(key_col))
        else:
            return np.zeros(n, dtype=bool), columns
        columns["keys"] = key_col
        values = np.zeros((n, len(self.fields)), dtype=np.float64)
        ints: list[np.ndarray | None] = []
        for index, name in enumerate(self.fields):
            col = column(name)
            if col is None:
                return np.zeros(n, dtype=bool), columns
            if col.type in _INT_TYPES:
                accept(pc.is_valid(col))
                as_int = pc.fill_null(col.cast(pa.int64()), 0).to_numpy()
                ints.append(as_int)
                values[:, index] = as_int
            elif pa.types.is_floating(col.type):
                accept(pc.is_finite(col))
                values[:, index] = pc.fill_null(col.cast(pa.float64()), 0.0).to_numpy()
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
    ) -> _Accepted | None:
        """Merges fast pieces ``(positions, mask, columns)`` and slow rows into arrival order."""
        positions, ts, ids, keys, values = [], [], [], [], []
        ints: list[list[np.ndarray | None]] = []
        for where, mask, columns in pieces:
            if not mask.any():
                continue
            take = np.flatnonzero(mask)
            positions.append(where[take])
            ts.append(columns["ts"][take])
            index = pa.array(take)
            if self._id_of is not None:
                ids.append(columns["ids"].take(index))
            keys.append(columns["keys"].take(index))
            values.append(columns["values"][take])
            ints.append([None if a is None else a[take] for a in columns["ints"]])
        if slow_rows:
            positions.append(np.array([p for p, _ in slow_rows], dtype=np.int64))
            ts.append(np.array([r[0] for _, r in slow_rows], dtype=np.int64))
            if self._id_of is not None:
                ids.append(pa.array([r[1] for _, r in slow_rows], type=pa.string()))
            slow_keys = [r[2] for _, r in slow_rows]
            keys.append(slow_keys)
            values.append(
                np.array([r[3] for _, r in slow_rows], dtype=np.float64).reshape(
                    len(slow_rows), len(self.fields)
                )
            )
            ints.append(
                [
                    np.array([r[3][i] for _, r in slow_rows], dtype=np.int64)
                    if all(type(r[3][i]) is int and abs(r[3][i]) < 2**62 for _, r in slow_rows)
                    else None
                    for i in range(len(self.fields))
                ]
            )
        if not positions:
            return None
        all_positions = np.concatenate(positions)
        order = np.argsort(all_positions, kind="stable")
        merged_keys = _merge_keys(keys)
        if isinstance(merged_keys, list):
            merged_keys = [merged_keys[i] for i in order]
        else:
            merged_keys = merged_keys.take(pa.array(order))
        merged_ints: list[np.ndarray | None] = []
        for i in range(len(self.fields)):
            parts: list[Any] = [part[i] for part in ints]
            whole = None if any(p is None for p in parts) else np.concatenate(parts)[order]
            merged_ints.append(whole)
        return _Accepted(
            ts=np.concatenate(ts)[order],
            ids=pa.concat_arrays(ids).take(pa.array(order)) if ids else None,
            keys=merged_keys,
            values=np.concatenate(values)[order],
            int_values=merged_ints,
            positions=all_positions[order],
        )

    def deduplicate(self, rows: _Accepted) -> np.ndarray:
        """A keep mask: False for duplicates (keep-first, event time, horizon)."""
        n = len(rows.ts)
        if self._id_of is None or n == 0:
            return np.ones(n, dtype=bool)
        horizon = self.options.horizon_micros
        encoded = rows.ids.dictionary_encode()  # type: ignore[union-attr]
        group = encoded.indices.to_numpy().astype(np.int64)
        unique = encoded.dictionary.to_pylist()
        carried = np.fromiter(
            map(self._anchors.get, unique, itertools.repeat(_NONE)),
            dtype=np.int64,
            count=len(unique),
        )
        if self._max_seen != _NONE:
            watermark = self._max_seen - self.options.out_of_order_micros
            forgotten = (carried != _NONE) & (carried + horizon < watermark)
            carried[forgotten] = _NONE
        order = np.argsort(group, kind="stable")
        sorted_group = group[order]
        sorted_ts = rows.ts[order]
        # running max of earlier copies within the block, per id: ranks keep the sums small
        uniq_ts, rank = np.unique(sorted_ts, return_inverse=True)
        composite = sorted_group * (len(uniq_ts) + 1) + rank
        running = np.maximum.accumulate(composite)
        previous = np.full(n, _NONE, dtype=np.int64)
        same = np.zeros(n, dtype=bool)
        same[1:] = sorted_group[1:] == sorted_group[:-1]
        earlier = running[:-1][same[1:]] - sorted_group[1:][same[1:]] * (len(uniq_ts) + 1)
        previous[1:][same[1:]] = uniq_ts[earlier]
        anchor = np.maximum(previous, carried[sorted_group])
        duplicate_sorted = (anchor != _NONE) & (sorted_ts <= anchor + horizon)
        keep = np.ones(n, dtype=bool)
        keep[order] = ~duplicate_sorted
        # carry each id's newest event time to the next blocks
        starts = np.flatnonzero(np.concatenate(([True], ~same[1:])))
        block_max = np.maximum.reduceat(sorted_ts, starts)
        newest = np.maximum(block_max, carried[sorted_group[starts]])
        self._anchors.update(zip(unique, newest.tolist(), strict=True))
        self._max_seen = max(self._max_seen, int(rows.ts.max()))
        self._evict()
        return keep

    def _evict(self) -> None:
        size = len(self._anchors)
        if size < max(2 * self._evicted_at, 1 << 18):
            return
        cutoff = self._max_seen - self.options.out_of_order_micros - self.options.horizon_micros
        self._anchors = {k: v for k, v in self._anchors.items() if v >= cutoff}
        self._evicted_at = len(self._anchors)

    def aggregate(self, rows: _Accepted, keep: np.ndarray) -> None:
        """Pre-aggregates the kept rows of a block per (window start, key)."""
        take = np.flatnonzero(keep)
        if len(take) == 0:
            return
        ts = rows.ts[take]
        starts, repeat = self.options.window_starts(ts)
        values = rows.values[take]
        ints = [None if a is None else a[take] for a in rows.int_values]
        if repeat is not None:
            values = values[repeat]
            ints = [None if a is None else a[repeat] for a in ints]
            take = take[repeat]
        if isinstance(rows.keys, list):
            self._aggregate_python(starts, [rows.keys[i] for i in take], values, ints)
            return
        keys = rows.keys.take(pa.array(take))
        columns: dict[str, Any] = {"w": starts, "k": keys}
        aggs: list[tuple[str, str]] = [("w", "count")]
        for i in range(len(self.fields)):
            column = ints[i] if ints[i] is not None else values[:, i]
            columns[f"v{i}"] = column
            aggs += [(f"v{i}", "sum"), (f"v{i}", "min"), (f"v{i}", "max")]
        table = pa.table(columns).group_by(["w", "k"], use_threads=False).aggregate(aggs)
        partials = self._partials.setdefault(str(keys.type), [])
        partials.append(table)
        held = sum(t.num_rows for t in partials)
        if len(partials) > 1 and held > 2 * self._compacted.get(str(keys.type), 0) + (1 << 20):
            # merge the partials so that memory follows the number of groups, not of blocks
            merged = self._merge(partials)
            self._partials[str(keys.type)] = [merged]
            self._compacted[str(keys.type)] = merged.num_rows

    def _merge(self, tables: list[pa.Table]) -> pa.Table:
        """Partials of one key type merged into one partial with the same columns."""
        table = pa.concat_tables(tables, promote_options="permissive")
        aggs: list[tuple[str, str]] = [("w_count", "sum")]
        for i in range(len(self.fields)):
            aggs += [(f"v{i}_sum", "sum"), (f"v{i}_min", "min"), (f"v{i}_max", "max")]
        merged = table.group_by(["w", "k"]).aggregate(aggs)
        names = ["w", "k", "w_count"]
        for i in range(len(self.fields)):
            names += [f"v{i}_sum", f"v{i}_min", f"v{i}_max"]
        return merged.select(
            ["w", "k", *[n for n in merged.schema.names if n not in ("w", "k")]]
        ).rename_columns(names)

    def _aggregate_python(self, starts, keys, values, ints) -> None:
        width = len(self.fields)
        for row, (start, key) in enumerate(zip(starts.tolist(), keys, strict=True)):
            acc = self._python_acc.get((start, key))
            if acc is None:
                acc = self._python_acc[(start, key)] = [0, *([0, None, None] * width)]
            acc[0] += 1
            for i in range(width):
                value = int(ints[i][row]) if ints[i] is not None else float(values[row, i])
                slot = 1 + 3 * i
                acc[slot] += value
                if acc[slot + 1] is None or value < acc[slot + 1]:
                    acc[slot + 1] = value
                if acc[slot + 2] is None or value > acc[slot + 2]:
                    acc[slot + 2] = value

    def take_closed(self, limit_micros: int) -> list[tuple[Any, ...]]:
        """The merged groups of windows ending at or before ``limit_micros``, removed from state.

        Windows are the fixed or sliding windows of the options (``start + size`` is the end).
        The replay (:mod:`headwater.transforms.columnar_replay`) calls it as the watermark passes
        window ends; batch calls :meth:`final` once.
        """
        size = self.options.window_fn.size.micros  # type: ignore[attr-defined]
        last_start = limit_micros - size
        closed: dict[str, list[pa.Table]] = {}
        for kind, tables in list(self._partials.items()):
            table = pa.concat_tables(tables, promote_options="permissive")
            ended = pc.less_equal(table.column("w"), last_start)
            closed[kind] = [table.filter(ended)]
            rest = table.filter(pc.invert(ended))
            if rest.num_rows:
                self._partials[kind] = [rest]
            else:
                del self._partials[kind]
            self._compacted[kind] = rest.num_rows
        closed_acc = {g: acc for g, acc in self._python_acc.items() if g[0] <= last_start}
        for group in closed_acc:
            del self._python_acc[group]
        held = (self._partials, self._python_acc)
        self._partials, self._python_acc = closed, closed_acc
        try:
            return list(self.final())
        finally:
            self._partials, self._python_acc = held

    def final(self) -> Iterator[tuple[Any, ...]]:
        """``(window start, key, count, sum, min, max, ...)`` per (window, key), merged."""
        width = len(self.fields)
        merged: dict[tuple[int, Any], list[Any]] = {}
        for tables in self._partials.values():
            table = pa.concat_tables(tables, promote_options="permissive")
            aggs: list[tuple[str, str]] = [("w_count", "sum")]
            for i in range(width):
                aggs += [(f"v{i}_sum", "sum"), (f"v{i}_min", "min"), (f"v{i}_max", "max")]
            table = table.group_by(["w", "k"]).aggregate(aggs)
            names = ["w", "k", "w_count_sum"]
            for i in range(width):
                names += [f"v{i}_sum_sum", f"v{i}_min_min", f"v{i}_max_max"]
            groups = zip(*(table.column(name).to_pylist() for name in names), strict=True)
            if not self._python_acc:
                yield from groups
                continue
            for group in groups:
                merged[(group[0], group[1])] = list(group[2:])
        for group, acc in self._python_acc.items():
            into = merged.get(group)
            if into is None:
                merged[group] = acc
                continue
            into[0] += acc[0]
            for slot in range(1, len(into), 3):
                into[slot] += acc[slot]
                into[slot + 1] = min(into[slot + 1], acc[slot + 1])
                into[slot + 2] = max(into[slot + 2], acc[slot + 2])
        for (start, key), acc in merged.items():
            yield (start, key, *acc)


def _merge_keys(keys: list[Any]) -> pa.Array | list[Any]:
    """One Arrow array of keys when every part has one type, else a Python list."""
    arrow_parts: list[pa.Array] = []
    for part in keys:
        if isinstance(part, list):
            kinds = {type(k) for k in part}
            if kinds == {str}:
                part = pa.array(part, type=pa.string())
            elif kinds == {int} and all(-(2**63) <= k < 2**63 for k in part):
                part = pa.array(part, type=pa.int64())
            else:
                return [k for p in keys for k in (p if isinstance(p, list) else p.to_pylist())]
        arrow_parts.append(part)
    if len({str(p.type) for p in arrow_parts}) > 1:
        return [k for p in arrow_parts for k in p.to_pylist()]
    return pa.concat_arrays(arrow_parts)


# --------------------------------------------------------------------------------------------
# The DoFn


@dataclasses.dataclass
class _Options:
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

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.field for m in self.metrics if m.field is not None))

    @property
    def horizon_micros(self) -> int:
        return self.dedup._horizon_micros if self.dedup is not None else 0

    def window_starts(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Window start (micros) per row, and for sliding windows the row of each start."""
        fn: Any = self.window_fn
        if isinstance(fn, beam_window.FixedWindows):
            size, offset = fn.size.micros, fn.offset.micros
            return ts - np.mod(ts - offset, size), None
        size, period, offset = fn.size.micros, fn.period.micros, fn.offset.micros
        last = ts - np.mod(ts - offset, period)
        copies = -(-size // period)
        rows = np.repeat(np.arange(len(ts)), copies)
        starts = last[rows] - np.tile(np.arange(copies, dtype=np.int64) * period, len(ts))
        inside = starts + size > ts[rows]
        return starts[inside], rows[inside]

    def window_for(self, start: int) -> beam_window.IntervalWindow:
        size = self.window_fn.size.micros  # type: ignore[attr-defined]
        return beam_window.IntervalWindow(Timestamp(micros=start), Timestamp(micros=start + size))


class _ComputeColumnarFn(beam.DoFn):
    """A glob -> rows (in their windows), dead letters and, optionally, duplicates."""

    def __init__(self, options: _Options):
        self._options = options
        self._counters = {
            name: Metrics.counter(NAMESPACE, name)
            for name in ("records_in", "output", "duplicate", "dead_letter", "late")
        }
        self._blocks = Metrics.counter(NAMESPACE, "columnar.blocks")
        self._slow = Metrics.counter(NAMESPACE, "columnar.slow_rows")
        self._files = Metrics.counter("headwater.io", "files_written")
        self._rows_written = Metrics.counter("headwater.io", "rows_written")

    def process(self, pattern: str) -> Iterator[Any]:
        state = _Columnar(self._options)
        for path in match_files(pattern):
            if self._options.file_format == "json":
                blocks = self._json_blocks(state, path)
            else:
                blocks = self._parquet_blocks(state, path)
            for _ in blocks:
                self._blocks.inc()
                yield from self._flush(state)
        yield from self._flush(state)
        if self._options.output is None:
            yield from self._rows(state.final())
            return
        for path in self._write(state.final()):
            yield beam.pvalue.TaggedOutput("written", path)

    def _flush(self, state: _Columnar) -> Iterator[Any]:
        state.counts["dead_letter"] += len(state.dead)
        for name, value in state.counts.items():
            if value:
                self._counters[name].inc(value)
                state.counts[name] = 0
        for letter in state.dead:
            yield beam.pvalue.TaggedOutput("dead_letter", letter)
        state.dead.clear()
        for record in state.duplicates:
            yield beam.pvalue.TaggedOutput("duplicate", record)
        state.duplicates.clear()

    # --- JSON lines ----------------------------------------------------------------------

    def _json_blocks(self, state: _Columnar, path: str) -> Iterator[None]:
        line = 1
        rest = b""
        first = True
        with FileSystems.open(path) as handle:  # compression detected from the extension
            while True:
                chunk = handle.read(_READ_CHUNK)
                data = rest + chunk
                if first and data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                first = False
                if not chunk:
                    if data:
                        self._json_block(state, path, line, data + b"\n")
                        yield None
                    return
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    rest = data
                    continue
                block, rest = data[:cut], data[cut:]
                for piece in _split(block, _BLOCK_BYTES):
                    self._json_block(state, path, line, piece)
                    line += piece.count(b"\n")
                    yield None

    def _json_block(self, state: _Columnar, path: str, first_line: int, block: bytes) -> None:
        ranges = _Ranges(block)
        blank = ranges.lengths == 0
        candidate = ranges.first == ord("{")
        odd = ~(blank | candidate)
        if odd.any():  # whitespace-only lines count as blank, like the file reader
            for i in np.flatnonzero(odd):
                if not block[ranges.starts[i] : ranges.ends[i]].strip():
                    blank[i] = True
            odd = ~(blank | candidate)
        max_bytes = self._options.max_record_bytes
        too_large = (ranges.lengths > max_bytes) if max_bytes is not None else None
        records = np.flatnonzero(~blank)
        state.counts["records_in"] += len(records)

        def element(i: int) -> SourceRecord:
            payload = block[ranges.starts[i] : ranges.ends[i]]
            return SourceRecord(payload, {"file": path, "line": first_line + int(i)})

        pieces: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
        # Lines pyarrow must not see (not an object, invalid UTF-8, over the size limit) take
        # the record path one by one; the runs of lines between them stay vectorized.
        slow = odd.copy()
        if too_large is not None:
            slow |= too_large & ~blank
        for line_index in _invalid_utf8_lines(block, ranges):
            slow[line_index] = True
        slow_lines: list[int] = np.flatnonzero(slow).tolist()
        fast = records[~slow[records]]
        if len(fast):
            breaks = np.flatnonzero(np.diff(np.cumsum(slow)[fast])) + 1
            for run in np.split(fast, breaks):
                self._parse_range(state, block, ranges, run, pieces, slow_lines)
        slow_rows = []
        for piece_positions, mask, _ in pieces:
            slow_lines.extend(piece_positions[~mask].tolist())
        slow_lines.sort()
        for line_index in map(int, slow_lines):
            accepted = state.slow(element(line_index))
            if accepted is not None:
                slow_rows.append((line_index, accepted))
        self._slow.inc(len(slow_lines))
        self._finish_block(state, records, pieces, slow_rows, element)

    def _parse_range(self, state, block, ranges, lines, pieces, slow_lines) -> None:
        """Parses ``lines`` (consecutive non-blank line indexes) with pyarrow, bisecting."""
        if len(lines) == 0:
            return
        start = int(ranges.starts[lines[0]])
        stop = int(ranges.next_starts[lines[-1]])
        try:
            table = pa_json.read_json(
                io.BytesIO(block[start:stop]),
                read_options=pa_json.ReadOptions(block_size=max(stop - start, 1 << 16)),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if len(lines) <= _MIN_BISECT_LINES:
                slow_lines.extend(lines.tolist())
                return
            half = len(lines) // 2
            self._parse_range(state, block, ranges, lines[:half], pieces, slow_lines)
            self._parse_range(state, block, ranges, lines[half:], pieces, slow_lines)
            return
        if table.num_rows != len(lines):  # never expected: be exact rather than fast
            slow_lines.extend(lines.tolist())
            return
        mask, columns = state.fast(table)
        pieces.append((lines, mask, columns))

    def _finish_block(self, state, elements, pieces, slow_rows, element) -> None:
        """Dedups and aggregates a block's accepted rows (``elements``: record positions)."""
        del elements  # arrival positions matter to the replay (columnar_replay), not to batch
        rows = state.accepted(pieces, slow_rows)
        if rows is None:
            return
        keep = state.deduplicate(rows)
        kept = int(keep.sum())
        state.counts["output"] += kept
        state.counts["duplicate"] += len(keep) - kept
        if self._options.emit_duplicates and kept < len(keep):
            for position in rows.positions[~keep].tolist():
                state.duplicates.append(self._decoded(element(position)))
        state.aggregate(rows, keep)

    def _decoded(self, element: Any) -> Any:
        if isinstance(element, DecodedRecord):
            return element.record
        return self._options.decode.decode(element.payload)

    # --- Parquet -------------------------------------------------------------------------

    def _parquet_blocks(self, state: _Columnar, path: str) -> Iterator[None]:
        index = 0
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                    self._parquet_batch(state, path, index, batch)
                    index += batch.num_rows
                    yield None
            except (FileNotFoundError, PermissionError, ConnectionError, TimeoutError):
                raise
            except Exception as exc:  # the file is corrupt: one read dead letter, as ReadFromFiles
                letter = dead_letter_for(
                    SourceRecord(b"", {"file": path, "record": index}), stage="read", error=exc
                )
                message = f"cannot read parquet file {path} at record {index}: "
                state.dead.append(
                    dataclasses.replace(letter, error_message=message + letter.error_message)
                )
                state.counts["records_in"] += 1
                yield None

    def _parquet_batch(self, state: _Columnar, path: str, first: int, batch: Any) -> None:
        n = batch.num_rows
        state.counts["records_in"] += n
        mask, columns = state.fast(batch)
        positions = np.arange(n, dtype=np.int64)

        def element(i: int) -> DecodedRecord:
            return DecodedRecord(
                batch.slice(i, 1).to_pylist()[0], {"file": path, "record": first + i}
            )

        slow_lines = np.flatnonzero(~mask).tolist() if columns else list(range(n))
        pieces = [(positions, mask, columns)] if columns and mask.any() else []
        slow_rows = []
        for i in slow_lines:
            accepted = state.slow(element(i))
            if accepted is not None:
                slow_rows.append((i, accepted))
        self._slow.inc(len(slow_lines))
        self._finish_block(state, positions, pieces, slow_rows, element)

    # --- rows ----------------------------------------------------------------------------

    def _rows(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """``(window start, key, count, sum, min, max, ...)`` groups as windowed metric rows."""
        fields = self._options.fields
        slot = {name: 3 + 3 * i for i, name in enumerate(fields)}
        columns = []
        for metric in self._options.metrics:
            if metric.field is None:
                columns.append((metric.column, 2, "count"))
            else:
                offset = {"sum": 0, "min": 1, "max": 2, "mean": 0}[metric.kind]
                columns.append((metric.column, slot[metric.field] + offset, metric.kind))
        windows: dict[int, tuple[Any, dt.datetime, dt.datetime, Timestamp]] = {}
        for group in groups:
            start = group[0]
            bounds = windows.get(start)
            if bounds is None:
                window = self._options.window_for(start)
                bounds = windows[start] = (
                    window,
                    _EPOCH + dt.timedelta(microseconds=start),
                    _EPOCH + dt.timedelta(microseconds=window.end.micros),
                    window.max_timestamp(),
                )
            row: dict[str, Any] = {
                "window_start": bounds[1],
                "window_end": bounds[2],
                "key": group[1],
            }
            for column, index, kind in columns:
                if kind == "count":
                    row[column] = group[2]
                elif kind == "mean":
                    row[column] = group[index] / group[2]
                else:
                    row[column] = float(group[index])
            yield WindowedValue(row, bounds[3], (bounds[0],))

    def _write(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[str]:
        """Writes each window's rows as :class:`WriteWindowedFiles` would, byte for byte."""
        options = self._options
        per_window: dict[Any, list[dict[str, Any]]] = {}
        for rows in self._rows(groups):
            per_window.setdefault(rows.windows[0], []).append(rows.value)
        for window, rows in sorted(per_window.items(), key=lambda item: item[0].start):
            shards: dict[int, list[tuple[str, dict[str, Any]]]] = {}
            for row in rows:
                text = canonical_json(row)
                shards.setdefault(stable_shard(text, options.output_shards), []).append((text, row))
            for shard, keyed in sorted(shards.items()):
                keyed.sort(key=lambda item: item[0])
                ordered = [row for _, row in keyed]
                relative = posixpath.join(
                    window_directory(window),
                    _file_name("part", shard, options.output_shards, 0, options.output_format),
                )
                if options.output_format == "parquet":
                    data = _encode_parquet(ordered, None)  # type: ignore[arg-type]
                else:
                    data = _encode_avro(ordered, None, relative)  # type: ignore[arg-type]
                path = FileSystems.join(str(options.output), *relative.split("/"))
                write_atomically(path, data)
                self._files.inc()
                self._rows_written.inc(len(ordered))
                yield path


def _split(block: bytes, size: int) -> Iterator[bytes]:
    """``block`` in pieces of about ``size`` bytes, each ending at a newline."""
    start = 0
    while start < len(block):
        if len(block) - start <= size:
            yield block[start:]
            return
        cut = block.rfind(b"\n", start, start + size) + 1
        if cut <= start:
            cut = block.find(b"\n", start + size) + 1 or len(block)
        yield block[start:cut]
        start = cut


class _AssignedWindows(beam_window.NonMergingWindowFn):
    """Keeps the window each row was emitted in (declares the rows' windowing)."""

    def __init__(self, inner: beam_window.WindowFn):
        self._inner = inner

    def assign(self, assign_context):
        return [assign_context.window]

    def get_window_coder(self):
        return self._inner.get_window_coder()


# --------------------------------------------------------------------------------------------
# The transform


class ComputeWindowedMetricsColumnar(beam.PTransform):
    """Reads files and computes per-key metrics per window over Arrow blocks, in batch.

    Apply it to the pipeline (it reads ``pattern`` itself). Takes the arguments of
    :class:`~headwater.transforms.process.ComputeWindowedMetrics` for the subset described in
    the module docstring, plus:

    Args:
      pattern: the files to read (a glob; sorted names give the arrival order).
      file_format: ``"json"`` (JSON lines) or ``"parquet"``.
      max_out_of_orderness: the watermark delay a streaming run would use; dedup forgets an id
        once ``anchor + horizon`` is this far behind the newest event time (bounded state).
      emit_duplicates: emit duplicate records on ``duplicate`` (they are always counted).

    Returns :class:`~headwater.transforms.process.MetricsResult`. Raises ``ValueError`` naming
    the reason when the configuration needs the record path (see :func:`columnar_supported`).

    >>> import tempfile, pathlib
    >>> from headwater.io.formats import JsonFormat
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_bytes(
    ...     b'{"id":"a","t":1000,"u":"x","n":2}\\n{"id":"a","t":1000,"u":"x","n":2}\\n{oops\\n')
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     out = p | ComputeWindowedMetricsColumnar(
    ...         pattern=str(folder / "*.jsonl"), file_format="json", decode=JsonFormat(),
    ...         event_time=EventTimeExtractor(field="t", unit="ms"), window="fixed:60s",
    ...         allowed_lateness=0, key_field="u", metrics="count,sum:n",
    ...         dedup=DeduplicateById(id_field="id", horizon="10m"))
    ...     _ = out.rows | beam.Map(lambda r: print(r["key"], r["count"], r["sum_n"]))
    ...     _ = out.dead_letter | beam.Map(lambda d: print(d.stage, d.origin["line"]))
    decode 3
    x 1 2.0
    """

    def __init__(
        self,
        *,
        pattern: str,
        file_format: str,
        decode: Any,
        event_time: Callable[[Mapping[str, Any]], Timestamp] | None,
        window: Any,
        allowed_lateness: DurationLike,
        key_field: str,
        metrics: str | Iterable[MetricSpec],
        dedup: DeduplicateById | None = None,
        trigger: Any = None,
        checks: Sequence[Any] = (),
        max_record_bytes: int | None = None,
        max_out_of_orderness: DurationLike = "5s",
        emit_duplicates: bool = False,
        output: str | None = None,
        output_format: str = "parquet",
        output_shards: int = 1,
    ):
        super().__init__()
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"pattern={pattern!r} must be a non-empty path or glob")
        parse_duration(allowed_lateness, name="allowed_lateness")
        reason = columnar_unsupported_reason(
            file_format=file_format,
            decode=decode,
            event_time=event_time,
            window=window,
            allowed_lateness=allowed_lateness,
            key_field=key_field,
            metrics=metrics,
            dedup=dedup,
            trigger=trigger,
            checks=checks,
            max_record_bytes=max_record_bytes,
        )
        if reason is not None:
            raise ValueError(f"the columnar path cannot run this configuration: {reason}")
        if max_record_bytes is not None and (
            isinstance(max_record_bytes, bool)
            or not isinstance(max_record_bytes, int)
            or max_record_bytes < 1
        ):
            raise ValueError(f"max_record_bytes={max_record_bytes!r} must be a positive integer")
        if not isinstance(emit_duplicates, bool):
            raise ValueError(f"emit_duplicates={emit_duplicates!r} must be True or False")
        if output is not None and (not isinstance(output, str) or not output.strip()):
            raise ValueError(f"output={output!r} must be a non-empty folder path or None")
        if output_format not in WRITE_FORMATS:
            raise ValueError(
                f"output_format={output_format!r} is not one of {', '.join(WRITE_FORMATS)}"
            )
        if (
            isinstance(output_shards, bool)
            or not isinstance(output_shards, int)
            or output_shards < 1
        ):
            raise ValueError(f"output_shards={output_shards!r} must be an integer >= 1")
        ooo = parse_duration(max_out_of_orderness, name="max_out_of_orderness")
        self._pattern = pattern
        self._window_fn = _window_fn(window)
        assert isinstance(event_time, EventTimeExtractor)
        self._options = _Options(
            file_format=file_format,
            decode=decode,
            event_time=event_time,
            dedup=dedup,
            window_fn=self._window_fn,
            key_field=key_field,
            metrics=parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics),
            max_record_bytes=max_record_bytes,
            out_of_order_micros=round(ooo * 1_000_000),
            emit_duplicates=emit_duplicates,
            output=output,
            output_format=output_format,
            output_shards=output_shards,
        )

    def expand(self, pbegin):
        if self._options.file_format and not self._pattern.startswith(("gs://", "s3://")):
            match_files(self._pattern)  # fail at construction for local patterns
        results = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Compute"
            >> beam.ParDo(_ComputeColumnarFn(self._options)).with_outputs(
                "dead_letter", "duplicate", "written", main="rows"
            )
        )
        rows = results.rows | "Windows" >> beam.WindowInto(_AssignedWindows(self._window_fn))
        late = pbegin | "NoLateData" >> beam.Create([])
        return MetricsResult(rows, late, results.duplicate, results.dead_letter)
