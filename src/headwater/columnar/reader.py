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
When the parser refuses a piece, the piece's own worker thread sets lines aside and parses it
again: a value of another JSON kind than the column had (``"amount":"12 EUR"`` among numbers)
sets aside at once every line whose value of that column has the odd kind (found with one
regular-expression scan; a false match only costs the record path a line), any other refusal
cuts the piece at the row pyarrow's error names (the rows before it are parsed on their own,
the row goes line by line, the rest is parsed again), or bisects it when the error names none.
The cost of a bad line is thus its own, whatever block it sits in. Every line set aside takes
the record path's own parse/check code, which gives its dead letter exactly.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
from collections.abc import Iterator
from typing import Any, NamedTuple

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

_READ_CHUNK = 4 << 20  # bytes read from a file at a time (one block each)
_BLOCK_BYTES = 4 << 20  # JSON bytes deduplicated and aggregated at a time
_PARSE_BYTES = 1 << 20  # JSON bytes per pyarrow call (a block's pieces are parsed in parallel)
_MIN_BISECT_LINES = 256  # below this a refused piece is parsed line by line
_PARQUET_BATCH_ROWS = 65_536
_AVRO_BATCH_ROWS = 16_384  # Avro records decoded (fastavro) before one columnar step


def _invalid_utf8_lines(block: bytes, ranges: Any) -> list[int]:
    """Indexes of the lines of ``block`` that are not valid UTF-8 (usually none).

    One decode of the whole block when it is valid; otherwise only the lines holding a byte
    past ASCII are decoded, each on its own (a newline is never inside a UTF-8 sequence).
    """
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        return []
    high = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) >= 0x80)
    bad: list[int] = []
    for line in np.unique(np.searchsorted(ranges.starts, high, side="right") - 1).tolist():
        try:
            block[ranges.starts[line] : ranges.next_starts[line]].decode("utf-8")
        except UnicodeDecodeError:
            bad.append(line)
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


class _Refusal(NamedTuple):
    """Why pyarrow refused a piece: the row its error names (0-based), and for a value of another
    JSON kind than its column had, the column and the two kinds (``number``, ``string`` ...)."""

    row: int | None
    column: str | None = None
    was: str | None = None
    now: str | None = None


_ERROR_ROW = re.compile(r" in row (\d+)$")
_KIND_CHANGE = re.compile(r"Column\(/(.*)\) changed from (\w+) to (\w+) in row (\d+)$")
_KIND_STARTS = {  # the first byte of a JSON value of each kind pyarrow names
    "number": rb"[-0-9]",
    "string": rb'"',
    "boolean": rb"[tf]",
    "object": rb"\{",
    "array": rb"\[",
}


def _read_json(data: Any) -> pa.Table | _Refusal:
    """JSON lines (bytes-like) parsed by pyarrow as one block (types inferred over all of it).

    When pyarrow refuses the block: a :class:`_Refusal` naming the row (None when the error
    names none) and, for a value of another kind, the column. They only guide which lines are
    set aside; every cut is exact whichever line is set aside.
    """
    try:
        return pa_json.read_json(
            pa.BufferReader(pa.py_buffer(data)),
            read_options=pa_json.ReadOptions(block_size=max(len(data), 1 << 16), use_threads=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        message = str(exc)
        change = _KIND_CHANGE.search(message)
        if change is not None and "/" not in change.group(1):
            return _Refusal(int(change.group(4)), *change.group(1, 2, 3))
        row = _ERROR_ROW.search(message)
        return _Refusal(int(row.group(1)) if row else None)


_FRACTION = rb"-?[0-9]+[.eE]"  # a JSON number with a fraction or an exponent


def _kind_lines(data: Any, starts: np.ndarray, column: str, start: bytes | None) -> np.ndarray:
    """Which of the lines at ``starts`` in ``data`` hold ``"column":`` then ``start`` (a regex).

    A byte scan, not a parse: a nested member of the same name matches too (the line then takes
    the record path, which is exact); a name JSON would escape matches nothing.
    """
    if start is None or any(c in column for c in '"\\') or not column.isprintable():
        return np.zeros(0, dtype=np.int64)
    name = re.escape(column.encode())
    found = [
        m.start() for m in re.finditer(rb'"' + name + rb'"[ \t\r\n]*:[ \t\r\n]*' + start, data)
    ]
    return np.unique(np.searchsorted(starts, np.asarray(found, dtype=np.int64), side="right") - 1)


def _parse_run(
    data: Any,
    starts: np.ndarray,
    whole: tuple[str, ...] = (),
    odd_kinds: set[tuple[str, str]] | None = None,
) -> tuple[list[tuple[np.ndarray, pa.Table]], list[int]]:
    """Parses a run of JSON lines, setting aside the lines pyarrow refuses.

    ``starts``: the byte offsets in ``data`` of the run's lines (non-blank, in order; other
    lines of ``data`` are whitespace). Returns the tables, each with the run positions of its
    rows, and the positions set aside for the record path. Set-aside lines are blanked in a copy
    of ``data``, so the lines around them are parsed in one call:

    - a value of another kind than its column had: every line whose value of that column has the
      odd kind (the kind fewer lines hold) is set aside at once, and the lines parsed again;
    - any other refusal naming a row: the rows before it are parsed on their own, the row is set
      aside, the rest is parsed again;
    - a refusal naming no row: halves, set aside whole below ``_MIN_BISECT_LINES``;
    - a column of ``whole`` (taken by the fast checks only as integers) read as floating point:
      the lines holding a fraction or an exponent there (fewer than half) are set aside, and the
      lines parsed again.

    Each of these sets aside at least one line, so the loop ends; runs on a parse thread.

    ``odd_kinds`` (shared by the runs of a file, updated here): the ``(column, kind)`` pairs
    set aside by an earlier refusal. Their lines are found and set aside before the first
    parse, when they are fewer than half the run: a file whose amounts are sometimes strings
    then costs one parse per run, not one more per odd column (the lines set aside are the
    same ones the refusals would find).
    """
    n = len(starts)
    ends = np.append(starts[1:], len(data))  # each line's bytes, up to the next line
    text: Any = data
    aside = np.zeros(n, dtype=bool)
    tables: list[tuple[np.ndarray, pa.Table]] = []
    todo = [np.arange(n)]

    def set_aside(positions: np.ndarray) -> None:
        nonlocal text
        if text is data:
            text = bytearray(data)
        for position in positions.tolist():  # spaces up to the line's newline: pyarrow skips it
            start, end = int(starts[position]), int(ends[position])
            stop = text.find(b"\n", start, end)
            text[start : end if stop < 0 else stop] = b" " * ((end if stop < 0 else stop) - start)
        aside[positions] = True

    for column, kind in sorted(odd_kinds or ()):
        known = _kind_lines(data, starts, column, _KIND_STARTS.get(kind))
        if len(known) > 0 and 2 * len(known) <= n:
            set_aside(known)
    while todo:
        alive = todo.pop()
        alive = alive[~aside[alive]]
        if len(alive) == 0:
            continue
        low = int(starts[alive[0]])
        view = memoryview(text)[low : int(ends[alive[-1]])]
        local = starts[alive] - low
        parsed = _read_json(view)
        if isinstance(parsed, pa.Table) and parsed.num_rows == len(alive):
            odd = np.zeros(0, dtype=np.int64)
            for name in whole:
                index = parsed.schema.get_field_index(name)
                if index >= 0 and pa.types.is_floating(parsed.schema.field(index).type):
                    odd = np.union1d(odd, alive[_kind_lines(view, local, name, _FRACTION)])
            if len(odd) == 0 or 2 * len(odd) > len(alive):
                tables.append((alive, parsed))
                continue
        else:
            # more rows than lines (two objects on a line) are cut like a refusal naming no row
            row = None if isinstance(parsed, pa.Table) else parsed.row
            if row is None or not 0 <= row < len(alive):
                if len(alive) <= _MIN_BISECT_LINES:
                    aside[alive] = True
                else:
                    half = len(alive) // 2
                    todo += [alive[half:], alive[:half]]
                continue
            if parsed.column is None:
                aside[alive[row]] = True
                todo += [alive[row + 1 :], alive[:row]]
                continue
            column = parsed.column
            now = alive[_kind_lines(view, local, column, _KIND_STARTS.get(parsed.now or ""))]
            odd, kind = np.append(now, alive[row]), parsed.now or ""
            if 2 * len(now) > len(alive):  # the odd kind came first: set the other kind aside
                was = alive[_kind_lines(view, local, column, _KIND_STARTS.get(parsed.was or ""))]
                if 0 < len(was) < len(now):
                    odd, kind = was, parsed.was or ""
            if odd_kinds is not None and kind in _KIND_STARTS:
                odd_kinds.add((column, kind))
        set_aside(odd)
        todo.append(alive)
    return tables, np.flatnonzero(aside).tolist()


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


def _json_pieces(
    path: str, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` pieces of a JSON-lines file, each ending at a newline.

    Compression is detected from the extension; a leading BOM is dropped; a last line without a
    newline gets one. Pieces are about ``_BLOCK_BYTES``; each byte is copied once (the carried
    part of a line joined to the chunk up to its last newline), not once per slice. ``start``,
    ``end`` and ``first_line`` read bytes ``[start, end)`` of an uncompressed file whose line
    ``first_line`` starts at ``start`` (a split of :mod:`headwater.columnar.parallel`).
    """
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
                if rest:
                    yield line, rest + b"\n"
                return
            cut = chunk.rfind(b"\n") + 1
            if cut == 0:
                rest += chunk
                continue
            carried = len(rest)
            data = b"".join((rest, memoryview(chunk)[:cut])) if rest or cut < len(chunk) else chunk
            rest = chunk[cut:]
            # one read is one piece (with the line carried into it); a read larger than a block
            # is cut into blocks
            big = len(data) > _BLOCK_BYTES + carried
            pieces = _split(data, _BLOCK_BYTES) if big else (data,)
            for piece in pieces:
                yield line, piece
                line += piece.count(b"\n")


def _parse_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that parse the pieces of a block side by side (pyarrow releases the GIL).

    Up to 4 (the cores), or ``HEADWATER_PARSE_THREADS`` (the bench's single-threaded workers).
    """
    global _POOL
    if _POOL is None:
        given = os.environ.get("HEADWATER_PARSE_THREADS", "")
        if given and (not given.isdigit() or int(given) < 1):
            raise ValueError(f"HEADWATER_PARSE_THREADS={given!r} must be an integer >= 1")
        threads = int(given) if given else max(1, min(4, os.cpu_count() or 1))
        _POOL = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="headwater-json"
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

    def _json_blocks(
        self, state: ColumnarState, path: str, pieces: Iterator[tuple[int, bytes]] | None = None
    ) -> Iterator[None]:
        """Handles the file's blocks in order, yielding after each (``pieces``: a part of it).

        Pipelined: block ``k + 1`` is handed to the parse pool before block ``k``'s parsed
        pieces are checked, deduplicated and aggregated, so pyarrow parses (without the GIL)
        while the Python steps run. Blocks still finish strictly in file order.
        """
        pending: _PendingBlock | None = None
        odd_kinds: set[tuple[str, str]] = set()  # see _parse_run
        for first_line, piece in _json_pieces(path) if pieces is None else pieces:
            started = self._start_json_block(state, path, first_line, piece, odd_kinds)
            if pending is not None:
                self._end_json_block(state, pending)
                yield None
            pending = started
        if pending is not None:
            self._end_json_block(state, pending)
            yield None

    def _start_json_block(
        self,
        state: ColumnarState,
        path: str,
        first_line: int,
        block: bytes,
        odd_kinds: set[tuple[str, str]],
    ) -> _PendingBlock:
        """Finds the block's lines, blanks the ones pyarrow must not see, starts parsing."""
        ranges = _Ranges(block)
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
        state.counts["records_in"] += len(records)
        # Lines pyarrow must not see (not an object, invalid UTF-8, over the size limit) take
        # the record path one by one; they are blanked in a copy of the block, so the lines
        # around them are still parsed as one piece.
        slow = odd.copy()
        if max_bytes is not None:
            slow |= (ranges.lengths > max_bytes) & ~blank
        for line_index in _invalid_utf8_lines(block, ranges):
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
        tables = [
            pool.submit(
                _parse_run,
                memoryview(text)[ranges.starts[run[0]] : ranges.next_starts[run[-1]]],
                ranges.starts[run] - ranges.starts[run[0]],
                whole,
                odd_kinds,
            )
            for run in runs
        ]
        return _PendingBlock(path, first_line, block, ranges, records, slow_lines, runs, tables)

    def _end_json_block(self, state: ColumnarState, pending: _PendingBlock) -> None:
        """Checks the parsed pieces, runs the set-aside lines through the record path, finishes."""
        block, ranges, slow_lines = pending.block, pending.ranges, pending.slow_lines
        path, first_line = pending.path, pending.first_line

        def element(i: int) -> SourceRecord:
            payload = block[ranges.starts[i] : ranges.ends[i]]
            return SourceRecord(payload, {"file": path, "line": first_line + int(i)})

        pieces: list[tuple[np.ndarray, np.ndarray, dict[str, Any]]] = []
        for run, future in zip(pending.runs, pending.tables, strict=True):
            tables, aside = future.result()
            for positions, table in tables:
                lines = run[positions]
                mask, columns = state.fast(table)
                pieces.append((lines, mask, columns))
                slow_lines.extend(lines[~mask].tolist())
            slow_lines.extend(run[aside].tolist())
        slow_lines.sort()
        slow_rows = []
        for line_index in map(int, slow_lines):
            accepted = state.slow(element(line_index))
            if accepted is not None:
                slow_rows.append((line_index, accepted))
        self._slow.inc(len(slow_lines))
        self._finish_block(state, pending.records, pieces, slow_rows, element)

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
