"""Dataflow submission of every pipeline, offline: a dry run, then the real CreateJob request.

``--dry_run=True --no_auth`` builds the runner-API proto and the staged package (setup.py ->
``workflow.tar.gz``) without any call. For what a dry run does not show (the job's environment,
experiments, packages, ``replaceJobId``), ``--dataflow_endpoint=http://localhost:PORT`` sends the
real CreateJob REST request to a local server that records it. Google Cloud Storage cannot be
reached, so those tests patch only the GCS calls: ``stage_file`` (the upload, recorded here) and
the bucket's soft-delete check.
"""

from __future__ import annotations

import fcntl
import http.server
import io
import json
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.io.gcp import gcsio
from apache_beam.options.pipeline_options import DebugOptions, PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient
from google.cloud import dataflow_v1beta3 as dataflow

from headwater import runners
from headwater.pipelines import kafka_to_kafka, replay_dead_letters, stream_etl, windowed_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_sdist_build_at_a_time() -> Iterator[None]:
    """Each submission builds an sdist of this checkout (Beam's stager runs setup.py in it); two
    builds at once (make test's two processes) share its build/ and egg-info folders and one
    fails. The tests of this module take turns."""
    with open(Path(tempfile.gettempdir()) / "headwater-test-sdist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


GCP = [
    "--runner=DataflowRunner",
    "--project=hw-project",
    "--region=europe-west1",
    "--temp_location=gs://hw-bucket/tmp",
    "--no_auth",
    "--requirements_cache=skip",
]
FILES = ["--input=gs://hw-bucket/in/*.jsonl", "--output=gs://hw-bucket/out"]
PIPELINES = {
    "windowed_metrics": (windowed_metrics, [*FILES, "--dead_letter=gs://hw-bucket/dlq"]),
    "stream_etl": (stream_etl, [*FILES, "--dead_letter=gs://hw-bucket/dlq"]),
    "kafka_to_kafka": (
        kafka_to_kafka,
        [
            "--source=kafka",
            "--bootstrap_servers=broker:9092",
            "--topic=events",
            "--output_topic=clean",
            "--dlq_topic=dlq",
        ],
    ),
    "replay_dead_letters": (
        replay_dead_letters,
        [
            "--dead_letter_input=gs://hw-bucket/dlq/*.jsonl",
            "--target=windowed_metrics",
            "--output=gs://hw-bucket/replay/out",
            "--dead_letter=gs://hw-bucket/replay/dlq",
        ],
    ),
}


def _submit(module: Any, argv: list[str], *, streaming: bool = False) -> Any:
    """What ``headwater run`` does before printing the job id."""
    options = PipelineOptions(argv)
    runners.prepare(options, streaming=streaming)
    p = beam.Pipeline(options=options)
    module.build(p, options)
    return p.run()


def _staged_files(proto: beam_runner_api_pb2.Pipeline) -> dict[str, str]:
    """Staged name -> local file of every artifact of every environment."""
    staged = {}
    for env in proto.components.environments.values():
        for dep in env.dependencies:
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                dep.role_payload
            ).staged_name
            staged[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
    return staged


def _tar_members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def _has_headwater(members: list[str]) -> bool:
    return any(m.endswith("src/headwater/pipelines/windowed_metrics.py") for m in members) and any(
        m.endswith("/setup.py") for m in members
    )


@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("streaming", [False, True])
def test_dry_run_stages_headwater_and_sets_streaming_flags(name, streaming):
    """Each pipeline dry-runs offline: setup.py staged as workflow.tar.gz, mode flags right."""
    module, flags = PIPELINES[name]
    if name == "kafka_to_kafka" and not streaming:
        flags = [*flags, "--stop_at_end"]
    result = _submit(module, [*GCP, "--dry_run=True", *flags], streaming=streaming)
    staged = _staged_files(result.job.proto_pipeline)
    assert "workflow.tar.gz" in staged
    with open(staged["workflow.tar.gz"], "rb") as handle:
        assert _has_headwater(_tar_members(handle.read()))
    job_type = dataflow.JobType.JOB_TYPE_STREAMING if streaming else dataflow.JobType.JOB_TYPE_BATCH
    assert result.job.proto.type_ == job_type
    experiments = result.job.options.view_as(DebugOptions).experiments or []
    assert ("enable_streaming_engine" in experiments) == streaming
    labels = {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}
    assert labels  # the full graph is in the proto


def test_dry_run_unbounded_kafka_is_a_streaming_job():
    """kafka_to_kafka without --stop_at_end is submitted as a streaming job by itself."""
    module, flags = PIPELINES["kafka_to_kafka"]
    result = _submit(module, [*GCP, "--dry_run=True", *flags])
    assert result.job.proto.type_ == dataflow.JobType.JOB_TYPE_STREAMING
    assert "enable_streaming_engine" in result.job.options.view_as(DebugOptions).experiments


def test_dry_run_step_labels_are_stable_for_update():
    """Two builds of windowed_metrics have the same step labels (what --update matches on)."""
    module, flags = PIPELINES["windowed_metrics"]

    def labels() -> set[str]:
        result = _submit(module, [*GCP, "--dry_run=True", *flags], streaming=True)
        return {t.unique_name for t in result.job.proto_pipeline.components.transforms.values()}

    first = labels()
    assert first == labels()
    assert any(label.startswith("WindowedMetrics/Process/") for label in first)


# ------------------------------------------------------------------------------------------
# The real CreateJob request, sent to a local server


class _FakeDataflow(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, Any]]
    running: dict[str, str]

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # ListJobs, for --update
        self.requests.append(("GET", self.path, None))
        jobs = [
            {"id": job_id, "name": name, "currentState": "JOB_STATE_RUNNING"}
            for name, job_id in self.running.items()
        ]
        self._reply({"jobs": jobs})

    def do_POST(self) -> None:  # CreateJob
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(("POST", self.path, body))
        self._reply({"id": "2026-01-01_00_00_00-123", "name": body.get("name")})

    def log_message(self, *args: Any) -> None:
        pass


class _Dataflow:
    def __init__(self, server: http.server.ThreadingHTTPServer, handler: type[_FakeDataflow]):
        self.endpoint = f"http://localhost:{server.server_address[1]}"
        self.requests = handler.requests
        self.running = handler.running
        self.uploads: dict[str, bytes] = {}

    def create_job(self) -> tuple[str, dict[str, Any]]:
        [(path, body)] = [(p, b) for method, p, b in self.requests if method == "POST"]
        return path, body


@pytest.fixture
def fake_dataflow(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Dataflow]:
    """A local Dataflow REST endpoint recording requests; GCS uploads recorded in memory."""
    handler = type("Handler", (_FakeDataflow,), {"requests": [], "running": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake = _Dataflow(server, handler)

    def stage_file(self, folder, name, stream, mime_type=None, total_size=None):
        fake.uploads[folder.rstrip("/") + "/" + name] = stream.read()

    monkeypatch.setattr(apiclient.DataflowApplicationClient, "stage_file", stage_file)
    monkeypatch.setattr(gcsio.GcsIO, "is_soft_delete_enabled", lambda self, path: False)
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def _gcs(location: str) -> str:
    return "gs://" + location.removeprefix("storage.googleapis.com/")


@pytest.mark.parametrize("name", ["windowed_metrics", "stream_etl"])
def test_create_job_request_of_a_streaming_submission(name, fake_dataflow):
    """The CreateJob request: name, streaming type, streaming engine, headwater's package."""
    module, flags = PIPELINES[name]
    result = _submit(
        module,
        [*GCP, f"--dataflow_endpoint={fake_dataflow.endpoint}", f"--job_name=hw-{name}", *flags],
        streaming=True,
    )
    assert result.job_id() == "2026-01-01_00_00_00-123"
    path, job = fake_dataflow.create_job()
    assert path.startswith("/v1b3/projects/hw-project/locations/europe-west1/jobs")
    assert job["name"] == f"hw-{name}"
    assert job["type"] == dataflow.JobType.JOB_TYPE_STREAMING.value
    environment = job["environment"]
    assert "enable_streaming_engine" in environment["experiments"]
    assert environment["tempStoragePrefix"].startswith("storage.googleapis.com/hw-bucket/tmp/")
    packages = {p["name"]: p["location"] for p in environment["workerPools"][0]["packages"]}
    assert _has_headwater(_tar_members(fake_dataflow.uploads[_gcs(packages["workflow.tar.gz"])]))
    options = environment["sdkPipelineOptions"]["options"]
    assert options["setup_file"] == runners.find_setup_file()
    assert options["streaming"] is True


def test_create_job_request_of_a_batch_submission(fake_dataflow):
    """A batch submission is a batch job without the streaming engine experiment."""
    module, flags = PIPELINES["windowed_metrics"]
    _submit(module, [*GCP, f"--dataflow_endpoint={fake_dataflow.endpoint}", *flags])
    _, job = fake_dataflow.create_job()
    assert job["type"] == dataflow.JobType.JOB_TYPE_BATCH.value
    assert "enable_streaming_engine" not in job["environment"]["experiments"]


def test_update_replaces_the_running_job_with_the_transform_name_mapping(fake_dataflow):
    """--update finds the running job by name and sends replaceJobId and the mapping."""
    fake_dataflow.running["hw-metrics"] = "2025-12-31_old-job"
    mapping = {"WindowedMetrics/Process/Deduplicate": "WindowedMetrics/Process/DedupById"}
    module, flags = PIPELINES["windowed_metrics"]
    _submit(
        module,
        [
            *GCP,
            f"--dataflow_endpoint={fake_dataflow.endpoint}",
            "--job_name=hw-metrics",
            "--update",
            f"--transform_name_mapping={json.dumps(mapping)}",
            *flags,
        ],
        streaming=True,
    )
    assert [m for m, _, _ in fake_dataflow.requests] == ["GET", "POST"]
    _, job = fake_dataflow.create_job()
    assert job["replaceJobId"] == "2025-12-31_old-job"
    assert job["transformNameMapping"] == mapping
