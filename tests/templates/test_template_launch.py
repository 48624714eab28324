"""``headwater template launch`` and :func:`launch` against a local fake of the Dataflow API."""

from __future__ import annotations

import json

import pytest
from google.cloud import dataflow_v1beta3 as df

from headwater.templates.commands import run_command
from headwater.templates.launch import JobFailedError, airflow_body, launch

SPEC = "gs://bucket/templates/pipeline.json"
STATE = df.JobState


def _launch_argv(fake, pipeline: str, *extra: str) -> list[str]:
    return [
        "template",
        "launch",
        pipeline,
        f"--template_spec={SPEC}",
        "--project=proj",
        "--region=europe-west1",
        "--job_name=nightly",
        f"--endpoint={fake.endpoint}",
        "--poll_interval=0",
        *extra,
    ]


def _out(capsys) -> tuple[dict, str]:
    captured = capsys.readouterr()
    return (json.loads(captured.out) if captured.out else {}), captured.err


@pytest.mark.parametrize(
    ("pipeline", "params", "expected"),
    [
        (
            "windowed_metrics",
            [
                "--param=input=gs://bucket/events/*.jsonl",
                "--param=output=gs://bucket/metrics",
                "--param=dead_letter=gs://bucket/dlq",
                "--param=window=sliding:10m/1m",
                "--param=stop_at_end=true",
                "--param=metrics=count,sum:amount",
            ],
            {
                "input": "gs://bucket/events/*.jsonl",
                "output": "gs://bucket/metrics",
                "dead_letter": "gs://bucket/dlq",
                "window": "sliding:10m/1m",
                "stop_at_end": "true",
                "metrics": "count,sum:amount",
            },
        ),
        (
            "stream_etl",
            [
                "--param=source=kafka",
                "--param=bootstrap_servers=broker-1:9092,broker-2:9092",
                "--param=topic=events",
                "--param=output=gs://bucket/etl",
                "--param=dead_letter=gs://bucket/dlq",
                "--param=kafka_config=security.protocol=SASL_SSL",
                "--param=kafka_config=sasl.mechanism=PLAIN",
            ],
            {
                "source": "kafka",
                "bootstrap_servers": "broker-1:9092,broker-2:9092",
                "topic": "events",
                "output": "gs://bucket/etl",
                "dead_letter": "gs://bucket/dlq",
                "kafka_config": '["security.protocol=SASL_SSL","sasl.mechanism=PLAIN"]',
            },
        ),
    ],
)
def test_launch_sends_the_exact_request(fake_dataflow, capsys, pipeline, params, expected):
    """The CLI sends one LaunchFlexTemplateRequest with string parameters and the environment."""
    argv = _launch_argv(
        fake_dataflow,
        pipeline,
        *params,
        "--env=max_workers=5",
        "--env=temp_location=gs://bucket/tmp",
        "--env=enable_streaming_engine=true",
        "--env=additional_user_labels=team=data",
    )
    assert run_command(argv) == 0
    printed, _ = _out(capsys)
    [request] = fake_dataflow.calls("LaunchFlexTemplate")
    assert request == df.LaunchFlexTemplateRequest(
        project_id="proj",
        location="europe-west1",
        launch_parameter=df.LaunchFlexTemplateParameter(
            job_name="nightly",
            container_spec_gcs_path=SPEC,
            parameters=expected,
            environment=df.FlexTemplateRuntimeEnvironment(
                max_workers=5,
                temp_location="gs://bucket/tmp",
                enable_streaming_engine=True,
                additional_user_labels={"team": "data"},
            ),
            update=False,
        ),
        validate_only=False,
    )
    assert printed["job_id"] == next(iter(fake_dataflow.jobs))
    assert printed["launched"] is True
    assert printed["state"] == "JOB_STATE_QUEUED"


def test_bad_parameter_refused_locally(fake_dataflow, capsys):
    """A value failing the parameter's regex exits 2 naming it; nothing reaches the API."""
    argv = _launch_argv(
        fake_dataflow,
        "windowed_metrics",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--param=window=hourly",
    )
    assert run_command(argv) == 2
    _, err = _out(capsys)
    assert "'window'" in err
    assert "hourly" in err
    assert len(err.strip().splitlines()) == 1
    assert fake_dataflow.requests == []


def test_unknown_parameter_refused_locally(fake_dataflow, capsys):
    """An unknown parameter exits 2 naming it; nothing reaches the API."""
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--param=outptu_shards=3",
    )
    assert run_command(argv) == 2
    assert "'outptu_shards'" in _out(capsys)[1]
    assert fake_dataflow.requests == []


def test_missing_required_parameter_refused_locally(fake_dataflow, capsys):
    """A required parameter left out exits 2 naming it."""
    argv = _launch_argv(fake_dataflow, "stream_etl", "--param=output=gs://b/o")
    assert run_command(argv) == 2
    assert "'dead_letter' is required" in _out(capsys)[1]
    assert fake_dataflow.requests == []


def test_unknown_environment_key_refused_locally(fake_dataflow, capsys):
    """An unknown runtime-environment key exits 2 naming it."""
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--env=max_wrokers=3",
    )
    assert run_command(argv) == 2
    assert "'max_wrokers'" in _out(capsys)[1]
    assert fake_dataflow.requests == []


def test_wait_running_follows_queued_to_running(fake_dataflow, capsys):
    """--wait running polls GetJob through QUEUED until RUNNING, then exits 0."""
    fake_dataflow.launch_type = df.JobType.JOB_TYPE_STREAMING
    fake_dataflow.launch_states = [
        STATE.JOB_STATE_QUEUED,
        STATE.JOB_STATE_QUEUED,
        STATE.JOB_STATE_PENDING,
        STATE.JOB_STATE_RUNNING,
    ]
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=source=kafka",
        "--param=bootstrap_servers=b:9092",
        "--param=topic=events",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--wait=running",
    )
    assert run_command(argv) == 0
    printed, _ = _out(capsys)
    assert printed["state"] == "JOB_STATE_RUNNING"
    gets = fake_dataflow.calls("GetJob")
    assert len(gets) == 3
    assert {(g.project_id, g.location, g.job_id) for g in gets} == {
        ("proj", "europe-west1", printed["job_id"])
    }


def test_wait_reports_failed_job_with_its_error(fake_dataflow, capsys):
    """A job going QUEUED -> FAILED exits 1, prints the job and shows its error."""
    fake_dataflow.launch_states = [STATE.JOB_STATE_QUEUED, STATE.JOB_STATE_FAILED]
    argv = _launch_argv(
        fake_dataflow,
        "windowed_metrics",
        "--param=input=gs://b/in/*.jsonl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--wait=done",
    )
    job_id = "2026-11-22_job-1"
    fake_dataflow.messages[job_id] = ["Workflow failed. Causes: ModuleNotFoundError: nope"]
    assert run_command(argv) == 1
    printed, err = _out(capsys)
    assert printed["state"] == "JOB_STATE_FAILED"
    assert printed["job_id"] == job_id
    assert "JOB_STATE_FAILED" in err
    assert "ModuleNotFoundError: nope" in err
    [messages] = fake_dataflow.calls("ListJobMessages")
    assert messages.minimum_importance == df.JobMessageImportance.JOB_MESSAGE_ERROR


def test_wait_done_polls_a_batch_job_to_done(fake_dataflow):
    """wait='done' keeps polling a batch job past RUNNING until DONE."""
    fake_dataflow.launch_states = [
        STATE.JOB_STATE_QUEUED,
        STATE.JOB_STATE_RUNNING,
        STATE.JOB_STATE_RUNNING,
        STATE.JOB_STATE_DONE,
    ]
    job = launch(
        "windowed_metrics",
        project="proj",
        region="europe-west1",
        template_spec=SPEC,
        job_name="backfill",
        params={"input": "gs://b/*.jsonl", "output": "gs://b/o", "dead_letter": "gs://b/d"},
        endpoint=fake_dataflow.endpoint,
        wait="done",
        poll_interval=0,
    )
    assert job["state"] == "JOB_STATE_DONE"
    assert len(fake_dataflow.calls("GetJob")) == 3


def test_wait_done_never_waits_past_running_for_a_streaming_job(fake_dataflow):
    """A job the API reports as STREAMING is done waiting once RUNNING, even with wait='done'."""
    fake_dataflow.launch_type = df.JobType.JOB_TYPE_STREAMING
    fake_dataflow.launch_states = [STATE.JOB_STATE_QUEUED, STATE.JOB_STATE_RUNNING]
    job = launch(
        "stream_etl",
        project="proj",
        region="europe-west1",
        template_spec=SPEC,
        job_name="etl",
        params={"input": "gs://b/*.jsonl", "output": "gs://b/o", "dead_letter": "gs://b/d"},
        endpoint=fake_dataflow.endpoint,
        wait="done",
        poll_interval=0,
    )
    assert job["state"] == "JOB_STATE_RUNNING"
    assert len(fake_dataflow.calls("GetJob")) == 1


def test_wait_done_refused_for_an_unbounded_launch(fake_dataflow, capsys):
    """--wait done with an unbounded Kafka read exits 2 before any call."""
    argv = _launch_argv(
        fake_dataflow,
        "kafka_to_kafka",
        "--param=source=kafka",
        "--param=bootstrap_servers=b:9092",
        "--param=topic=in",
        "--param=output_topic=out",
        "--param=dlq_topic=dlq",
        "--wait=done",
    )
    assert run_command(argv) == 2
    assert "wait 'done'" in _out(capsys)[1]
    assert fake_dataflow.requests == []


def test_wait_times_out_with_the_last_state(fake_dataflow, capsys):
    """A job stuck in QUEUED past --timeout exits 1 naming its state."""
    fake_dataflow.launch_states = [STATE.JOB_STATE_QUEUED] * 10_000
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--wait=running",
        "--timeout=0.05",
    )
    assert run_command(argv) == 1
    printed, err = _out(capsys)
    assert printed["state"] == "JOB_STATE_QUEUED"
    assert "still JOB_STATE_QUEUED" in err


def test_duplicate_launch_returns_the_active_job(fake_dataflow, capsys):
    """An active job with the same name is returned; no second job is launched."""
    existing = fake_dataflow.add_job("nightly", STATE.JOB_STATE_RUNNING)
    argv = _launch_argv(
        fake_dataflow, "stream_etl", "--param=output=gs://b/o", "--param=dead_letter=gs://b/d"
    )
    assert run_command(argv) == 0
    printed, _ = _out(capsys)
    assert printed["job_id"] == existing.id
    assert printed["launched"] is False
    assert fake_dataflow.calls("LaunchFlexTemplate") == []
    [listing] = fake_dataflow.calls("ListJobs")
    assert listing == df.ListJobsRequest(
        project_id="proj",
        location="europe-west1",
        filter=df.ListJobsRequest.Filter.ACTIVE,
        name="nightly",
    )


def test_finished_job_with_same_name_does_not_block(fake_dataflow, capsys):
    """A DONE job of the same name (or an active one of another name) does not block a launch."""
    fake_dataflow.add_job("nightly", STATE.JOB_STATE_DONE)
    fake_dataflow.add_job("other", STATE.JOB_STATE_RUNNING)
    argv = _launch_argv(
        fake_dataflow, "stream_etl", "--param=output=gs://b/o", "--param=dead_letter=gs://b/d"
    )
    assert run_command(argv) == 0
    assert _out(capsys)[0]["launched"] is True
    assert len(fake_dataflow.calls("LaunchFlexTemplate")) == 1


def test_update_launches_despite_the_active_job(fake_dataflow, capsys):
    """--update launches with update=True even though a job of that name is running."""
    fake_dataflow.add_job("nightly", STATE.JOB_STATE_RUNNING)
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--update",
    )
    assert run_command(argv) == 0
    [request] = fake_dataflow.calls("LaunchFlexTemplate")
    assert request.launch_parameter.update is True
    assert _out(capsys)[0]["update"] is True


def test_validate_only_passes_through(fake_dataflow, capsys):
    """--validate_only sends validate_only=True and reports that nothing was launched."""
    argv = _launch_argv(
        fake_dataflow,
        "stream_etl",
        "--param=output=gs://b/o",
        "--param=dead_letter=gs://b/d",
        "--validate_only",
        "--wait=running",
    )
    assert run_command(argv) == 0
    [request] = fake_dataflow.calls("LaunchFlexTemplate")
    assert request.validate_only is True
    printed, _ = _out(capsys)
    assert printed["launched"] is False
    assert printed["validate_only"] is True
    assert fake_dataflow.calls("GetJob") == []


def test_api_error_exits_one_with_its_message(fake_dataflow, capsys):
    """A launch the API rejects exits 1 with the API's message on stderr."""
    fake_dataflow.launch_error = "Template launch failed: bad image"
    argv = _launch_argv(
        fake_dataflow, "stream_etl", "--param=output=gs://b/o", "--param=dead_letter=gs://b/d"
    )
    assert run_command(argv) == 1
    assert "Template launch failed: bad image" in _out(capsys)[1]


def test_secrets_are_sent_but_never_printed(fake_dataflow, capsys):
    """A kafka_config secret reaches the request but not stdout/stderr, even when refused."""
    base = _launch_argv(
        fake_dataflow, "stream_etl", "--param=output=gs://b/o", "--param=dead_letter=gs://b/d"
    )
    assert run_command([*base, "--param=kafka_config=sasl.password=hunter2"]) == 0
    captured = capsys.readouterr()
    assert "hunter2" not in captured.out + captured.err
    [request] = fake_dataflow.calls("LaunchFlexTemplate")
    assert "hunter2" in request.launch_parameter.parameters["kafka_config"]
    assert run_command([*base, "--param=kafka_config=SASL PASSWORD=hunter3"]) == 2
    captured = capsys.readouterr()
    assert "'kafka_config'" in captured.err
    assert "hunter3" not in captured.out + captured.err


def test_launch_raises_job_failed_error(fake_dataflow):
    """launch() raises JobFailedError carrying the state and the job's error."""
    fake_dataflow.launch_states = [STATE.JOB_STATE_CANCELLED]
    with pytest.raises(JobFailedError, match="JOB_STATE_CANCELLED") as raised:
        launch(
            "stream_etl",
            project="proj",
            region="europe-west1",
            template_spec=SPEC,
            job_name="etl",
            params={"output": "gs://b/o", "dead_letter": "gs://b/d"},
            endpoint=fake_dataflow.endpoint,
            wait="running",
            poll_interval=0,
        )
    assert raised.value.job["state"] == "JOB_STATE_CANCELLED"
    assert raised.value.error == "(no error message reported)"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"template_spec": "/local/spec.json"}, "template_spec"),
        ({"job_name": ""}, "job_name"),
        ({"project": ""}, "project"),
        ({"wait": "forever"}, "forever"),
    ],
)
def test_launch_options_validated_before_any_call(fake_dataflow, kwargs, named):
    """Bad launch options raise ValueError naming them; nothing reaches the API."""
    options = {
        "project": "proj",
        "region": "europe-west1",
        "template_spec": SPEC,
        "job_name": "etl",
        "params": {"output": "gs://b/o", "dead_letter": "gs://b/d"},
        "endpoint": fake_dataflow.endpoint,
        **kwargs,
    }
    with pytest.raises(ValueError, match=named):
        launch("stream_etl", **options)
    assert fake_dataflow.requests == []


def test_airflow_body_is_the_rest_launch_parameter():
    """airflow_body gives the camelCase REST body with string parameters and the environment."""
    body = airflow_body(
        "windowed_metrics",
        params={"output": "gs://b/o", "dead_letter": "gs://b/d", "stop_at_end": True},
        job_name="metrics-daily",
        template_spec=SPEC,
        environment={"max_workers": 4, "temp_location": "gs://b/tmp"},
    )
    assert body == {
        "launchParameter": {
            "jobName": "metrics-daily",
            "containerSpecGcsPath": SPEC,
            "parameters": {
                "output": "gs://b/o",
                "dead_letter": "gs://b/d",
                "stop_at_end": "true",
            },
            "environment": {"maxWorkers": 4, "tempLocation": "gs://b/tmp"},
        }
    }


def test_airflow_body_applies_the_local_check():
    """airflow_body refuses a bad enum value naming the parameter."""
    with pytest.raises(ValueError, match="'output_format'"):
        airflow_body(
            "stream_etl",
            params={"output": "gs://b/o", "dead_letter": "gs://b/d", "output_format": "csv"},
            job_name="etl",
            template_spec=SPEC,
        )
