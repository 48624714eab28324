"""Where a pipeline's records come from: files, files replayed as a stream, Kafka, or injected.

:func:`open_source` gives a :class:`Sourced`: the raw records (counted for the progress lines of
a local run) and the dead letters of the read itself (a corrupt file).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from headwater.io.fileio import ReadFromFiles, _ReadFileFn, match_files
from headwater.io.kafka import ReadFromKafka
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
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = ["Sourced", "all_dead_letters", "open_source", "read_source"]


class Sourced(NamedTuple):
    """Raw records from a source, and dead letters of the read itself (corrupt files)."""

    records: beam.PCollection
    dead_letter: beam.PCollection
    kafka: ReadFromKafka | None = None  # commits its offsets once the sinks are written

    def commit_after(self, *sinks: beam.PCollection) -> None:
        """Commits a bounded Kafka read's offsets after ``sinks`` are complete (if asked)."""
        if self.kafka is not None:
            self.kafka.commit_after(self.records.pipeline, *sinks)


def _local_records(pattern: str, fmt: str) -> tuple[list[Any], list[Any]]:
    """Reads files in the driver for stream replay: (records in file order, dead letters)."""
    reader = _ReadFileFn("json" if fmt == "json" else fmt)
    records: list[Any] = []
    dead: list[Any] = []
    for path in sorted(match_files(pattern)):
        for item in reader.process(path):
            (dead if isinstance(item, beam.pvalue.TaggedOutput) else records).append(
                item.value if isinstance(item, beam.pvalue.TaggedOutput) else item
            )
    return records, dead


def read_source(p: beam.Pipeline, values: Mapping[str, Any]) -> Sourced:
    """Raw records from ``--source`` (files, files replayed as a stream, or Kafka)."""
    source = values.get("source")
    fmt = value(values, "format")
    if source == "files" and values.get("replay_as_stream"):
        records, dead = _local_records(values["input"], fmt)
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
    batch = bounded and not p.options.view_as(StandardOptions).streaming
    source_time = None if batch else extractor
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
        commit_on_finalize=bool(values.get("commit_offsets")) and not bounded,
        commit_after_sinks=bool(values.get("commit_offsets")) and bounded,
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
