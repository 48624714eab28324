"""Where a pipeline's records come from: files, files replayed as a stream, Kafka, or injected.

:func:`open_source` gives a :class:`Sourced`: the raw records (counted for the progress lines of
a local run) and the dead letters of the read itself (a corrupt file).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from headwater.io.fileio import ReadFromFiles, read_files_here
from headwater.io.kafka import ReadFromKafka
from headwater.io.kafka.commit import DoneNotices, WindowNotices
from headwater.io.kafka.source import reads_live
from headwater.io.streamreplay import RecordEventTime, replay_stream
from headwater.pipelines.config import (
    decoder,
    event_time_extractor,
    kafka_config,
    kafka_start,
    value,
)
from headwater.transforms.accounting import CountAs
from headwater.transforms.observe import ShowProgress
from headwater.transforms.process import to_window_fn
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = ["Sourced", "all_dead_letters", "open_source", "read_source"]

_LOG = logging.getLogger("headwater.pipelines")


def _merging_windows(values: Mapping[str, Any]) -> bool:
    """Whether the run's windows merge (sessions): a record's last window end is unknown."""
    window = values.get("window")
    return window is not None and to_window_fn(window).is_merging()


class Sourced(NamedTuple):
    """Raw records from a source, and dead letters of the read itself (corrupt files)."""

    records: beam.PCollection
    dead_letter: beam.PCollection
    kafka: ReadFromKafka | None = None  # commits its offsets once the sinks are written

    @property
    def reports_outcomes(self) -> bool:
        """Whether the read commits as each record's outcome is written (``commit``).

        An unbounded Kafka read with ``--commit_offsets``: its sinks must then report what they
        wrote (``report_written=True``).
        """
        return self.kafka is not None and self.kafka.reports_ranges

    def commit(
        self,
        sinks: Sequence[beam.PCollection],
        *,
        reports: Sequence[beam.PCollection] = (),
        final: Sequence[beam.PCollection] = (),
        on_time: beam.PCollection | None = None,
        allowed_lateness_s: float = 0.0,
        trailing: Sequence[beam.PCollection] = (),
    ) -> None:
        """Commits the Kafka read's offsets, if ``--commit_offsets`` asked for it.

        A bounded read commits once every ``sinks`` collection is complete. An unbounded read
        commits each partition up to its first record whose outcome is not written yet
        (:class:`headwater.io.kafka.commit.CommitWhenWritten`), from: ``reports`` (what the
        writers of dead letters, late records or Kafka output report as written), ``final``
        (records final on arrival: duplicates, letters no sink writes) and ``on_time`` (windowed
        records, final once the watermark of the ``trailing`` sinks -- the window files -- has
        passed their windows' ends plus ``allowed_lateness_s``).
        """
        if self.kafka is None:
            return
        if not self.reports_outcomes:
            self.kafka.commit_after(self.records.pipeline, *sinks)
            return
        outcomes = list(reports)
        for i, records in enumerate(final):
            outcomes.append(records | f"FinalOnArrival{i}" >> DoneNotices())
        if on_time is not None:
            outcomes.append(
                on_time | "OnTimeOutcomes" >> WindowNotices(allowed_lateness_s=allowed_lateness_s)
            )
        self.kafka.commit_when_written(outcomes=outcomes, trailing=trailing)


def read_source(p: beam.Pipeline, values: Mapping[str, Any]) -> Sourced:
    """Raw records from ``--source`` (files, files replayed as a stream, or Kafka)."""
    source = values.get("source")
    fmt = value(values, "format")
    if source == "files" and values.get("replay_as_stream"):
        records, dead = read_files_here(values["input"], fmt)
        stream = replay_stream(
            records,
            event_time=RecordEventTime(decoder(values), event_time_extractor(values)),
            max_out_of_orderness=value(values, "max_out_of_orderness"),
        )
        return Sourced(
            p | "ReplayAsStream" >> stream | "Progress" >> ShowProgress(),
            p | "ReadDeadLetters" >> beam.Create(dead),
        )
    if source == "files":
        read = p | "ReadFiles" >> ReadFromFiles(
            values["input"], format="json" if fmt == "json" else fmt
        )
        return Sourced(read.main | "Progress" >> ShowProgress(), read.dead_letter)
    extractor = event_time_extractor(values)
    # Every bounded read (--stop_at_end, --max_records, --max_duration) commits only once every
    # sink is written.
    bounded = any(values.get(f) for f in ("stop_at_end", "max_records", "max_duration"))
    # The source's event times only drive its watermark. A batch run (a read that ends by
    # itself, not --streaming) has no use for them: the parse step stamps every record with
    # its event time anyway, so the source does not decode each value a second time.
    streaming = bool(p.options.view_as(StandardOptions).streaming)
    batch = bounded and not streaming
    source_time = None if batch else extractor
    commit = bool(values.get("commit_offsets"))
    # A streaming read (unbounded, or live until --max_duration) commits as each record's
    # outcome is written; with session windows it cannot know when a record's window is
    # written, and commits when the runner finalizes the read's bundles instead.
    live = reads_live(
        streaming=streaming,
        stop_at_end=bool(values.get("stop_at_end")),
        max_records=values.get("max_records"),
        max_duration=values.get("max_duration"),
    )
    on_finalize = commit and live and _merging_windows(values)
    if on_finalize:
        _LOG.warning(
            "--commit_offsets with session windows commits each partition's offsets when the "
            "runner finalizes the bundle that read them, before the sessions are written: a job "
            "stopped without a drain loses its open sessions on restart (docs/reliability.md)"
        )
    read = ReadFromKafka(
        bootstrap_servers=values["bootstrap_servers"],
        topics=[t.strip() for t in values["topic"].split(",") if t.strip()],
        config=kafka_config(values),
        start=kafka_start(value(values, "start")),
        stop_at_end=bool(values.get("stop_at_end")),
        max_records=values.get("max_records"),
        max_duration=values.get("max_duration"),
        event_time=source_time,
        value_format=decoder(values) if source_time is not None else None,
        watermark=BoundedOutOfOrderness(
            max_delay=value(values, "max_out_of_orderness"),
            idle_timeout=values.get("idle_timeout"),
        ),
        commit_on_finalize=on_finalize,
        commit_after_sinks=commit and not on_finalize,
        group_id=values.get("group_id"),
    )
    records = p | "ReadKafka" >> read | "Progress" >> ShowProgress()
    return Sourced(records, p | "NoReadDeadLetters" >> beam.Create([]), read)


def open_source(
    p: beam.Pipeline, values: Mapping[str, Any], source: beam.PTransform | None
) -> Sourced:
    """An injected ``source`` (tests, replays), else the one ``--source`` names."""
    if source is not None:
        return Sourced(p | "Source" >> source, p | "NoReadErrors" >> beam.Create([]))
    return read_source(p, values)


def all_dead_letters(sourced: Sourced, *more: beam.PCollection) -> beam.PCollection:
    """Every dead letter of a run in one collection.

    Read-stage dead letters (a corrupt file) count as one record in and one dead letter here;
    the others were counted by the steps that made them.
    """
    read = (
        sourced.dead_letter
        | "CountReadRecordsIn" >> CountAs("records_in")
        | "CountReadDeadLetters" >> CountAs("dead_letter")
    )
    return (read, *more) | "AllDeadLetters" >> beam.Flatten()
