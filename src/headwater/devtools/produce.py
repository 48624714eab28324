"""Producing sample events into a Kafka topic (``headwater generate --topic``, the demo, tests).

Records are spread over partitions by a stable hash of ``user_id`` (so a user's events stay in
order in one partition). The last record of each partition is produced after a flush, in a
batch of its own: every broker then reports exact end offsets, including test brokers (Tansu)
that report a partition's high watermark as the base offset of its last batch plus one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Producer

from headwater.io.kafka import KafkaConnection, KafkaDeliveryError

__all__ = ["committed_total", "ensure_topic", "partition_of", "produce_lines"]


def ensure_topic(
    bootstrap_servers: str,
    topic: str,
    *,
    partitions: int,
    config: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> int:
    """Creates ``topic`` unless it exists; returns its partition count."""
    from confluent_kafka.admin import AdminClient

    from headwater.testing.broker import create_topic

    connection = KafkaConnection(bootstrap_servers, config or {})
    metadata = AdminClient(connection.client_config()).list_topics(timeout=timeout)
    existing = metadata.topics.get(topic)
    if existing is not None and existing.error is None and existing.partitions:
        return len(existing.partitions)
    create_topic(bootstrap_servers, topic, partitions=partitions, timeout=timeout)
    return partitions


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of ``key``: a stable hash, the same on every machine and run."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % partitions


def _produce(
    producer: Producer,
    topic: str,
    item: tuple[bytes | None, bytes],
    partition: int,
    delivered: Any,
) -> None:
    while True:
        try:
            producer.produce(
                topic, value=item[1], key=item[0], partition=partition, on_delivery=delivered
            )
            break
        except BufferError:  # the local queue is full: let deliveries drain, then retry
            producer.poll(0.5)
    producer.poll(0)


def produce_lines(
    bootstrap_servers: str,
    topic: str,
    items: Iterable[tuple[bytes | None, bytes]],
    *,
    partitions: int,
    config: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> dict[int, int]:
    """Produces ``(key, value)`` items; returns how many records went to each partition.

    Raises :class:`KafkaDeliveryError` if any record is not acknowledged.
    """
    connection = KafkaConnection(bootstrap_servers, config or {})
    producer = Producer(
        connection.client_config({"enable.idempotence": True, "acks": "all", "linger.ms": 20})
    )
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    held: dict[int, tuple[bytes | None, bytes]] = {}
    counts: dict[int, int] = {}
    for key, value in items:
        partition = partition_of(key or value, partitions)
        previous = held.get(partition)
        if previous is not None:
            _produce(producer, topic, previous, partition, delivered)
        held[partition] = (key, value)
        counts[partition] = counts.get(partition, 0) + 1
    producer.flush(timeout)
    for partition, item in sorted(held.items()):
        _produce(producer, topic, item, partition, delivered)
        producer.flush(timeout)
    if failures or len(producer):
        raise KafkaDeliveryError(
            f"producing to {topic!r} failed for {len(failures) + len(producer)} records: "
            f"{connection.scrub(failures[0]) if failures else 'not acknowledged in time'}"
        )
    return counts


def committed_total(
    bootstrap_servers: str, topic: str, group: str, *, partitions: int, timeout: float = 10.0
) -> int:
    """The sum of ``group``'s committed offsets over ``topic``'s partitions (what it has read).

    ``-1`` while the group's coordinator is not ready to answer (Kafka loads it lazily), so
    callers polling for a count simply keep polling.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(tps, timeout=timeout))
    except KafkaException:
        return -1
    finally:
        consumer.close()
