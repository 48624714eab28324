"""A local fake of the Dataflow API (FlexTemplatesService, JobsV1Beta3, MessagesV1Beta3).

A real gRPC server on 127.0.0.1 whose generic handlers are built from
``google.cloud.dataflow_v1beta3``'s own request/response types, so the REAL clients (through
``--endpoint insecure://HOST:PORT``) send real requests that the tests can compare exactly.
Jobs follow a per-job script of states: each ``GetJob`` advances one step.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from google.cloud import dataflow_v1beta3 as df

_ACTIVE = {
    df.JobState.JOB_STATE_RUNNING,
    df.JobState.JOB_STATE_PENDING,
    df.JobState.JOB_STATE_QUEUED,
    df.JobState.JOB_STATE_DRAINING,
    df.JobState.JOB_STATE_CANCELLING,
}


class FakeDataflow:
    """Records every request; serves jobs whose states follow ``script``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, object]] = []
        self.jobs: dict[str, df.Job] = {}
        self.scripts: dict[str, list[df.JobState]] = {}
        self.messages: dict[str, list[str]] = {}
        self.launch_states: list[df.JobState] = [df.JobState.JOB_STATE_QUEUED]
        self.launch_type = df.JobType.JOB_TYPE_BATCH
        self.launch_error: str | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.endpoint = ""

    # -- helpers for tests ------------------------------------------------------------------
    def add_job(
        self,
        name: str,
        state: df.JobState,
        *,
        job_type: df.JobType = df.JobType.JOB_TYPE_STREAMING,
        project: str = "proj",
        region: str = "europe-west1",
    ) -> df.Job:
        """Adds an existing job (as if launched earlier)."""
        job = df.Job(
            id=f"existing-{next(self._ids)}",
            name=name,
            project_id=project,
            location=region,
            current_state=state,
            type_=job_type,
        )
        self.jobs[job.id] = job
        return job

    def calls(self, method: str) -> list:
        """The requests received for ``method``."""
        return [request for name, request in self.requests if name == method]

    # -- handlers ---------------------------------------------------------------------------
    def _record(self, method: str, request: object) -> None:
        with self._lock:
            self.requests.append((method, request))

    def launch(
        self, request: df.LaunchFlexTemplateRequest, context
    ) -> df.LaunchFlexTemplateResponse:
        self._record("LaunchFlexTemplate", request)
        if self.launch_error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self.launch_error)
        if request.validate_only:
            return df.LaunchFlexTemplateResponse()
        states = list(self.launch_states)
        job = df.Job(
            id=f"2026-11-22_job-{next(self._ids)}",
            name=request.launch_parameter.job_name,
            project_id=request.project_id,
            location=request.location,
            current_state=states.pop(0),
            type_=self.launch_type,
        )
        self.jobs[job.id] = job
        self.scripts[job.id] = states
        return df.LaunchFlexTemplateResponse(job=job)

    def get_job(self, request: df.GetJobRequest, context) -> df.Job:
        self._record("GetJob", request)
        job = self.jobs.get(request.job_id)
        if job is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"job {request.job_id} not found")
        script = self.scripts.get(job.id)
        if script:
            job.current_state = script.pop(0)
        return job

    def list_jobs(self, request: df.ListJobsRequest, context) -> df.ListJobsResponse:
        self._record("ListJobs", request)
        jobs = [
            job
            for job in self.jobs.values()
            if request.filter != df.ListJobsRequest.Filter.ACTIVE or job.current_state in _ACTIVE
        ]
        return df.ListJobsResponse(jobs=jobs)

    def update_job(self, request: df.UpdateJobRequest, context) -> df.Job:
        self._record("UpdateJob", request)
        job = self.jobs[request.job_id]
        job.requested_state = request.job.requested_state
        job.current_state = (
            df.JobState.JOB_STATE_DRAINING
            if request.job.requested_state == df.JobState.JOB_STATE_DRAINED
            else df.JobState.JOB_STATE_CANCELLING
        )
        return job

    def list_messages(
        self, request: df.ListJobMessagesRequest, context
    ) -> df.ListJobMessagesResponse:
        self._record("ListJobMessages", request)
        return df.ListJobMessagesResponse(
            job_messages=[
                df.JobMessage(
                    message_text=text,
                    message_importance=df.JobMessageImportance.JOB_MESSAGE_ERROR,
                )
                for text in self.messages.get(request.job_id, [])
            ]
        )


def _unary(fn, request_type, response_type):
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=request_type.deserialize,
        response_serializer=response_type.serialize,
    )


@pytest.fixture
def fake_dataflow() -> Iterator[FakeDataflow]:
    """A running fake Dataflow API; ``fake.endpoint`` is ``insecure://127.0.0.1:PORT``."""
    fake = FakeDataflow()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "google.dataflow.v1beta3.FlexTemplatesService",
                {
                    "LaunchFlexTemplate": _unary(
                        fake.launch, df.LaunchFlexTemplateRequest, df.LaunchFlexTemplateResponse
                    )
                },
            ),
            grpc.method_handlers_generic_handler(
                "google.dataflow.v1beta3.JobsV1Beta3",
                {
                    "GetJob": _unary(fake.get_job, df.GetJobRequest, df.Job),
                    "ListJobs": _unary(fake.list_jobs, df.ListJobsRequest, df.ListJobsResponse),
                    "UpdateJob": _unary(fake.update_job, df.UpdateJobRequest, df.Job),
                },
            ),
            grpc.method_handlers_generic_handler(
                "google.dataflow.v1beta3.MessagesV1Beta3",
                {
                    "ListJobMessages": _unary(
                        fake.list_messages, df.ListJobMessagesRequest, df.ListJobMessagesResponse
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    fake.endpoint = f"insecure://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.stop(grace=None)
