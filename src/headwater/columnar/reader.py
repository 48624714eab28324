"""Reading files into blocks: JSON lines (parsed by pyarrow on a thread pool), Parquet, Avro.

:class:`BlockReader` is the base of the columnar DoFns: it reads one file in blocks, runs the
vectorized checks of :class:`~headwater.columnar.state.ColumnarState` over each block, sends every
row they do not accept through the record path's own parse/check/id code, and hands the block's
rows to ``_finish_block`` (dedup and aggregation, defined by the DoFn).

A JSON block is cut into pieces of about 1 MiB that ``pyarrow.json`` parses side by side on a few
threads (each piece on its own, types inferred over the piece), while the previous block is
checked, deduplicated and aggregated. Lines that do not start with ``{`` and end with ``}`` never
reach pyarrow. When the parser refuses a piece (one odd value refuses all of it), the piece is cut
at the row pyarrow's error names (the rows before it are parsed on their own, the row goes line by
line, the rest is parsed again), or bisected when the error names none; what still fails is
handled line by line.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import re
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from headwater.columnar.state import (
    ColumnarOptions,
    ColumnarState,
    dedup_field,
)
from headwater.core.records import DecodedRecord, SourceRecord
from headwater.io.fileio import (
    STORAGE_ERRORS,
    unreadable_file_letter,
)

_READ_CHUNK = 8 << 20  # bytes read from a file at a time
_BLOCK_BYTES = 4 << 20  # JSON bytes deduplicated and aggregated at a time
_PARSE_BYTES = 1 << 20  # JSON bytes per pyarrow call (a block's pieces are parsed in parallel)
_MIN_BISECT_LINES = 256  # below this a refused piece is parsed line by line
_PARQUET_BATCH_ROWS = 65_536
_AVRO_BATCH_ROWS = 16_384  # Avro records decoded (fastavro) before one columnar step


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


class BlockReader(beam.DoFn):
    """Reads files block by block into a run's state; ``_finish_block`` handles each block."""

    _options: ColumnarOptions
    _slow: Any  # counter of the rows that took the record path

    # --- JSON lines ----------------------------------------------------------------------

    def _json_blocks(self, state: ColumnarState, path: str) -> Iterator[None]:
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
        self, state: ColumnarState, path: str, first_line: int, block: bytes
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

    def _end_json_block(self, state: ColumnarState, pending: _PendingBlock) -> None:
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
        self._slow.inc(len(slow_lines))
        self._finish_block(state, positions, pieces, slow_rows, element)

    def _finish_block(self, state, elements, pieces, slow_rows, element) -> None:
        """Dedups and aggregates a block's accepted rows (``elements``: record positions)."""
        raise NotImplementedError
