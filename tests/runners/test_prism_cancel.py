"""What a cancel and a drain leave behind on Prism: open windows, written files, committed offsets.

A streaming ``windowed_metrics`` job reads an unbounded Kafka topic on Prism with
``--commit_offsets``. Events span 20 s of event time in 10 s windows with a 5 s out-of-orderness
bound, so once all are read the watermark (~15 s) has closed window [0, 10) and window [10, 20)
is open. Then the job is either

* cancelled (SIGTERM: ``headwater run`` cancels the Prism job): the open window is never
  written, and the group's offsets stand at its first records (the commit follows the writes):
  a restart from them reads the open window's records again;
* drained (one Ctrl-C): the read stops, the watermark goes to the end, the open window is written
  and the job ends by itself (``DONE``), offsets committed: nothing lost, nothing twice.

Prism itself has no drain: its Job API answers ``Drain`` with ``UNIMPLEMENTED``, so the drain
above is headwater's own (the Kafka source stops claiming records).
"""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import pyarrow.parquet as pq
import pytest
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from headwater.devtools.produce import committed_total, produce_lines

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_700_000_040_000  # a minute boundary: 2023-11-14T22:14:00Z
EVENTS = 40  # one every 0.5 s: event times 0 .. 19.5 s
PARTITIONS = 2


def _lines() -> list[tuple[bytes, bytes]]:
    """(key, value) of EVENTS events over 20 s, three users, keyed so both partitions get some."""
    return [
        (
            f"u{i % 3}-{i % PARTITIONS}".encode(),
            json.dumps(
                {"event_id": f"e{i}", "event_time": BASE_MS + i * 500, "user_id": f"u{i % 3}"}
            ).encode(),
        )
        for i in range(EVENTS)
    ]


def _window_files(folder: Path, start_s: int) -> list[Path]:
    start = dt.datetime.fromtimestamp(BASE_MS / 1000 + start_s, tz=dt.timezone.utc)
    return sorted((folder / f"window_start={start:%Y-%m-%dT%H:%M:%SZ}").glob("*.parquet"))


def _counts(files: list[Path]) -> int:
    return sum(row["count"] for path in files for row in pq.read_table(path).to_pylist())


class _OpenWindowJob(NamedTuple):
    job: Any  # conftest.StreamJob
    metrics: Path  # the job's --output
    committed: Callable[[], int]  # the group's committed offsets, summed over the partitions


@pytest.fixture
def open_window_job(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> _OpenWindowJob:
    """A running job that has read all events: [0, 10) written and committed, [10, 20) open."""
    topic = make_kafka_topic(PARTITIONS)
    out = tmp_path / "out"
    job = start_stream_job(
        "windowed_metrics",
        [
            "--source=kafka",
            f"--bootstrap_servers={kafka_bootstrap}",
            f"--topic={topic}",
            f"--group_id=g-{topic}",
            "--commit_offsets",
            "--event_time_field=event_time",
            "--event_time_unit=ms",
            "--id_field=event_id",
            "--key_field=user_id",
            "--window=fixed:10s",
            "--allowed_lateness=0s",
            "--max_out_of_orderness=5s",
            "--metrics=count",
            f"--output={out / 'metrics'}",
            "--output_format=parquet",
            f"--dead_letter={out / 'dead'}",
            f"--late_output={out / 'late'}",
        ],
    )
    counts = produce_lines(kafka_bootstrap, topic, _lines(), partitions=PARTITIONS)
    assert len(counts) == PARTITIONS

    def committed() -> int:
        return committed_total(kafka_bootstrap, topic, f"g-{topic}", partitions=PARTITIONS)

    wait_until(lambda: _window_files(out / "metrics", 0), what="window [0, 10)'s file", job=job)
    assert _counts(_window_files(out / "metrics", 0)) == 20
    # Each partition gets its events in event-time order: the commit stops at its first event
    # of the open window, so the group has committed exactly the 20 events of [0, 10).
    wait_until(lambda: committed() == 20, what="window [0, 10)'s records committed", job=job)
    assert not _window_files(out / "metrics", 10), "window [10, 20) was written while open"
    return _OpenWindowJob(job, out / "metrics", committed)


def test_cancel_leaves_the_open_window_unwritten_and_its_offsets_uncommitted(
    open_window_job: _OpenWindowJob, wait_until: Callable[..., Any]
) -> None:
    """Cancel: the open window is never written, and its records are not committed."""
    job, metrics, committed = open_window_job
    job.process.send_signal(signal.SIGTERM)
    wait_until(lambda: not job.running(), what="the cancelled job's exit", timeout=120)
    summary = json.loads(job.summary_path.read_text(encoding="utf-8"))
    assert summary["state"] == "CANCELLED"
    assert not _window_files(metrics, 10), "a cancel wrote the open window"
    assert committed() == 20  # a restart from the group reads the open window's 20 again


def test_drain_writes_the_open_window_and_ends_done(open_window_job: _OpenWindowJob) -> None:
    """Drain: the read stops, the open window is written, the job ends DONE, offsets committed."""
    job, metrics, committed = open_window_job
    job.drain()
    summary = job.finish()
    assert summary["state"] == "DONE"
    assert _counts(_window_files(metrics, 10)) == 20
    assert _counts(_window_files(metrics, 0)) == 20
    assert (summary["records_in"], summary["output"]) == (EVENTS, EVENTS)
    assert committed() == EVENTS


def test_prism_job_server_has_no_runner_drain(prism_endpoint: str) -> None:
    """Prism's Job API answers Drain with UNIMPLEMENTED: a drain is headwater's source-level one."""
    with grpc.insecure_channel(prism_endpoint) as channel:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Drain(beam_job_api_pb2.DrainJobRequest(job_id="any"), timeout=30)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        jobs = stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30)  # the server answers
        assert jobs is not None
