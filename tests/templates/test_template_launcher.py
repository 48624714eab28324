"""The launcher ``main.py``: template parameters back into the pipeline's flags."""

from __future__ import annotations

import runpy
import types
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater.pipelines
from headwater.pipelines.options import flag_values
from headwater.templates.launcher import pipeline_argv, pipeline_name
from headwater.templates.metadata import check_parameters

MAIN = Path(__file__).resolve().parents[2] / "main.py"
REQUIRED_OK = {"output": "gs://b/o", "dead_letter": "gs://b/d"}


def _as_launcher_argv(params: dict[str, str]) -> list[str]:
    """What the Dataflow launcher passes: one --name=value per parameter."""
    return [f"--{key}={value}" for key, value in params.items()]


@pytest.fixture
def recorded_run(monkeypatch):
    """Replaces headwater.pipelines.load with a fake pipeline that records its argv."""
    calls: list[tuple[str, list[str]]] = []
    real_load = headwater.pipelines.load

    def load(name):
        real = real_load(name)
        return types.SimpleNamespace(
            Options=real.Options,
            DESCRIPTION=real.DESCRIPTION,
            run=lambda argv: calls.append((name, list(argv))),
        )

    monkeypatch.setattr(headwater.pipelines, "load", load)
    return calls


def test_main_runs_the_baked_in_pipeline_with_expanded_flags(monkeypatch, recorded_run):
    """main.py runs HEADWATER_PIPELINE with kafka_config expanded, runner and setup file added."""
    monkeypatch.setenv("HEADWATER_PIPELINE", "stream_etl")
    monkeypatch.setenv("HEADWATER_SETUP_FILE", "/template/setup.py")
    main = runpy.run_path(str(MAIN), run_name="headwater_launcher")["main"]
    main(
        [
            "--output=gs://b/o",
            '--kafka_config=["security.protocol=SASL_SSL","sasl.username=u,v"]',
            "--stop_at_end=true",
            "--project=proj",
        ]
    )
    assert recorded_run == [
        (
            "stream_etl",
            [
                "--output=gs://b/o",
                "--kafka_config=security.protocol=SASL_SSL",
                "--kafka_config=sasl.username=u,v",
                "--stop_at_end=true",
                "--project=proj",
                "--runner=DataflowRunner",
                "--setup_file=/template/setup.py",
            ],
        )
    ]


def test_unbounded_kafka_read_adds_streaming():
    """--source=kafka without stop_at_end/max_records gets --streaming; bounded reads do not."""
    unbounded = pipeline_argv("windowed_metrics", ["--source=kafka", "--topic=t"])
    bounded = pipeline_argv("windowed_metrics", ["--source=kafka", "--max_records=10"])
    files = pipeline_argv("windowed_metrics", ["--input=gs://b/*.jsonl"])
    assert "--streaming" in unbounded
    assert "--streaming" not in bounded
    assert "--streaming" not in files


def test_given_runner_and_container_are_kept():
    """An explicit --runner and --sdk_container_image are not overridden."""
    argv = pipeline_argv(
        "stream_etl",
        ["--runner=DataflowRunner", "--sdk_container_image=img"],
        environ={"HEADWATER_SETUP_FILE": "/template/setup.py"},
    )
    assert argv == ["--runner=DataflowRunner", "--sdk_container_image=img"]


def test_pipeline_name_from_argument_or_environment():
    """--headwater_pipeline wins over the variable; neither is a ValueError naming both."""
    assert pipeline_name(["--headwater_pipeline=stream_etl", "--x=1"], {}) == (
        "stream_etl",
        ["--x=1"],
    )
    assert pipeline_name([], {"HEADWATER_PIPELINE": "windowed_metrics"})[0] == "windowed_metrics"
    with pytest.raises(ValueError, match="HEADWATER_PIPELINE"):
        pipeline_name([], {})


def test_launch_parameters_round_trip_into_the_pipeline_options():
    """check_parameters -> launcher argv -> the pipeline's own parser gives the same values."""
    params = check_parameters(
        "stream_etl",
        {
            **REQUIRED_OK,
            "source": "kafka",
            "bootstrap_servers": "b1:9092,b2:9092",
            "topic": "events",
            "stop_at_end": True,
            "output_shards": 4,
            "kafka_config": ["security.protocol=SSL", "ssl.ca.location=/a b/c,d.pem"],
        },
    )
    argv = pipeline_argv("stream_etl", _as_launcher_argv(params))
    module = headwater.pipelines.load("stream_etl")
    options = PipelineOptions(argv)
    values = flag_values(options, module.Options)
    assert values["kafka_config"] == ["security.protocol=SSL", "ssl.ca.location=/a b/c,d.pem"]
    assert values["stop_at_end"] is True
    assert values["output_shards"] == 4
    assert values["bootstrap_servers"] == "b1:9092,b2:9092"
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert not options.view_as(StandardOptions).streaming


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.from_regex(r"\A[a-z0-9._]+=[^\n\r]*\Z", fullmatch=True),
        min_size=1,
        max_size=5,
    )
)
def test_repeated_values_round_trip(items):
    """Any list of KEY=VALUE items survives the template value and the launcher's expansion."""
    params = check_parameters("stream_etl", {**REQUIRED_OK, "kafka_config": items})
    argv = pipeline_argv("stream_etl", _as_launcher_argv(params))
    assert [a.split("=", 1)[1] for a in argv if a.startswith("--kafka_config=")] == items
