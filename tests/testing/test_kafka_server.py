"""The Apache Kafka helper: one KRaft node on free ports, topics, Kafka's offsets, stop by PID."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from headwater.testing.broker import BrokerError
from headwater.testing.flink_server import start_flink
from headwater.testing.kafka_server import TOOLS_ENV, kafka_libs, start_kafka, tools_dir

pytestmark = pytest.mark.integration


def test_kafka_starts_answers_creates_topics_and_stops_by_pid():
    """A started Kafka answers metadata, creates a 4-partition topic; after exit its PID is gone."""
    with start_kafka() as kafka:
        assert kafka.running()
        assert kafka.name == "Apache Kafka"
        assert kafka.bootstrap_servers.startswith("127.0.0.1:")
        name = kafka.create_topic(f"t-{uuid.uuid4().hex[:6]}", partitions=4)
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        metadata = admin.list_topics(timeout=10)
        assert [broker.id for broker in metadata.brokers.values()] == [1]
        assert len(metadata.topics[name].partitions) == 4
        pid, workdir = kafka.pid, kafka.workdir
        assert (workdir / "data" / "meta.properties").is_file()  # KRaft storage was formatted
    assert not kafka.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()


def test_high_watermark_is_last_offset_plus_one(kafka_bootstrap, make_kafka_topic):
    """Five records in one batch give a high watermark of 5 (Kafka's definition, not Tansu's)."""
    topic = make_kafka_topic(1)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 50})
    for i in range(5):
        producer.produce(topic, value=b"%d" % i, partition=0)
    assert producer.flush(10) == 0
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"g-{topic}"})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert (low, high) == (0, 5)


@pytest.mark.parametrize(("start", "tool"), [(start_kafka, "kafka"), (start_flink, "flink")])
def test_missing_jars_name_make_tools(tmp_path, monkeypatch, start, tool):
    """An empty tools folder is a BrokerError that says to run `make tools` (Kafka, Flink)."""
    monkeypatch.setenv(TOOLS_ENV, str(tmp_path))
    with pytest.raises(BrokerError, match=r"make tools") as raised:
        start()
    assert str(tmp_path / tool / "libs") in str(raised.value)


def test_tools_dir_is_the_checkouts_dot_tools(monkeypatch):
    """Without HEADWATER_TOOLS the tools folder is .tools beside tools/kafka/pom.xml."""
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    found = tools_dir()
    assert found.name == ".tools"
    assert (found.parent / "tools" / "kafka" / "pom.xml").is_file()
    assert kafka_libs() == found / "kafka" / "libs"


def test_tools_dir_found_from_the_package_outside_the_checkout(monkeypatch, tmp_path):
    """From a working directory outside any checkout the package's own location is used."""
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert (tools_dir().parent / "tools" / "kafka" / "pom.xml").is_file()
    assert Path.cwd() == tmp_path


def test_startup_timeout_must_be_positive():
    """startup_timeout=0 raises ValueError naming the value."""
    with pytest.raises(ValueError, match="startup_timeout=0"):
        start_kafka(startup_timeout=0)
