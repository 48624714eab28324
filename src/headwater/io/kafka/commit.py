"""Committing read offsets to the consumer group: after the sinks of a bounded read
(:class:`CommitOffsetsFn`), or (in the reader) when a bundle is finalized."""

from __future__ import annotations

import apache_beam as beam

from headwater.io.kafka.config import KafkaConnection
from headwater.io.kafka.errors import KafkaCommitError, wrap_kafka_error

__all__ = ["CommitOffsetsFn", "nothing_to_commit"]


def nothing_to_commit() -> None:
    """The finalization callback of a bundle that has no offset to commit."""


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
