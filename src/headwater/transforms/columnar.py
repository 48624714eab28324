"""The columnar fast path of ``windowed_metrics``: files in batch, decoded into Arrow, vectorized.

:class:`ComputeWindowedMetricsColumnar` is
:class:`~headwater.transforms.process.ComputeWindowedMetrics` for the case that dominates
backfills -- JSON-lines, Parquet or Avro *files* read in *batch* -- computed over blocks of records
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
    blocks of a few MiB. A JSON block is cut into pieces of about 1 MiB that ``pyarrow.json``
    parses side by side on a few threads (each piece on its own, types inferred over the piece),
    while the previous block is checked, deduplicated and aggregated. Lines that do not start
    with ``{`` and end with ``}`` never reach pyarrow. When the parser refuses a piece (one odd
    value refuses all of it), the piece is cut at the row pyarrow's error names (the rows before
    it are parsed on their own, the row goes line by line, the rest is parsed again), or bisected
    when the error names none; what still fails is handled line by line. Event time, id, key and
    aggregated fields are then checked with vectorized kernels; every row the fast checks do not
    accept (a missing or odd-typed field, a float event time, a non-finite amount, a blank-padded
    key, invalid UTF-8 ...) goes through the record path's own parse/check/id code, which either
    accepts it with exactly the record path's values or produces exactly its dead letter.

    Dedup (keep-first, event time) is vectorized with numpy: within a block, a copy's anchor is the
    running maximum of the earlier copies' event times (plus the anchor carried over from earlier
    blocks), and the copy is a duplicate iff ``event_time <= anchor + horizon`` -- the record
    path's rule, exactly. The carried ``id -> anchor`` map is a numpy open-addressing table keyed
    by a 64-bit hash of each id's bytes; every hit is confirmed by comparing the ids themselves
    (ids whose hash another id holds go to a plain dict), so two different ids never share an
    anchor. Windows (fixed or sliding) are assigned with integer arithmetic, each block is
    pre-aggregated with ``pyarrow`` ``group_by`` into partials, and the partials are merged at the
    end into one row per (window, key), single-threaded so that float sums are the same every run.
    Integer sums are held in two int64 limbs (low 32 bits, the rest), so they never wrap around:
    the exact sum is put together in Python, as the record path's, and converted to float once.
    (Exact for values below 2**64 in magnitude -- JSON allows more; a block holding such a value
    sums that field as floats.)

    Keys are text, spelt by :func:`headwater.transforms.keys.key_text` as on the record path: a
    string key column is taken as it is, an int column becomes its decimal digits (``1`` and
    ``"1"`` are one key), and every other kind (floats, bools, mixed types ...) takes the record
    path's code; the ``key`` column is a string in every file.

    With ``output=`` the rows are written as :class:`~headwater.io.fileio.WriteWindowedFiles`
    writes them, byte for byte, but column-wise: each row's canonical JSON (which shards and orders
    the rows) is assembled from its values' own JSON, and the Arrow table gets the schema the
    writer would infer (a file with unusual value types takes the writer's row-dict code).

Bounded dedup state
    The carried ``id -> anchor`` table forgets an id once ``anchor + horizon`` is behind the
    watermark a streaming run would have -- the newest event time seen before the block minus
    ``max_out_of_orderness`` -- so the state is bounded by the horizon, not by the input. A copy
    that arrives *after* that point is kept as a new first copy, as a streaming run would keep it
    (its timer would have fired). The record path in batch never forgets (its watermark only jumps
    at the end), so the two paths agree whenever every copy arrives before the stream has moved
    ``horizon + max_out_of_orderness`` past the id's newest copy; within a block nothing is
    forgotten.

What it supports (:func:`columnar_supported` says whether a configuration qualifies; the
pipelines fall back to the record path otherwise): JSON lines (decoded with
:class:`~headwater.io.formats.JsonFormat`), Parquet or Avro (fastavro) files, batch; an
:class:`~headwater.windowing.eventtime.EventTimeExtractor` in ``s``/``ms``/``us`` on a top-level
field; dedup ``None`` or :class:`~headwater.transforms.dedup.DeduplicateById` by a top-level
``id_field``, ``keep="first"``, ``time_domain="event"``; fixed or sliding windows; the on-time
trigger; no extra checks; top-level key and metric fields; count/sum/min/max/mean.

Parallelism: the files are read by one worker, in order (dedup needs the arrival order); the JSON
pieces of a block are parsed on several threads, overlapping the previous block's Python steps.
Float sums are added per block, then across blocks, so they may differ from a sequential sum in
the last bits (as the record path's may); they do not depend on how blocks are cut into parse
pieces.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import fastavro
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
    READ_FORMATS,
    STORAGE_ERRORS,
    WRITE_FORMATS,
    _encode_avro,
    _encode_parquet,
    _file_name,
    _parquet_bytes,
    canonical_json,
    match_files,
    stable_shard,
    unreadable_file_letter,
    window_directory,
    write_atomically,
)
from headwater.io.formats import JsonFormat
from headwater.records import DecodedRecord, SourceRecord
from headwater.transforms.accounting import NAMESPACE
from headwater.transforms.aggregate import MetricSpec, _RecordCheck, parse_metrics
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

#: File formats the columnar path reads: all that ``ReadFromFiles`` reads.
COLUMNAR_FORMATS = READ_FORMATS

_UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_READ_CHUNK = 8 << 20  # bytes read from a file at a time
_BLOCK_BYTES = 4 << 20  # JSON bytes deduplicated and aggregated at a time
_PARSE_BYTES = 1 << 20  # JSON bytes per pyarrow call (a block's pieces are parsed in parallel)
_MIN_BISECT_LINES = 256  # below this a refused piece is parsed line by line
_PARQUET_BATCH_ROWS = 65_536
_AVRO_BATCH_ROWS = 16_384  # Avro records decoded (fastavro) before one columnar step
_ID_SLOTS = 1 << 16  # initial slots of the dedup id table (a power of two)
_NONE = np.iinfo(np.int64).min  # "no anchor" in int64 arrays
_INT64_MAX = int(np.iinfo(np.int64).max)
_LOW_BITS = 32  # an int sum is kept as two int64 limbs: the low 32 bits and the rest
_LOW_MASK = np.int64((1 << _LOW_BITS) - 1)
# Ints below this size fit the limbs: a high limb of at most 2**32, whose sums over fewer than
# 2**31 rows stay in int64. JSON ints beyond it (past 1.8e19) are summed as floats.
_LIMB_RANGE = 1 << 64
_TWO_63 = float(2**63)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode_string = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False
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
    keys: pa.Array  # key texts (strings, :func:`headwater.transforms.keys.key_text`)
    values: np.ndarray  # float64 [rows, fields] (int sums stay exact in ``int_values``)
    int_values: list[np.ndarray | None]  # per field, when all were ints: [rows, 2] int64 limbs
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
        last = np.zeros(len(ends), dtype=np.uint8)
        has = self.lengths > 0
        first[has] = buf[self.starts[has]]
        last[has] = buf[ends[has] - 1]
        self.first = first
        self.last = last


_HASH_WORDS = np.random.default_rng(0x68656164).integers(
    1, 2**64 - 1, size=64, dtype=np.uint64, endpoint=True
) | np.uint64(1)  # one odd multiplier per 8-byte word of an id (more are derived as needed)


def _word_weights(words: int) -> np.ndarray:
    """``words`` odd 64-bit multipliers, the same prefix for every call."""
    global _HASH_WORDS
    if words > len(_HASH_WORDS):
        more = np.random.default_rng(len(_HASH_WORDS)).integers(
            1, 2**64 - 1, size=words, dtype=np.uint64, endpoint=True
        )
        _HASH_WORDS = np.concatenate([_HASH_WORDS, more | np.uint64(1)])
    return _HASH_WORDS[:words]


def _hash_ids(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash per id of a string array (no nulls), from its UTF-8 bytes.

    The bytes are read as zero-padded little-endian 64-bit words ``w_j``; the hash mixes
    ``sum(w_j * m_j) + length`` (mod 2**64, ``m_j`` fixed random odd multipliers). Equal ids
    always hash equal; different ids rarely do, and hits are always confirmed on the ids.
    """
    n = len(ids)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    _, offset_buffer, data_buffer = ids.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32, count=n + 1, offset=4 * ids.offset)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max())
    words = (width + 7) // 8
    weights = _word_weights(max(words, 1))
    with np.errstate(over="ignore"):
        if width > 0 and int(lengths.min()) == width:  # one length: a matrix of words
            rows = data[offsets[0] : offsets[0] + n * width].reshape(n, width)
            if width % 8:
                padded = np.zeros((n, words * 8), dtype=np.uint8)
                padded[:, :width] = rows
                rows = padded
            matrix = np.ascontiguousarray(rows).view("<u8")
            total = (matrix * weights).sum(axis=1, dtype=np.uint64)
        else:  # byte b at position p in its id weighs m_{p // 8} << 8 * (p % 8)
            first, last = int(offsets[0]), int(offsets[-1])
            chunk = data[first:last].astype(np.uint64)
            position = np.arange(last - first, dtype=np.int64) - np.repeat(
                offsets[:-1] - first, lengths
            )
            byte_weights = weights[position // 8] << ((position % 8) * 8).astype(np.uint64)
            sums = np.zeros(len(chunk) + 1, dtype=np.uint64)
            np.cumsum(chunk * byte_weights, dtype=np.uint64, out=sums[1:])
            total = sums[offsets[1:] - first] - sums[offsets[:-1] - first]
        h = total + lengths.astype(np.uint64)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


class _IdAnchors(dict):
    """The carried ``id -> anchor`` map of the batch dedup, exact, mostly held in numpy arrays.

    :meth:`lookup` and :meth:`store` work on a whole block of ids: they are found through an
    open-addressing (linear probing) table keyed by a 64-bit hash of their bytes, and every hit is
    confirmed by comparing the ids themselves, so two different ids never share an anchor. The
    table holds at most one id per hash; an id whose hash another id already holds lives in the
    object itself, a plain ``dict`` (practically never). ``len()`` counts the ids held either way.
    Entries whose anchor is below the cutoff passed to :meth:`store` are dropped when the table
    fills up.
    """

    def __init__(self) -> None:
        super().__init__()
        self._slots = np.full(_ID_SLOTS, -1, dtype=np.int64)  # entry per slot, -1: empty
        self._hashes = np.empty(_ID_SLOTS // 2, dtype=np.uint64)  # per entry
        self._values = np.empty(_ID_SLOTS // 2, dtype=np.int64)  # per entry: the anchor
        self._size = 0
        self._ids: list[pa.Array] = []  # the entries' ids, in entry order

    def __len__(self) -> int:
        return self._size + dict.__len__(self)

    def _overflowing(self) -> bool:
        return dict.__len__(self) > 0

    def _stored(self) -> pa.ChunkedArray:
        if len(self._ids) > 32:
            self._ids = [pa.chunked_array(self._ids).combine_chunks()]
        return pa.chunked_array(self._ids, type=pa.string())

    def _probe(self, hashes: np.ndarray) -> np.ndarray:
        """The entry holding each hash, or -1."""
        mask = np.uint64(len(self._slots) - 1)
        position = (hashes & mask).astype(np.int64)
        entries = np.full(len(hashes), -1, dtype=np.int64)
        pending = np.arange(len(hashes))
        while len(pending):
            occupant = self._slots[position[pending]]
            filled = occupant >= 0
            pending, occupant = pending[filled], occupant[filled]
            same = self._hashes[occupant] == hashes[pending]
            entries[pending[same]] = occupant[same]
            pending = pending[~same]
            position[pending] = (position[pending] + 1) & (len(self._slots) - 1)
        return entries

    def lookup(self, ids: pa.Array) -> tuple[np.ndarray, Any]:
        """Each id's anchor (``_NONE`` when not held), and a handle for :meth:`put`."""
        hashes = _hash_ids(ids)
        entries = self._probe(hashes)
        hit = np.flatnonzero(entries >= 0)
        if len(hit):
            stored = self._stored().take(pa.array(entries[hit]))
            same = pc.equal(ids.take(pa.array(hit)), stored).to_numpy(zero_copy_only=False)
            entries[hit[~same]] = -2  # the hash belongs to another id
        values = np.full(len(ids), _NONE, dtype=np.int64)
        found = entries >= 0
        values[found] = self._values[entries[found]]
        if self._overflowing():
            for i in np.flatnonzero(~found).tolist():
                values[i] = dict.get(self, ids[i].as_py(), _NONE)
        return values, (hashes, entries)

    def store(self, ids: pa.Array, handle: Any, values: np.ndarray, cutoff: int) -> None:
        """Sets the anchors of ``ids`` (the handle is :meth:`lookup`'s for the same ids)."""
        hashes, entries = handle
        found = entries >= 0
        self._values[entries[found]] = values[found]
        new = np.flatnonzero(~found)
        if self._overflowing() and len(new):
            held = [ids[i].as_py() in self for i in new.tolist()]
            for i in new[np.array(held, dtype=bool)].tolist():
                self[ids[i].as_py()] = int(values[i])
            new = new[~np.array(held, dtype=bool)]
        if len(new) == 0:
            return
        self._reserve(len(new), cutoff)
        self._insert(ids, hashes, entries, values, new)

    def _reserve(self, extra: int, cutoff: int) -> None:
        """Room for ``extra`` more entries, at most half the slots used (drops stale entries)."""
        if (self._size + extra) * 2 <= len(self._slots):
            return
        live = np.flatnonzero(self._values[: self._size] >= cutoff)
        if len(live) < self._size:
            self._ids = [self._stored().take(pa.array(live)).combine_chunks()] if len(live) else []
            self._hashes[: len(live)] = self._hashes[live]
            self._values[: len(live)] = self._values[live]
            self._size = len(live)
            for stale in [k for k, v in self.items() if v < cutoff]:
                del self[stale]
        capacity = len(self._slots)
        # Grow to at most a third full: room for a sixth of the slots before the next pruning,
        # and no more (a table that quadrupled would hold ids long stale before pruning again).
        while (self._size + extra) * 3 > capacity:
            capacity *= 2
        if capacity > len(self._hashes):
            for name in ("_hashes", "_values"):
                held = getattr(self, name)
                grown = np.empty(capacity, dtype=held.dtype)
                grown[: self._size] = held[: self._size]
                setattr(self, name, grown)
        self._slots = np.full(capacity, -1, dtype=np.int64)
        hashes = self._hashes[: self._size]
        position = (hashes & np.uint64(capacity - 1)).astype(np.int64)
        self._place(position, np.arange(self._size, dtype=np.int64))

    def _place(self, position: np.ndarray, entries: np.ndarray) -> None:
        """Puts entries (distinct hashes, not in the table) into slots, probing linearly."""
        mask = len(self._slots) - 1
        pending = np.arange(len(entries))
        while len(pending):
            empty = self._slots[position[pending]] < 0
            blocked = pending[~empty]
            position[blocked] = (position[blocked] + 1) & mask
            free = pending[empty]
            # several may want one slot: one of them is written last; it is the one placed
            self._slots[position[free]] = entries[free]
            placed = self._slots[position[free]] == entries[free]
            pending = np.concatenate([blocked, free[~placed]])

    def _insert(self, ids: pa.Array, hashes, entries, values, new: np.ndarray) -> None:
        """Adds the ids at ``new`` (not held); one whose hash is taken goes to the dict.

        ``entries`` is :meth:`lookup`'s: -1 where no held id has the hash, -2 where another does
        (that id may have been dropped since; keeping the newcomer in the dict is still exact).
        """
        own = hashes[new]
        # one entry per hash: none whose hash another id holds (-2), the first of equal hashes
        to_table = entries[new] == -1
        ordered = np.sort(own)
        if bool((ordered[1:] == ordered[:-1]).any()):
            _, first = np.unique(own, return_index=True)
            unique_new = np.zeros(len(new), dtype=bool)
            unique_new[first] = True
            to_table &= unique_new
        for i in new[~to_table].tolist():
            self[ids[i].as_py()] = int(values[i])
        add = new[to_table]
        start = self._size
        entries = np.arange(start, start + len(add), dtype=np.int64)
        self._hashes[entries] = hashes[add]
        self._values[entries] = values[add]
        self._size += len(add)
        self._ids.append(ids.take(pa.array(add)))
        mask = np.uint64(len(self._slots) - 1)
        self._place((hashes[add] & mask).astype(np.int64), entries)


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
        self._check = _RecordCheck(options.key_field, options.metrics)
        self._id_of = options.dedup._id_of if options.dedup is not None else None
        self._anchors = _IdAnchors()  # the carried id -> anchor
        self._max_seen = _NONE
        self._partials: list[pa.Table] = []  # w, k, n, then s h m x per field (see aggregate)
        self._compacted = 0  # rows of the partials after the last merge
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
        key, values = self._check.key_and_values(record)  # passed at parse: the key text
        return ts.micros, ident, key, values

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
        elif key_col.type in _INT_TYPES:  # an int's key text is its decimal digits (key_text)
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
            if col.type in _INT_TYPES:
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
    ) -> _Accepted | None:
        """Merges fast pieces ``(positions, mask, columns)`` and slow rows into arrival order."""
        positions, ts, ids, keys, values = [], [], [], [], []
        ints: list[list[np.ndarray | None]] = []
        for where, mask, columns in pieces:
            if not mask.any():
                continue
            if mask.all():  # the usual case: every row of the piece passed the fast checks
                positions.append(where)
                ts.append(columns["ts"])
                if self._id_of is not None:
                    ids.append(columns["ids"])
                keys.append(columns["keys"])
                values.append(columns["values"])
                ints.append(list(columns["ints"]))
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
        return _Accepted(
            ts=np.concatenate(ts)[order],
            ids=merged_ids,
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
        unique = encoded.dictionary
        anchors = self._anchors
        carried, handle = anchors.lookup(unique)
        if self._max_seen != _NONE:
            watermark = self._max_seen - self.options.out_of_order_micros
            forgotten = (carried != _NONE) & (carried + horizon < watermark)
            carried[forgotten] = _NONE
        # rows grouped by id, arrival order within an id (16-bit indexes sort by radix)
        narrow = group.astype(np.uint16) if len(unique) <= 1 << 16 else group
        order = np.argsort(narrow, kind="stable")
        sorted_group = group[order]
        sorted_ts = rows.ts[order]
        # running max of earlier copies within the block, per id: each id's composite values
        # (id * span + time) lie above the previous id's, so one running max serves all ids
        low = int(sorted_ts.min())
        span = int(sorted_ts.max()) - low + 1
        uniq_ts = None
        if span * (len(unique) + 1) < 1 << 62:
            times = sorted_ts - low
        else:  # ranks keep the products small
            uniq_ts, times = np.unique(sorted_ts, return_inverse=True)
            span = len(uniq_ts)
        composite = sorted_group * span + times
        running = np.maximum.accumulate(composite)
        previous = np.full(n, _NONE, dtype=np.int64)
        same = np.zeros(n, dtype=bool)
        same[1:] = sorted_group[1:] == sorted_group[:-1]
        earlier = running[:-1][same[1:]] - sorted_group[1:][same[1:]] * span
        previous[1:][same[1:]] = earlier + low if uniq_ts is None else uniq_ts[earlier]
        anchor = np.maximum(previous, carried[sorted_group])
        duplicate_sorted = (anchor != _NONE) & (sorted_ts <= anchor + horizon)
        keep = np.ones(n, dtype=bool)
        keep[order] = ~duplicate_sorted
        # carry each id's newest event time to the next blocks
        starts = np.flatnonzero(np.concatenate(([True], ~same[1:])))
        block_max = np.maximum.reduceat(sorted_ts, starts)
        newest = np.maximum(block_max, carried[sorted_group[starts]])
        self._max_seen = max(self._max_seen, int(rows.ts.max()))
        # an anchor below the cutoff is forgotten at every later lookup: the table may drop it
        cutoff = self._max_seen - self.options.out_of_order_micros - horizon
        anchors.store(unique, handle, newest, cutoff)
        return keep

    def aggregate(self, rows: _Accepted, keep: np.ndarray) -> None:
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
        starts, repeat = self.options.window_starts(ts)
        values = rows.values[take]
        ints = [None if a is None else a[take] for a in rows.int_values]
        if repeat is not None:
            values = values[repeat]
            ints = [None if a is None else a[repeat] for a in ints]
            take = take[repeat]
        columns: dict[str, Any] = {"w": starts, "k": rows.keys.take(pa.array(take))}
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
        """``table`` grouped by (w, k) with ``aggs``: w, k, n, then s h m x per field."""
        grouped = table.group_by(["w", "k"], use_threads=False).aggregate(aggs)
        names = ["w", "k", "n"]
        for i in range(len(self.fields)):
            names += [f"s{i}", f"h{i}", f"m{i}", f"x{i}"]
        return grouped.select(["w", "k", *(f"{c}_{f}" for c, f in aggs)]).rename_columns(names)

    def _merge(self, tables: list[pa.Table]) -> pa.Table:
        """Partials merged into one partial with the same columns."""
        aggs: list[tuple[str, str]] = [("n", "sum")]
        for i in range(len(self.fields)):
            aggs += [(f"s{i}", "sum"), (f"h{i}", "sum"), (f"m{i}", "min"), (f"x{i}", "max")]
        return self._partial(pa.concat_tables(tables, promote_options="permissive"), aggs)

    def _groups(self, tables: list[pa.Table]) -> list[list[Any]]:
        """Partials merged into columns: window start, key, count, then sum, min, max per field.

        Sums are the limbs put together: exact Python ints for int fields.
        """
        table = self._merge(tables)
        counts = table.column("n")
        if len(counts) and pc.max(counts).as_py() >= 1 << (63 - _LOW_BITS):
            raise OverflowError(
                "a (window, key) holds 2**31 records or more: its exact integer sums would need "
                "more than 64-bit limbs"
            )
        columns = [table.column(name).to_pylist() for name in ("w", "k", "n")]
        for i in range(len(self.fields)):
            low, high = table.column(f"s{i}").to_pylist(), table.column(f"h{i}").to_pylist()
            columns.append(
                [lo + (hi << _LOW_BITS) if hi else lo for lo, hi in zip(low, high, strict=True)]
            )
            columns += [table.column(f"m{i}").to_pylist(), table.column(f"x{i}").to_pylist()]
        return columns

    def take_closed(self, limit_micros: int) -> list[tuple[Any, ...]]:
        """The merged groups of windows ending at or before ``limit_micros``, removed from state.

        Windows are the fixed or sliding windows of the options (``start + size`` is the end).
        The replay (:mod:`headwater.transforms.columnar_replay`) calls it as the watermark passes
        window ends; batch calls :meth:`final` once.
        """
        if not self._partials:
            return []
        size = self.options.window_fn.size.micros  # type: ignore[attr-defined]
        last_start = int(limit_micros) - size
        # window starts are int64: a limit past that range (the final watermark) closes them all
        bounded = pa.scalar(max(min(last_start, _INT64_MAX), _NONE), pa.int64())
        table = pa.concat_tables(self._partials, promote_options="permissive")
        ended = pc.less_equal(table.column("w"), bounded)
        closed = table.filter(ended)
        rest = table.filter(pc.invert(ended))
        self._partials = [rest] if rest.num_rows else []
        self._compacted = rest.num_rows
        return list(zip(*self._groups([closed]), strict=True)) if closed.num_rows else []

    def final_columns(self) -> list[list[Any]]:
        """:meth:`final`'s groups as columns (one list per tuple position), in the same order."""
        if not self._partials:
            return [[] for _ in range(3 + 3 * len(self.fields))]
        return self._groups(self._partials)

    def final(self) -> Iterator[tuple[Any, ...]]:
        """``(window start, key, count, sum, min, max, ...)`` per (window, key), merged."""
        return iter(list(zip(*self.final_columns(), strict=True)))


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
            for _ in self._blocks_of(state, path):
                self._blocks.inc()
                yield from self._flush(state)
        yield from self._flush(state)
        if self._options.output is None:
            yield from self._rows(state.final())
            return
        for path in self._write_columns(state.final_columns()):
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
        """Handles the file's blocks in order, yielding after each.

        Pipelined: block ``k + 1`` is handed to the parse pool before block ``k``'s parsed
        pieces are checked, deduplicated and aggregated, so pyarrow parses (without the GIL)
        while the Python steps run. Blocks still finish strictly in file order.
        """
        pending: _PendingBlock | None = None
        for first_line, piece in _json_pieces(path):
            started = self._start_json_block(state, path, first_line, piece)
            if pending is not None:
                self._end_json_block(state, pending)
                yield None
            pending = started
        if pending is not None:
            self._end_json_block(state, pending)
            yield None

    def _start_json_block(
        self, state: _Columnar, path: str, first_line: int, block: bytes
    ) -> _PendingBlock:
        """Finds the block's lines, sets aside the ones pyarrow must not see, starts parsing."""
        ranges = _Ranges(block)
        blank = ranges.lengths == 0
        # A line pyarrow may see starts with "{" and ends with "}": a truncated line would make
        # pyarrow refuse its whole piece (or read on into the next line), so it goes line by line.
        candidate = (ranges.first == ord("{")) & (ranges.last == ord("}"))
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
        # Lines pyarrow must not see (not an object, invalid UTF-8, over the size limit) take
        # the record path one by one; the runs of lines between them stay vectorized.
        slow = odd.copy()
        if too_large is not None:
            slow |= too_large & ~blank
        for line_index in _invalid_utf8_lines(block, ranges):
            slow[line_index] = True
        slow_lines: list[int] = np.flatnonzero(slow).tolist()
        fast = records[~slow[records]]
        runs: list[np.ndarray] = []
        if len(fast):
            breaks = np.flatnonzero(np.diff(np.cumsum(slow)[fast])) + 1
            runs = [
                part
                for run in np.split(fast, breaks)
                for part in _parts(run, ranges.starts[run], _PARSE_BYTES)
            ]
        pool = _parse_pool()
        tables = [pool.submit(_read_json, _span(block, ranges, run)) for run in runs]
        return _PendingBlock(path, first_line, block, ranges, records, slow_lines, runs, tables)

    def _end_json_block(self, state: _Columnar, pending: _PendingBlock) -> None:
        """Checks the parsed pieces, runs the odd lines through the record path, finishes."""
        block, ranges, slow_lines = pending.block, pending.ranges, pending.slow_lines
        path, first_line = pending.path, pending.first_line

        def element(i: int) -> SourceRecord:
            payload = block[ranges.starts[i] : ranges.ends[i]]
            return SourceRecord(payload, {"file": path, "line": first_line + int(i)})

        pieces: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
        for run, future in zip(pending.runs, pending.tables, strict=True):
            parsed = future.result()
            if isinstance(parsed, pa.Table):
                self._parsed(state, parsed, run, pieces, slow_lines)
            else:
                self._refused(state, block, ranges, run, parsed, pieces, slow_lines)
        slow_rows = []
        for piece_positions, mask, _ in pieces:
            slow_lines.extend(piece_positions[~mask].tolist())
        slow_lines.sort()
        for line_index in map(int, slow_lines):
            accepted = state.slow(element(line_index))
            if accepted is not None:
                slow_rows.append((line_index, accepted))
        self._slow.inc(len(slow_lines))
        self._finish_block(state, pending.records, pieces, slow_rows, element)

    def _parse_range(self, state, block, ranges, lines, pieces, slow_lines) -> None:
        """Parses ``lines`` (consecutive non-blank line indexes) with pyarrow, cutting refusals."""
        if len(lines) == 0:
            return
        parsed = _read_json(_span(block, ranges, lines))
        if isinstance(parsed, pa.Table):
            self._parsed(state, parsed, lines, pieces, slow_lines)
        else:
            self._refused(state, block, ranges, lines, parsed, pieces, slow_lines)

    def _refused(self, state, block, ranges, lines, row, pieces, slow_lines) -> None:
        """``lines`` that pyarrow refused as one piece, its error naming ``row`` (or None).

        With a row: the lines before it are parsed on their own, the line goes line by line, and
        the rest is parsed again (each refusal costs a parse up to the row it names, so a piece
        with k odd lines costs about two parses and k small ones). Without: halves, and line by
        line below ``_MIN_BISECT_LINES``.
        """
        while row is not None and 0 <= row < len(lines):
            self._parse_range(state, block, ranges, lines[:row], pieces, slow_lines)
            slow_lines.append(int(lines[row]))
            lines = lines[row + 1 :]
            if len(lines) == 0:
                return
            parsed = _read_json(_span(block, ranges, lines))
            if isinstance(parsed, pa.Table):
                self._parsed(state, parsed, lines, pieces, slow_lines)
                return
            row = parsed
        if len(lines) <= _MIN_BISECT_LINES:
            slow_lines.extend(lines.tolist())
            return
        half = len(lines) // 2
        self._parse_range(state, block, ranges, lines[:half], pieces, slow_lines)
        self._parse_range(state, block, ranges, lines[half:], pieces, slow_lines)

    @staticmethod
    def _parsed(state, table, lines, pieces, slow_lines) -> None:
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

    def _blocks_of(self, state: _Columnar, path: str) -> Iterator[None]:
        """The file's blocks, handled in order (a generator: one step per block)."""
        if self._options.file_format == "json":
            return self._json_blocks(state, path)
        if self._options.file_format == "avro":
            return self._avro_blocks(state, path)
        return self._parquet_blocks(state, path)

    def _parquet_blocks(self, state: _Columnar, path: str) -> Iterator[None]:
        index = 0
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
                    self._parquet_batch(state, path, index, batch)
                    index += batch.num_rows
                    yield None
            except STORAGE_ERRORS:
                raise
            except Exception as exc:  # the file is corrupt: one read dead letter, as ReadFromFiles
                state.dead.append(unreadable_file_letter("parquet", path, index, exc))
                state.counts["records_in"] += 1
                yield None

    def _avro_blocks(self, state: _Columnar, path: str) -> Iterator[None]:
        """Avro records decoded by fastavro, in batches; a corrupt file ends in one dead letter.

        The records read before a decoding failure are handled first, as ``ReadFromFiles``
        yields them before its ``read`` dead letter.
        """
        index = 0
        records: list[dict[str, Any]] = []
        failure: Exception | None = None
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            try:
                for record in fastavro.reader(handle):
                    records.append(record if isinstance(record, dict) else {"value": record})
                    if len(records) == _AVRO_BATCH_ROWS:
                        self._records_batch(state, path, index, records)
                        index += len(records)
                        records = []
                        yield None
            except STORAGE_ERRORS:
                raise
            except Exception as exc:  # the file is corrupt from here on
                failure = exc
        if records:
            self._records_batch(state, path, index, records)
            index += len(records)
            yield None
        if failure is not None:
            state.dead.append(unreadable_file_letter("avro", path, index, failure))
            state.counts["records_in"] += 1
            yield None

    def _records_batch(
        self, state: _Columnar, path: str, first: int, records: list[dict[str, Any]]
    ) -> None:
        """Decoded records (dicts) through the columnar steps: the fields it reads as Arrow."""
        options = self._options
        names = [options.event_time.field, options.key_field, *options.fields]
        if options.dedup is not None:
            names.append(_dedup_field(options.dedup))  # type: ignore[arg-type]
        arrays: dict[str, Any] = {}
        for name in dict.fromkeys(names):
            try:
                arrays[name] = pa.array([r.get(name) for r in records])
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
                arrays = {}  # mixed or odd values: every record takes the record path
                break
        table = pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(records))})

        def element(i: int) -> DecodedRecord:
            return DecodedRecord(records[i], {"file": path, "record": first + i})

        self._decoded_batch(state, table, element)

    def _parquet_batch(self, state: _Columnar, path: str, first: int, batch: Any) -> None:
        def element(i: int) -> DecodedRecord:
            return DecodedRecord(
                batch.slice(i, 1).to_pylist()[0], {"file": path, "record": first + i}
            )

        self._decoded_batch(state, batch, element)

    def _decoded_batch(self, state: _Columnar, batch: Any, element: Any) -> None:
        """A table of decoded records: fast checks, the rest through the record path, finish."""
        n = batch.num_rows
        state.counts["records_in"] += n
        mask, columns = state.fast(batch)
        positions = np.arange(n, dtype=np.int64)

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
        """Writes each window's rows as :class:`WriteWindowedFiles` would, byte for byte.

        Parquet files are built column-wise: the canonical JSON that orders and shards the rows
        is assembled from each value's own JSON (exactly what ``canonical_json`` of the row dict
        gives), and the Arrow table gets the schema the writer would infer. A file whose values
        are not the usual kinds (a ``bool`` or mixed types in a column) takes the writer's
        row-dict code.
        """
        groups = groups if isinstance(groups, list) else list(groups)
        if not groups:
            return
        if self._options.output_format != "parquet" or self._layout() is None:
            yield from self._write_rows(groups)
            return
        yield from self._write_columns([list(column) for column in zip(*groups, strict=True)])

    def _write_columns(self, columns: list[list[Any]]) -> Iterator[str]:
        """:meth:`_write` for groups given as columns (:meth:`_Columnar.final_columns`)."""
        options = self._options
        layout = self._layout()
        if not columns[0]:
            return
        if options.output_format != "parquet" or layout is None:
            yield from self._write_rows(list(zip(*columns, strict=True)))
            return
        starts = np.array(columns[0], dtype=np.int64)
        order = np.argsort(starts, kind="stable")
        cuts = np.flatnonzero(np.diff(starts[order])) + 1
        for idx in np.split(order, cuts):
            start = int(starts[idx[0]])
            window = options.window_for(start)
            rows = idx.tolist()
            values = {name: self._column(columns, source, rows) for name, source in layout.items()}
            bounds = (
                _EPOCH + dt.timedelta(microseconds=start),
                _EPOCH + dt.timedelta(microseconds=window.end.micros),
            )
            texts = _canonical_texts(layout, values, bounds, len(rows))
            shards: dict[int, list[int]] = {}
            if options.output_shards == 1:
                shards[0] = list(range(len(rows)))
            else:
                for position, text in enumerate(texts):
                    shards.setdefault(stable_shard(text, options.output_shards), []).append(
                        position
                    )
            for shard, positions in sorted(shards.items()):
                positions.sort(key=texts.__getitem__)
                relative = posixpath.join(
                    window_directory(window),
                    _file_name("part", shard, options.output_shards, 0, options.output_format),
                )
                table = _parquet_table(layout, values, window, positions)
                if table is None:  # unusual kinds: the writer's own inference, row by row
                    picked = [tuple(column[rows[p]] for column in columns) for p in positions]
                    ordered = [wv.value for wv in self._rows(picked)]
                    data = _encode_parquet(ordered, None)
                else:
                    data = _parquet_bytes(table)
                path = FileSystems.join(str(options.output), *relative.split("/"))
                write_atomically(path, data)
                self._files.inc()
                self._rows_written.inc(len(positions))
                yield path

    def _layout(self) -> dict[str, Any] | None:
        """Row column -> where its value comes from, in the row dict's order (None: collisions)."""
        fields = self._options.fields
        slot = {name: 3 + 3 * i for i, name in enumerate(fields)}
        layout: dict[str, Any] = {"window_start": "start", "window_end": "end", "key": 1}
        for metric in self._options.metrics:
            if metric.column in layout:
                return None
            if metric.field is None:
                layout[metric.column] = ("count", 2)
            else:
                offset = {"sum": 0, "min": 1, "max": 2, "mean": 0}[metric.kind]
                layout[metric.column] = (metric.kind, slot[metric.field] + offset)
        return layout

    @staticmethod
    def _column(columns: list[list[Any]], source: Any, rows: list[int]) -> list[Any] | None:
        """One row column's values for the groups ``rows``, as :meth:`_rows` computes them."""
        if source in ("start", "end"):
            return None
        if source == 1:
            keys = columns[1]
            return [keys[i] for i in rows]
        kind, index = source
        data = columns[index]
        if kind == "count":
            return [data[i] for i in rows]
        if kind == "mean":
            counts = columns[2]
            return [data[i] / counts[i] for i in rows]
        return [float(data[i]) for i in rows]

    def _write_rows(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[str]:
        """:meth:`_write` through row dicts (Avro output, colliding column names)."""
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


def _json_texts(values: list[Any]) -> list[str]:
    """Each value's JSON as ``canonical_json`` writes it inside a row."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return list(map(int.__repr__, values))
    if kinds == {str}:
        return list(map(_encode_string, values))
    if kinds == {float} and bool(np.isfinite(np.array(values, dtype=np.float64)).all()):
        return list(map(float.__repr__, values))
    return list(map(canonical_json, values))


def _canonical_texts(
    layout: dict[str, Any],
    values: dict[str, list[Any] | None],
    bounds: tuple[dt.datetime, dt.datetime],
    n: int,
) -> list[str]:
    """``canonical_json(row)`` of each row of one window, built from the values' own JSON.

    ``json.dumps(row, sort_keys=True, separators=(",", ":"))`` writes ``{``, then per key in
    sorted order the key's JSON, ``:`` and the value's JSON, joined by ``,``, then ``}``; every
    value is encoded on its own, so the concatenation equals the text of the whole row.
    """
    constant = {"window_start": canonical_json(bounds[0]), "window_end": canonical_json(bounds[1])}
    parts: list[str] = []
    encoded: list[list[str]] = []
    for name in sorted(layout):
        head = _encode_string(name) + ":"
        column = values[name]
        if column is None:
            parts.append((head + constant[name]).replace("%", "%%"))
        else:
            parts.append(head.replace("%", "%%") + "%s")
            encoded.append(_json_texts(column))
    template = "{" + ",".join(parts) + "}"
    if not encoded:
        return [template.replace("%%", "%")] * n
    return [template % texts for texts in zip(*encoded, strict=True)]


def _parquet_table(
    layout: dict[str, Any],
    values: dict[str, list[Any] | None],
    window: beam_window.IntervalWindow,
    positions: list[int],
) -> pa.Table | None:
    """The Arrow table ``WriteWindowedFiles`` would infer for these rows, or None if unusual.

    The writer infers, in the row dict's column order: timezone-aware datetimes ->
    ``timestamp[us, UTC]``, ``int`` -> int64, ``float`` -> double, ``str`` -> string, nothing
    nullable (no value is ever ``None``). Other kinds (mixed keys, ``bool``) return None.
    """
    fields = []
    arrays = []
    timestamp = pa.timestamp("us", tz="UTC")
    for name in layout:
        column = values[name]
        if column is None:
            micros = window.start.micros if name == "window_start" else window.end.micros
            array = pa.array(np.full(len(positions), micros, dtype=np.int64)).view(timestamp)
            kind = timestamp
        else:
            picked = [column[p] for p in positions]
            kinds = set(map(type, picked))
            if kinds == {str}:
                kind = pa.string()
            elif kinds == {float}:
                kind = pa.float64()
            elif kinds == {int} and all(-(2**63) <= v < 2**63 for v in picked):
                kind = pa.int64()
            else:
                return None
            array = pa.array(picked, type=kind)
        fields.append(pa.field(name, kind, nullable=False))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _span(block: bytes, ranges: _Ranges, lines: np.ndarray) -> bytes:
    """The bytes of consecutive ``lines`` of ``block``, newlines included."""
    return block[int(ranges.starts[lines[0]]) : int(ranges.next_starts[lines[-1]])]


_ERROR_ROW = re.compile(r" in row (\d+)$")


def _read_json(data: bytes) -> pa.Table | int | None:
    """JSON lines parsed by pyarrow as one block (types inferred over all of it).

    When pyarrow refuses the block: the row its error names (0-based; a type that changed, a
    parse error), or None when the error names none. The row only guides where the block is cut
    next; every cut is exact whichever line is set aside.
    """
    try:
        return pa_json.read_json(
            io.BytesIO(data),
            read_options=pa_json.ReadOptions(block_size=max(len(data), 1 << 16), use_threads=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        row = _ERROR_ROW.search(str(exc))
        return int(row.group(1)) if row else None


_POOL: concurrent.futures.ThreadPoolExecutor | None = None


@dataclasses.dataclass
class _PendingBlock:
    """A JSON block whose pieces are being parsed (see ``_json_blocks``)."""

    path: str
    first_line: int
    block: bytes
    ranges: _Ranges
    records: np.ndarray  # positions of the non-blank lines
    slow_lines: list[int]  # lines that go through the record path
    runs: list[np.ndarray]  # line runs handed to pyarrow
    tables: list[concurrent.futures.Future]  # their parsed tables (None: refused)


def _json_pieces(path: str) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` pieces of a JSON-lines file, each ending at a newline.

    Compression is detected from the extension; a leading BOM is dropped; a last line without a
    newline gets one. Pieces are about ``_BLOCK_BYTES``.
    """
    line = 1
    rest = b""
    first = True
    with FileSystems.open(path) as handle:
        while True:
            chunk = handle.read(_READ_CHUNK)
            data = rest + chunk
            if first and data.startswith(b"\xef\xbb\xbf"):
                data = data[3:]
            first = False
            if not chunk:
                if data:
                    yield line, data + b"\n"
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            for piece in _split(block, _BLOCK_BYTES):
                yield line, piece
                line += piece.count(b"\n")


def _parse_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that parse the pieces of a block side by side (pyarrow releases the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="headwater-json"
        )
    return _POOL


def _parts(lines: np.ndarray, starts: np.ndarray, size: int) -> list[np.ndarray]:
    """``lines`` (with their byte ``starts``) cut into runs of about ``size`` bytes."""
    if len(lines) == 0:
        return []
    part = (starts - starts[0]) // size
    return np.split(lines, np.flatnonzero(np.diff(part)) + 1)


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
