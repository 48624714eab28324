"""The columnar PTransforms of ``windowed_metrics``, and which configurations they run.

:class:`ComputeWindowedMetricsColumnar` is
:class:`~headwater.transforms.process.ComputeWindowedMetrics` for the case that dominates
backfills -- JSON-lines, Parquet or Avro *files* read in *batch* -- computed over blocks of records
instead of one record at a time. It is applied to the pipeline itself
(it reads the files) and returns the same :class:`~headwater.transforms.process.MetricsResult`:

``rows``         one dict per (window, key): ``window_start``, ``window_end`` (tz-aware UTC
                 datetimes), ``key``, one column per metric; each row in its own window, timestamped
                 at the window's end, exactly as the record path emits them in batch;
``late``         always empty (in batch nothing is late, as on the record path);
``duplicate``    the duplicate records (decoded again from their bytes), only with
                 ``emit_duplicates=True`` -- otherwise empty, and the ``duplicate`` counter still
                 counts every one of them;
``dead_letter``  one :class:`~headwater.core.deadletter.DeadLetter` per rejected record, built
                 by the record path's own code (same stage, error type, message, original bytes,
                 ``file``/``line`` or ``file``/``record`` origin), plus one ``read`` dead letter
                 per corrupt Parquet file -- or empty, when ``dead_letter_output`` has the DoFn
                 write them (the dead-letter sink's batch files) when its input ends.

Accounting is the record path's: ``records_in``, ``output``, ``duplicate``, ``dead_letter`` and
``late`` (namespace ``headwater``) are incremented in bulk, once per block, so that
``records_in == output + duplicate + dead_letter + late`` holds and every counter equals the
record path's for the same input. Read dead letters (corrupt files) are counted here too.

How it works
    One DoFn (:mod:`~headwater.columnar.batch`) reads the matched files in sorted order (arrival
    order = file order, line order), in blocks of a few MiB (:mod:`~headwater.columnar.reader`).
    Event time, id, key and aggregated fields are checked with vectorized kernels; every row the
    fast checks do not accept (a missing or odd-typed field, a float event time, a non-finite
    amount, a blank-padded key, invalid UTF-8 ...) goes through the record path's own
    parse/check/id code, which either accepts it with exactly the record path's values or produces
    exactly its dead letter. Each block is then deduplicated and pre-aggregated
    (:mod:`~headwater.columnar.state`) and the merged rows are emitted or written
    (:mod:`~headwater.columnar.write`).

    Keys are text, spelt by :func:`headwater.transforms.keys.key_text` as on the record path: a
    string key column is taken as it is, an int column becomes its decimal digits (``1`` and
    ``"1"`` are one key), and every other kind (floats, bools, mixed types ...) takes the record
    path's code; the ``key`` column is a string in every file.

What it supports (:func:`columnar_supported` says whether a configuration qualifies; the
pipelines fall back to the record path otherwise): JSON lines (decoded with
:class:`~headwater.io.formats.JsonFormat`), Parquet or Avro (fastavro) files, batch; an
:class:`~headwater.windowing.eventtime.EventTimeExtractor` in ``s``/``ms``/``us`` on a top-level
field; dedup ``None`` or :class:`~headwater.transforms.dedup.DeduplicateById` by a top-level
``id_field``, ``keep="first"``, ``time_domain="event"``; fixed, sliding, calendar or session
windows (sessions merged per key by :func:`headwater.windowing.rules.merge_sessions_v`, within
each block and again as blocks are merged); the on-time trigger; no extra checks; top-level
key and metric fields; count/sum/min/max/mean.

Parallelism: the files are read by one worker, in order (dedup needs the arrival order); the JSON
pieces of a block are parsed on several threads, overlapping the previous block's Python steps.
Float sums are added per block, then across blocks, so they may differ from a sequential sum in
the last bits (as the record path's may); they do not depend on how blocks are cut into parse
pieces.

:class:`ReplayWindowedMetricsColumnar` replays the files as a stream instead
(:mod:`headwater.columnar.replay` states its rules).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window as beam_window
from apache_beam.utils.timestamp import Timestamp

from headwater.columnar.batch import ComputeColumnarFn
from headwater.columnar.replay import ReplayColumnarFn
from headwater.columnar.state import (
    UNIT_MICROS,
    ColumnarOptions,
    dedup_field,
)
from headwater.core.checks import check_count
from headwater.io.deadletterio import check_dead_letter_files
from headwater.io.fileio import (
    READ_FORMATS,
    WRITE_FORMATS,
    match_files,
)
from headwater.io.formats import JsonFormat
from headwater.io.streamreplay import MAX_WATERMARK_EVERY
from headwater.transforms.aggregate import MetricSpec, parse_metrics
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import MetricsResult, to_trigger_spec, to_window_fn
from headwater.windowing.durations import DurationLike, format_duration, parse_duration
from headwater.windowing.eventtime import EventTimeExtractor
from headwater.windowing.windows import CalendarWindows

__all__ = [
    "COLUMNAR_FORMATS",
    "ComputeWindowedMetricsColumnar",
    "ReplayWindowedMetricsColumnar",
    "columnar_supported",
    "columnar_unsupported_reason",
    "replay_supported",
    "replay_unsupported_reason",
]

#: File formats the columnar path reads: all that ``ReadFromFiles`` reads.
COLUMNAR_FORMATS = READ_FORMATS


# Which configurations qualify


def columnar_unsupported_reason(
    *,
    file_format: str,
    decode: Any,
    event_time: Any,
    window: Any,
    allowed_lateness: DurationLike = 0,
    key_field: str,
    metrics: str | Iterable[MetricSpec],
    dedup: DeduplicateById | None = None,
    trigger: Any = None,
    checks: Iterable[Any] = (),
    max_record_bytes: int | None = None,
    streaming: bool = False,
) -> str | None:
    """Why the columnar path cannot run this configuration, or ``None`` when it can.

    Takes :class:`~headwater.transforms.process.ComputeWindowedMetrics`' arguments plus the file
    format and whether the run is streaming.
    """
    del allowed_lateness, max_record_bytes  # nothing is late in batch; sizes are checked per line
    if streaming:
        return "streaming runs take the record path (late routing, watermarks, panes)"
    if file_format not in COLUMNAR_FORMATS:
        return f"format {file_format!r} is not one of {', '.join(COLUMNAR_FORMATS)}"
    if file_format == "json" and not isinstance(decode, JsonFormat):
        return f"decode={decode!r} is not JsonFormat()"
    if not isinstance(event_time, EventTimeExtractor) or event_time.unit not in UNIT_MICROS:
        return f"event_time={event_time!r} is not an EventTimeExtractor in s, ms or us"
    if "." in event_time.field:
        return f"event time field {event_time.field!r} is nested"
    if dedup is not None:
        if not isinstance(dedup, DeduplicateById):
            return f"dedup={dedup!r} is not a DeduplicateById"
        if dedup_field(dedup) is None:
            return "dedup is not by a top-level id_field"
        if dedup.keep != "first" or dedup.time_domain != "event":
            return "dedup is not keep='first' in event time"
    if list(checks):
        return "extra checks run per record"
    if not isinstance(key_field, str) or not key_field or "." in key_field:
        return f"key_field={key_field!r} is not a top-level field"
    try:
        specs = parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics)
    except ValueError as exc:
        return str(exc)
    if any(s.field is not None and "." in s.field for s in specs):
        return "a metric reads a nested field"
    try:
        window_fn = to_window_fn(window) if window is not None else None
    except ValueError as exc:
        return str(exc)
    kinds = (beam_window.FixedWindows, beam_window.SlidingWindows, CalendarWindows)
    if not isinstance(window_fn, (*kinds, beam_window.Sessions)):
        return f"window={window!r} is not fixed, sliding, calendar or session windows"
    try:
        spec = to_trigger_spec(trigger)
    except ValueError as exc:
        return str(exc)
    if spec.early_every is not None:
        return "early panes fire per record"
    return None


def columnar_supported(**options: Any) -> bool:
    """Whether :class:`ComputeWindowedMetricsColumnar` can run this configuration.

    Takes the arguments of :func:`columnar_unsupported_reason`.

    >>> from headwater.io.formats import JsonFormat
    >>> columnar_supported(file_format="json", decode=JsonFormat(), window="fixed:60s",
    ...                    event_time=EventTimeExtractor(field="t", unit="ms"),
    ...                    key_field="user", metrics="count,sum:amount")
    True
    >>> columnar_supported(file_format="csv", decode=JsonFormat(), window="fixed:60s",
    ...                    event_time=EventTimeExtractor(), key_field="user", metrics="count")
    False
    """
    return columnar_unsupported_reason(**options) is None


class AssignedWindows(beam_window.NonMergingWindowFn):
    """Keeps the window each row was emitted in (declares the rows' windowing)."""

    def __init__(self, inner: beam_window.WindowFn):
        self._inner = inner

    def assign(self, assign_context):
        return [assign_context.window]

    def get_window_coder(self):
        return self._inner.get_window_coder()


# --------------------------------------------------------------------------------------------
# The transform


class ComputeWindowedMetricsColumnar(beam.PTransform):
    """Reads files and computes per-key metrics per window over Arrow blocks, in batch.

    Apply it to the pipeline (it reads ``pattern`` itself). Takes the arguments of
    :class:`~headwater.transforms.process.ComputeWindowedMetrics` for the subset described in
    the module docstring, plus:

    Args:
      pattern: the files to read (a glob; sorted names give the arrival order).
      file_format: ``"json"`` (JSON lines) or ``"parquet"``.
      max_out_of_orderness: the watermark delay a streaming run would use; dedup forgets an id
        once its expiry is this far behind the newest event time (bounded state; see
        :mod:`headwater.columnar.state`).
      emit_duplicates: emit duplicate records on ``duplicate`` (they are always counted).
      output, output_format, output_shards: write the window files into ``output`` here
        (the record path's sink's names and bytes) instead of emitting rows.
      dead_letter_output, dead_letter_format, dead_letter_shards: write the dead letters into
        ``dead_letter_output`` here, when the input ends: the batch files of
        :class:`~headwater.io.deadletterio.WriteDeadLetters` (same names and bytes), with no
        element per letter through the runner; ``dead_letter`` then stays empty.
      write_processes: processes that write the window files of ``output`` when a run writes
        many local files (sessions: one folder each): the DoFn's process forks the others
        (:func:`headwater.core.forked.run_split`, Linux only), each writing a contiguous part
        of the files. Only for a process that is safe to fork: the in-memory local runner's
        (``headwater run`` sets it there); a distributed runner's workers keep 1.
      decode_processes: processes that decode a large local JSON-lines file (uncompressed,
        ``emit_duplicates`` off): the DoFn's process forks them, each parsing and checking
        every ``decode_processes``-th block (the record path's code for the lines the
        vectorized checks do not accept), while the DoFn deduplicates and aggregates the
        blocks in file order (:func:`headwater.core.forked.forked_stream`); the same rows,
        counters, dead letters and files as one process. Safe to fork as ``write_processes``.

    Returns :class:`~headwater.transforms.process.MetricsResult`. Raises ``ValueError`` naming
    the reason when the configuration needs the record path (see :func:`columnar_supported`).

    >>> import tempfile, pathlib
    >>> from headwater.io.formats import JsonFormat
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_bytes(
    ...     b'{"id":"a","t":1000,"u":"x","n":2}\\n{"id":"a","t":1000,"u":"x","n":2}\\n{oops\\n')
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     out = p | ComputeWindowedMetricsColumnar(
    ...         pattern=str(folder / "*.jsonl"), file_format="json", decode=JsonFormat(),
    ...         event_time=EventTimeExtractor(field="t", unit="ms"), window="fixed:60s",
    ...         allowed_lateness=0, key_field="u", metrics="count,sum:n",
    ...         dedup=DeduplicateById(id_field="id", horizon="10m"))
    ...     _ = out.rows | beam.Map(lambda r: print(r["key"], r["count"], r["sum_n"]))
    ...     _ = out.dead_letter | beam.Map(lambda d: print(d.stage, d.origin["line"]))
    decode 3
    x 1 2.0
    """

    def __init__(
        self,
        *,
        pattern: str,
        file_format: str,
        decode: Any,
        event_time: Callable[[Mapping[str, Any]], Timestamp] | None,
        window: Any,
        allowed_lateness: DurationLike,
        key_field: str,
        metrics: str | Iterable[MetricSpec],
        dedup: DeduplicateById | None = None,
        trigger: Any = None,
        checks: Sequence[Any] = (),
        max_record_bytes: int | None = None,
        max_out_of_orderness: DurationLike = "5s",
        emit_duplicates: bool = False,
        output: str | None = None,
        output_format: str = "parquet",
        output_shards: int = 1,
        dead_letter_output: str | None = None,
        dead_letter_format: str = "json",
        dead_letter_shards: int = 1,
        write_processes: int = 1,
        decode_processes: int = 1,
    ):
        super().__init__()
        if dead_letter_output is not None:
            check_dead_letter_files(
                dead_letter_output, format=dead_letter_format, num_shards=dead_letter_shards
            )
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"pattern={pattern!r} must be a non-empty path or glob")
        parse_duration(allowed_lateness, name="allowed_lateness")
        reason = columnar_unsupported_reason(
            file_format=file_format,
            decode=decode,
            event_time=event_time,
            window=window,
            allowed_lateness=allowed_lateness,
            key_field=key_field,
            metrics=metrics,
            dedup=dedup,
            trigger=trigger,
            checks=checks,
            max_record_bytes=max_record_bytes,
        )
        if reason is not None:
            raise ValueError(f"the columnar path cannot run this configuration: {reason}")
        if max_record_bytes is not None and (
            isinstance(max_record_bytes, bool)
            or not isinstance(max_record_bytes, int)
            or max_record_bytes < 1
        ):
            raise ValueError(f"max_record_bytes={max_record_bytes!r} must be a positive integer")
        if not isinstance(emit_duplicates, bool):
            raise ValueError(f"emit_duplicates={emit_duplicates!r} must be True or False")
        if output is not None and (not isinstance(output, str) or not output.strip()):
            raise ValueError(f"output={output!r} must be a non-empty folder path or None")
        if output_format not in WRITE_FORMATS:
            raise ValueError(
                f"output_format={output_format!r} is not one of {', '.join(WRITE_FORMATS)}"
            )
        check_count("output_shards", output_shards)
        check_count("write_processes", write_processes)
        check_count("decode_processes", decode_processes)
        ooo = parse_duration(max_out_of_orderness, name="max_out_of_orderness")
        self._pattern = pattern
        self._window_fn = to_window_fn(window)
        assert isinstance(event_time, EventTimeExtractor)
        self._options = ColumnarOptions(
            file_format=file_format,
            decode=decode,
            event_time=event_time,
            dedup=dedup,
            window_fn=self._window_fn,
            key_field=key_field,
            metrics=parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics),
            max_record_bytes=max_record_bytes,
            out_of_order_micros=round(ooo * 1_000_000),
            emit_duplicates=emit_duplicates,
            output=output,
            output_format=output_format,
            output_shards=output_shards,
            dead_letter_output=dead_letter_output,
            dead_letter_format=dead_letter_format,
            dead_letter_shards=dead_letter_shards,
            write_processes=write_processes,
            decode_processes=decode_processes,
        )

    @property
    def decodes_in_processes(self) -> bool:
        """Whether a large local JSON-lines input is decoded in forked processes."""
        return self._options.decode_processes > 1

    @property
    def writes_dead_letters(self) -> bool:
        """Whether the dead letters are written here (``dead_letter_output``), not emitted."""
        return self._options.dead_letter_output is not None

    def expand(self, pbegin):
        if self._options.file_format and not self._pattern.startswith(("gs://", "s3://")):
            match_files(self._pattern)  # fail at construction for local patterns
        results = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Compute"
            >> beam.ParDo(ComputeColumnarFn(self._options)).with_outputs(
                "dead_letter", "duplicate", "written", main="rows"
            )
        )
        rows = results.rows | "Windows" >> beam.WindowInto(AssignedWindows(self._window_fn))
        late = pbegin | "NoLateData" >> beam.Create([])
        return MetricsResult(rows, late, results.duplicate, results.dead_letter)


def refuse_dead_letter_output(options: Mapping[str, Any], engine: str) -> None:
    """``ValueError`` when ``options`` ask ``engine`` (which emits its dead letters, for
    :class:`~headwater.io.deadletterio.WriteDeadLetters`) to write them itself."""
    given = sorted(k for k in options if k.startswith("dead_letter_"))
    if given:
        raise ValueError(
            f"{', '.join(given)}: {engine} emits its dead letters on dead_letter (write them "
            "with WriteDeadLetters); only ComputeWindowedMetricsColumnar writes them itself"
        )


def replay_unsupported_reason(**options: Any) -> str | None:
    """Why :class:`ReplayWindowedMetricsColumnar` cannot replay this configuration, or ``None``.

    Takes the arguments of :func:`~headwater.columnar.columnar_unsupported_reason`.

    >>> from headwater.io.formats import JsonFormat
    >>> from headwater.windowing.eventtime import EventTimeExtractor
    >>> common = dict(file_format="json", decode=JsonFormat(), key_field="u", metrics="count",
    ...               event_time=EventTimeExtractor(field="t", unit="ms"))
    >>> replay_unsupported_reason(window="fixed:60s", allowed_lateness=0, **common) is None
    True
    >>> replay_unsupported_reason(window="fixed:60s", allowed_lateness="1m", **common)
    "allowed lateness 1m: late panes follow the streaming runner's bundles (record path)"
    """
    options = dict(options)
    options.pop("streaming", None)
    reason = columnar_unsupported_reason(**options)
    if reason is not None:
        return reason
    if not isinstance(to_window_fn(options["window"]), (beam_window.FixedWindows, CalendarWindows)):
        return (
            f"window={options['window']!r} is not fixed or calendar (overlapping windows: "
            "record path)"
        )
    lateness = parse_duration(options.get("allowed_lateness", 0), name="allowed_lateness")
    if lateness:
        return (
            f"allowed lateness {format_duration(lateness)}: late panes follow the streaming "
            "runner's bundles (record path)"
        )
    return None


def replay_supported(**options: Any) -> bool:
    """Whether :class:`ReplayWindowedMetricsColumnar` can replay this configuration."""
    return replay_unsupported_reason(**options) is None


class ReplayWindowedMetricsColumnar(ComputeWindowedMetricsColumnar):
    """``windowed_metrics`` over files replayed as a stream, on the columnar path (batch runner).

    Takes the arguments of :class:`~headwater.columnar.ComputeWindowedMetricsColumnar`
    plus ``watermark_every`` (records between two watermark advances, as
    :func:`~headwater.io.streamreplay.replay_stream`); ``max_out_of_orderness`` is the replayed
    watermark's delay. Returns :class:`~headwater.transforms.process.MetricsResult` with
    ``late`` filled. Raises ``ValueError`` naming the reason when the configuration needs the
    ``TestStream`` replay (:func:`replay_unsupported_reason`). Ordering: rows come out window by
    window as the watermark passes them; delivery is the files' (written once per window).

    >>> import tempfile, pathlib
    >>> from headwater.io.formats import JsonFormat
    >>> from headwater.windowing.eventtime import EventTimeExtractor
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_bytes(
    ...     b'{"t":1000,"u":"x"}\\n{"t":70000,"u":"x"}\\n{"t":2000,"u":"y"}\\n')
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     out = p | ReplayWindowedMetricsColumnar(
    ...         pattern=str(folder / "*.jsonl"), file_format="json", decode=JsonFormat(),
    ...         event_time=EventTimeExtractor(field="t", unit="ms"), window="fixed:60s",
    ...         allowed_lateness=0, key_field="u", metrics="count", max_out_of_orderness="5s",
    ...         watermark_every=1)
    ...     _ = out.rows | beam.Map(lambda r: print(r["key"], r["count"]))
    ...     _ = out.late | beam.Map(lambda d: print("late", d.lateness_ms))
    late 58000
    x 1
    x 1
    """

    def __init__(
        self,
        *,
        watermark_every: int = 1_000,
        max_out_of_orderness: DurationLike = "5s",
        **options: Any,
    ):
        refuse_dead_letter_output(options, "the columnar replay")
        reason = replay_unsupported_reason(
            **{
                k: v
                for k, v in options.items()
                if k
                not in ("pattern", "emit_duplicates", "output", "output_format", "output_shards")
            }
        )
        if reason is not None:
            raise ValueError(f"the columnar replay cannot run this configuration: {reason}")
        if (
            isinstance(watermark_every, bool)
            or not isinstance(watermark_every, int)
            or not 1 <= watermark_every <= MAX_WATERMARK_EVERY
        ):
            raise ValueError(
                f"watermark_every={watermark_every!r} must be an integer in "
                f"1..{MAX_WATERMARK_EVERY}"
            )
        super().__init__(max_out_of_orderness=max_out_of_orderness, **options)
        self._watermark_every = watermark_every

    def expand(self, pbegin):
        from headwater.io.fileio import match_files

        if not self._pattern.startswith(("gs://", "s3://")):
            match_files(self._pattern)  # fail at construction for local patterns
        results = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Replay"
            >> beam.ParDo(ReplayColumnarFn(self._options, self._watermark_every)).with_outputs(
                "dead_letter", "duplicate", "written", "late", main="rows"
            )
        )
        rows = results.rows | "Windows" >> beam.WindowInto(AssignedWindows(self._window_fn))
        return MetricsResult(rows, results.late, results.duplicate, results.dead_letter)
