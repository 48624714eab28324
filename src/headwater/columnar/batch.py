"""The batch DoFn of the columnar path: a glob in, rows (or written files) out."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from headwater.columnar.ranges import start_ranges, starting_in
from headwater.columnar.reader import BlockReader
from headwater.columnar.state import (
    COUNTS,
    ColumnarOptions,
    ColumnarState,
)
from headwater.columnar.write import FORK_FILES, WindowWriter
from headwater.core.accounting import IDS_ON_DISK, NAMESPACE
from headwater.core.forked import CAN_FORK, forked_stream
from headwater.io.deadletterio import BatchDeadLetterFiles
from headwater.io.fileio import (
    match_files,
)
from headwater.transforms.progress import count_read

# a run merging this many partial rows or more merges and writes its windows in ranges, each in a
# process of its own, given write_processes (a fork costs ~10-30 ms; 100k rows ~50 ms to merge)
_FORK_ROWS = 100_000


class _Tally:
    """A counter's increments in a forked process (the caller adds them to the counter)."""

    value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class ComputeColumnarFn(BlockReader, WindowWriter):
    """A glob -> rows (in their windows), dead letters and, optionally, duplicates."""

    _sizes_ids = True  # see BlockReader
    _may_fork_decoding = True  # see BlockReader (duplicates are read from a block: emit_duplicates
    # decodes here)
    _letters: BatchDeadLetterFiles | None = None  # the run's dead letters, when written here

    def __init__(self, options: ColumnarOptions):
        self._options = options
        self._counters = {name: Metrics.counter(NAMESPACE, name) for name in (*COUNTS, "late")}
        self._blocks = Metrics.counter(NAMESPACE, "columnar.blocks")
        self._on_disk = Metrics.counter(NAMESPACE, IDS_ON_DISK)
        self._files = Metrics.counter("headwater.io", "files_written")
        self._rows_written = Metrics.counter("headwater.io", "rows_written")

    def process(self, pattern: str) -> Iterator[Any]:
        state = ColumnarState(self._options)
        options = self._options
        # the dead letters are emitted, or written here (dead_letter_output) when the input ends
        self._letters = None
        if options.dead_letter_output is not None:
            self._letters = BatchDeadLetterFiles(
                options.dead_letter_output,
                format=options.dead_letter_format,
                num_shards=options.dead_letter_shards,
            )
        for path in match_files(pattern):
            for _ in self._blocks_of(state, path):
                self._blocks.inc()
                yield from self._flush(state)
        yield from self._flush(state)
        if state.ids.on_disk:
            self._on_disk.inc(state.ids.on_disk)
        if self._letters is not None:
            for path in self._letters.write():
                yield beam.pvalue.TaggedOutput("written", path)
        if options.output is None:
            yield from self._rows(state.final())
            return
        for path in self._write_final(state):
            yield beam.pvalue.TaggedOutput("written", path)

    def _write_final(self, state: ColumnarState) -> Iterator[str]:
        """Merges the run's groups and writes its window files: the paths.

        With ``write_processes`` and a local output, a run of many groups is cut into ranges
        of window starts of about as many rows, each written in a forked process
        (:func:`headwater.core.forked.forked_stream`): the same files, in the same order; the
        counters are counted here. Windows that are not sessions (``_FORK_ROWS`` partial rows
        or more) are merged there too, range by range; sessions (``FORK_FILES`` merged rows or
        more: a folder each) are merged here first, since a key's session may take in pieces
        that start in another range.
        """
        options = self._options
        parts: list[tuple[int, int]] = []
        table_of: Callable[[tuple[int, int]], pa.Table | None] = state.final_table
        sessions = None
        forks = (
            CAN_FORK
            and options.write_processes > 1
            and FileSystems.get_scheme(str(options.output)) is None
        )
        if options.session_gap is not None:
            sessions = state.final_table()
            if forks and sessions is not None and sessions.num_rows >= FORK_FILES:
                parts = start_ranges(sessions.column("w").to_numpy(), options.write_processes)
                table_of = functools.partial(starting_in, sessions)
        elif forks and state.held_rows >= _FORK_ROWS:
            parts = state.window_parts(options.write_processes)
        if len(parts) < 2:
            yield from self._write_table(sessions if sessions is not None else state.final_table())
            return

        def write(index: int, processes: int) -> Iterator[tuple[list[str], int, int]]:
            # ranges index, index + processes, ... (all of them when the stream runs here); a
            # range's files are not split again over processes of its own
            counters, self._split_files = (self._files, self._rows_written), False
            for windows in parts[index::processes]:
                files, rows = self._files, self._rows_written = _Tally(), _Tally()  # for the
                try:  # caller to count
                    paths = list(self._write_table(table_of(windows)))
                finally:
                    self._files, self._rows_written = counters
                    self._split_files = True
                yield paths, files.value, rows.value

        for paths, files, rows in forked_stream(write, processes=len(parts)):
            self._files.inc(files)
            self._rows_written.inc(rows)
            yield from paths

    def _flush(self, state: ColumnarState) -> Iterator[Any]:
        letters = self._letters
        state.counts["dead_letter"] += len(state.dead)
        count_read(state.counts["records_in"])  # a local run's progress lines, once a block
        for name, value in state.counts.items():
            if value:
                self._counters[name].inc(value)
                state.counts[name] = 0
        for letter in state.dead:
            if letters is None:
                yield beam.pvalue.TaggedOutput("dead_letter", letter)
            else:
                letters.add(letter)
        state.dead.clear()
        for record in state.duplicates:
            yield beam.pvalue.TaggedOutput("duplicate", record)
        state.duplicates.clear()

    def _shipped_letters(self, dead: list[Any]) -> list[Any]:
        """A forked decoding's dead letters encoded for the files there, when written here."""
        if self._letters is None:
            return super()._shipped_letters(dead)
        return [self._letters.encoded(letter) for letter in dead]

    def _add_shipped_letters(self, state: ColumnarState, shipped: list[Any]) -> None:
        if self._letters is None:
            super()._add_shipped_letters(state, shipped)
            return
        self._letters.add_encoded(shipped)
        state.counts["dead_letter"] += len(shipped)

    def _finish_block(self, state, elements, rows, element) -> None:
        """Dedups and aggregates a block's accepted rows (``elements``: record positions)."""
        del elements  # arrival positions matter to the replay (columnar.replay), not to batch
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
