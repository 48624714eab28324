"""The Kafka source's backlog: each partition's end offset, what is left to read, consumer lag.

The reader knows each partition's end offset (Kafka's high watermark, last offset + 1): it asks
its consumer with ``get_watermark_offsets`` -- the value cached from the last fetch response
(``cached=True``, no broker round trip) or, before the first fetch, the broker
(``cached=False``) -- at most once per :data:`END_OFFSET_INTERVAL_S` seconds per partition,
never per record, and keeps the answer in :data:`END_OFFSETS`, shared by the worker process.
From it:

* the restriction tracker's ``current_progress()`` reports messages for a bounded range only;
  for an unbounded one it stays Beam's fraction of the offset range (message counts there made
  Prism split at NaN fractions and fail the bundle at every drain);
* ``restriction_size`` of an unbounded range (the residual a caught-up read hands back at every
  checkpoint) is the messages from its start to the latest known end offset (``1.0`` before any
  end offset is known);
* two Beam gauges per partition, namespace ``headwater``:

  ``consumer_lag_messages/<topic>/<partition>``
      end offset - next offset to read (>= 0), set after every batch read and at the end of
      every bundle of that partition;
  ``consumer_lag_bytes/<topic>/<partition>``
      that lag x the mean value size (bytes) of the records this reader read from the partition:
      an estimate (set once a record has been read, or when the lag is 0).

A topic name cannot contain ``/``, so ``name.split("/")`` gives back the metric, the topic and
the partition. The lag is that of this reader, not of the consumer group: the group's committed
offsets trail it by the records whose outcome is not written yet (the open windows).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apache_beam.metrics import Metrics

from headwater.core.accounting import NAMESPACE

__all__ = [
    "END_OFFSETS",
    "END_OFFSET_INTERVAL_S",
    "LAG_BYTES",
    "LAG_MESSAGES",
    "EndOffsets",
    "PartitionLag",
    "cached_offsets",
    "lag_metric_name",
    "partition_lag",
]

_LOG = logging.getLogger(__name__)

#: The least time between two end-offset queries of one partition, in seconds.
END_OFFSET_INTERVAL_S = 5.0
#: How long an end-offset query may wait for the broker (it only runs before the first fetch).
_QUERY_TIMEOUT_S = 2.0
LAG_MESSAGES = "consumer_lag_messages"
LAG_BYTES = "consumer_lag_bytes"


def lag_metric_name(metric: str, topic: str, partition: int) -> str:
    """The gauge name of ``metric`` (:data:`LAG_MESSAGES` or :data:`LAG_BYTES`) for a partition.

    >>> lag_metric_name(LAG_MESSAGES, "events", 2)
    'consumer_lag_messages/events/2'
    """
    return f"{metric}/{topic}/{partition}"


class EndOffsets:
    """The latest known end offset of each (topic, partition), queried at a bounded rate.

    Thread-safe; one per process (:data:`END_OFFSETS`): the reader refreshes it, the
    restriction trackers and the restriction provider read it.
    """

    def __init__(
        self,
        *,
        interval: float = END_OFFSET_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if interval < 0:
            raise ValueError(f"interval={interval!r} must be >= 0 seconds")
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._ends: dict[tuple[str, int], int] = {}
        self._asked: dict[tuple[str, int], float] = {}

    def latest(self, topic: str, partition: int) -> int | None:
        """The last end offset seen for the partition, ``None`` when never asked."""
        with self._lock:
            return self._ends.get((topic, partition))

    def refresh(self, consumer: Any, topic: str, partition: int) -> int | None:
        """Asks ``consumer`` for the partition's end offset unless it was asked less than the
        interval ago; returns the latest known end offset. A failed query keeps the old value."""
        key = (topic, partition)
        now = self._clock()
        with self._lock:
            asked = self._asked.get(key)
            if asked is not None and now - asked < self._interval:
                return self._ends.get(key)
            self._asked[key] = now
        end = _query_end(consumer, topic, partition)
        with self._lock:
            if end is not None:
                self._ends[key] = end
            return self._ends.get(key)

    def clear(self) -> None:
        """Forgets every end offset (a new run in the same process, tests)."""
        with self._lock:
            self._ends.clear()
            self._asked.clear()


def cached_offsets(consumer: Any, tp: Any) -> tuple[int, int] | None:
    """The partition's ``(first, end)`` offsets as the broker last told ``consumer`` in a fetch
    response (``get_watermark_offsets(cached=True)``: no round trip); ``None`` before any
    (``first`` may still be negative: not reported yet)."""
    from confluent_kafka import KafkaException

    try:
        found = consumer.get_watermark_offsets(tp, cached=True)
    except (KafkaException, RuntimeError):  # (RuntimeError: a closed consumer)
        return None
    if found is None or found[1] < 0:
        return None
    return int(found[0]), int(found[1])


def _query_end(consumer: Any, topic: str, partition: int) -> int | None:
    from confluent_kafka import KafkaException, TopicPartition

    tp = TopicPartition(topic, partition)
    cached = cached_offsets(consumer, tp)
    if cached is not None:
        return cached[1]
    try:  # no fetch response yet: ask the broker
        found = consumer.get_watermark_offsets(tp, timeout=_QUERY_TIMEOUT_S, cached=False)
    except (KafkaException, RuntimeError) as exc:  # (RuntimeError: a closed consumer)
        _LOG.debug("end offset of %s[%d] unknown: %s", topic, partition, exc)
        return None
    if found is None or found[1] < 0:
        return None
    return int(found[1])


END_OFFSETS = EndOffsets()


class PartitionLag:
    """The consumer-lag gauges of one partition, and the mean value size read from it.

    Thread-safe; :func:`partition_lag` gives the one of the process, so the mean carries over
    from one reader instance (bundle processor) to the next.
    """

    def __init__(self, topic: str, partition: int):
        self.topic = topic
        self.partition = partition
        self._messages = Metrics.gauge(NAMESPACE, lag_metric_name(LAG_MESSAGES, topic, partition))
        self._bytes = Metrics.gauge(NAMESPACE, lag_metric_name(LAG_BYTES, topic, partition))
        self._lock = threading.Lock()
        self._value_bytes = 0
        self._values = 0

    def observe(self, value_bytes: int, count: int) -> None:
        """Adds ``count`` records of ``value_bytes`` bytes in total to the mean value size."""
        with self._lock:
            self._value_bytes += value_bytes
            self._values += count

    def report(self, consumer: Any, next_offset: int, ends: EndOffsets = END_OFFSETS) -> None:
        """Sets the gauges from the partition's end offset (refreshed at a bounded rate)."""
        end = ends.refresh(consumer, self.topic, self.partition)
        if end is None:
            return
        lag = max(0, end - next_offset)
        self._messages.set(lag)
        with self._lock:
            value_bytes, values = self._value_bytes, self._values
        if lag == 0 or values:
            self._bytes.set(round(lag * value_bytes / values) if lag else 0)


_LAGS: dict[tuple[str, int], PartitionLag] = {}
_LAGS_LOCK = threading.Lock()


def partition_lag(topic: str, partition: int) -> PartitionLag:
    """The process's :class:`PartitionLag` of a partition (made on first use)."""
    with _LAGS_LOCK:
        lag = _LAGS.get((topic, partition))
        if lag is None:
            lag = _LAGS[(topic, partition)] = PartitionLag(topic, partition)
        return lag
