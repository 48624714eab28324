"""The batch DoFn of the columnar path: a glob in, rows (or written files) out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from headwater.columnar.reader import BlockReader
from headwater.columnar.state import (
    COUNTS,
    ColumnarOptions,
    ColumnarState,
)
from headwater.columnar.write import WindowWriter
from headwater.core.accounting import IDS_ON_DISK, NAMESPACE
from headwater.io.deadletterio import BatchDeadLetterFiles
from headwater.io.fileio import (
    match_files,
)
from headwater.transforms.progress import count_read


class ComputeColumnarFn(BlockReader, WindowWriter):
    """A glob -> rows (in their windows), dead letters and, optionally, duplicates."""

    _sizes_ids = True  # see BlockReader
    _forks_decoding_ = True  # see BlockReader (duplicates are read from a block: emit_duplicates
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
        for path in self._write_table(state.final_table()):
            yield beam.pvalue.TaggedOutput("written", path)

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
