"""ReadFromKafka: the Kafka source transform (partition listing, the reader, commits after sinks).

See :mod:`headwater.io.kafka` for its parallelism, watermark and delivery guarantee.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.window import GlobalWindows

from headwater.io.formats import Format, JsonFormat, make_format
from headwater.io.kafka.commit import CommitOffsetsFn, CommitWhenWritten
from headwater.io.kafka.config import KafkaConnection
from headwater.io.kafka.partitions import read_partitions, start_label, validate_start
from headwater.io.kafka.reader import (
    READ_RANGES,
    ReadPartitionFn,
    ReadPartitionUnboundedFn,
    reader_class,
    split_read_ranges,
)
from headwater.io.kafka.record import PartitionRead
from headwater.windowing.durations import DurationLike, parse_duration
from headwater.windowing.eventtime import EventTimeExtractor
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = ["ReadFromKafka", "reads_live"]


class _ListPartitionsFn(beam.DoFn):
    """Impulse -> one :class:`PartitionRead` per partition, resolved against the broker."""

    def __init__(self, read: ReadFromKafka):
        self._connection = read.connection
        self._topics = read.topics
        self._start = read.start
        self._stop_at_end = read.stop_at_end
        self._max_records = read.max_records
        self._max_duration = read.max_duration
        self._group_id = read.group_id
        self._timeout = read.connect_timeout

    def process(self, _impulse: Any) -> Iterator[PartitionRead]:
        yield from read_partitions(
            self._connection,
            self._topics,
            start=self._start,
            stop_at_end=self._stop_at_end,
            max_records=self._max_records,
            max_duration=self._max_duration,
            group_id=self._group_id,
            timeout=self._timeout,
        )


def reads_live(
    *, streaming: bool, stop_at_end: bool, max_records: int | None, max_duration: Any
) -> bool:
    """Whether a read runs live (an unbounded reader: checkpoints at the tail, the watermark and
    the windows advance while it runs): every unbounded read, and in a ``streaming`` job a read
    bounded only by ``max_duration`` (it ends at its deadline, which drains the job)."""
    bounded = stop_at_end or max_records is not None or max_duration is not None
    return not bounded or (streaming and not stop_at_end and max_records is None)


class ReadFromKafka(beam.PTransform):
    """Reads Kafka topics as :class:`KafkaRecord` values: a splittable DoFn, a range per partition.

    Options (keyword-only):

    * ``bootstrap_servers``, ``topics`` (a name or a list), ``config`` (librdkafka settings,
      passed through; secrets masked everywhere) and ``group_id`` (the consumer group, needed for
      ``start="committed"`` and ``commit_on_finalize``).
    * ``start``: ``"earliest"``, ``"latest"``, ``"committed"``, a timezone-aware ``datetime``
      (the first offset whose timestamp is at or after it), or ``{(topic, partition): offset}``
      (other partitions start at the earliest offset).
    * bounded reads: ``stop_at_end`` (the end offsets seen at start), ``max_records`` (in total,
      spread over partitions at start) and ``max_duration`` (wall clock from start); without any
      of them the read is unbounded.
    * ``event_time`` (an ``EventTimeExtractor``; decodes values with ``value_format``, default
      JSON) or ``None`` for the Kafka timestamp; ``watermark`` (a ``BoundedOutOfOrderness``).
    * ``commit_on_finalize`` commits offsets to ``group_id`` after each bundle is finalized
      (ahead of the windows of a streaming job: a killed job loses its open windows).
      ``commit_after_sinks`` commits only what is written: a bounded read commits the offsets
      read through :meth:`commit_after` once the given sinks are written; an unbounded read
      commits each partition up to its first record whose outcome is not yet written, from the
      reports given to :meth:`commit_when_written` -- what the pipelines use for every read.
    * ``stall_timeout``: a bounded read that gets no record for this long before its stop
      offset fails with :class:`~headwater.io.kafka.KafkaConsumeError` (broker gone or
      restarted empty) instead of polling forever or returning a short result. Records the
      broker deleted before the read reached them (retention) are not waited for: a warning
      names their offsets, ``kafka.offsets_deleted_before_read`` counts them, and the read
      goes on from the partition's first record.
    * ``connect_timeout``: how long to wait for the broker at pipeline start before failing
      with :class:`~headwater.io.kafka.KafkaConnectError`; ``poll_interval``: the wait of
      one poll, and the resume delay of a caught-up unbounded read.

    See the module docstring for parallelism, watermark and delivery guarantee.

    >>> with beam.Pipeline("FnApiRunner") as p:              # doctest: +SKIP
    ...     records = p | ReadFromKafka(bootstrap_servers="localhost:9092", topics="events",
    ...                                 stop_at_end=True)
    ...     routed = records | ApplyOrDeadLetter(JsonFormat().decode, stage="decode")
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str],
        topics: str | Sequence[str],
        config: Mapping[str, Any] | None = None,
        start: Any = "earliest",
        stop_at_end: bool = False,
        max_records: int | None = None,
        max_duration: DurationLike | None = None,
        event_time: EventTimeExtractor | None = None,
        value_format: Format | str | None = None,
        watermark: BoundedOutOfOrderness | None = None,
        commit_on_finalize: bool = False,
        group_id: str | None = None,
        connect_timeout: DurationLike = 10.0,
        poll_interval: DurationLike = 1.0,
        stall_timeout: DurationLike = 60.0,
        commit_after_sinks: bool = False,
    ):
        super().__init__()
        self.connection = KafkaConnection(bootstrap_servers, config)
        if isinstance(topics, str):
            topics = [topics]
        if (
            not isinstance(topics, Sequence)
            or not topics
            or any(not isinstance(t, str) or not t for t in topics)
        ):
            raise ValueError(f"topics={topics!r} must be a topic name or a non-empty list of names")
        self.topics = list(dict.fromkeys(topics))
        if group_id is not None and (not isinstance(group_id, str) or not group_id):
            raise ValueError(f"group_id={group_id!r} must be a non-empty string")
        config_group = self.connection.config.get("group.id")
        if group_id and config_group and group_id != config_group:
            raise ValueError(
                f"group_id={group_id!r} disagrees with config['group.id']={config_group!r}"
            )
        self.group_id = group_id or config_group
        self.start = validate_start(start, self.topics)
        if commit_on_finalize and commit_after_sinks:
            raise ValueError("commit_on_finalize=True and commit_after_sinks=True: choose one")
        if (start == "committed" or commit_on_finalize or commit_after_sinks) and not self.group_id:
            what = (
                "start='committed'"
                if start == "committed"
                else "commit_on_finalize=True"
                if commit_on_finalize
                else "commit_after_sinks=True"
            )
            raise ValueError(f"{what} needs group_id=... (the consumer group), got group_id=None")
        if not isinstance(stop_at_end, bool):
            raise ValueError(f"stop_at_end={stop_at_end!r} must be True or False")
        if not isinstance(commit_on_finalize, bool):
            raise ValueError(f"commit_on_finalize={commit_on_finalize!r} must be True or False")
        if max_records is not None and (
            isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1
        ):
            raise ValueError(f"max_records={max_records!r} must be a positive integer or None")
        self.stop_at_end = stop_at_end
        self.max_records = max_records
        self.max_duration = (
            None
            if max_duration is None
            else parse_duration(max_duration, name="max_duration", allow_zero=False)
        )
        if event_time is not None and not isinstance(event_time, EventTimeExtractor):
            raise ValueError(f"event_time={event_time!r} must be an EventTimeExtractor or None")
        if isinstance(value_format, str):
            value_format = make_format(value_format)
        if value_format is not None and not isinstance(value_format, Format):
            raise ValueError(f"value_format={value_format!r} must be a format or a format name")
        if value_format is not None and event_time is None:
            raise ValueError(
                f"value_format={value_format!r} is only used with event_time=...; records are "
                "emitted undecoded (decode them downstream)"
            )
        self.event_time = event_time
        self.value_format = value_format or (JsonFormat() if event_time is not None else None)
        if watermark is not None and not isinstance(watermark, BoundedOutOfOrderness):
            raise ValueError(f"watermark={watermark!r} must be a BoundedOutOfOrderness or None")
        self.watermark = watermark or BoundedOutOfOrderness(max_delay=0)
        self.commit_on_finalize = commit_on_finalize
        self.commit_after_sinks = commit_after_sinks
        self.connect_timeout = parse_duration(
            connect_timeout, name="connect_timeout", allow_zero=False
        )
        self.poll_interval = parse_duration(poll_interval, name="poll_interval", allow_zero=False)
        self.stall_timeout = parse_duration(stall_timeout, name="stall_timeout", allow_zero=False)
        self.partitions: list[PartitionRead] | None = None  # resolved in the driver (see expand)
        self._read_id = uuid.uuid4().hex  # tells this read's partitions from other reads'
        self._records: beam.PCollection | None = None
        self._ranges: beam.PCollection | None = None  # READ_RANGES of an unbounded read
        self.reports_ranges = False  # set in expand: commits follow commit_when_written's reports

    @property
    def bounded(self) -> bool:
        """Whether the read ends by itself (``stop_at_end``, ``max_records``, ``max_duration``)."""
        return self.stop_at_end or self.max_records is not None or self.max_duration is not None

    def reader_fn(self, *, streaming: bool = False) -> ReadPartitionFn:
        """The splittable DoFn that reads :class:`PartitionRead` elements (for tests, runners).

        In a ``streaming`` job a read bounded only by ``max_duration`` is read live like an
        unbounded one (checkpointing at the tail, so the watermark and the windows advance
        while it runs) and ends at its deadline, which drains the job.
        """
        bounded = not reads_live(
            streaming=streaming,
            stop_at_end=self.stop_at_end,
            max_records=self.max_records,
            max_duration=self.max_duration,
        )
        cls = reader_class(bounded=bounded, commit_on_finalize=self.commit_on_finalize)
        return cls(
            self.connection,
            group_id=self.group_id,
            policy=self.watermark,
            event_time=self.event_time,
            value_format=self.value_format,
            poll_interval=self.poll_interval,
            bounded=bounded,
            stall_timeout=self.stall_timeout,
            read_id=None if bounded else self._read_id,
            report_ranges=self.commit_after_sinks and not bounded,
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        if self.commit_after_sinks and self.bounded and self.max_duration is None:
            # The ranges are fixed in the driver, so what to commit is known before the run.
            self.partitions = list(_ListPartitionsFn(self).process(None))
            listed = pbegin | "Partitions" >> beam.Create(self.partitions, reshuffle=False)
        else:
            listed = (
                pbegin
                | "Impulse" >> beam.Impulse()
                | "ListPartitions" >> beam.ParDo(_ListPartitionsFn(self))
            )
        streaming = bool(pbegin.pipeline.options.view_as(StandardOptions).streaming)
        reader = self.reader_fn(streaming=streaming)
        self._records = (
            listed | "SpreadPartitions" >> beam.Reshuffle() | "ReadPartitions" >> beam.ParDo(reader)
        )
        if reader.reports_ranges:
            split = split_read_ranges(self._records)
            self._records, self._ranges = split.records, split[READ_RANGES]
        # Beam's Python SDK marks a splittable DoFn's output bounded whatever the restriction;
        # steps that act only on unbounded input (late-data routing) must see the truth, or on
        # Prism they skip themselves and the windows silently drop late records.
        self._records.is_bounded = not isinstance(reader, ReadPartitionUnboundedFn)
        self.reports_ranges = reader.reports_ranges
        return self._records

    def commit_when_written(
        self,
        *,
        outcomes: Sequence[beam.PCollection],
        trailing: Sequence[beam.PCollection] = (),
    ) -> None:
        """Commits an unbounded read (``commit_after_sinks=True``) as its records are written.

        ``outcomes``: every record's report that its outcome is final, as
        :class:`~headwater.io.kafka.commit.DoneNotices` and
        :class:`~headwater.io.kafka.commit.WindowNotices` make them (``((topic, partition),
        notice)``); ``trailing``: the outputs of the sinks whose writes a window report waits for
        (its release waits until their watermark has passed the windows). Each partition is
        committed up to its first record not reported final (:mod:`headwater.io.kafka.ledger`).
        A read that does not report ranges (bounded, or without ``commit_after_sinks``) ignores
        this.
        """
        if not self.reports_ranges or self._ranges is None:
            return
        _ = (self._ranges, *outcomes) | "CommitWhenWritten" >> CommitWhenWritten(
            self.connection, self.group_id, trailing=trailing
        )

    def commit_after(self, pipeline: beam.Pipeline, *sinks: beam.PCollection) -> None:
        """Commits the read's end offsets once every ``sinks`` collection is complete.

        For ``commit_after_sinks=True`` (a bounded read): the commit step takes the sinks'
        outputs as side inputs, so the runner runs it only after they are fully written -- a run
        whose sink fails commits nothing, and a successful one commits exactly the end of what
        it read: the stop offsets resolved in the driver (``stop_at_end``, ``max_records``), or
        with ``max_duration`` (where the read ends is known only once it has) each partition's
        last offset read + 1. (``commit_on_finalize`` commits when the read's own bundles are
        finalized, which in batch is when the read stage ends, before later stages have written
        anything.) Without ``commit_after_sinks`` this is a no-op.
        """
        if not self.commit_after_sinks or self._records is None or self.reports_ranges:
            return
        waits = {f"wait{i}": beam.pvalue.AsList(sink) for i, sink in enumerate(sinks)}
        if self.partitions is not None:
            offsets = pipeline | "OffsetsToCommit" >> beam.Create(
                [
                    (p.topic, p.partition, p.stop)
                    for p in self.partitions
                    if p.stop is not None and p.stop > p.start
                ]
            )
        else:
            offsets = (
                self._records
                | "NextOffsets" >> beam.Map(lambda r: ((r.topic, r.partition), r.offset + 1))
                | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
                | "EndOfRead" >> beam.CombinePerKey(max)
                | "OffsetsToCommit" >> beam.Map(lambda kv: (*kv[0], kv[1]))
            )
        _ = offsets | "CommitOffsets" >> beam.ParDo(
            CommitOffsetsFn(self.connection, self.group_id), **waits
        )

    def __repr__(self) -> str:
        return (
            f"ReadFromKafka(topics={self.topics!r}, {self.connection!r}, "
            f"start={start_label(self.start)!r}, bounded={self.bounded})"
        )
