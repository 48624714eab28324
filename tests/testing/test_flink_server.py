"""The Flink helper: Beam's Flink job server on an embedded Flink, and Beam's SDK worker pool."""

from __future__ import annotations

import os
import socket

import pytest

from headwater import runners
from headwater.testing.flink_server import (
    flink_libs,
    start_flink,
    start_worker_pool,
)
from headwater.testing.kafka_server import TOOLS_ENV

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_flink_and_the_worker_pool_answer_and_stop_by_pid():
    """Both servers answer on their ports; leaving the blocks stops them by PID and removes
    their folders. (Jobs run on them in tests/runners and the bench test.)"""
    with start_flink() as flink, start_worker_pool() as pool:
        assert (flink.name, flink.kind) == ("Apache Flink", "job server")
        assert flink.endpoint.startswith("localhost:")
        for server in (flink, pool):
            socket.create_connection((server.host, server.port), timeout=5).close()
        pids, folders = (flink.pid, pool.pid), (flink.workdir, pool.workdir)
    assert all(_gone(pid) for pid in pids)
    assert not any(folder.exists() for folder in folders)


def test_libs_are_the_checkouts_tools(monkeypatch):
    """Without HEADWATER_TOOLS the jars are in .tools/flink/libs of the checkout."""
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    libs = flink_libs()
    assert libs.parts[-3:] == (".tools", "flink", "libs")
    assert (libs.parent.parent.parent / "tools" / "flink" / "pom.xml").is_file()
    # the launcher make tools writes beside them, where runners look for it
    assert runners.find_flink_job_server_jar() == str(libs.parent / "job-server.jar")


@pytest.mark.parametrize("start", [start_flink, start_worker_pool])
def test_startup_timeout_must_be_positive(start):
    """startup_timeout=0 raises ValueError naming the value."""
    with pytest.raises(ValueError, match="startup_timeout=0"):
        start(startup_timeout=0)
