"""The Flink helper: Beam's Flink job server on an embedded Flink, and Beam's SDK worker pool."""

from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from headwater.testing.flink_server import flink_libs, start_flink, start_worker_pool
from headwater.testing.kafka_server import TOOLS_ENV

pytestmark = pytest.mark.integration


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_flink_runs_a_job_on_two_worker_processes_and_stops_by_pid():
    """A job with a shuffle runs on Flink at parallelism 2 with two SDK worker processes from
    the pool; leaving the blocks stops the JVM, the pool and its workers, and removes their
    folders."""
    with start_flink() as flink, start_worker_pool() as pool:
        assert (flink.name, flink.kind) == ("Apache Flink", "job server")
        assert flink.endpoint.startswith("localhost:")
        options = PipelineOptions(
            [
                "--runner=FlinkRunner",
                f"--job_endpoint={flink.endpoint}",
                "--environment_type=EXTERNAL",
                f"--environment_config={pool.address}",
                "--parallelism=2",
                "--sdk_worker_parallelism=2",
            ]
        )
        with beam.Pipeline(options=options) as p:
            sums = (
                p
                | beam.Create(range(100))
                | beam.Map(lambda x: (x % 3, x))
                | beam.CombinePerKey(sum)
            )
            assert_that(sums, equal_to([(0, 1683), (1, 1617), (2, 1650)]))
        started = pool.log_tail(200).count("Starting worker")
        assert started == 2, pool.log_tail(200)
        pids, folders = (flink.pid, pool.pid), (flink.workdir, pool.workdir)
    assert all(_gone(pid) for pid in pids)
    assert not any(folder.exists() for folder in folders if folder is not None)


def test_libs_are_the_checkouts_tools(monkeypatch):
    """Without HEADWATER_TOOLS the jars are in .tools/flink/libs of the checkout."""
    monkeypatch.delenv(TOOLS_ENV, raising=False)
    libs = flink_libs()
    assert libs.parts[-3:] == (".tools", "flink", "libs")
    assert (libs.parent.parent.parent / "tools" / "flink" / "pom.xml").is_file()


@pytest.mark.parametrize("start", [start_flink, start_worker_pool])
def test_startup_timeout_must_be_positive(start):
    """startup_timeout=0 raises ValueError naming the value."""
    with pytest.raises(ValueError, match="startup_timeout=0"):
        start(startup_timeout=0)
