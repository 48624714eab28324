"""The dead-letter sink and source: DeadLetter envelopes as JSON lines or Avro files.

:class:`WriteDeadLetters` takes a ``PCollection`` of
:class:`~headwater.core.deadletter.DeadLetter` in any windowing and writes them to files in
``output``; it returns the ``PCollection`` of final file paths. Dead letters carry no event-time
window of their own (and late records would be behind the watermark), so the sink never groups
by event time: it re-windows into the global window first.

* Batch (a bounded input and no ``--streaming``): one pane per shard, written when the input
  ends -- ``dead_letters-00000-of-00001.jsonl`` (``.avro``). Content and names are
  deterministic, so re-running the same input rewrites the same bytes: envelopes are written
  with an empty ``failed_at`` (the wall-clock instant of a batch failure says nothing about the
  record and would make every re-run's files differ; the run's time is the scheduler's). Each
  letter's line is encoded once and travels to its shard in lists of up to 1,000, so a flood
  of bad records costs their encoding, not a shuffled element each.
* Streaming: panes fire after ``max_records_per_file`` envelopes or ``max_delay`` of processing
  time, whichever comes first (``Repeatedly(AfterAny(AfterCount, AfterProcessingTime))``,
  discarding), one file per (shard, pane), each envelope with its wall-clock ``failed_at``:
  ``dead_letters-00000-of-00001-pane-003-<digest>.jsonl`` (pane 0:
  ``dead_letters-00000-of-00001-<digest>.jsonl``). Pane indices restart when a job restarts and
  a pane's letters depend on timing, so every streaming name carries 16 hex digits of a hash of
  the pane's letters without ``failed_at`` (:func:`~headwater.io.fileio.content_digest`): a
  restarted job never overwrites an earlier job's dead letters (or late records: the late
  output is written by this sink too), and a pane of the same letters -- re-read after a
  restart, failing at another instant -- maps to the same name and is not written again
  (:func:`~headwater.io.fileio.write_once`: the first file, with the first ``failed_at``,
  stays). A pane holding other letters is a new file, so letters re-read after a restart may
  appear in two files (at least once, never lost, never overwritten).

Envelopes are sharded by a stable hash of their content (without ``failed_at``), sorted within a
file (by their JSON line) and written through a temp file moved into place, never over an
existing file (see :func:`headwater.io.fileio.write_once`), so no partial file is ever visible
under a final name. JSON lines are :meth:`DeadLetter.to_json`; Avro files use
:data:`DEAD_LETTER_AVRO_SCHEMA` (the payload as raw ``bytes``).

:class:`ReadDeadLetters` reads them back (a glob; ``.avro`` files as Avro, everything else as
JSON lines, compressed by extension) as ``DeadLetter`` values for a replay pipeline. A row that
is not an envelope fails the run with :class:`MalformedDeadLetterError` naming the file and line
(record for Avro): replaying a damaged dead-letter file must not lose records silently.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import MIN_TIMESTAMP

from headwater.core.checks import check_count
from headwater.core.deadletter import DeadLetter
from headwater.core.shards import stable_shard
from headwater.core.stamps import in_global_window
from headwater.io.fileio import (
    canonical_json,
    content_digest,
    encode_avro,
    file_name,
    match_files,
    write_once,
)
from headwater.io.kafka.ledger import done_notices
from headwater.windowing.durations import parse_duration

__all__ = [
    "BatchDeadLetterFiles",
    "check_dead_letter_files",
    "WriteDeadLetters",
    "ReadDeadLetters",
    "MalformedDeadLetterError",
    "DEAD_LETTER_AVRO_SCHEMA",
    "DEAD_LETTER_FORMATS",
    "read_dead_letter_file",
]

#: Formats :class:`WriteDeadLetters` writes.
DEAD_LETTER_FORMATS = ("json", "avro")

_EXTENSIONS = {"json": "jsonl", "avro": "avro"}
_ORIGIN_VALUE = ["null", "boolean", "long", "double", "string"]
_OPTIONAL_STRING = ["null", "string"]

#: The Avro schema of dead-letter files: the envelope's fields, ``payload`` as raw bytes.
DEAD_LETTER_AVRO_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "DeadLetter",
    "namespace": "headwater",
    "fields": [
        {"name": "stage", "type": "string"},
        {"name": "error_type", "type": "string"},
        {"name": "error_message", "type": "string"},
        {"name": "payload", "type": "bytes"},
        {"name": "origin", "type": {"type": "map", "values": _ORIGIN_VALUE}, "default": {}},
        {"name": "event_time", "type": _OPTIONAL_STRING, "default": None},
        {"name": "failed_at", "type": "string", "default": ""},
        {"name": "window", "type": _OPTIONAL_STRING, "default": None},
        {"name": "lateness_ms", "type": ["null", "long"], "default": None},
    ],
}

_METRICS_NAMESPACE = "headwater.io"
_LOG = logging.getLogger(__name__)


class MalformedDeadLetterError(ValueError):
    """A dead-letter file holds a row that is not an envelope; the message names file and line."""


def _shard_text(letter: DeadLetter) -> str:
    row = letter.to_dict()
    row.pop("failed_at", None)  # wall-clock: would move a letter between shards across runs
    return canonical_json(row)


def _avro_record(letter: DeadLetter) -> dict[str, Any]:
    record = dataclasses.asdict(letter)
    record["origin"] = {str(k): _origin_value(v) for k, v in letter.origin.items()}
    return record


def _origin_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return canonical_json(value)


def _checked(letter: Any) -> DeadLetter:
    if not isinstance(letter, DeadLetter):
        raise TypeError(f"WriteDeadLetters writes DeadLetter values, got {type(letter)!r}")
    return letter


class _KeyByShardFn(beam.DoFn):
    """Streaming: each letter keyed by the hash of its content without ``failed_at``."""

    def __init__(self, num_shards: int):
        self._num_shards = num_shards

    def process(self, letter: DeadLetter) -> Iterator[tuple[int, DeadLetter]]:
        yield stable_shard(_shard_text(_checked(letter)), self._num_shards), letter


_BATCH_LINES = 1_000  # a batch run's letters sent to their shard at a time


class _BatchByShardFn(beam.DoFn):
    """Batch: each letter's file line (``failed_at`` empty) computed once and keyed by its hash,
    sent in lists of up to ``_BATCH_LINES`` ``(line, letter or None)`` pairs per shard: one
    shuffled element per list, not per letter (a bad file's letters cost their encoding, not
    the runner's per-element work). The letter travels only when the writer needs it (Avro,
    or reporting the records written)."""

    def __init__(self, num_shards: int, keep_letters: bool):
        self._num_shards = num_shards
        self._keep = keep_letters
        self._lists: dict[int, list[tuple[str, DeadLetter | None]]] = {}

    def start_bundle(self) -> None:
        self._lists = {}

    def process(self, letter: DeadLetter) -> Iterator[tuple[int, list[Any]]]:
        shard, pair = _batch_pair(_checked(letter), self._num_shards, self._keep)
        pairs = self._lists.setdefault(shard, [])
        pairs.append(pair)
        if len(pairs) >= _BATCH_LINES:
            del self._lists[shard]
            yield shard, pairs

    def finish_bundle(self) -> Iterator[Any]:
        for shard, pairs in self._lists.items():
            yield in_global_window((shard, pairs), MIN_TIMESTAMP.micros)
        self._lists = {}


def _batch_pair(
    letter: DeadLetter, num_shards: int, keep: bool
) -> tuple[int, tuple[str, DeadLetter | None]]:
    """A letter's batch shard and ``(line, letter)``: the line without the wall-clock
    ``failed_at``, the letter (``failed_at`` empty) only when the writer needs it (``keep``)."""
    line = letter.to_json(failed_at="")
    kept = dataclasses.replace(letter, failed_at="") if keep else None
    return stable_shard(line, num_shards), (line, kept)


def check_dead_letter_files(output: Any, *, format: str, num_shards: int) -> None:
    """``ValueError`` naming a bad folder, format or shard count of dead-letter files."""
    if not isinstance(output, str) or not output.strip():
        raise ValueError(f"output={output!r} must be a non-empty folder path")
    if format not in DEAD_LETTER_FORMATS:
        raise ValueError(f"format={format!r} is not one of {', '.join(DEAD_LETTER_FORMATS)}")
    check_count("num_shards", num_shards)


class BatchDeadLetterFiles:
    """The batch files of :class:`WriteDeadLetters`, written by the step that holds the letters.

    The columnar batch path keeps a run's dead letters here and writes them when its input
    ends, instead of sending each through the runner to the sink: the same names and bytes
    (shard by the hash of each line, lines sorted in a file, ``failed_at`` empty), with no
    element per letter. ``write`` returns the paths of the files written.

    >>> import tempfile
    >>> from headwater.core.deadletter import dead_letter_for
    >>> files = BatchDeadLetterFiles(tempfile.mkdtemp(), format="json", num_shards=2)
    >>> files.add(dead_letter_for(b"x", stage="decode", error="bad"))
    >>> [path.rsplit("/", 1)[1] for path in files.write()]
    ['dead_letters-00001-of-00002.jsonl']
    """

    def __init__(self, output: str, *, format: str = "json", num_shards: int = 1):
        check_dead_letter_files(output, format=format, num_shards=num_shards)
        self._output = output
        self._format = format
        self._num_shards = num_shards
        self._shards: dict[int, list[tuple[str, DeadLetter | None]]] = {}
        self._files = Metrics.counter(_METRICS_NAMESPACE, "dead_letter_files_written")

    def add(self, letter: DeadLetter) -> None:
        self.add_encoded([self.encoded(letter)])

    def encoded(self, letter: DeadLetter) -> tuple[int, tuple[str, DeadLetter | None]]:
        """The letter as :meth:`add_encoded` takes it (its shard and line): any process may
        encode letters, the one holding this object adds them."""
        return _batch_pair(letter, self._num_shards, self._format != "json")

    def add_encoded(self, encoded: Iterable[tuple[int, tuple[str, DeadLetter | None]]]) -> None:
        shards = self._shards
        for shard, pair in encoded:
            shards.setdefault(shard, []).append(pair)

    def write(self) -> list[str]:
        """Writes a file per shard holding letters (never over an existing one); the paths."""
        paths = []
        for shard in sorted(self._shards):
            lines, ordered = _by_line(self._shards[shard])
            path, written = _write_shard_file(
                self._output, self._format, shard, self._num_shards, lines, ordered
            )
            if written:
                self._files.inc()
            paths.append(path)
        self._shards = {}
        return paths


def _write_shard_file(
    output: str,
    file_format: str,
    shard: int,
    num_shards: int,
    lines: list[str],
    ordered: list[Any],
    *,
    pane_index: int = 0,
    digest: str | None = None,
) -> tuple[str, bool]:
    """One dead-letter file of ``lines`` (JSON) or the ``ordered`` letters (Avro): its path,
    and whether it was written (False: a file of that name was there, and kept)."""
    name = file_name(
        "dead_letters", shard, num_shards, pane_index, _EXTENSIONS[file_format], digest=digest
    )
    if file_format == "json":
        data = "".join(line + "\n" for line in lines).encode("utf-8")
    else:
        records = [_avro_record(letter) for letter in ordered]
        data = encode_avro(records, DEAD_LETTER_AVRO_SCHEMA, sync_seed=name)
    path = FileSystems.join(output, name)
    written = write_once(path, data)
    if not written:  # same letters (digest) written earlier, failing at another instant
        _LOG.info("kept %s: written earlier with the same letters", path)
    return path, written


def _line_of(pair: tuple[str, Any]) -> str:
    return pair[0]


def _by_line(pairs: Iterable[tuple[str, Any]]) -> tuple[list[str], list[Any]]:
    """A batch shard's ``(line, letter)`` pairs sorted by line: the lines, the letters."""
    ordered = sorted(pairs, key=_line_of)
    return [line for line, _ in ordered], [letter for _, letter in ordered]


class _WriteShardPaneFn(beam.DoFn):
    def __init__(
        self,
        output: str,
        file_format: str,
        num_shards: int,
        *,
        batch: bool = False,
        report_written: bool = False,
    ):
        self._output = output
        self._format = file_format
        self._num_shards = num_shards
        self._batch = batch
        self._report = report_written
        self._files = Metrics.counter(_METRICS_NAMESPACE, "dead_letter_files_written")

    def process(
        self, element: tuple[int, Iterable[Any]], pane=beam.DoFn.PaneInfoParam
    ) -> Iterator[Any]:
        """Batch: ``element`` holds lists of ``(line, letter)`` pairs (``_BatchByShardFn``);
        streaming: letters (``_KeyByShardFn``)."""
        shard, grouped = element
        if self._batch:  # lists of (line, letter) pairs, no wall-clock instant in them
            lines, ordered = _by_line(pair for part in grouped for pair in part)
        else:
            letters = list(grouped)
            texts = [letter.to_json() for letter in letters]  # the line of each, once
            order = sorted(range(len(letters)), key=texts.__getitem__)
            ordered = [letters[i] for i in order]
            lines = [texts[i] for i in order]
        if not lines:
            return
        digest = None  # batch: one pane per shard, its name stable across re-runs
        if not self._batch:
            digest = content_digest("\n".join(sorted(map(_shard_text, ordered))))
        pane_index = pane.index if pane is not None and not self._batch else 0
        path, written = _write_shard_file(
            self._output,
            self._format,
            shard,
            self._num_shards,
            lines,
            ordered,
            pane_index=pane_index,
            digest=digest,
        )
        if written:
            self._files.inc()
        if self._report:
            yield from done_notices(ordered)  # on disk: their Kafka reads may be committed
        else:
            yield path


class WriteDeadLetters(beam.PTransform):
    """Writes DeadLetter envelopes to JSON-lines or Avro files; returns the paths written.

    See the module docstring for panes, names and atomicity.

    Args:
      output: the folder (local or any ``FileSystems`` scheme).
      format: ``"json"`` (JSON lines) or ``"avro"``.
      num_shards: files per pane.
      max_records_per_file: streaming only: a pane fires after this many envelopes per shard.
      max_delay: streaming only: ... or this long (processing time) after its first envelope;
        seconds, ``timedelta`` or ``"60s"`` (rounded up to whole seconds).
      report_written: instead of the paths, return, per file written, the "done" reports of
        the Kafka records whose letters it holds (``((topic, partition), ("done", offsets))``,
        for :class:`headwater.io.kafka.commit.CommitWhenWritten`).

    >>> import tempfile
    >>> from headwater.transforms.deadletter import dead_letter_for
    >>> out = tempfile.mkdtemp()
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     letters = p | beam.Create([dead_letter_for(b"x", stage="decode", error="bad")])
    ...     paths = letters | WriteDeadLetters(out, format="json")
    ...     _ = paths | beam.Map(lambda path: print(path[len(out):]))
    /dead_letters-00000-of-00001.jsonl
    """

    def __init__(
        self,
        output: str,
        *,
        format: str = "json",
        num_shards: int = 1,
        max_records_per_file: int = 10_000,
        max_delay: Any = "60s",
        report_written: bool = False,
    ):
        super().__init__()
        self._report = bool(report_written)
        check_dead_letter_files(output, format=format, num_shards=num_shards)
        check_count("max_records_per_file", max_records_per_file)
        self._output = output
        self._format = format
        self._num_shards = num_shards
        self._max_records = max_records_per_file
        self._max_delay = parse_duration(max_delay, name="max_delay", allow_zero=False)

    def expand(self, pcoll):
        streaming = pcoll.pipeline.options.view_as(StandardOptions).streaming
        batch = not (streaming or not pcoll.is_bounded)
        if not batch:
            rewindow = beam.WindowInto(
                beam_window.GlobalWindows(),
                trigger=beam_trigger.Repeatedly(
                    beam_trigger.AfterAny(
                        beam_trigger.AfterCount(self._max_records),
                        # Beam's trigger proto holds whole milliseconds of an int delay.
                        beam_trigger.AfterProcessingTime(max(1, math.ceil(self._max_delay))),
                        beam_trigger.AfterWatermark(),  # flush what is left when input ends
                    )
                ),
                accumulation_mode=beam_trigger.AccumulationMode.DISCARDING,
            )
        else:
            # Batch: one pane when the input ends (processing-time triggers do not run in batch,
            # and count-based panes would make file contents depend on bundle order).
            rewindow = beam.WindowInto(beam_window.GlobalWindows())
        keep = self._format != "json" or self._report
        key = _BatchByShardFn(self._num_shards, keep) if batch else _KeyByShardFn(self._num_shards)
        if batch and pcoll.windowing.is_default():
            rewindowed = pcoll  # already global, default trigger: no step per letter
        else:
            rewindowed = pcoll | "GlobalWindow" >> rewindow
        return (
            rewindowed
            | "KeyByShard" >> beam.ParDo(key)
            | "GroupPerShard" >> beam.GroupByKey()
            | "WriteFiles"
            >> beam.ParDo(
                _WriteShardPaneFn(
                    self._output,
                    self._format,
                    self._num_shards,
                    batch=batch,
                    report_written=self._report,
                )
            )
        )


def read_dead_letter_file(path: str) -> Iterator[DeadLetter]:
    """The envelopes of one dead-letter file (JSON lines or Avro, by its extension), in order:
    what :class:`ReadDeadLetters` reads on workers, here in this process."""
    return _ReadDeadLetterFileFn().process(path)


class _ReadDeadLetterFileFn(beam.DoFn):
    def process(self, path: str) -> Iterator[DeadLetter]:
        if path.lower().endswith(".avro"):
            yield from self._read_avro(path)
        else:
            yield from self._read_json_lines(path)

    @staticmethod
    def _read_json_lines(path: str) -> Iterator[DeadLetter]:
        with FileSystems.open(path) as handle:
            for number, raw in enumerate(iter(handle.readline, b""), start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                    if not isinstance(row, Mapping):
                        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                    yield DeadLetter.from_dict(row)
                except ValueError as exc:  # JSONDecodeError and from_dict's errors
                    raise MalformedDeadLetterError(
                        f"{path} line {number}: not a dead letter: {exc}"
                    ) from None

    @staticmethod
    def _read_avro(path: str) -> Iterator[DeadLetter]:
        fields = {field["name"] for field in DEAD_LETTER_AVRO_SCHEMA["fields"]}
        number = 1  # the 1-based number of the record being read
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            try:
                for record in fastavro.reader(handle):
                    if not isinstance(record, Mapping) or not isinstance(
                        record.get("payload"), bytes
                    ):
                        raise ValueError("not a dead-letter record (no bytes payload)")
                    known = {k: v for k, v in record.items() if k in fields}
                    known["origin"] = dict(known.get("origin") or {})
                    yield DeadLetter(**known)
                    number += 1
            except (ValueError, TypeError, EOFError) as exc:
                raise MalformedDeadLetterError(
                    f"{path} record {number}: not a dead letter: {exc}"
                ) from None


class ReadDeadLetters(beam.PTransform):
    """Reads dead-letter files (JSON lines or Avro, by extension) as ``DeadLetter`` values.

    The output is bounded, in the global window. Raises :class:`NoFilesMatchedError
    <headwater.io.fileio.NoFilesMatchedError>` naming the pattern when nothing matches, and
    :class:`MalformedDeadLetterError` naming file and line for a row that is not an envelope.

    >>> import tempfile, pathlib
    >>> from headwater.transforms.deadletter import dead_letter_for
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> letter = dead_letter_for(b"x", stage="decode", error="bad")
    >>> _ = (folder / "dl.jsonl").write_text(letter.to_json() + "\\n")
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     letters = p | ReadDeadLetters(str(folder / "*.jsonl"))
    ...     _ = letters | beam.Map(lambda d: print(d.stage, d.payload))
    decode b'x'
    """

    def __init__(self, pattern: str):
        super().__init__()
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"pattern={pattern!r} must be a non-empty path or glob")
        self._pattern = pattern

    def expand(self, pbegin):
        if FileSystems.get_scheme(self._pattern) in (None, "file"):
            match_files(self._pattern)  # fail at construction: cheap for local paths
        return (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Match" >> beam.FlatMap(match_files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadDeadLetterFileFn())
        )
