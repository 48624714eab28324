"""The pytest plugin: its broker and topic fixtures work in a user's own test session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from headwater.testing.pytest_plugin import BOOTSTRAP_ENV

USER_TEST = textwrap.dedent(
    '''
    import os

    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient


    def test_round_trip(headwater_broker, headwater_topic):
        """A record sent to the fixture topic reads back from it."""
        producer = Producer({"bootstrap.servers": headwater_broker.bootstrap_servers})
        producer.produce(headwater_topic, value=b"hello", partition=1)
        producer.flush(10)
        consumer = Consumer({"bootstrap.servers": headwater_broker.bootstrap_servers,
                             "group.id": "user-test", "enable.auto.commit": False})
        consumer.assign([TopicPartition(headwater_topic, 1, 0)])
        message = consumer.poll(10)
        consumer.close()
        assert message is not None and message.value() == b"hello"


    def test_factory_makes_distinct_topics(headwater_broker, headwater_topic_factory):
        """Each topic the factory makes is new and has the partitions asked for."""
        first, second = headwater_topic_factory(1), headwater_topic_factory(2)
        admin = AdminClient({"bootstrap.servers": headwater_broker.bootstrap_servers})
        topics = admin.list_topics(timeout=10).topics
        assert first != second
        assert (len(topics[first].partitions), len(topics[second].partitions)) == (1, 2)


    def test_broker_is_the_expected_one(headwater_broker):
        """The broker is the one the outer test expects (when it names one)."""
        expected = os.environ.get("EXPECT_BOOTSTRAP", headwater_broker.bootstrap_servers)
        assert headwater_broker.bootstrap_servers == expected
    '''
)


def _run_user_session(tmp_path, env):
    (tmp_path / "test_user.py").write_text(USER_TEST, encoding="utf-8")
    # -p no:headwater: the installed entry point (if any) must not register the module twice.
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:headwater"]
    command += ["-p", "headwater.testing.pytest_plugin", "-p", "no:cacheprovider", "test_user.py"]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.integration
def test_plugin_starts_a_broker_for_a_user_session(tmp_path):
    """Without $HEADWATER_TEST_BOOTSTRAP the plugin starts Tansu; the user tests pass."""
    env = {k: v for k, v in os.environ.items() if k != BOOTSTRAP_ENV}
    completed = _run_user_session(tmp_path, env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "3 passed" in completed.stdout


@pytest.mark.integration
def test_plugin_uses_the_broker_named_by_the_environment(tmp_path, kafka_bootstrap):
    """With $HEADWATER_TEST_BOOTSTRAP set the fixtures use that broker instead of starting one."""
    env = {**os.environ, BOOTSTRAP_ENV: kafka_bootstrap, "EXPECT_BOOTSTRAP": kafka_bootstrap}
    completed = _run_user_session(tmp_path, env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "3 passed" in completed.stdout
