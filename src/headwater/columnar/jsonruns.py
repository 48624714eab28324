"""Parsing a run of JSON lines with pyarrow, setting aside the lines it refuses.

The reader (:mod:`headwater.columnar.reader`) hands each run of a block's lines to
:func:`parse_run` on a parse thread. When pyarrow refuses a run, the lines it names are set
aside (blanked in a copy of the bytes, which pyarrow skips as whitespace) and the rest parsed
again: a value of another JSON kind than the column had (``"amount":"12 EUR"`` among numbers)
sets aside at once every line whose value of that column has the odd kind, any other refusal
cuts the run at the row pyarrow's error names, or bisects it when the error names none. The
lines set aside take the record path's own parse/check code, which gives their dead letters
exactly; which lines are set aside only decides what that costs.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

__all__ = ["LineRanges", "Refusal", "invalid_utf8_lines", "kind_lines", "parse_run", "read_json"]

MIN_BISECT_LINES = 256  # below this a refused run is parsed line by line


_HIGH_BITS = np.uint64(0x8080808080808080)  # a byte past ASCII in each of 8 bytes
_FEW_LINES = 256  # lines past ASCII decoded one by one before the whole block is tried


def invalid_utf8_lines(block: bytes, ranges: Any) -> list[int]:
    """Indexes of the lines of ``block`` that are not valid UTF-8 (usually none).

    An ASCII block has none. Otherwise the lines holding a byte past ASCII are found (8 bytes
    at a time); a few are decoded each on its own (a newline is never inside a UTF-8 sequence),
    many only when the block as a whole does not decode.
    """
    if block.isascii():
        return []
    data = np.frombuffer(block, dtype=np.uint8)
    whole = len(block) // 8 * 8
    words = np.flatnonzero(data[:whole].view(np.uint64) & _HIGH_BITS) * 8
    # every byte of those words, and of the tail: the bytes past ASCII among them
    spots = np.concatenate(((words[:, None] + np.arange(8)).ravel(), np.arange(whole, len(data))))
    high = spots[data[spots] >= 0x80]
    found = np.searchsorted(ranges.starts, high, side="right") - 1  # ascending, with repeats
    lines = found[np.append(True, found[1:] != found[:-1])].tolist() if len(found) else []
    if len(lines) > _FEW_LINES:
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return []
    bad: list[int] = []
    for line in lines:
        try:
            block[ranges.starts[line] : ranges.next_starts[line]].decode("utf-8")
        except UnicodeDecodeError:
            bad.append(line)
    return bad


class LineRanges:
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


class Refusal(NamedTuple):
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


def read_json(data: Any) -> pa.Table | Refusal:
    """JSON lines (bytes-like) parsed by pyarrow as one block (types inferred over all of it).

    When pyarrow refuses the block: a :class:`Refusal` naming the row (None when the error
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
            return Refusal(int(change.group(4)), *change.group(1, 2, 3))
        row = _ERROR_ROW.search(message)
        return Refusal(int(row.group(1)) if row else None)


_FRACTION = rb"-?[0-9]+[.eE]"  # a JSON number with a fraction or an exponent


def kind_lines(data: Any, starts: np.ndarray, column: str, start: bytes | None) -> np.ndarray:
    """Which of the lines at ``starts`` in ``data`` hold ``"column":`` then ``start`` (a regex).

    A byte scan, not a parse: a nested member of the same name matches too (the line then takes
    the record path, which is exact); a name JSON would escape matches nothing. Each line (its
    bytes up to the next start) is matched by Arrow's regular expressions, which run without
    the GIL: the scans on the parse threads do not stall the thread checking the blocks.
    """
    return _lines_matching(data, starts, [_kind_pattern(column, start)])


def _kind_pattern(column: str, start: bytes | None) -> bytes | None:
    """The regex of :func:`kind_lines` (None: it matches nothing)."""
    if start is None or any(c in column for c in '"\\') or not column.isprintable():
        return None
    return b'"' + re.escape(column.encode()) + rb'"[ \t\r\n]*:[ \t\r\n]*' + start


def _lines_matching(data: Any, starts: np.ndarray, patterns: list[bytes | None]) -> np.ndarray:
    """The lines (as in :func:`kind_lines`) matching any of ``patterns``, in one scan."""
    wanted = [pattern for pattern in patterns if pattern is not None]
    if not wanted:
        return np.zeros(0, dtype=np.int64)
    pattern = b"|".join(b"(?:" + one + b")" for one in wanted) if len(wanted) > 1 else wanted[0]
    wide = len(data) >= 1 << 31
    offsets = np.append(starts, len(data)).astype(np.int64 if wide else np.int32)
    lines = pa.Array.from_buffers(
        pa.large_binary() if wide else pa.binary(),
        len(starts),
        [None, pa.py_buffer(offsets), pa.py_buffer(data)],
    )
    found = pc.match_substring_regex(lines, pattern.decode("utf-8"))
    return np.flatnonzero(found.to_numpy(zero_copy_only=False))


def parse_run(
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
    - a refusal naming no row: halves, set aside whole below ``MIN_BISECT_LINES``;
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

    known_kinds = sorted(odd_kinds or ())
    patterns = [_kind_pattern(column, _KIND_STARTS.get(kind)) for column, kind in known_kinds]
    known = _lines_matching(data, starts, patterns)  # one scan for all of them, as a rule
    if 2 * len(known) > n:  # too many together: each kind on its own, as it allows
        for pattern in patterns:
            known = _lines_matching(data, starts, [pattern])
            if len(known) > 0 and 2 * len(known) <= n:
                set_aside(known)
    elif len(known) > 0:
        set_aside(known)
    while todo:
        alive = todo.pop()
        alive = alive[~aside[alive]]
        if len(alive) == 0:
            continue
        low = int(starts[alive[0]])
        view = memoryview(text)[low : int(ends[alive[-1]])]
        local = starts[alive] - low
        parsed = read_json(view)
        if isinstance(parsed, pa.Table) and parsed.num_rows == len(alive):
            odd = np.zeros(0, dtype=np.int64)
            for name in whole:
                index = parsed.schema.get_field_index(name)
                if index >= 0 and pa.types.is_floating(parsed.schema.field(index).type):
                    odd = np.union1d(odd, alive[kind_lines(view, local, name, _FRACTION)])
            if len(odd) == 0 or 2 * len(odd) > len(alive):
                tables.append((alive, parsed))
                continue
        else:
            # more rows than lines (two objects on a line) are cut like a refusal naming no row
            row = None if isinstance(parsed, pa.Table) else parsed.row
            if row is None or not 0 <= row < len(alive):
                if len(alive) <= MIN_BISECT_LINES:
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
            now = alive[kind_lines(view, local, column, _KIND_STARTS.get(parsed.now or ""))]
            odd, kind = np.append(now, alive[row]), parsed.now or ""
            if 2 * len(now) > len(alive):  # the odd kind came first: set the other kind aside
                was = alive[kind_lines(view, local, column, _KIND_STARTS.get(parsed.was or ""))]
                if 0 < len(was) < len(now):
                    odd, kind = was, parsed.was or ""
            if odd_kinds is not None and kind in _KIND_STARTS:
                odd_kinds.add((column, kind))
        set_aside(odd)
        todo.append(alive)
    return tables, np.flatnonzero(aside).tolist()
