"""Native Kafka IO on confluent-kafka: a splittable-DoFn source and an idempotent sink, no JVM.

:class:`ReadFromKafka` reads topics into a ``PCollection`` of :class:`KafkaRecord` (topic,
partition, offset, key, value bytes, timestamp_ms, headers), undecoded: decode them with a format
from :mod:`headwater.io.formats` inside
:class:`~headwater.transforms.deadletter.ApplyOrDeadLetter`, so undecodable bytes become dead
letters carrying their topic/partition/offset.

Parallelism
    One restriction (an offset range) per topic-partition, resolved once at pipeline start; a
    runner may split a range further while it is read (dynamic splitting), and splits of one
    partition run in parallel. Within a restriction records come in offset order; there is no
    order across partitions.

Bounded and unbounded
    With ``stop_at_end=True`` (stop at each partition's end offset -- Kafka's high watermark,
    last offset + 1 -- seen at start), ``max_records`` or ``max_duration`` the read is bounded and
    runs in batch (``FnApiRunner`` locally). Otherwise it is unbounded: when a partition is caught
    up the DoFn checkpoints and resumes after ``poll_interval`` (Dataflow, Flink, Prism; the
    Python DirectRunner cannot run unbounded splittable DoFns).

Timestamps and watermark
    Each record's timestamp is its Kafka timestamp (``event_time=None``), or a field of its value
    read with an :class:`~headwater.windowing.eventtime.EventTimeExtractor` after decoding it with
    ``value_format``. A record whose event time cannot be read is stamped with its partition's
    current watermark, so it never moves the watermark, and is counted under
    ``kafka.event_time_fallback``; the decode and event-time steps downstream route it to dead
    letters with the reason. Per partition the
    watermark is :class:`~headwater.windowing.watermark.BoundedOutOfOrderness`: the largest
    timestamp read minus ``max_delay``, advancing with the clock once the partition has been idle
    for ``idle_timeout``; ``watermark=None`` means ``max_delay=0`` and no idle timeout. Beam takes
    the minimum over partitions. Records behind the watermark are late; the windowing step sends
    them to its ``late`` output.

Delivery guarantee
    At-least-once into the pipeline: a record is emitted after its offset is claimed, and a
    runner that retries a bundle reads its offsets again (exactly-once processing comes from the
    runner's checkpoints, not from Kafka). Commits to the consumer group ``group_id`` never run
    ahead of the output. A bounded read with ``commit_after_sinks=True`` commits its end offsets
    once every sink is written (:meth:`ReadFromKafka.commit_after`). An unbounded one reports
    each consumed batch, and commits each partition up to its first record whose outcome is not
    written yet, from the reports the pipeline gives :meth:`ReadFromKafka.commit_when_written`
    (:mod:`headwater.io.kafka.ledger`): a job killed or cancelled mid-stream has not committed
    the records of its open windows, and a restart from ``start="committed"`` reads them again.
    ``commit_on_finalize=True`` instead commits each partition's next offset when the runner
    finalizes the bundle that read it: ahead of the windows, so a job stopped without a drain
    loses its open windows (the pipelines use it only for session windows, whose end a record
    does not tell). Commits are advisory: a failed commit is logged and counted
    (``kafka.commit_failures``), and the next one covers it.

Backlog
    The reader learns each partition's end offset (at most every 5 s per partition) and reports
    what is left to read in messages: for an unbounded range its ``restriction_size`` (a
    bounded range's tracker progress counts messages too); and per partition
    the Beam gauges ``consumer_lag_messages/<topic>/<partition>`` and
    ``consumer_lag_bytes/<topic>/<partition>`` (namespace ``headwater``). See
    :mod:`headwater.io.kafka.backlog` and docs/operations.md, "Backlog".

:class:`WriteToKafka` writes elements with an idempotent producer (``enable.idempotence``, acks
from all in-sync replicas), flushes at the end of every bundle and fails the bundle when any
record was not acknowledged, so the runner retries it: at-least-once into Kafka, no
fire-and-forget.

Modules: :mod:`~headwater.io.kafka.record` (the element types), :mod:`~headwater.io.kafka.config`
(connection, secret masking, consumers), :mod:`~headwater.io.kafka.errors`,
:mod:`~headwater.io.kafka.partitions` (what to read: starts and stops),
:mod:`~headwater.io.kafka.restriction` (offset ranges, tracker, provider),
:mod:`~headwater.io.kafka.reader` (the splittable DoFn), :mod:`~headwater.io.kafka.backlog`
(end offsets, consumer lag), :mod:`~headwater.io.kafka.commit`,
:mod:`~headwater.io.kafka.drain`, :mod:`~headwater.io.kafka.source` (:class:`ReadFromKafka`) and
:mod:`~headwater.io.kafka.sink` (:class:`WriteToKafka`).
"""

import importlib
from typing import TYPE_CHECKING, Any

from headwater.io.kafka.config import (
    MASK,
    KafkaConnection,
    check_reachable,
    is_secret_key,
    mask_config,
    mask_setting,
)
from headwater.io.kafka.drain import request_drain, reset_drain
from headwater.io.kafka.errors import (
    KafkaCommitError,
    KafkaConfigError,
    KafkaConnectError,
    KafkaConsumeError,
    KafkaDeliveryError,
    KafkaIOError,
    KafkaTopicError,
    wrap_kafka_error,
)

# The source, the sink and the record types import Beam: they load on first use, so that what
# needs only the configuration (``headwater --help``, flag checks) starts without Beam.
_LAZY = {
    "read_partitions": "headwater.io.kafka.partitions",
    "KafkaRecord": "headwater.io.kafka.record",
    "PartitionRead": "headwater.io.kafka.record",
    "WriteToKafka": "headwater.io.kafka.sink",
    "ReadFromKafka": "headwater.io.kafka.source",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if TYPE_CHECKING:
    from headwater.io.kafka.partitions import read_partitions
    from headwater.io.kafka.record import KafkaRecord, PartitionRead
    from headwater.io.kafka.sink import WriteToKafka
    from headwater.io.kafka.source import ReadFromKafka

__all__ = [
    "MASK",
    "KafkaCommitError",
    "KafkaConfigError",
    "KafkaConnectError",
    "KafkaConnection",
    "KafkaConsumeError",
    "KafkaDeliveryError",
    "KafkaIOError",
    "KafkaRecord",
    "KafkaTopicError",
    "PartitionRead",
    "ReadFromKafka",
    "WriteToKafka",
    "check_reachable",
    "is_secret_key",
    "mask_config",
    "mask_setting",
    "read_partitions",
    "request_drain",
    "reset_drain",
    "wrap_kafka_error",
]
