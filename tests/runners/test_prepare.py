"""runners.prepare: the runner chosen, the options completed, bad flags refused by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    DebugOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
)

from headwater import runners
from headwater.pipelines.running import unbounded_source

GCP = [
    "--runner=DataflowRunner",
    "--project=hw-project",
    "--region=europe-west1",
    "--temp_location=gs://hw-bucket/tmp",
]


def _prepare(*argv: str, streaming: bool = False) -> tuple[str, PipelineOptions]:
    options = PipelineOptions(list(argv))
    unbounded = unbounded_source(options)  # what a pipeline's run() passes
    return runners.prepare(options, streaming=streaming, unbounded=unbounded), options


def test_local_runner_is_chosen_by_streaming_mode():
    """No runner: FnApiRunner for batch, BundleBasedDirectRunner for streaming."""
    assert _prepare()[0] == "FnApiRunner"
    assert _prepare(streaming=True)[0] == "BundleBasedDirectRunner"
    assert _prepare("--runner=DirectRunner", "--streaming")[0] == "BundleBasedDirectRunner"


def test_short_runner_names_are_canonical():
    """`dataflow`, `flink`, `portable` name the same runners as their class names."""
    assert _prepare(*GCP, "--runner=dataflow")[0] == "DataflowRunner"
    assert _prepare("--runner=flink", "--environment_type=LOOPBACK")[0] == "FlinkRunner"
    runner, _ = _prepare(
        "--runner=Portable", "--job_endpoint=localhost:1", "--environment_type=LOOPBACK"
    )
    assert runner == "PortableRunner"
    assert runners.is_portable(runner)
    assert not runners.is_local(runner)


@pytest.mark.parametrize(
    ("drop", "flag"),
    [
        ("--project=hw-project", "--project"),
        ("--region=europe-west1", "--region"),
        ("--temp_location=gs://hw-bucket/tmp", "--temp_location"),
    ],
)
def test_dataflow_refuses_a_missing_google_option(drop, flag):
    """Project, region and a temp location are required; the error names the flag."""
    with pytest.raises(ValueError, match=f"^{flag} is required"):
        _prepare(*(a for a in GCP if a != drop))


@pytest.mark.parametrize("flag", ["temp_location", "staging_location"])
def test_dataflow_refuses_a_location_that_is_not_gcs(flag, tmp_path):
    """A local temp or staging folder is refused with the flag and the value."""
    argv = (
        [*GCP, f"--{flag}={tmp_path}"]
        if flag == "staging_location"
        else [
            *GCP[:3],
            f"--temp_location={tmp_path}",
        ]
    )
    with pytest.raises(ValueError, match=re.escape(f"--{flag}='{tmp_path}' must be a gs:// path")):
        _prepare(*argv)


def test_dataflow_staging_defaults_under_the_temp_location():
    """Without --staging_location the package is staged under <temp_location>/staging."""
    _, options = _prepare(*GCP)
    assert options.view_as(GoogleCloudOptions).staging_location == "gs://hw-bucket/tmp/staging"


def test_dataflow_stages_headwater_setup_py_by_default():
    """--setup_file defaults to the checkout's setup.py, which builds the headwater package."""
    _, options = _prepare(*GCP)
    setup_file = options.view_as(SetupOptions).setup_file
    assert setup_file == runners.find_setup_file()
    assert 'name="headwater"' in Path(setup_file).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "flag",
    [
        "--sdk_container_image=europe-docker.pkg.dev/p/r/headwater:1",
        "--requirements_file=requirements.txt",
        "--extra_package=dist/headwater-0.1.0-py3-none-any.whl",
    ],
)
def test_dataflow_keeps_the_users_way_of_shipping_code(flag):
    """A container image, requirements file or extra package replaces the default setup.py."""
    _, options = _prepare(*GCP, flag)
    assert options.view_as(SetupOptions).setup_file is None


def test_dataflow_refuses_a_setup_file_that_does_not_exist(tmp_path):
    """--setup_file must exist before anything is built or uploaded."""
    missing = tmp_path / "nope" / "setup.py"
    with pytest.raises(ValueError, match=re.escape(f"--setup_file='{missing}' does not exist")):
        _prepare(*GCP, f"--setup_file={missing}")


def test_installed_wheel_without_checkout_must_say_how_workers_get_headwater(monkeypatch):
    """No setup.py to find: the error names --setup_file and the alternatives."""
    monkeypatch.setattr(runners, "find_setup_file", lambda: None)
    with pytest.raises(ValueError, match=r"^--setup_file is required .*--sdk_container_image"):
        _prepare(*GCP)


def test_setup_file_env_variable_points_at_another_setup_py(monkeypatch, tmp_path):
    """$HEADWATER_SETUP_FILE overrides the checkout lookup."""
    setup = tmp_path / "setup.py"
    setup.write_text('setup(name="headwater")\n')
    monkeypatch.setenv(runners.SETUP_FILE_ENV, str(setup))
    _, options = _prepare(*GCP)
    assert options.view_as(SetupOptions).setup_file == str(setup.resolve())


def test_dataflow_streaming_runs_on_the_streaming_engine():
    """A streaming Dataflow job gets the enable_streaming_engine experiment; batch does not."""
    _, streaming = _prepare(*GCP, streaming=True)
    assert "enable_streaming_engine" in streaming.view_as(DebugOptions).experiments
    assert streaming.view_as(GoogleCloudOptions).enable_streaming_engine
    _, batch = _prepare(*GCP)
    assert "enable_streaming_engine" not in (batch.view_as(DebugOptions).experiments or [])


@pytest.mark.parametrize("runner_flags", [GCP, ["--runner=FlinkRunner"]])
def test_unbounded_kafka_on_a_remote_runner_is_submitted_as_streaming(runner_flags):
    """Kafka without --stop_at_end/--max_records becomes a streaming job, never a batch one."""
    _, options = _prepare(*runner_flags, "--source=kafka", "--topic=t")
    assert options.view_as(StandardOptions).streaming


@pytest.mark.parametrize("bound", ["--stop_at_end", "--max_records=10"])
def test_bounded_kafka_on_dataflow_stays_batch(bound):
    """A bounded Kafka read keeps the job a batch job."""
    _, options = _prepare(*GCP, "--source=kafka", "--topic=t", bound)
    assert not options.view_as(StandardOptions).streaming


def test_update_needs_a_job_name():
    """--update finds the running job by name: --job_name is required."""
    with pytest.raises(ValueError, match=r"^--update needs --job_name"):
        _prepare(*GCP, "--update", streaming=True)


def test_update_refuses_a_batch_job():
    """Dataflow updates streaming jobs only; --update without --streaming is refused."""
    with pytest.raises(ValueError, match=r"^--update replaces a running streaming job"):
        _prepare(*GCP, "--update", "--job_name=hw-job")


def test_transform_name_mapping_needs_update():
    """A mapping without --update would be silently ignored: refused."""
    with pytest.raises(ValueError, match=r"^--transform_name_mapping only applies with --update"):
        _prepare(*GCP, '--transform_name_mapping={"A": "B"}', streaming=True)


def test_transform_name_mapping_must_map_labels_to_labels():
    """A mapping that is not a JSON object of strings is refused with its value."""
    with pytest.raises(ValueError, match=r"^--transform_name_mapping=\['A'\] must be a JSON"):
        _prepare(
            *GCP, "--update", "--job_name=hw-job", '--transform_name_mapping=["A"]', streaming=True
        )


def test_portable_runner_needs_a_job_endpoint():
    """PortableRunner without --job_endpoint is refused, naming the flag."""
    with pytest.raises(
        ValueError, match=r"^--job_endpoint is required with --runner=PortableRunner"
    ):
        _prepare("--runner=PortableRunner")


def test_embedded_flink_gets_the_job_server_jar_make_tools_wrote(monkeypatch):
    """[local]/[auto] Flink gets .tools/flink/job-server.jar (Beam would download a jar Maven
    Central does not serve); a cluster's master, a job endpoint or the user's jar do not."""
    monkeypatch.delenv(runners.FLINK_JAR_ENV, raising=False)
    jar = runners.find_flink_job_server_jar()
    assert jar is not None
    assert jar.endswith(str(Path(".tools", "flink", "job-server.jar")))

    def chosen(*argv: str) -> str | None:
        _, options = _prepare("--runner=FlinkRunner", "--environment_type=LOOPBACK", *argv)
        return options.view_as(FlinkRunnerOptions).flink_job_server_jar

    assert chosen() == jar
    assert chosen("--flink_master=[local]") == jar
    assert chosen("--flink_master=flink:8081") is None
    assert chosen("--job_endpoint=localhost:8099") is None
    assert chosen("--flink_job_server_jar=/opt/mine.jar") == "/opt/mine.jar"
    _, portable = _prepare("--runner=PortableRunner", "--job_endpoint=localhost:8099")
    assert portable.view_as(FlinkRunnerOptions).flink_job_server_jar is None


def test_flink_jar_env_variable_wins_and_must_exist(monkeypatch, tmp_path):
    """$HEADWATER_FLINK_JOB_SERVER_JAR names the jar; a missing file is refused by name."""
    mine = tmp_path / "server.jar"
    mine.write_bytes(b"PK")
    monkeypatch.setenv(runners.FLINK_JAR_ENV, str(mine))
    assert runners.find_flink_job_server_jar() == str(mine)
    monkeypatch.setenv(runners.FLINK_JAR_ENV, str(tmp_path / "missing.jar"))
    with pytest.raises(ValueError, match=r"HEADWATER_FLINK_JOB_SERVER_JAR=.*missing.jar"):
        runners.find_flink_job_server_jar()


def test_portable_workers_outside_this_process_get_the_setup_file():
    """Docker workers on Flink get setup.py staged; LOOPBACK and custom images do not."""
    _, docker = _prepare("--runner=FlinkRunner", "--flink_master=flink:8081")
    assert docker.view_as(SetupOptions).setup_file == runners.find_setup_file()
    _, loopback = _prepare("--runner=FlinkRunner", "--environment_type=LOOPBACK")
    assert loopback.view_as(SetupOptions).setup_file is None
    _, image = _prepare("--runner=FlinkRunner", "--environment_config=registry/headwater:1")
    assert image.view_as(SetupOptions).setup_file is None
