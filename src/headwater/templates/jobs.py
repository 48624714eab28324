"""Dataflow jobs: list, show, cancel and drain through ``JobsV1Beta3Client``.

Input: project, region and (for show/cancel/drain) a job id. Output: job summaries
(:func:`headwater.templates.launch.job_summary`: id, name, state, type -- never the job's
parameters or environment). Cancel and drain are ``update_job`` calls that set the job's
``requested_state`` to ``JOB_STATE_CANCELLED`` / ``JOB_STATE_DRAINED``; a drain finishes the
in-flight windows of a streaming job before it stops, a cancel drops them.

>>> list_jobs(project="p", region="europe-west1", active_only=True)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from headwater.templates.launch import clients, job_summary

__all__ = ["cancel_job", "drain_job", "list_jobs", "show_job"]


def _jobs_client(client: Any, endpoint: str | None) -> Any:
    return client if client is not None else clients(endpoint)[1]


def _check(**values: str) -> None:
    for label, value in values.items():
        if not value:
            raise ValueError(f"{label} must not be empty")


def list_jobs(
    *,
    project: str,
    region: str,
    active_only: bool = False,
    name: str | None = None,
    client: Any = None,
    endpoint: str | None = None,
) -> list[dict[str, Any]]:
    """The region's jobs (all pages), newest first as the API returns them."""
    from google.cloud.dataflow_v1beta3 import ListJobsRequest

    _check(project=project, region=region)
    request = ListJobsRequest(
        project_id=project,
        location=region,
        filter=ListJobsRequest.Filter.ACTIVE if active_only else ListJobsRequest.Filter.ALL,
    )
    if name:
        request.name = name
    pager = _jobs_client(client, endpoint).list_jobs(request)
    return [job_summary(job) for job in pager if not name or job.name == name]


def show_job(
    job_id: str, *, project: str, region: str, client: Any = None, endpoint: str | None = None
) -> dict[str, Any]:
    """One job's summary."""
    from google.cloud.dataflow_v1beta3 import GetJobRequest

    _check(job_id=job_id, project=project, region=region)
    job = _jobs_client(client, endpoint).get_job(
        GetJobRequest(project_id=project, job_id=job_id, location=region)
    )
    return job_summary(job)


def _request_state(
    job_id: str, state_name: str, *, project: str, region: str, client: Any, endpoint: str | None
) -> dict[str, Any]:
    from google.cloud.dataflow_v1beta3 import Job, JobState, UpdateJobRequest

    _check(job_id=job_id, project=project, region=region)
    job = _jobs_client(client, endpoint).update_job(
        UpdateJobRequest(
            project_id=project,
            job_id=job_id,
            location=region,
            job=Job(requested_state=getattr(JobState, state_name)),
        )
    )
    return job_summary(job, requested_state=state_name)


def cancel_job(
    job_id: str, *, project: str, region: str, client: Any = None, endpoint: str | None = None
) -> dict[str, Any]:
    """Requests ``JOB_STATE_CANCELLED`` (in-flight data is dropped)."""
    return _request_state(
        job_id,
        "JOB_STATE_CANCELLED",
        project=project,
        region=region,
        client=client,
        endpoint=endpoint,
    )


def drain_job(
    job_id: str, *, project: str, region: str, client: Any = None, endpoint: str | None = None
) -> dict[str, Any]:
    """Requests ``JOB_STATE_DRAINED`` (a streaming job finishes its in-flight data, then stops)."""
    return _request_state(
        job_id,
        "JOB_STATE_DRAINED",
        project=project,
        region=region,
        client=client,
        endpoint=endpoint,
    )
