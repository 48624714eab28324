"""Reading files into blocks: JSON lines (parsed by pyarrow on a thread pool), Parquet, Avro.

:class:`BlockReader` is the base of the columnar DoFns: it reads one file in blocks, runs the
vectorized checks of :class:`~headwater.columnar.state.ColumnarState` over each block, sends every
row they do not accept through the record path's own parse/check/id code, and hands the block's
rows to ``_finish_block`` (dedup and aggregation, defined by the DoFn).

A JSON block is cut into pieces of about 1 MiB that ``pyarrow.json`` parses side by side on a few
threads (each piece on its own, types inferred over the piece), while the previous block is
checked, deduplicated and aggregated. Lines that do not start with ``{`` and end with ``}`` (and
lines that are not UTF-8 or too large) never reach pyarrow: they are blanked out of the piece's
bytes (pyarrow skips whitespace lines), so they cost their own handling, not a cut of the piece.
When pyarrow refuses a piece, the piece's own worker thread sets lines aside and parses it
again (:mod:`headwater.columnar.jsonruns`); the odd kinds a refusal found in a file are set
aside before the next pieces' first parse. The cost of a bad line is thus its own, whatever
block it sits in. Every line set aside takes the record path's own parse/check code, which
gives its dead letter exactly.

Given ``decode_processes`` (the in-memory local runner's process), a large local JSON-lines file
is decoded in that many forked processes (:func:`headwater.core.forked.forked_stream`): each
reads the file's blocks as above (the same blocks, line numbers and pieces) and decodes every
``decode_processes``-th, with its own parse threads; this process takes the decoded blocks (the
accepted rows in arrival order, the counters, the dead letters) in file order and deduplicates
and aggregates them. Half of decoding is Python holding the GIL (the record path's code, the
checks' calls), which threads of one process cannot share.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from headwater.columnar import early, jsonblocks
from headwater.columnar.batchids import group_ids
from headwater.columnar.jsonblocks import BlockLayout, block_layout, json_pieces
from headwater.columnar.jsonruns import LineRanges, parse_run
from headwater.columnar.state import (
    SLOW_ROWS,
    AcceptedRows,
    ColumnarOptions,
    ColumnarState,
    dedup_field,
)
from headwater.core.deadletter import DeadLetter
from headwater.core.forked import CAN_FORK, forked_stream
from headwater.core.records import DecodedRecord, SourceRecord
from headwater.io.fileio import (
    STORAGE_ERRORS,
    file_size,
    unreadable_file_letter,
)

_PARQUET_BATCH_ROWS = 65_536
_AVRO_BATCH_ROWS = 16_384  # Avro records decoded (fastavro) before one columnar step


_POOL: concurrent.futures.Executor | None = None


@dataclasses.dataclass
class _PendingBlock:
    """A JSON block whose pieces are being parsed (see ``_json_blocks``)."""

    path: str
    first_line: int
    block: bytes
    element: Callable[[int], SourceRecord]  # a line's record (see _line_element)
    records: np.ndarray  # positions of the non-blank lines
    runs: list[np.ndarray]  # line runs handed to pyarrow
    tables: list[concurrent.futures.Future]  # per run: its checked tables, slow results
    slow_results: list[tuple[int, Any]]  # (line, ColumnarState.slow_result): lines the scan
    # set aside (not an object, not UTF-8, too large)


@dataclasses.dataclass
class _DecodedBlock:
    """A JSON block after its checks and the record path's code (``_decoded_json_blocks``)."""

    first_line: int
    size: int  # bytes
    records: np.ndarray  # positions of the non-blank lines
    rows: AcceptedRows | None  # the accepted rows, in arrival order
    element: Callable[[int], SourceRecord] | None  # None: decoded in a forked process


@dataclasses.dataclass
class _ForkedBlock:
    """A block decoded in a forked process, with what its decoding counted and refused."""

    block: _DecodedBlock
    counts: dict[str, int]
    dead: list[Any]  # its dead letters (_shipped_letters)


def _json_pieces(
    path: str,
    start: int = 0,
    end: int | None = None,
    first_line: int = 1,
    *,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` pieces of a JSON-lines file (:func:`json_pieces`).

    Compression is detected from the extension. ``start``, ``end`` and ``first_line`` read
    bytes ``[start, end)`` of an uncompressed file whose line ``first_line`` starts at ``start``
    (a split of :mod:`headwater.columnar.parallel`). ``wanted``: the pieces to yield, by index.
    """
    ranged = start > 0 or end is not None
    compression = CompressionTypes.UNCOMPRESSED if ranged else CompressionTypes.AUTO
    with FileSystems.open(path, compression_type=compression) as handle:
        if start:
            handle.seek(start)
        left = None if end is None else end - start
        yield from json_pieces(
            handle, first_line=first_line, left=left, file_start=start == 0, wanted=wanted
        )


class _OnThisThread(concurrent.futures.Executor):
    """Runs each call at once on the caller's thread (``HEADWATER_PARSE_THREADS=0``)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # raised by result(), as a pool thread's would be
            future.set_exception(exc)
        return future


def _parse_pool() -> concurrent.futures.Executor:
    """The threads that parse the pieces of a block side by side (pyarrow releases the GIL)."""
    global _POOL
    if _POOL is None:
        _POOL = _new_pool(_parse_threads())
    return _POOL


def _parse_threads() -> int:
    """Up to 4 (the cores), or ``HEADWATER_PARSE_THREADS``; ``0`` parses on the DoFn's own
    thread, block after block (the bench's single-threaded workers)."""
    given = os.environ.get("HEADWATER_PARSE_THREADS", "")
    if given and not given.isdigit():
        raise ValueError(f"HEADWATER_PARSE_THREADS={given!r} must be an integer >= 0")
    return int(given) if given else max(1, min(4, os.cpu_count() or 1))


def _new_pool(threads: int) -> concurrent.futures.Executor:
    if threads == 0:
        return _OnThisThread()
    return concurrent.futures.ThreadPoolExecutor(
        max_workers=threads, thread_name_prefix="headwater-json"
    )


def _parse_and_check(
    state: ColumnarState,
    layout: BlockLayout,
    run: np.ndarray,
    whole: tuple[str, ...],
    odd_kinds: set[tuple[str, str]],
    element: Callable[[int], SourceRecord],
    parsed: tuple[list[tuple[np.ndarray, pa.Table]], list[int]] | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray, dict[str, Any]]], list[tuple[int, Any]]]:
    """:func:`parse_run` (or its result, ``parsed``), the fast checks of each table, the record
    path for the rest.

    ``([(run positions, accept mask, columns)], [(line, slow result)])`` for the block lines
    ``run`` of ``layout`` (``element``: a block line's record); the slow results are those of
    the lines set aside and of the rows the checks refused. Neither the checks
    (``ColumnarState.fast``) nor the record path's code (``ColumnarState.slow_result``) change
    any state, so the thread that parsed a run also checks it and runs the record path's code
    over the lines it did not accept: the main thread is left the block's ordered steps.
    """
    tables, aside = parse_run(*layout.run_text(run), whole, odd_kinds) if parsed is None else parsed
    checked = [(positions, *state.fast(table)) for positions, table in tables]
    rejected = [run[positions[~mask]] for positions, mask, _ in checked]
    lines = np.concatenate([run[aside], *rejected]).tolist()
    return checked, [(line, state.slow_result(element(line))) for line in lines]


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _line_element(block: bytes, ranges: LineRanges, path: str, first_line: int) -> Callable:
    """A block line's record: its bytes (no newline), file and line number."""

    def element(i: int) -> SourceRecord:
        payload = block[ranges.starts[i] : ranges.ends[i]]
        return SourceRecord(payload, {"file": path, "line": first_line + int(i)})

    return element


class BlockReader(beam.DoFn):
    """Reads files block by block into a run's state; ``_finish_block`` handles each block."""

    _options: ColumnarOptions
    # Whether this DoFn deduplicates whole files with its state's BatchIds: then each file's size
    # (one metadata request) sizes the id table; a DoFn that does not skips the request.
    _sizes_ids = False
    # Whether a large file may be decoded in forked processes (given decode_processes): the
    # DoFn's _finish_block then gets no ``element`` (the block's bytes stay in the process).
    _may_fork_decoding = False

    # --- JSON lines ----------------------------------------------------------------------

    def _json_blocks(
        self, state: ColumnarState, path: str, pieces: Iterator[tuple[int, bytes]] | None = None
    ) -> Iterator[None]:
        """Handles the file's blocks in order, yielding after each (``pieces``: a part of it).

        Each block is decoded (``_decoded_json_blocks``, or in forked processes), then
        deduplicated and aggregated here by ``_finish_block``.
        """
        if pieces is None and self._forks_decoding(path):
            blocks = self._forked_json_blocks(state, path)
        else:
            early.discard()  # a file parsed early is one decoded in forked processes
            blocks = self._decoded_json_blocks(state, path, pieces)
        for block in blocks:
            if self._sizes_ids and block.first_line == 1 and block.size:  # the file's records,
                per_byte = len(block.records) / block.size  # as a hint
                state.ids.expect(int(file_size(path) * per_byte) - len(block.records))
            self._finish_block(state, block.records, block.rows, block.element)
            yield None

    def _decoded_json_blocks(
        self,
        state: ColumnarState,
        path: str,
        pieces: Iterator[tuple[int, bytes]] | None = None,
        spool: early.Spool | None = None,
    ) -> Iterator[_DecodedBlock]:
        """The file's blocks decoded, in order (``pieces``: a part of the file; ``spool``: the
        blocks an early process parsed).

        Pipelined: block ``k + 1`` is handed to the parse pool before block ``k`` is taken: a
        pool thread finds its lines and starts its pieces' parse and checks (pyarrow, mostly
        without the GIL) while this thread settles block ``k`` and the caller deduplicates and
        aggregates it. Blocks still come strictly in file order.
        """
        pool = _parse_pool()
        pending: concurrent.futures.Future | None = None
        odd_kinds: set[tuple[str, str]] = set()  # see parse_run
        for first_line, piece in _json_pieces(path) if pieces is None else pieces:
            started = pool.submit(
                self._start_json_block, state, path, first_line, piece, odd_kinds, spool
            )
            if pending is not None:
                yield self._decode_json_block(state, pending.result())
            pending = started
        if pending is not None:
            yield self._decode_json_block(state, pending.result())

    def _forks_decoding(self, path: str) -> bool:
        """Whether the file is decoded in forked processes (see the module docstring)."""
        options = self._options
        return (
            CAN_FORK
            and self._may_fork_decoding
            and options.decode_processes > 1
            and not options.emit_duplicates  # a duplicate's record is read from its block
            and FileSystems.get_scheme(path) is None
            and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
            and file_size(path) >= jsonblocks.FORK_DECODE_BYTES
        )

    def _forked_json_blocks(self, state: ColumnarState, path: str) -> Iterator[_DecodedBlock]:
        """The file's blocks decoded in forked processes, block ``k`` in process ``k % n``.

        Each process reads the whole file (the same cuts and line numbers as one process; the
        others' blocks only counted) and decodes its own blocks; what a decoding counted and the
        dead letters it made come with the block and are added to ``state`` here. The blocks
        an early process parsed while the pipeline started (:func:`early.claim`) are only
        checked.
        """

        here = os.getpid()
        spool = early.claim(path)

        def decode(index: int, processes: int) -> Iterator[_ForkedBlock]:
            global _POOL
            if os.getpid() != here:  # a child: its own parse threads (the caller's are not
                _POOL = _new_pool(_parse_threads() // processes)  # there), split over them
            # a state of its own: what it counts and refuses travels with each block (in this
            # process too, when the stream could not fork)
            decoding = ColumnarState(self._options)
            ours = _json_pieces(path, wanted=lambda number: number % processes == index)
            for block in self._decoded_json_blocks(decoding, path, ours, spool):
                block.element = None  # its bytes stay here
                rows = block.rows
                if rows is not None and rows.ids is not None:  # the dedup's own work, there
                    rows.grouped, rows.ids = group_ids(rows.ids, rows.ts), None
                counts = {name: value for name, value in decoding.counts.items() if value}
                decoding.counts.update(dict.fromkeys(counts, 0))
                dead = self._shipped_letters(decoding.dead)
                decoding.dead.clear()
                yield _ForkedBlock(block, counts, dead)

        try:
            for forked in forked_stream(decode, processes=self._options.decode_processes):
                for name, value in forked.counts.items():
                    state.counts[name] += value
                self._add_shipped_letters(state, forked.dead)
                yield forked.block
        finally:
            if spool is not None:
                spool.remove()

    def _shipped_letters(self, dead: list[DeadLetter]) -> list[Any]:
        """A block's dead letters as a forked decoding sends them (a DoFn may encode them)."""
        return list(dead)

    def _add_shipped_letters(self, state: ColumnarState, shipped: list[Any]) -> None:
        """Takes what ``_shipped_letters`` sent, in a forked decoding's caller."""
        state.dead.extend(shipped)

    def _start_json_block(
        self,
        state: ColumnarState,
        path: str,
        first_line: int,
        block: bytes,
        odd_kinds: set[tuple[str, str]],
        spool: early.Spool | None = None,
    ) -> _PendingBlock:
        """Lays the block's lines out (:func:`block_layout`), starts their parse and checks.

        Runs on a parse thread: it reads the run's options and changes no state (the block's
        records are counted when it ends); its runs are queued behind it on the same pool. The
        lines pyarrow never sees take the record path's code here, beside the runs' parse.
        ``spool``: the blocks an early process laid out and parsed (:mod:`.early`); such a
        block's runs are only checked, when its layout holds for this run's options.
        """
        options = self._options
        # the columns the fast checks take only as integers (or text): a fraction there would
        # make pyarrow read the whole column as floats, and the whole piece the record path's
        whole: tuple[str, ...] = (options.event_time.field, options.key_field)
        if options.dedup is not None:
            whole += (dedup_field(options.dedup) or "",)
        max_bytes = options.max_record_bytes
        done = None if spool is None else spool.take(first_line)
        parsed: list[Any]
        if done is not None and done.fits(len(block), max_bytes, whole):
            odd_kinds |= done.odd_kinds
            layout, parsed = done.layout, done.parsed
        else:
            layout = block_layout(block, max_bytes)
            parsed = [None] * len(layout.runs)
        pool = _parse_pool()
        element = _line_element(block, layout.ranges, path, first_line)
        tables = [
            pool.submit(_parse_and_check, state, layout, run, whole, odd_kinds, element, one)
            for run, one in zip(layout.runs, parsed, strict=True)
        ]
        slow_results = [(line, state.slow_result(element(line))) for line in layout.slow_lines]
        return _PendingBlock(
            path, first_line, block, element, layout.records, layout.runs, tables, slow_results
        )

    def _decode_json_block(self, state: ColumnarState, pending: _PendingBlock) -> _DecodedBlock:
        """Takes the parsed and checked runs, the record path's results in line order: the
        block's accepted rows (counted, with the dead letters, in ``state``)."""
        records = pending.records
        state.counts["records_in"] += len(records)
        pieces: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
        slow_results = list(pending.slow_results)
        for run, future in zip(pending.runs, pending.tables, strict=True):
            checked, results = future.result()
            pieces.extend((run[positions], mask, columns) for positions, mask, columns in checked)
            slow_results.extend(results)
        slow_results.sort(key=_first)
        slow_rows = []
        for line_index, result in slow_results:
            accepted = state.settle(result)
            if accepted is not None:
                slow_rows.append((line_index, accepted))
        state.counts[SLOW_ROWS] += len(slow_results)
        rows = state.accepted(pieces, slow_rows)
        return _DecodedBlock(pending.first_line, len(pending.block), records, rows, pending.element)

    def _decoded(self, element: Any) -> Any:
        if isinstance(element, DecodedRecord):
            return element.record
        return self._options.decode.decode(element.payload)

    # --- Parquet -------------------------------------------------------------------------

    def _blocks_of(self, state: ColumnarState, path: str) -> Iterator[None]:
        """The file's blocks, handled in order (a generator: one step per block)."""
        if self._options.file_format == "json":
            return self._json_blocks(state, path)
        if self._options.file_format == "avro":
            return self._avro_blocks(state, path)
        return self._parquet_blocks(state, path)

    def _parquet_blocks(self, state: ColumnarState, path: str) -> Iterator[None]:
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

    def _avro_blocks(self, state: ColumnarState, path: str) -> Iterator[None]:
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
        self, state: ColumnarState, path: str, first: int, records: list[dict[str, Any]]
    ) -> None:
        """Decoded records (dicts) through the columnar steps: the fields it reads as Arrow."""
        options = self._options
        names = [options.event_time.field, options.key_field, *options.fields]
        if options.dedup is not None:
            names.append(dedup_field(options.dedup))  # type: ignore[arg-type]
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

    def _parquet_batch(self, state: ColumnarState, path: str, first: int, batch: Any) -> None:
        def element(i: int) -> DecodedRecord:
            return DecodedRecord(
                batch.slice(i, 1).to_pylist()[0], {"file": path, "record": first + i}
            )

        self._decoded_batch(state, batch, element)

    def _decoded_batch(self, state: ColumnarState, batch: Any, element: Any) -> None:
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
        state.counts[SLOW_ROWS] += len(slow_lines)
        self._finish_block(state, positions, state.accepted(pieces, slow_rows), element)

    def _finish_block(self, state, elements, rows, element) -> None:
        """Dedups and aggregates a block's accepted rows (``elements``: record positions)."""
        raise NotImplementedError
