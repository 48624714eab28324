"""Example Airflow DAG: launch the headwater ``windowed_metrics`` Flex Template every night.

Not imported by headwater or its tests (Airflow is not a headwater dependency). Install
``apache-airflow-providers-google`` and ``headwater`` in the Airflow environment, build and
publish the template first (``headwater template build windowed_metrics`` then the gcloud
command it prints), and set the Airflow Variables used below.

The operator's ``body`` comes from :func:`headwater.templates.launch.airflow_body`, which checks
the parameters against the template's own ``metadata.json`` when the DAG file is parsed: a bad
window spec or a misspelt parameter breaks the DAG import, not a 3 a.m. launch.

Scheduler safety:

* ``append_job_name=False`` keeps the job name stable, so a retry of the same logical date finds
  the same job name instead of starting an unrelated one;
* the batch backfill waits until the job is DONE (``wait_until_finished=True``); for a streaming
  template (an unbounded Kafka read) set ``wait_until_finished=False`` -- waiting for DONE on a
  streaming job never returns (apache/airflow#40584). ``headwater template launch --wait
  running`` (e.g. from a BashOperator) additionally refuses to start a second job while one of
  the same name is active.
"""

from __future__ import annotations

import pendulum
from airflow import DAG
from airflow.models import Variable
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator

from headwater.templates.launch import airflow_body

PROJECT = Variable.get("headwater_project", default_var="my-project")
REGION = Variable.get("headwater_region", default_var="europe-west1")
BUCKET = Variable.get("headwater_bucket", default_var="my-bucket")

with DAG(
    dag_id="headwater_windowed_metrics_backfill",
    schedule="0 3 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["headwater", "dataflow"],
) as dag:
    DataflowStartFlexTemplateOperator(
        task_id="windowed_metrics",
        project_id=PROJECT,
        location=REGION,
        body=airflow_body(
            "windowed_metrics",
            job_name="windowed-metrics-backfill",
            template_spec=f"gs://{BUCKET}/templates/windowed_metrics.json",
            params={
                "source": "files",
                "input": f"gs://{BUCKET}/events/*.jsonl",
                "window": "calendar:day@Europe/Berlin",
                "allowed_lateness": "1h",
                "metrics": "count,sum:amount",
                "output": f"gs://{BUCKET}/metrics",
                "dead_letter": f"gs://{BUCKET}/dead-letters",
            },
            environment={
                "temp_location": f"gs://{BUCKET}/temp",
                "max_workers": 10,
            },
        ),
        append_job_name=False,
        wait_until_finished=True,
    )
