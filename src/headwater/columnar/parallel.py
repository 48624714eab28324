"""The columnar batch path spread over workers: splits decoded anywhere, ids deduplicated by shard.

:class:`ComputeWindowedMetricsParallel` computes what
:class:`~headwater.columnar.ComputeWindowedMetricsColumnar` computes (same arguments, same
:class:`~headwater.transforms.process.MetricsResult`, same counters, same window files), in four
stages that a runner spreads over its workers:

``Plan``     the matched files (sorted: file index = arrival order) cut into splits: a JSON-lines
             file larger than ``split_bytes`` (uncompressed) by byte range, each cut just after a
             newline, with the number of the split's first line (one sequential count of the
             file's newlines, per file); other files (Parquet, Avro, compressed JSON) whole;
``Decode``   after a ``Reshuffle``, each split read in blocks by the reader
             (:class:`~headwater.columnar.reader.BlockReader`: vectorized checks, the record
             path's code for every other row, dead letters as today); each accepted row gets its
             arrival position ``(file index, line or record number)`` and a shard
             (``hash_ids(id) % shards``; without dedup the line number ``% shards``), and goes
             out in small Arrow batches (IPC bytes) keyed by shard;
``Dedup``    per shard (``GroupByKey``): the shard's rows sorted by arrival position, then
             deduplicated and pre-aggregated by :class:`~headwater.columnar.state.ColumnarState`
             in fixed chunks of ``_CHUNK_ROWS`` rows -- an id lives in one shard, so every copy
             is judged against all its earlier copies in arrival order, the record path's rule
             (:func:`headwater.windowing.rules.is_duplicate`) exactly as the single-worker path
             applies it; the shard's partial aggregates go out keyed by window start;
``Merge``    per window (``GroupByKey``): the shards' partials merged in shard order and the
             window's files written (:class:`~headwater.columnar.write.WindowWriter`), or its rows
             emitted.

What is identical to what
    Counts, keys, min, max and exact integer sums (two int64 limbs, put together in Python) do
    not depend on how the input is cut: they are the single-worker path's and the record path's,
    byte for byte in the files, for any block size, split size, shard count and worker count.
    Float sums are added per shard chunk in arrival order, then merged in shard order: for one
    shard count they are the same every run, whatever the block size, split size or worker
    count; with another shard count (or on the single-worker path, which adds per block) they
    may differ in the last bits, as the record path's may. Files of sums that are integers
    (or exactly representable, with exact partial sums) are therefore identical to the
    single-worker files.

Accounting: ``records_in`` and ``dead_letter`` are counted where splits are decoded,
``output`` and ``duplicate`` where shards are deduplicated; each record once.

Memory: a decode worker holds a block; a dedup worker holds its shard's accepted rows (about 100
bytes a row) and the shard's ids within the horizon (older ones move to local disk, see
:mod:`headwater.columnar.batchids`): raise ``shards`` with the input.
``emit_duplicates`` is refused (duplicates are found where the records' bytes are gone).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from headwater.columnar import jsonblocks, reader
from headwater.columnar.batch import ComputeColumnarFn
from headwater.columnar.idtable import hash_ids
from headwater.columnar.state import AcceptedRows, ColumnarOptions, ColumnarState
from headwater.columnar.transform import (
    AssignedWindows,
    ComputeWindowedMetricsColumnar,
    refuse_dead_letter_output,
)
from headwater.columnar.write import WindowWriter
from headwater.core.accounting import IDS_ON_DISK, NAMESPACE
from headwater.core.checks import check_count
from headwater.io.fileio import match_files
from headwater.transforms.process import MetricsResult, to_window_fn

__all__ = [
    "DEFAULT_SHARDS",
    "STAGES",
    "ComputeWindowedMetricsParallel",
    "parallel_unsupported_reason",
    "stage_spans",
]

#: Dedup shards when none are asked for: enough to keep a few workers busy; the float sums of a
#: run depend on it, so it does not follow the worker count.
DEFAULT_SHARDS = 8
_DEFAULT_SPLIT_BYTES = 16 << 20
_CHUNK_ROWS = 1 << 20  # rows of a shard deduplicated and pre-aggregated at a time
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", 1))
_LINE_BITS = 40  # an arrival position is file index * 2**40 + line (or record) number
_CLOCK_NAMESPACE = "headwater.columnar"
#: The stages whose wall-clock spans :func:`stage_spans` reads from a run's metrics.
STAGES = ("plan", "decode", "dedup", "merge")


class _StageClock:
    """When a stage's elements started and ended (ms since the epoch), as two distributions.

    Over every worker, the smallest start and the largest end bound the stage's span
    (:func:`stage_spans`); one update per element (a split, a shard, a window).
    """

    def __init__(self, stage: str):
        self._stage = stage
        self._start = beam.metrics.Metrics.distribution(
            _CLOCK_NAMESPACE, f"parallel.{stage}.start_ms"
        )
        self._end = beam.metrics.Metrics.distribution(_CLOCK_NAMESPACE, f"parallel.{stage}.end_ms")

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        self._start.update(int(time.time() * 1000))
        yield
        self._end.update(int(time.time() * 1000))


def stage_spans(result: Any) -> dict[str, float]:
    """Seconds from the first start to the last end of each stage (:data:`STAGES`) of a run.

    ``result``: a finished run of :class:`ComputeWindowedMetricsParallel` (its metrics).
    """
    from apache_beam.metrics.metric import MetricsFilter

    found = result.metrics().query(MetricsFilter().with_namespace(_CLOCK_NAMESPACE))
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    for item in found["distributions"]:
        _, stage, edge = item.key.metric.name.split(".")
        value = item.committed or item.attempted
        if value is None or not value.count:
            continue
        if edge == "start_ms":
            starts[stage] = min(starts.get(stage, value.min), value.min)
        else:
            ends[stage] = max(ends.get(stage, value.max), value.max)
    return {
        stage: round((ends[stage] - starts[stage]) / 1000, 3)
        for stage in STAGES
        if stage in starts and stage in ends
    }


def plan_splits(index: int, path: str, file_format: str, split_bytes: int) -> list[tuple]:
    """The splits of one file: whole, or (uncompressed JSON lines) cut after newlines.

    A cut lands just after the first newline at or past each ``split_bytes`` step, so every line
    belongs to the one split its first byte is in; each split knows its first line's number.
    """
    whole = [(index, path, 0, None, 1)]
    compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
    if file_format != "json" or compressed:
        return whole
    [match] = FileSystems.match([path])
    size = match.metadata_list[0].size_in_bytes
    if size <= split_bytes:
        return whole
    cuts = [(0, 1)]  # (byte offset, number of the line starting there)
    target, offset, lines = split_bytes, 0, 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while True:
            chunk = handle.read(jsonblocks.READ_CHUNK)
            if not chunk:
                break
            while target < offset + len(chunk):
                newline = chunk.find(b"\n", max(target - offset, 0))
                if newline < 0:
                    break  # the cut is in a later chunk
                cut = offset + newline + 1
                if cut < size:
                    cuts.append((cut, 1 + lines + chunk.count(b"\n", 0, newline + 1)))
                target = cut + split_bytes
            lines += chunk.count(b"\n")
            offset += len(chunk)
    ends = [start for start, _ in cuts[1:]] + [None]
    return [
        (index, path, start, end, first) for (start, first), end in zip(cuts, ends, strict=True)
    ]


def _to_ipc(table: pa.Table) -> bytes:
    """``table`` as Arrow IPC bytes, buffers compressed with zstd (level 1): what goes between
    the stages travels through the runner's shuffle, whose cost follows the bytes (about half
    of a decoded batch's, its ids being hex text)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _PlanSplitsFn(beam.DoFn):
    """A glob -> the splits of its files (file index = sorted order)."""

    def __init__(self, file_format: str, split_bytes: int):
        self._file_format = file_format
        self._split_bytes = split_bytes
        self._clock = _StageClock("plan")

    def process(self, pattern: str) -> Iterator[tuple]:
        with self._clock.timed():
            yield from self._splits(pattern)

    def _splits(self, pattern: str) -> Iterator[tuple]:
        for index, path in enumerate(match_files(pattern)):
            yield from plan_splits(index, path, self._file_format, self._split_bytes)


class _DecodeSplitFn(ComputeColumnarFn):
    """A split -> ``(shard, Arrow IPC bytes)`` batches of accepted rows, and dead letters."""

    _sizes_ids = False  # the shards deduplicate (and size their tables) elsewhere

    def __init__(self, options: ColumnarOptions, shards: int):
        super().__init__(options)
        self._shards = shards
        self._out: list[tuple[int, bytes]] = []
        self._file_index = 0
        self._clock = _StageClock("decode")

    def process(self, split: tuple) -> Iterator[Any]:  # type: ignore[override]
        with self._clock.timed():
            yield from self._decode(split)

    def _decode(self, split: tuple) -> Iterator[Any]:
        index, path, start, end, first_line = split
        self._file_index = index
        state = ColumnarState(self._options)
        if self._options.file_format == "json":
            pieces = reader._json_pieces(path, start, end, first_line)
            blocks = self._json_blocks(state, path, pieces)
        else:
            blocks = self._blocks_of(state, path)
        for _ in blocks:
            self._blocks.inc()
            yield from self._flush(state)
            yield from self._out
            self._out.clear()
        yield from self._flush(state)

    def _finish_block(self, state, elements, rows, element) -> None:
        """The block's accepted rows, with arrival positions, into per-shard Arrow batches."""
        if rows is None:
            return
        origin = element(0).origin  # the block's first position: line (JSON) or record number
        base = origin["line"] if "line" in origin else origin["record"]
        del elements
        last = base + int(rows.positions.max())
        if last >= 1 << _LINE_BITS or self._file_index >= 1 << (63 - _LINE_BITS):
            raise OverflowError(
                f"file {self._file_index} line {base}: arrival positions hold up to 2**23 files "
                "of 2**40 lines each"
            )
        arrival = rows.positions.astype(np.int64) + (base + (self._file_index << _LINE_BITS))
        columns: dict[str, Any] = {"a": arrival, "t": rows.ts, "k": rows.keys}
        if rows.ids is not None:
            columns["i"] = rows.ids
            shard = (hash_ids(rows.ids) % np.uint64(self._shards)).astype(np.int64)
        else:
            shard = arrival % self._shards
        for i, limbs in enumerate(rows.int_values):
            columns[f"v{i}"] = rows.values[:, i]
            if limbs is not None:
                columns[f"l{i}"], columns[f"h{i}"] = limbs[:, 0], limbs[:, 1]
        table = pa.table(columns)
        order = np.argsort(shard, kind="stable")
        cuts = np.flatnonzero(np.diff(shard[order])) + 1
        for take in np.split(order, cuts):
            if len(take):
                part = table.take(pa.array(take))
                self._out.append((int(shard[take[0]]), _to_ipc(part)))


class _DedupShardFn(beam.DoFn):
    """``(shard, batches)`` -> ``(window start, (shard, partial IPC bytes))`` per window."""

    def __init__(self, options: ColumnarOptions):
        self._options = options
        self._counters = {
            name: beam.metrics.Metrics.counter(NAMESPACE, name)
            for name in ("output", "duplicate", IDS_ON_DISK)
        }
        self._clock = _StageClock("dedup")

    def process(self, element: tuple[int, Any]) -> Iterator[tuple[int, tuple[int, bytes]]]:
        with self._clock.timed():
            yield from self._dedup(element)

    def _dedup(self, element: tuple[int, Any]) -> Iterator[tuple[int, tuple[int, bytes]]]:
        shard, batches = element
        table = _in_arrival_order([_from_ipc(data) for data in batches])
        state = ColumnarState(self._options)
        state.ids.expect(table.num_rows)
        fields = len(self._options.fields)
        for begin in range(0, table.num_rows, _CHUNK_ROWS):
            chunk = table.slice(begin, _CHUNK_ROWS)
            rows = _rows_of(chunk, fields, has_ids=state.id_of is not None)
            keep = state.deduplicate(rows)
            kept = int(keep.sum())
            self._counters["output"].inc(kept)
            self._counters["duplicate"].inc(len(keep) - kept)
            state.aggregate(rows, keep)
        if state.ids.on_disk:
            self._counters[IDS_ON_DISK].inc(state.ids.on_disk)
        if not state._partials:
            return
        partial = state._merge(state._partials)
        starts = partial.column("w").to_numpy()
        order = np.argsort(starts, kind="stable")
        for take in np.split(order, np.flatnonzero(np.diff(starts[order])) + 1):
            yield int(starts[take[0]]), (shard, _to_ipc(partial.take(pa.array(take))))


def _in_arrival_order(tables: list[pa.Table]) -> pa.Table:
    """A shard's batches as one table in arrival order (column ``a``).

    A batch holds one block's rows of the shard, in order, and blocks hold disjoint runs of
    lines: batches put in the order of their first rows come out in order, with no row moved.
    Should their runs overlap, the rows are sorted one by one.
    """
    filled = sorted(
        (table for table in tables if table.num_rows), key=lambda t: t.column("a")[0].as_py()
    )
    table = pa.concat_tables(filled or tables, promote_options="permissive")
    arrival = table.column("a").to_numpy()
    if bool((arrival[1:] > arrival[:-1]).all()):
        return table
    return table.take(pa.array(np.argsort(arrival, kind="stable")))


def _rows_of(chunk: pa.Table, fields: int, *, has_ids: bool) -> AcceptedRows:
    """A shard's chunk (in arrival order) as the state's accepted rows."""
    n = chunk.num_rows
    names = set(chunk.column_names)
    ints: list[np.ndarray | None] = []
    for i in range(fields):
        low = chunk.column(f"l{i}") if f"l{i}" in names else None
        if low is None or low.null_count:  # a block of floats: this chunk sums floats
            ints.append(None)
            continue
        high = chunk.column(f"h{i}").to_numpy()
        ints.append(np.stack([low.to_numpy(), high], axis=1))
    return AcceptedRows(
        ts=chunk.column("t").to_numpy(),
        ids=chunk.column("i").combine_chunks() if has_ids else None,
        keys=chunk.column("k").combine_chunks(),
        values=np.stack([chunk.column(f"v{i}").to_numpy() for i in range(fields)], axis=1)
        if fields
        else np.zeros((n, 0), dtype=np.float64),
        int_values=ints,
        positions=np.arange(n, dtype=np.int64),
    )


class _MergeWindowFn(WindowWriter, beam.DoFn):
    """``(window start, shard partials)`` -> the window's rows, or its written files."""

    def __init__(self, options: ColumnarOptions):
        self._options = options
        self._files = beam.metrics.Metrics.counter("headwater.io", "files_written")
        self._rows_written = beam.metrics.Metrics.counter("headwater.io", "rows_written")
        self._clock = _StageClock("merge")

    def process(self, element: tuple[int, Any]) -> Iterator[Any]:
        with self._clock.timed():
            yield from self._merge(element)

    def _merge(self, element: tuple[int, Any]) -> Iterator[Any]:
        _, parts = element
        tables = [_from_ipc(data) for _, data in sorted(parts, key=lambda part: part[0])]
        state = ColumnarState(self._options)
        if self._options.output is None:
            yield from self._rows(zip(*state._groups(tables), strict=True))
            return
        for path in self._write_table(state.merged(tables)):
            yield beam.pvalue.TaggedOutput("written", path)


def parallel_unsupported_reason(window: Any) -> str | None:
    """Why the parallel form cannot compute ``window``'s rows (the one-step form can), or None.

    Its merge stage is keyed by window start, and a session's bounds are known only once every
    shard's windows of its key are merged.
    """
    if isinstance(to_window_fn(window), beam.transforms.window.Sessions):
        return "session windows merge per key across the id shards (the one-step columnar path)"
    return None


class ComputeWindowedMetricsParallel(ComputeWindowedMetricsColumnar):
    """:class:`~headwater.columnar.ComputeWindowedMetricsColumnar` spread over workers.

    Takes its arguments plus:

    Args:
      shards: id-hash shards of the dedup stage (an integer >= 1; default
        :data:`DEFAULT_SHARDS`). Float sums depend on it (see the module docstring).
      split_bytes: JSON-lines files larger than this are read by byte range, in splits of
        about this size (an integer >= 1; default 16 MiB).

    Returns :class:`~headwater.transforms.process.MetricsResult`; ``duplicate`` is empty
    (``emit_duplicates=True`` is refused).
    """

    def __init__(
        self, *, shards: int = DEFAULT_SHARDS, split_bytes: int = _DEFAULT_SPLIT_BYTES, **options
    ):
        check_count("shards", shards)
        check_count("split_bytes", split_bytes)
        refuse_dead_letter_output(options, "the parallel columnar path")
        if options.get("emit_duplicates"):
            raise ValueError(
                "emit_duplicates=True: the parallel columnar path counts duplicates but cannot "
                "emit them (use ComputeWindowedMetricsColumnar)"
            )
        reason = parallel_unsupported_reason(options.get("window"))
        if reason is not None:
            raise ValueError(f"window={options.get('window')!r}: {reason}")
        super().__init__(**options)
        self._shards = shards
        self._split_bytes = split_bytes

    def expand(self, pbegin):
        options = self._options
        if not self._pattern.startswith(("gs://", "s3://")):
            match_files(self._pattern)  # fail at construction for local patterns
        decoded = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Plan" >> beam.ParDo(_PlanSplitsFn(options.file_format, self._split_bytes))
            | "SpreadSplits" >> beam.Reshuffle()
            | "Decode"
            >> beam.ParDo(_DecodeSplitFn(options, self._shards)).with_outputs(
                "dead_letter", "duplicate", main="batches"
            )
        )
        merged = (
            decoded.batches
            | "GroupByShard" >> beam.GroupByKey()
            | "Dedup" >> beam.ParDo(_DedupShardFn(options))
            | "GroupByWindow" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_MergeWindowFn(options)).with_outputs("written", main="rows")
        )
        rows = merged.rows | "Windows" >> beam.WindowInto(AssignedWindows(self._window_fn))
        late = pbegin | "NoLateData" >> beam.Create([])
        return MetricsResult(rows, late, decoded.duplicate, decoded.dead_letter)
