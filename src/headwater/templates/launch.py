"""Launching a headwater Flex Template safely from a scheduler.

Input: a pipeline name, the ``gs://`` template spec, launch parameters and runtime environment.
Output: a small JSON-able dict describing the job (never its parameters or environment, which
may hold secrets). Order of operations in :func:`launch`:

1. parameters are checked LOCALLY against the same ``metadata.json`` the template was built
   with (:func:`headwater.templates.metadata.check_parameters`): unknown names, regexes, enum
   options, required -- a ``ValueError`` naming the parameter, before any API call;
2. unless ``update`` or ``validate_only``, the active jobs of the region with the same name are
   listed; if one exists it is returned (``"launched": false``) instead of starting a second job;
3. ``FlexTemplatesServiceClient.launch_flex_template`` with a ``LaunchFlexTemplateRequest``;
4. with ``wait="running"`` the job is polled (``JobsV1Beta3Client.get_job``) until RUNNING (or a
   successful terminal state); with ``wait="done"`` until DONE -- but never for a streaming job,
   which is done waiting once RUNNING. FAILED or CANCELLED raises :class:`JobFailedError` with
   the state and the job's error messages; running out of ``timeout`` raises
   :class:`JobTimeoutError`.

Nothing is printed here; ``headwater template launch`` prints the returned dict as JSON.

>>> launch("stream_etl", project="p", region="europe-west1",  # doctest: +SKIP
...        template_spec="gs://b/stream_etl.json", job_name="etl",
...        params={"output": "gs://b/out", "dead_letter": "gs://b/dlq"}, wait="done")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from headwater.templates.metadata import check_parameters, is_unbounded_launch

__all__ = [
    "ACTIVE_STATES",
    "JobFailedError",
    "JobTimeoutError",
    "airflow_body",
    "clients",
    "job_summary",
    "launch",
    "runtime_environment",
]

#: Job states in which a job with the same name blocks a new launch.
ACTIVE_STATES = frozenset(
    {
        "JOB_STATE_STOPPED",
        "JOB_STATE_RUNNING",
        "JOB_STATE_DRAINING",
        "JOB_STATE_PENDING",
        "JOB_STATE_CANCELLING",
        "JOB_STATE_QUEUED",
        "JOB_STATE_RESOURCE_CLEANING_UP",
        "JOB_STATE_PAUSING",
        "JOB_STATE_PAUSED",
    }
)
_FAILED = frozenset({"JOB_STATE_FAILED", "JOB_STATE_CANCELLED"})
_ENDED = frozenset({"JOB_STATE_DONE", "JOB_STATE_DRAINED", "JOB_STATE_UPDATED"})
_WAITS = ("running", "done")


class JobFailedError(RuntimeError):
    """A launched job ended FAILED or CANCELLED; ``job`` is its summary, ``error`` its error."""

    def __init__(self, job: dict[str, Any], error: str):
        self.job = job
        self.error = error
        super().__init__(
            f"job {job.get('job_id')} ({job.get('job_name')}) {job.get('state')}: {error}"
        )


class JobTimeoutError(TimeoutError):
    """The job did not reach the awaited state within the timeout; ``job`` is its summary."""

    def __init__(self, job: dict[str, Any], wait: str, timeout: float):
        self.job = job
        super().__init__(
            f"job {job.get('job_id')} ({job.get('job_name')}) still {job.get('state')} after "
            f"{timeout:g}s waiting for {wait}"
        )


def clients(endpoint: str | None = None) -> tuple[Any, Any, Any]:
    """``(FlexTemplatesServiceClient, JobsV1Beta3Client, MessagesV1Beta3Client)``.

    ``endpoint=None`` uses Google's endpoint and application-default credentials.
    ``insecure://HOST:PORT`` talks plaintext gRPC to a local server without credentials (tests,
    emulators); any other value is the API endpoint (``HOST[:PORT]``, TLS).
    """
    from google.cloud import dataflow_v1beta3 as df

    if endpoint is None:
        return df.FlexTemplatesServiceClient(), df.JobsV1Beta3Client(), df.MessagesV1Beta3Client()
    if endpoint.startswith("insecure://"):
        import grpc
        from google.cloud.dataflow_v1beta3.services.flex_templates_service.transports import (
            FlexTemplatesServiceGrpcTransport,
        )
        from google.cloud.dataflow_v1beta3.services.jobs_v1_beta3.transports import (
            JobsV1Beta3GrpcTransport,
        )
        from google.cloud.dataflow_v1beta3.services.messages_v1_beta3.transports import (
            MessagesV1Beta3GrpcTransport,
        )

        channel = grpc.insecure_channel(endpoint.removeprefix("insecure://"))
        return (
            df.FlexTemplatesServiceClient(
                transport=FlexTemplatesServiceGrpcTransport(channel=channel)
            ),
            df.JobsV1Beta3Client(transport=JobsV1Beta3GrpcTransport(channel=channel)),
            df.MessagesV1Beta3Client(transport=MessagesV1Beta3GrpcTransport(channel=channel)),
        )
    options = {"api_endpoint": endpoint}
    return (
        df.FlexTemplatesServiceClient(client_options=options),
        df.JobsV1Beta3Client(client_options=options),
        df.MessagesV1Beta3Client(client_options=options),
    )


def _bool(text: str, key: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"environment {key!r}: {text!r} is not a boolean")


def runtime_environment(environment: Mapping[str, Any] | None) -> Any:
    """A ``FlexTemplateRuntimeEnvironment`` from a dict (snake_case keys, as the API names them).

    String values are converted to the field's type (ints, booleans, enum names, comma-separated
    lists, ``k=v,k=v`` label maps); ``ValueError`` names an unknown key or a bad value.
    """
    from google.cloud.dataflow_v1beta3 import FlexTemplateRuntimeEnvironment

    fields = FlexTemplateRuntimeEnvironment.meta.fields
    values: dict[str, Any] = {}
    for key, value in (environment or {}).items():
        field = fields.get(key)
        if field is None:
            raise ValueError(f"unknown environment key {key!r}; known: {', '.join(sorted(fields))}")
        if isinstance(value, str):
            try:
                if field.message is not None:  # a map (additional_user_labels)
                    value = dict(item.split("=", 1) for item in value.split(",") if item)
                elif field.repeated:
                    value = [item for item in value.split(",") if item]
                elif field.enum is not None:
                    value = field.enum[value]
                elif field.proto_type == 8:  # BOOL
                    value = _bool(value, key)
                elif field.proto_type in (3, 4, 5, 13):  # INT64, UINT64, INT32, UINT32
                    value = int(value)
            except (KeyError, ValueError) as exc:
                raise ValueError(f"environment {key!r}: bad value {value!r} ({exc})") from None
        values[key] = value
    try:
        return FlexTemplateRuntimeEnvironment(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"environment: {exc}") from None


def job_summary(job: Any, **extra: Any) -> dict[str, Any]:
    """The printable facts of a ``Job`` (no parameters, no environment: they may hold secrets)."""
    from google.cloud.dataflow_v1beta3 import JobState, JobType

    created = job.create_time
    return {
        "job_id": job.id,
        "job_name": job.name,
        "project": job.project_id,
        "region": job.location,
        "state": JobState(job.current_state).name,
        "type": JobType(job.type_).name,
        "create_time": created.isoformat() if created else None,
        **extra,
    }


def _job_error(messages_client: Any, project: str, region: str, job_id: str) -> str:
    from google.api_core import exceptions
    from google.cloud.dataflow_v1beta3 import JobMessageImportance, ListJobMessagesRequest

    try:
        pager = messages_client.list_job_messages(
            ListJobMessagesRequest(
                project_id=project,
                job_id=job_id,
                location=region,
                minimum_importance=JobMessageImportance.JOB_MESSAGE_ERROR,
            )
        )
        texts = [m.message_text for m in pager if m.message_text]
    except exceptions.GoogleAPICallError as exc:
        return f"(the job's error messages could not be read: {exc.message})"
    return " | ".join(texts[-3:]) if texts else "(no error message reported)"


def _active_job(jobs_client: Any, project: str, region: str, job_name: str) -> Any | None:
    from google.cloud.dataflow_v1beta3 import JobState, ListJobsRequest

    pager = jobs_client.list_jobs(
        ListJobsRequest(
            project_id=project,
            location=region,
            filter=ListJobsRequest.Filter.ACTIVE,
            name=job_name,
        )
    )
    for job in pager:
        if job.name == job_name and JobState(job.current_state).name in ACTIVE_STATES:
            return job
    return None


def _wait(
    job: Any,
    *,
    wait: str,
    project: str,
    region: str,
    jobs_client: Any,
    messages_client: Any,
    poll_interval: float,
    timeout: float,
    sleep: Callable[[float], None],
    extra: dict[str, Any],
) -> Any:
    from google.cloud.dataflow_v1beta3 import GetJobRequest, JobState, JobType

    deadline = time.monotonic() + timeout
    while True:
        state = JobState(job.current_state).name
        streaming = JobType(job.type_).name == "JOB_TYPE_STREAMING"
        if state in _FAILED:
            error = _job_error(messages_client, project, region, job.id)
            raise JobFailedError(job_summary(job, **extra), error)
        if state in _ENDED:
            return job
        if state == "JOB_STATE_RUNNING" and (wait == "running" or streaming):
            return job
        if time.monotonic() >= deadline:
            raise JobTimeoutError(job_summary(job, **extra), wait, timeout)
        sleep(poll_interval)
        job = jobs_client.get_job(GetJobRequest(project_id=project, job_id=job.id, location=region))


def _launch_parameter(
    name: str,
    *,
    template_spec: str,
    job_name: str,
    params: Mapping[str, Any],
    environment: Mapping[str, Any] | None,
    update: bool,
) -> Any:
    from google.cloud.dataflow_v1beta3 import LaunchFlexTemplateParameter

    if not template_spec.startswith("gs://"):
        raise ValueError(f"template_spec {template_spec!r} must be a gs:// path")
    if not job_name:
        raise ValueError("job_name must not be empty")
    return LaunchFlexTemplateParameter(
        job_name=job_name,
        container_spec_gcs_path=template_spec,
        parameters=check_parameters(name, params),
        environment=runtime_environment(environment),
        update=update,
    )


def launch(
    name: str,
    *,
    project: str,
    region: str,
    template_spec: str,
    job_name: str,
    params: Mapping[str, Any],
    environment: Mapping[str, Any] | None = None,
    validate_only: bool = False,
    update: bool = False,
    client: Any = None,
    jobs_client: Any = None,
    messages_client: Any = None,
    endpoint: str | None = None,
    wait: str | None = None,
    poll_interval: float = 10.0,
    timeout: float = 1800.0,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Launches pipeline ``name``'s Flex Template; returns the job's summary (see module doc).

    ``client``/``jobs_client``/``messages_client`` default to :func:`clients` of ``endpoint``.
    The summary carries ``launched`` (false when an active job of that name was returned
    instead), ``validate_only`` and ``update``.
    """
    from google.cloud.dataflow_v1beta3 import LaunchFlexTemplateRequest

    if wait not in (None, *_WAITS):
        raise ValueError(f"wait {wait!r} must be one of {', '.join(_WAITS)}")
    for label, value in (("project", project), ("region", region)):
        if not value:
            raise ValueError(f"{label} must not be empty")
    if poll_interval < 0 or timeout <= 0:
        raise ValueError(f"poll_interval {poll_interval!r} / timeout {timeout!r} out of range")
    parameter = _launch_parameter(
        name,
        template_spec=template_spec,
        job_name=job_name,
        params=params,
        environment=environment,
        update=update,
    )
    if wait == "done" and is_unbounded_launch(name, parameter.parameters):
        raise ValueError(
            "wait 'done' on an unbounded Kafka read (a streaming job) would never return; "
            "use wait 'running'"
        )
    if client is None or jobs_client is None or messages_client is None:
        made = clients(endpoint)
        client = client or made[0]
        jobs_client = jobs_client or made[1]
        messages_client = messages_client or made[2]
    extra = {"validate_only": validate_only, "update": update}
    job = None
    if not (update or validate_only):
        existing = _active_job(jobs_client, project, region, job_name)
        if existing is not None:
            extra["launched"] = False
            job = existing
    if job is None:
        response = client.launch_flex_template(
            LaunchFlexTemplateRequest(
                project_id=project,
                location=region,
                launch_parameter=parameter,
                validate_only=validate_only,
            )
        )
        extra["launched"] = not validate_only
        job = response.job
    if wait and not validate_only:
        job = _wait(
            job,
            wait=wait,
            project=project,
            region=region,
            jobs_client=jobs_client,
            messages_client=messages_client,
            poll_interval=poll_interval,
            timeout=timeout,
            sleep=sleep,
            extra=extra,
        )
    return job_summary(job, **extra)


def airflow_body(
    name: str,
    *,
    params: Mapping[str, Any],
    job_name: str,
    template_spec: str,
    environment: Mapping[str, Any] | None = None,
    update: bool = False,
) -> dict[str, Any]:
    """The ``body`` of Airflow's ``DataflowStartFlexTemplateOperator`` for pipeline ``name``.

    The parameters go through the same local check as :func:`launch`; the result is the REST
    ``LaunchFlexTemplateRequest`` body (camelCase), ``{"launchParameter": {...}}``.

    >>> airflow_body("stream_etl", job_name="etl", template_spec="gs://b/t.json",
    ...              params={"output": "gs://b/o", "dead_letter": "gs://b/d"}
    ...              )["launchParameter"]["containerSpecGcsPath"]
    'gs://b/t.json'
    """
    from google.cloud.dataflow_v1beta3 import LaunchFlexTemplateParameter
    from google.protobuf.json_format import MessageToDict

    parameter = _launch_parameter(
        name,
        template_spec=template_spec,
        job_name=job_name,
        params=params,
        environment=environment,
        update=update,
    )
    return {"launchParameter": MessageToDict(LaunchFlexTemplateParameter.pb(parameter))}
