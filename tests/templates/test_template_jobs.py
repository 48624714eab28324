"""``headwater jobs list|show|cancel|drain`` against a local fake of the Dataflow API."""

from __future__ import annotations

import json

import pytest
from google.cloud import dataflow_v1beta3 as df

from headwater.templates.commands import run_command


def _where(fake) -> list[str]:
    return ["--project=proj", "--region=europe-west1", f"--endpoint={fake.endpoint}"]


def test_list_sends_filter_and_prints_jobs(fake_dataflow, capsys):
    """jobs list sends ListJobsRequest(filter=ALL), --active filter=ACTIVE; prints summaries."""
    running = fake_dataflow.add_job("etl", df.JobState.JOB_STATE_RUNNING)
    fake_dataflow.add_job("old", df.JobState.JOB_STATE_DONE)
    assert run_command(["jobs", "list", *_where(fake_dataflow)]) == 0
    assert [j["job_name"] for j in json.loads(capsys.readouterr().out)] == ["etl", "old"]
    assert run_command(["jobs", "list", "--active", *_where(fake_dataflow)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(j["job_id"], j["state"]) for j in printed] == [(running.id, "JOB_STATE_RUNNING")]
    assert fake_dataflow.calls("ListJobs") == [
        df.ListJobsRequest(
            project_id="proj", location="europe-west1", filter=df.ListJobsRequest.Filter.ALL
        ),
        df.ListJobsRequest(
            project_id="proj", location="europe-west1", filter=df.ListJobsRequest.Filter.ACTIVE
        ),
    ]


def test_show_sends_get_job(fake_dataflow, capsys):
    """jobs show sends GetJobRequest for the id and prints the job."""
    job = fake_dataflow.add_job("etl", df.JobState.JOB_STATE_QUEUED)
    assert run_command(["jobs", "show", job.id, *_where(fake_dataflow)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "JOB_STATE_QUEUED"
    assert fake_dataflow.calls("GetJob") == [
        df.GetJobRequest(project_id="proj", job_id=job.id, location="europe-west1")
    ]


@pytest.mark.parametrize(
    ("verb", "requested", "now"),
    [
        ("cancel", df.JobState.JOB_STATE_CANCELLED, "JOB_STATE_CANCELLING"),
        ("drain", df.JobState.JOB_STATE_DRAINED, "JOB_STATE_DRAINING"),
    ],
)
def test_cancel_and_drain_request_the_state(fake_dataflow, capsys, verb, requested, now):
    """cancel/drain send UpdateJobRequest with the requested state and print the job."""
    job = fake_dataflow.add_job("etl", df.JobState.JOB_STATE_RUNNING)
    assert run_command(["jobs", verb, job.id, *_where(fake_dataflow)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["state"] == now
    assert printed["requested_state"] == requested.name
    assert fake_dataflow.calls("UpdateJob") == [
        df.UpdateJobRequest(
            project_id="proj",
            job_id=job.id,
            location="europe-west1",
            job=df.Job(requested_state=requested),
        )
    ]


def test_unknown_job_exits_one_with_the_api_message(fake_dataflow, capsys):
    """A job id the API does not know exits 1 with the API's message."""
    assert run_command(["jobs", "show", "nope", *_where(fake_dataflow)]) == 1
    assert "job nope not found" in capsys.readouterr().err
