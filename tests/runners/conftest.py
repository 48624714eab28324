"""Fixtures for runner tests: job services, streaming jobs on Prism, a small known event file.

``job_endpoint`` starts ``python -m apache_beam.runners.portability.local_job_service_main`` on
a free port once per session (the same portable Job API Flink's job server speaks) and stops it
by its own PID; ``prism_endpoint`` does the same with Prism's job server, and
``flink_endpoint`` with Beam's Flink job server and an embedded Apache Flink
(:func:`headwater.testing.flink_server.start_flink`). ``start_stream_job``
runs ``headwater run PIPELINE --runner=PrismRunner ...`` as a subprocess (:class:`StreamJob`:
drain it with Ctrl-C, read its summary; killed by PID at teardown) and ``wait_until`` polls a
condition with a deadline. ``events`` writes a deterministic JSON-lines file whose expected
outcome is computed here in plain Python, independently of the pipelines.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from headwater.testing.broker import free_port, stop_process
from headwater.transforms.progress import last_records_read

BASE_MS = 1_699_999_980_000  # a minute boundary: 2023-11-14T22:13:00Z
UNIQUE = 120
DUPLICATES = 10
USERS = 4


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("localhost", port), timeout=0.5):
            return True
    except OSError:
        return False


def _serve(command: list[str], port: int, log_path: Path, what: str) -> Iterator[str]:
    """Runs a job server until the session ends: ``localhost:PORT`` once it answers."""
    log = log_path.open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start (see {log_path})")
            time.sleep(0.2)
        yield f"localhost:{port}"
    finally:
        stop_process(process, grace=10)
        log.close()


@pytest.fixture(scope="session")
def job_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``localhost:PORT`` of Beam's local job service, running for the whole session."""
    port = free_port()
    module = "apache_beam.runners.portability.local_job_service_main"
    log_path = tmp_path_factory.mktemp("job_service") / "job_service.log"
    yield from _serve(
        [sys.executable, "-m", module, f"--port={port}"], port, log_path, "the local job service"
    )


@dataclass
class Events:
    """The event file and what a correct run makes of it."""

    path: Path
    records_in: int
    unique_ids: set[str]
    dead_letters: int
    metrics: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    """(window_start ISO, user) -> (count, sum of amount) over unique events."""


@pytest.fixture
def events(tmp_path: Path) -> Events:
    """120 events over two 1-minute windows, 10 re-sent copies and one line that is not JSON."""
    lines = []
    metrics: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for i in range(UNIQUE):
        event = {
            "event_id": f"e{i}",
            "event_time": BASE_MS + i * 1_000,
            "user_id": f"u{i % USERS}",
            "amount": float(i),
        }
        lines.append(json.dumps(event))
        start = (BASE_MS + i * 1_000) // 60_000 * 60
        window = dt.datetime.fromtimestamp(start, tz=dt.timezone.utc).isoformat()
        metrics[(window, event["user_id"])][0] += 1
        metrics[(window, event["user_id"])][1] += event["amount"]
    lines.extend(lines[:DUPLICATES])
    lines.append("not json {")
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Events(
        path=path,
        records_in=len(lines),
        unique_ids={f"e{i}" for i in range(UNIQUE)},
        dead_letters=1,
        metrics={key: (int(v[0]), float(v[1])) for key, v in metrics.items()},
    )


# ------------------------------------------------------------------------------------------
# Streaming jobs on Prism: started as `headwater run ...` subprocesses, drained or cancelled


@dataclass
class StreamJob:
    """A ``headwater run PIPELINE --runner=PrismRunner`` process and where it writes."""

    process: subprocess.Popen
    log: Path
    summary_path: Path

    def running(self) -> bool:
        """Whether the job's process is still alive."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the job printed (for failure messages)."""
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def records_read(self) -> int:
        """The count of the job's last progress line (``headwater: N records read, ...``).

        What a test waits for before a drain (which stops the read where it is): the group's
        committed offsets trail the open windows, so they do not say what was read.
        """
        return last_records_read(self.log.read_text(encoding="utf-8", errors="replace"))

    def drain(self) -> None:
        """Ctrl-C: the Kafka read stops, open windows are written, the job ends by itself."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 180.0) -> dict:
        """Waits for the process to exit 0; returns the run summary it wrote."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the job did not end in {timeout:g} s:\n{self.log_tail()}"
            ) from None
        assert code == 0, f"the job exited {code}:\n{self.log_tail()}"
        return json.loads(self.summary_path.read_text(encoding="utf-8"))

    def stop(self) -> None:
        """Kills the process if it is still running (test teardown)."""
        if self.running():
            self.process.kill()
            self.process.wait()


def wait_until(condition, *, what: str, timeout: float = 120.0, job: StreamJob | None = None):
    """Polls ``condition()`` until it returns a truthy value; fails naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if job is not None and not job.running():
            raise AssertionError(f"the job ended before {what}:\n{job.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{job.log_tail()}" if job is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(0.2)


@pytest.fixture
def start_stream_job(tmp_path: Path) -> Iterator:
    """``start_stream_job(pipeline, argv, name)`` runs a streaming job on Prism in a subprocess."""
    jobs: list[StreamJob] = []

    def start(pipeline: str, argv: list[str], name: str = "job") -> StreamJob:
        log = tmp_path / f"{name}.log"
        summary = tmp_path / f"{name}.summary.json"
        command = [
            sys.executable,
            "-m",
            "headwater",
            "run",
            pipeline,
            "--runner=PrismRunner",
            f"--summary_json={summary}",
            *argv,
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        job = StreamJob(process, log, summary)
        jobs.append(job)
        return job

    yield start
    for job in jobs:
        job.stop()


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Any]:
    """:func:`wait_until`, for test modules (the tests folder is not a package)."""
    return wait_until


@pytest.fixture(scope="session")
def prism_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``localhost:PORT`` of Prism running as a job server (the Job API Flink's speaks)."""
    from headwater.runners import find_prism

    port = free_port()
    log_path = tmp_path_factory.mktemp("prism") / "prism.log"
    command = [find_prism(), f"--job_port={port}", "--serve_http=false"]
    yield from _serve(command, port, log_path, "Prism's job server")


@pytest.fixture(scope="session")
def flink_endpoint() -> Iterator[str]:
    """``localhost:PORT`` of Beam's Flink job server with an embedded Apache Flink."""
    from headwater.testing.flink_server import start_flink

    with start_flink() as flink:
        yield flink.endpoint
