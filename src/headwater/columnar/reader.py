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

from headwater.columnar.batchids import group_ids
from headwater.columnar.jsonruns import LineRanges, invalid_utf8_lines, parse_run
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

_READ_CHUNK = 4 << 20  # bytes read from a file at a time (one block each)
_BLOCK_BYTES = 4 << 20  # JSON bytes deduplicated and aggregated at a time
_PARSE_BYTES = 1 << 20  # JSON bytes per pyarrow call (a block's pieces are parsed in parallel)
_PARQUET_BATCH_ROWS = 65_536
_AVRO_BATCH_ROWS = 16_384  # Avro records decoded (fastavro) before one columnar step
# a JSON-lines file this large or larger is decoded in forked processes, given decode_processes
# (a fork of a large process costs ~10-30 ms; a 4 MiB block ~0.1 s of decoding)
_FORK_DECODE_BYTES = 32 << 20


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
    """``(first line number, bytes)`` pieces of a JSON-lines file, each ending at a newline.

    Compression is detected from the extension; a leading BOM is dropped; a last line without a
    newline gets one. Pieces are about ``_BLOCK_BYTES``; each byte is copied once (the carried
    part of a line joined to the chunk up to its last newline), not once per slice. ``start``,
    ``end`` and ``first_line`` read bytes ``[start, end)`` of an uncompressed file whose line
    ``first_line`` starts at ``start`` (a split of :mod:`headwater.columnar.parallel`).
    ``wanted``: the pieces to yield, by their index (the others are only counted: their
    lines' numbers go on).
    """
    index = 0
    line = first_line
    rest = b""
    first = start == 0
    ranged = start > 0 or end is not None
    left = None if end is None else end - start
    compression = CompressionTypes.UNCOMPRESSED if ranged else CompressionTypes.AUTO
    with FileSystems.open(path, compression_type=compression) as handle:
        if start:
            handle.seek(start)
        while True:
            want = _READ_CHUNK if left is None else min(_READ_CHUNK, left)
            raw = handle.read(want) if want else b""
            if left is not None:
                left -= len(raw)
            chunk = raw.removeprefix(b"\xef\xbb\xbf") if first else raw
            first = False
            if not raw:
                if rest and (wanted is None or wanted(index)):
                    yield line, rest + b"\n"
                return
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest += chunk
                continue
            if wanted is not None and not wanted(index) and cut <= _BLOCK_BYTES:
                index += 1  # one piece (see big), not the caller's: only its newlines count
                line += _newlines(chunk)
                rest = chunk[cut:]
                continue
            carried = len(rest)
            data = b"".join((rest, memoryview(chunk)[:cut])) if rest or cut < len(chunk) else chunk
            rest = chunk[cut:]
            # one read is one piece (with the line carried into it); a read larger than a block
            # is cut into blocks
            big = len(data) > _BLOCK_BYTES + carried
            pieces = _split(data, _BLOCK_BYTES) if big else (data,)
            for piece in pieces:
                if wanted is None or wanted(index):
                    yield line, piece
                index += 1
                line += _newlines(piece)


def _newlines(data: bytes) -> int:
    """How many newlines ``data`` holds (numpy compares without the GIL, 2-3x ``bytes.count``)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE))


_NEWLINE = ord("\n")


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
    data: Any,
    starts: np.ndarray,
    whole: tuple[str, ...],
    odd_kinds: set[tuple[str, str]],
    run: np.ndarray,
    element: Callable[[int], SourceRecord],
) -> tuple[list[tuple[np.ndarray, np.ndarray, dict[str, Any]]], list[tuple[int, Any]]]:
    """:func:`parse_run`, the fast checks of each table, the record path for the rest.

    ``([(run positions, accept mask, columns)], [(line, slow result)])`` for the block lines
    ``run`` (``element``: a block line's record); the slow results are those of the lines set
    aside and of the rows the checks refused. Neither the checks (``ColumnarState.fast``) nor
    the record path's code (``ColumnarState.slow_result``) change any state, so the thread that
    parsed a run also checks it and runs the record path's code over the lines it did not
    accept: the main thread is left the block's ordered steps.
    """
    tables, aside = parse_run(data, starts, whole, odd_kinds)
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
            blocks = self._decoded_json_blocks(state, path, pieces)
        for block in blocks:
            if self._sizes_ids and block.first_line == 1 and block.size:  # the file's records,
                per_byte = len(block.records) / block.size  # as a hint
                state.ids.expect(int(file_size(path) * per_byte) - len(block.records))
            self._finish_block(state, block.records, block.rows, block.element)
            yield None

    def _decoded_json_blocks(
        self, state: ColumnarState, path: str, pieces: Iterator[tuple[int, bytes]] | None = None
    ) -> Iterator[_DecodedBlock]:
        """The file's blocks decoded, in order (``pieces``: a part of the file).

        Pipelined: block ``k + 1`` is handed to the parse pool before block ``k`` is taken: a
        pool thread finds its lines and starts its pieces' parse and checks (pyarrow, mostly
        without the GIL) while this thread settles block ``k`` and the caller deduplicates and
        aggregates it. Blocks still come strictly in file order.
        """
        pool = _parse_pool()
        pending: concurrent.futures.Future | None = None
        odd_kinds: set[tuple[str, str]] = set()  # see parse_run
        for first_line, piece in _json_pieces(path) if pieces is None else pieces:
            started = pool.submit(self._start_json_block, state, path, first_line, piece, odd_kinds)
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
            and file_size(path) >= _FORK_DECODE_BYTES
        )

    def _forked_json_blocks(self, state: ColumnarState, path: str) -> Iterator[_DecodedBlock]:
        """The file's blocks decoded in forked processes, block ``k`` in process ``k % n``.

        Each process reads the whole file (the same cuts and line numbers as one process; the
        others' blocks only counted) and decodes its own blocks; what a decoding counted and the
        dead letters it made come with the block and are added to ``state`` here.
        """

        here = os.getpid()

        def decode(index: int, processes: int) -> Iterator[_ForkedBlock]:
            global _POOL
            if os.getpid() != here:  # a child: its own parse threads (the caller's are not
                _POOL = _new_pool(_parse_threads() // processes)  # there), split over them
            # a state of its own: what it counts and refuses travels with each block (in this
            # process too, when the stream could not fork)
            decoding = ColumnarState(self._options)
            ours = _json_pieces(path, wanted=lambda number: number % processes == index)
            for block in self._decoded_json_blocks(decoding, path, ours):
                block.element = None  # its bytes stay here
                rows = block.rows
                if rows is not None and rows.ids is not None:  # the dedup's own work, there
                    rows.grouped, rows.ids = group_ids(rows.ids, rows.ts), None
                counts = {name: value for name, value in decoding.counts.items() if value}
                decoding.counts.update(dict.fromkeys(counts, 0))
                dead = self._shipped_letters(decoding.dead)
                decoding.dead.clear()
                yield _ForkedBlock(block, counts, dead)

        for forked in forked_stream(decode, processes=self._options.decode_processes):
            for name, value in forked.counts.items():
                state.counts[name] += value
            self._add_shipped_letters(state, forked.dead)
            yield forked.block

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
    ) -> _PendingBlock:
        """Finds the block's lines, blanks the ones pyarrow must not see, starts parsing.

        Runs on a parse thread: it reads the run's options and changes no state (the block's
        records are counted when it ends); its pieces are queued behind it on the same pool.
        """
        ranges = LineRanges(block)
        blank = ranges.lengths == 0
        # A line pyarrow may see starts with "{" and ends with "}": a truncated line would make
        # pyarrow refuse its whole piece (or read on into the next line), so it goes line by line.
        candidate = (ranges.first == ord("{")) & (ranges.last == ord("}"))
        odd = ~(blank | candidate)
        hidden = odd.copy()  # lines blanked out of what pyarrow reads
        if odd.any():  # whitespace-only lines count as blank, like the file reader
            for i in np.flatnonzero(odd):
                if not block[ranges.starts[i] : ranges.ends[i]].strip():
                    blank[i] = True
            odd = ~(blank | candidate)
        max_bytes = self._options.max_record_bytes
        records = np.flatnonzero(~blank)
        # Lines pyarrow must not see (not an object, invalid UTF-8, over the size limit) take
        # the record path one by one; they are blanked in a copy of the block, so the lines
        # around them are still parsed as one piece.
        slow = odd.copy()
        if max_bytes is not None:
            slow |= (ranges.lengths > max_bytes) & ~blank
        for line_index in invalid_utf8_lines(block, ranges):
            slow[line_index] = True
        hidden |= slow
        text: Any = block
        if hidden.any():
            text = bytearray(block)
            for line in np.flatnonzero(hidden).tolist():
                start, end = int(ranges.starts[line]), int(ranges.next_starts[line]) - 1
                text[start:end] = b" " * (end - start)
        slow_lines: list[int] = np.flatnonzero(slow).tolist()
        fast = records[~slow[records]]
        runs = _parts(fast, ranges.starts[fast], _PARSE_BYTES)
        options = self._options
        # the columns the fast checks take only as integers (or text): a fraction there would
        # make pyarrow read the whole column as floats, and the whole piece the record path's
        whole: tuple[str, ...] = (options.event_time.field, options.key_field)
        if options.dedup is not None:
            whole += (dedup_field(options.dedup) or "",)
        pool = _parse_pool()
        element = _line_element(block, ranges, path, first_line)
        tables = [
            pool.submit(
                _parse_and_check,
                state,
                memoryview(text)[ranges.starts[run[0]] : ranges.next_starts[run[-1]]],
                ranges.starts[run] - ranges.starts[run[0]],
                whole,
                odd_kinds,
                run,
                element,
            )
            for run in runs
        ]
        # the lines pyarrow never sees take the record path's code here, beside the runs' parse
        slow_results = [(line, state.slow_result(element(line))) for line in slow_lines]
        return _PendingBlock(path, first_line, block, element, records, runs, tables, slow_results)

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
