"""Committing read offsets to the consumer group.

* A bounded read commits after its sinks (:class:`CommitOffsetsFn`, side inputs order it).
* An unbounded read commits as its records' outcomes are written (:class:`CommitWhenWritten`):
  each partition up to its first record whose outcome is not final
  (:mod:`headwater.io.kafka.ledger`). A job killed mid-stream has then committed nothing of a
  window still open, and its restart from ``start="committed"`` reads those records again.
* ``commit_on_finalize`` (the reader, when a bundle is finalized) commits ahead of the windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from headwater.core.accounting import NAMESPACE
from headwater.io.kafka.config import KafkaConnection, make_consumer
from headwater.io.kafka.errors import KafkaCommitError, KafkaIOError, wrap_kafka_error
from headwater.io.kafka.ledger import OffsetLedger, kafka_position, position_notices
from headwater.windowing.rules import timer_at, window_close

__all__ = [
    "CommitOffsetsFn",
    "CommitWhenWritten",
    "DoneBatch",
    "DoneNotices",
    "WindowNotices",
    "commit_or_warn",
    "nothing_to_commit",
]

_LOG = logging.getLogger(__name__)


def nothing_to_commit() -> None:
    """The finalization callback of a bundle that has no offset to commit."""


def commit_or_warn(
    consumer: Any, connection: KafkaConnection, topic: str, partition: int, offset: int
) -> bool:
    """Commits ``offset`` of ``topic[partition]``; a failure is logged (never the secrets).

    Commits are advisory: a failed one is logged and counted (``kafka.commit_failures``), and
    the next commit of the partition covers it. Returns whether it was committed.
    """
    from confluent_kafka import KafkaException, TopicPartition

    try:
        consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
    except (KafkaException, KafkaIOError) as exc:
        Metrics.counter(NAMESPACE, "kafka.commit_failures").inc()
        error = wrap_kafka_error(
            exc,
            action=f"committing offset {offset} of {topic}[{partition}]",
            connection=connection,
            cls=KafkaCommitError,
        )
        _LOG.warning("%s (the next run from start='committed' re-reads these records)", error)
        return False
    return True


class CommitOffsetsFn(beam.DoFn):
    """(topic, partition, offset) -> committed to the group; side inputs only order the step."""

    def __init__(self, connection: KafkaConnection, group_id: str | None):
        self._connection = connection
        self._group_id = group_id

    def process(self, element, *args, **kwargs):  # (unannotated: Beam reads hints from them)
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        topic, partition, offset = element  # (args, kwargs: side inputs that only order it)
        consumer = Consumer(
            self._connection.client_config(
                {"group.id": self._group_id, "enable.auto.commit": False}
            )
        )
        try:
            consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        except KafkaException as exc:
            raise wrap_kafka_error(
                exc,
                action=f"committing offset {offset} of {topic}[{partition}]",
                connection=self._connection,
                cls=KafkaCommitError,
            ) from None
        finally:
            consumer.close()


# -- reports of final outcomes (per bundle, one element per partition) -------------------------


class DoneBatch:
    """One bundle's "done" reports: the Kafka offsets of its elements per partition, emitted at
    the end of the bundle as ``((topic, partition), ("done", offsets))`` in the global window,
    at the earliest timestamp seen (what the bundle's watermark hold allows)."""

    def __init__(self) -> None:
        self._positions: list[tuple[tuple[str, int], int]] = []
        self._first: Timestamp | None = None

    def add(self, element: Any, timestamp: Timestamp) -> None:
        """Counts ``element`` (a Kafka record, a record parsed from one or its dead letter)."""
        position = kafka_position(element)
        if position is not None:
            self._positions.append(position)
            self._first = timestamp if self._first is None else min(self._first, timestamp)

    def flush(self) -> Iterator[WindowedValue]:
        """The reports of what was added (:func:`~headwater.io.kafka.ledger.position_notices`),
        then empty again."""
        if self._first is not None:
            for notice in position_notices(self._positions):
                yield WindowedValue(notice, self._first, (GlobalWindow(),))
        self._positions, self._first = [], None


class _DoneNoticesFn(beam.DoFn):
    """Records or dead letters -> ``((topic, partition), ("done", offsets))`` per bundle."""

    def start_bundle(self) -> None:
        self._batch = DoneBatch()

    def process(self, element: Any, timestamp=beam.DoFn.TimestampParam) -> None:
        self._batch.add(element, timestamp)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        yield from self._batch.flush()


class DoneNotices(beam.PTransform):
    """Reports every Kafka record (or its dead letter) of the input as final on arrival.

    Apply it where the outcome is final: dedup's duplicates (nothing is written for them), the
    outputs of the dead-letter and late writers (written). See :class:`CommitWhenWritten`.
    """

    def expand(self, pcoll):
        return pcoll | "Global" >> beam.WindowInto(GlobalWindows()) | beam.ParDo(_DoneNoticesFn())


class _LastWindowEndFn(beam.DoFn):
    """A windowed Kafka record -> ``((topic, partition), offset, close)`` (global window),
    ``close`` its window's close (:func:`~headwater.windowing.rules.window_close`: the end plus
    the allowed lateness, after its panes' last firing), in microseconds."""

    def __init__(self, allowed_lateness_s: float):
        self._lateness_us = round(allowed_lateness_s * 1_000_000)

    def process(self, element: Any, window=beam.DoFn.WindowParam) -> Iterator[Any]:
        position = kafka_position(element)
        if position is not None:
            yield (*position, window_close(window.end.micros, self._lateness_us))


class _WindowNoticesFn(beam.DoFn):
    """``(key, offset, time)`` -> ``(key, ("at", time, offsets))`` per bundle, each offset at the
    last of its times (a record in several windows -- sliding -- comes once per window)."""

    def start_bundle(self) -> None:
        self._last: dict[tuple[str, int], dict[int, int]] = {}

    def process(self, element: tuple[tuple[str, int], int, int]) -> None:
        key, offset, at = element
        offsets = self._last.setdefault(key, {})
        offsets[offset] = max(at, offsets.get(offset, at))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for key, offsets in self._last.items():
            by_time: dict[int, list[int]] = {}
            for offset, at in offsets.items():
                by_time.setdefault(at, []).append(offset)
            for at, group in by_time.items():
                yield WindowedValue(
                    (key, ("at", at, tuple(group))), Timestamp(micros=at), (GlobalWindow(),)
                )
        self._last = {}


class WindowNotices(beam.PTransform):
    """Reports on-time records as final once the watermark has closed their windows.

    Apply it to the records a window-writing sink aggregates, after window assignment and late
    routing (a non-merging window function: a merged session's end is not known from a record).
    :class:`CommitWhenWritten` releases the report when its input watermark, which trails the
    sinks given as ``trailing``, reaches the close of the record's last window (its end plus
    ``allowed_lateness_s``, :func:`headwater.windowing.rules.window_close`):
    by then every pane of those windows has been written.
    """

    def __init__(self, *, allowed_lateness_s: float):
        super().__init__()
        self._lateness_s = float(allowed_lateness_s)

    def expand(self, pcoll):
        return (
            pcoll
            | "LastWindowEnd" >> beam.ParDo(_LastWindowEndFn(self._lateness_s))
            | "Global" >> beam.WindowInto(GlobalWindows())
            | "PerBundle" >> beam.ParDo(_WindowNoticesFn())
        )


# -- the committer -----------------------------------------------------------------------------


def _timer_time(close_us: int) -> Timestamp:
    """When the release timer for a close at ``close_us`` fires (:func:`rules.timer_at`)."""
    return Timestamp(micros=timer_at(close_us))


class _CommitWhenWrittenFn(beam.DoFn):
    """Per partition: an :class:`OffsetLedger` of ranges and reports; commits as it advances."""

    LEDGER = ReadModifyWriteStateSpec("ledger", PickleCoder())
    RELEASE = TimerSpec("release", TimeDomain.WATERMARK)

    def __init__(self, connection: KafkaConnection, group_id: str | None):
        self._connection = connection
        self._group_id = group_id
        self._consumer: Any = None
        self._commits = Metrics.counter(NAMESPACE, "kafka.offsets_committed")

    def teardown(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def process(
        self,
        element: tuple[tuple[str, int], tuple[Any, ...]],
        ledger=beam.DoFn.StateParam(LEDGER),
        release=beam.DoFn.TimerParam(RELEASE),
    ) -> None:
        key, notice = element
        book: OffsetLedger = ledger.read() or OffsetLedger()
        kind = notice[0]
        if kind == "read":
            _, base, start, stop, runs = notice
            book.begin(base)
            book.read(start, stop, runs)
        elif kind == "done":
            book.done(notice[1])
        elif kind == "at":
            book.wait(at=notice[1], offsets=notice[2])
        else:
            raise ValueError(f"unknown commit report {notice!r} for {key}")
        self._settle(key, book, ledger, release)

    @on_timer(RELEASE)
    def _released(
        self,
        key=beam.DoFn.KeyParam,
        fired=beam.DoFn.TimestampParam,
        ledger=beam.DoFn.StateParam(LEDGER),
        release=beam.DoFn.TimerParam(RELEASE),
    ) -> None:
        book: OffsetLedger = ledger.read() or OffsetLedger()
        book.release(fired.micros)
        self._settle(key, book, ledger, release)

    def _settle(self, key: tuple[str, int], book: OffsetLedger, ledger: Any, release: Any) -> None:
        offset = book.advance()
        if offset is not None:
            if self._consumer is None:
                self._consumer = make_consumer(self._connection, self._group_id)
            if commit_or_warn(self._consumer, self._connection, key[0], key[1], offset):
                self._commits.inc()
        waiting = book.next_wait()
        if waiting is not None:
            release.set(_timer_time(waiting))
        ledger.write(book)


class CommitWhenWritten(beam.PTransform):
    """Commits each partition up to its first record whose outcome is not yet written.

    Input: a tuple of ``PCollection`` of ``((topic, partition), report)``: the source's read
    ranges and every record's final-outcome reports (:class:`DoneNotices`,
    :class:`WindowNotices`). ``trailing``: the sinks' outputs whose watermark the window reports
    wait for. Delivery: a restart from the committed offsets re-reads every record whose outcome
    was not written (at least once); records after that point whose outcome was written are read
    again too (window files are written once, so their panes are kept out).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        group_id: str | None,
        *,
        trailing: Sequence[beam.PCollection] = (),
    ):
        super().__init__()
        self._connection = connection
        self._group_id = group_id
        self._trailing = tuple(trailing)

    def expand(self, reports):
        inputs = [
            pc | f"Global{i}" >> beam.WindowInto(GlobalWindows()) for i, pc in enumerate(reports)
        ]
        for i, pc in enumerate(self._trailing):
            # No element, only the watermark: window reports are released behind these sinks.
            inputs.append(
                pc
                | f"Trail{i}" >> beam.FlatMap(lambda _: ())
                | f"TrailGlobal{i}" >> beam.WindowInto(GlobalWindows())
            )
        return (
            tuple(inputs)
            | "Reports" >> beam.Flatten()
            | "Commit" >> beam.ParDo(_CommitWhenWrittenFn(self._connection, self._group_id))
        )
