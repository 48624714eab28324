"""kafka_to_kafka against the real broker: dedup, route to a topic, dead letters to a DLQ."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from headwater.devtools.produce import produce_lines
from headwater.pipelines import kafka_to_kafka

pytestmark = pytest.mark.integration


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes | None, bytes]]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "check", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, idle = [], 0
    while idle < 5:
        message = consumer.poll(0.5)
        if message is None:
            idle += 1
            continue
        if message.error() is None:
            out.append((message.key(), message.value()))
    consumer.close()
    return out


def test_dedups_routes_and_dead_letters(kafka_bootstrap, make_kafka_topic):
    """Duplicates are removed, records keyed by user, a poison message lands in the DLQ."""
    source, output, dlq = (make_kafka_topic(partitions=3) for _ in range(3))
    records = [
        {"event_id": f"e{i}", "user_id": f"u{i % 2}", "event_time": 1_000 + i} for i in range(6)
    ]
    lines = [json.dumps(r).encode() for r in records]
    items = [(None, line) for line in lines] + [(None, lines[0]), (None, b"\xffpoison")]
    produce_lines(kafka_bootstrap, source, items, partitions=3)
    summary = kafka_to_kafka.run(
        [
            "--source=kafka",
            f"--bootstrap_servers={kafka_bootstrap}",
            f"--topic={source}",
            "--stop_at_end",
            f"--output_topic={output}",
            f"--dlq_topic={dlq}",
            "--key_field=user_id",
        ]
    )
    assert (
        summary["records_in"],
        summary["output"],
        summary["duplicate"],
        summary["dead_letter"],
    ) == (8, 6, 1, 1)
    routed = _consume_all(kafka_bootstrap, output, 3)
    assert sorted(json.loads(v)["event_id"] for _, v in routed) == [f"e{i}" for i in range(6)]
    assert {k for k, _ in routed} == {b"u0", b"u1"}
    [(key, value)] = _consume_all(kafka_bootstrap, dlq, 3)
    letter = json.loads(value)
    assert key == b"decode"
    assert letter["origin"]["topic"] == source
    assert __import__("base64").b64decode(letter["payload_b64"]) == b"\xffpoison"


def test_message_keys_are_spelt_as_grouping_keys_are():
    """The output message key follows key_text: 1, 1.0 and "1" are one key; a bool is no key."""
    from headwater.pipelines.kafka_to_kafka import _KeyOf

    key_of = _KeyOf("user.id")
    assert [key_of({"user": {"id": v}}) for v in (1, 1.0, "1")] == [b"1", b"1", b"1"]
    assert key_of({"user": {"id": True}}) is None
    assert key_of({"user": {}}) is None
