"""WriteToKafka: an idempotent producer that fails the bundle when a delivery fails.

It flushes at the end of every bundle and fails the bundle when any record was not
acknowledged, so the runner retries it: at-least-once into Kafka, no fire-and-forget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue

from headwater.core.accounting import NAMESPACE
from headwater.io.formats import Format, JsonFormat, make_format
from headwater.io.kafka.commit import DoneBatch
from headwater.io.kafka.config import KafkaConnection, check_reachable
from headwater.io.kafka.errors import KafkaDeliveryError, wrap_kafka_error
from headwater.io.kafka.record import KafkaRecord
from headwater.windowing.durations import DurationLike, parse_duration

__all__ = ["WriteToKafka"]


def _as_bytes(value: Any, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ValueError(f"{what} must be bytes, str or None, got {type(value).__name__}")


class _WriteFn(beam.DoFn):
    def __init__(self, write: WriteToKafka):
        self._connection = write.connection
        self._topic = write.topic
        self._key_fn = write.key_fn
        self._value_fn = write.value_fn
        self._headers_fn = write.headers_fn
        self._timestamp_fn = write.timestamp_fn
        self._format = write.format
        self._flush_timeout = write.flush_timeout
        self._connect_timeout = write.connect_timeout
        self._producer: Any = None
        self._errors: list[str] = []
        self._failed = 0
        self._written = Metrics.counter(NAMESPACE, "kafka.records_written")
        self._report = write.report_written
        self._delivered = DoneBatch()  # the bundle's records, reported once flushed

    def setup(self) -> None:
        from confluent_kafka import KafkaException, Producer

        check_reachable(self._connection, timeout=self._connect_timeout)
        try:
            self._producer = Producer(
                self._connection.client_config(
                    {"linger.ms": 5},
                    enable_idempotence=True,
                    acks="all",
                )
            )
        except (KafkaException, ValueError) as exc:
            raise wrap_kafka_error(
                exc, action="creating a Kafka producer", connection=self._connection
            ) from None

    def start_bundle(self) -> None:
        self._errors = []
        self._failed = 0
        self._delivered = DoneBatch()

    def _on_delivery(self, error: Any, msg: Any) -> None:
        if error is not None:
            self._failed += 1
            if len(self._errors) < 5:
                where = f"{msg.topic()}[{msg.partition()}]" if msg is not None else self._topic
                self._errors.append(
                    str(
                        wrap_kafka_error(
                            error,
                            action=f"delivering a record to {where}",
                            connection=self._connection,
                        )
                    )
                )

    def _fields(self, element: Any) -> tuple[Any, Any, Any, Any]:
        if self._value_fn is not None:
            value = self._value_fn(element)
            key = self._key_fn(element) if self._key_fn else None
            headers = self._headers_fn(element) if self._headers_fn else None
            ts = self._timestamp_fn(element) if self._timestamp_fn else None
            if isinstance(value, Mapping):
                value = self._format.encode(value)
            return key, value, headers, ts
        if isinstance(element, KafkaRecord):
            key, value, headers, ts = (
                element.key,
                element.value,
                element.headers,
                element.timestamp_ms,
            )
        elif isinstance(element, (bytes, str)):
            key, value, headers, ts = None, element, None, None
        elif isinstance(element, Mapping):
            key, value, headers, ts = None, self._format.encode(element), None, None
        else:
            raise ValueError(
                f"WriteToKafka got a {type(element).__name__}; give value_fn=... or write "
                "KafkaRecord, bytes, str or dict elements"
            )
        if self._key_fn is not None:
            key = self._key_fn(element)
        if self._headers_fn is not None:
            headers = self._headers_fn(element)
        if self._timestamp_fn is not None:
            ts = self._timestamp_fn(element)
        return key, value, headers, ts

    def process(self, element: Any, timestamp=beam.DoFn.TimestampParam) -> Iterator[Any]:
        from confluent_kafka import KafkaException

        key, value, headers, ts = self._fields(element)
        kwargs: dict[str, Any] = {
            "key": _as_bytes(key, "the key"),
            "value": _as_bytes(value, "the value"),
            "on_delivery": self._on_delivery,
        }
        if headers:
            kwargs["headers"] = list(headers)
        if ts is not None:
            kwargs["timestamp"] = int(ts)
        while True:
            try:
                self._producer.produce(self._topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: let deliveries drain
            except KafkaException as exc:
                origin = ""
                if isinstance(element, KafkaRecord):
                    origin = f" (read from {element.topic}[{element.partition}]@{element.offset})"
                raise wrap_kafka_error(
                    exc,
                    action=f"producing a record to topic {self._topic!r}{origin}",
                    connection=self._connection,
                    cls=KafkaDeliveryError,
                ) from None
        self._producer.poll(0)
        self._written.inc()
        if self._report:
            self._delivered.add(element, timestamp)
        return iter(())

    def finish_bundle(self) -> Iterator[WindowedValue]:
        remaining = self._producer.flush(self._flush_timeout)
        if self._failed:
            raise KafkaDeliveryError(
                f"{self._failed} record(s) were not delivered to topic {self._topic!r}; the "
                f"bundle fails so the runner retries it. First error(s): "
                + " | ".join(self._errors)
            )
        if remaining:
            raise KafkaDeliveryError(
                f"{remaining} record(s) were not acknowledged by Kafka within "
                f"flush_timeout={self._flush_timeout:g}s (topic {self._topic!r}); the bundle fails "
                "so the runner retries it",
                retriable=True,
            )
        # Every record of the bundle is acknowledged: their reads may be committed.
        yield from self._delivered.flush()

    def teardown(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._flush_timeout)
            self._producer = None


class WriteToKafka(beam.PTransform):
    """Writes elements to ``topic`` with an idempotent producer; a failed delivery fails the bundle.

    Elements are :class:`KafkaRecord` (key, value, headers and timestamp are kept; the record's
    own topic and partition are not -- Kafka's partitioner places it by key), ``bytes``/``str``
    (the value) or dicts (encoded with ``format``, JSON by default). ``value_fn`` (returning
    bytes, str or a dict), ``key_fn``, ``headers_fn`` (a list of ``(str, bytes)``) and
    ``timestamp_fn`` (epoch ms) override what comes from the element.

    Every bundle ends with a flush; a record not acknowledged (``acks=all``) within
    ``flush_timeout``, or refused by the client or the broker, raises
    :class:`~headwater.io.kafka.KafkaDeliveryError` so the runner retries the bundle:
    at-least-once, never fire-and-forget. ``enable.idempotence`` keeps a retry inside the
    producer from writing duplicates; a retried bundle may write its records again.

    Output: nothing; with ``report_written=True``, once a bundle is acknowledged, the "done"
    reports of the Kafka records it wrote, ``((topic, partition), ("done", offsets))``, for
    :class:`~headwater.io.kafka.commit.CommitWhenWritten` (a streaming read's commit then
    follows the delivery).

    >>> _ = p | beam.Create([{"id": 1}]) | WriteToKafka(     # doctest: +SKIP
    ...     bootstrap_servers="localhost:9092", topic="out", key_fn=lambda r: str(r["id"]))
    """

    def __init__(
        self,
        *,
        bootstrap_servers: str | Sequence[str],
        topic: str,
        config: Mapping[str, Any] | None = None,
        key_fn: Callable[[Any], Any] | None = None,
        value_fn: Callable[[Any], Any] | None = None,
        headers_fn: Callable[[Any], Iterable[tuple[str, bytes]]] | None = None,
        timestamp_fn: Callable[[Any], int | None] | None = None,
        format: Format | str | None = None,
        flush_timeout: DurationLike = 30.0,
        connect_timeout: DurationLike = 10.0,
        report_written: bool = False,
    ):
        super().__init__()
        self.connection = KafkaConnection(bootstrap_servers, config)
        if not isinstance(report_written, bool):
            raise ValueError(f"report_written={report_written!r} must be True or False")
        self.report_written = report_written
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"topic={topic!r} must be a non-empty topic name")
        for key in ("enable.idempotence", "acks"):
            if key in self.connection.config:
                value = self.connection.config[key]
                if str(value).lower() not in ("true", "all", "-1"):
                    raise ValueError(
                        f"config[{key!r}]={value!r} would allow lost or duplicated records; "
                        "WriteToKafka always uses an idempotent producer with acks=all"
                    )
        for name, fn in (
            ("key_fn", key_fn),
            ("value_fn", value_fn),
            ("headers_fn", headers_fn),
            ("timestamp_fn", timestamp_fn),
        ):
            if fn is not None and not callable(fn):
                raise ValueError(f"{name}={fn!r} is not callable")
        if isinstance(format, str):
            format = make_format(format)
        if format is not None and not isinstance(format, Format):
            raise ValueError(f"format={format!r} must be a format or a format name")
        self.topic = topic
        self.key_fn = key_fn
        self.value_fn = value_fn
        self.headers_fn = headers_fn
        self.timestamp_fn = timestamp_fn
        self.format = format or JsonFormat()
        self.flush_timeout = parse_duration(flush_timeout, name="flush_timeout", allow_zero=False)
        self.connect_timeout = parse_duration(
            connect_timeout, name="connect_timeout", allow_zero=False
        )

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        return pcoll | "Produce" >> beam.ParDo(_WriteFn(self))

    def __repr__(self) -> str:
        return f"WriteToKafka(topic={self.topic!r}, {self.connection!r})"
