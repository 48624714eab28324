"""A JSON-lines file in blocks, and each block's lines laid out for pyarrow (no Beam import).

:func:`json_pieces` cuts an open file into blocks of about ``BLOCK_BYTES`` that end at a
newline, numbering their lines; :func:`block_layout` finds a block's lines, sets aside the ones
pyarrow must not see (not an object, not UTF-8, over the size limit: they take the record
path's code) and cuts the others into runs of about ``PARSE_BYTES`` that pyarrow parses side by
side. The reader (:mod:`headwater.columnar.reader`) and the early decoding of a local run
(:mod:`headwater.columnar.early`, which runs before Apache Beam is imported) both cut and lay
out a file with these functions, so a block means the same bytes and lines in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

from headwater.columnar.jsonruns import LineRanges, invalid_utf8_lines

__all__ = [
    "BLOCK_BYTES",
    "FORK_DECODE_BYTES",
    "PARSE_BYTES",
    "READ_CHUNK",
    "BlockLayout",
    "block_layout",
    "json_pieces",
    "newlines",
]

READ_CHUNK = 4 << 20  # bytes read from a file at a time (one block each)
BLOCK_BYTES = 4 << 20  # JSON bytes deduplicated and aggregated at a time
PARSE_BYTES = 1 << 20  # JSON bytes per pyarrow call (a block's runs are parsed in parallel)
# a local JSON-lines file this large or larger is decoded in forked processes, given the reader's
# decode_processes (a fork of a large process costs ~10-30 ms; a 4 MiB block ~0.1 s of decoding)
FORK_DECODE_BYTES = 32 << 20

_NEWLINE = ord("\n")


def json_pieces(
    handle: BinaryIO,
    *,
    first_line: int = 1,
    left: int | None = None,
    file_start: bool = True,
    wanted: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, bytes]]:
    """``(first line number, bytes)`` pieces of the JSON lines read from ``handle``.

    Each piece ends at a newline (a last line without one gets one) and is about
    ``BLOCK_BYTES``; each byte is copied once (the carried part of a line joined to the chunk up
    to its last newline), not once per slice. ``left``: the bytes to read (``None``: up to the
    end); ``file_start``: the handle is at the file's start (a leading BOM is dropped).
    ``wanted``: the pieces to yield, by their index (the others are only counted: their lines'
    numbers go on).
    """
    index = 0
    line = first_line
    rest = b""
    first = file_start
    while True:
        want = READ_CHUNK if left is None else min(READ_CHUNK, left)
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
        if wanted is not None and not wanted(index) and cut <= BLOCK_BYTES:
            index += 1  # one piece (see big), not the caller's: only its newlines count
            line += newlines(chunk)
            rest = chunk[cut:]
            continue
        carried = len(rest)
        data = b"".join((rest, memoryview(chunk)[:cut])) if rest or cut < len(chunk) else chunk
        rest = chunk[cut:]
        # one read is one piece (with the line carried into it); a read larger than a block
        # is cut into blocks
        big = len(data) > BLOCK_BYTES + carried
        pieces = _split(data, BLOCK_BYTES) if big else (data,)
        for piece in pieces:
            if wanted is None or wanted(index):
                yield line, piece
            index += 1
            line += newlines(piece)


def newlines(data: bytes) -> int:
    """How many newlines ``data`` holds (numpy compares without the GIL, 2-3x ``bytes.count``)."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE))


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


@dataclasses.dataclass
class BlockLayout:
    """A block's lines as pyarrow gets them (see :func:`block_layout`)."""

    ranges: LineRanges
    records: np.ndarray  # positions of the non-blank lines
    slow_lines: list[int]  # lines pyarrow never sees: they take the record path's code
    runs: list[np.ndarray]  # the other records, cut into runs of about PARSE_BYTES
    text: Any  # the block, with the slow lines blanked (pyarrow skips whitespace lines)

    def run_text(self, run: np.ndarray) -> tuple[memoryview, np.ndarray]:
        """A run's bytes and its lines' starts within them (what :func:`parse_run` takes)."""
        starts = self.ranges.starts
        low = starts[run[0]]
        return memoryview(self.text)[low : self.ranges.next_starts[run[-1]]], starts[run] - low

    def longest_parsed(self) -> int:
        """The length of the longest line of the runs (0 without runs)."""
        fast = np.concatenate(self.runs) if self.runs else np.zeros(0, dtype=np.int64)
        return int(self.ranges.lengths[fast].max()) if len(fast) else 0


def block_layout(block: bytes, max_bytes: int | None) -> BlockLayout:
    """Finds the block's lines, sets aside the ones pyarrow must not see, cuts the rest in runs.

    A line pyarrow may see starts with ``{`` and ends with ``}``: a truncated line would make
    pyarrow refuse its whole run (or read on into the next line), so it goes line by line, as do
    lines that are not UTF-8 and lines over ``max_bytes`` (``None``: no limit). Whitespace-only
    lines count as blank, like the file reader's. The set-aside lines are blanked in a copy of
    the block, so the lines around them are still parsed as one run.
    """
    ranges = LineRanges(block)
    blank = ranges.lengths == 0
    candidate = (ranges.first == ord("{")) & (ranges.last == ord("}"))
    odd = ~(blank | candidate)
    hidden = odd.copy()  # lines blanked out of what pyarrow reads
    if odd.any():
        for i in np.flatnonzero(odd):
            if not block[ranges.starts[i] : ranges.ends[i]].strip():
                blank[i] = True
        odd = ~(blank | candidate)
    records = np.flatnonzero(~blank)
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
    fast = records[~slow[records]]
    return BlockLayout(
        ranges, records, np.flatnonzero(slow).tolist(), _runs(fast, ranges.starts[fast]), text
    )


def _runs(lines: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """``lines`` (with their byte ``starts``) cut into runs of about ``PARSE_BYTES`` bytes."""
    if len(lines) == 0:
        return []
    part = (starts - starts[0]) // PARSE_BYTES
    return np.split(lines, np.flatnonzero(np.diff(part)) + 1)
