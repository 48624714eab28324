"""Shared pipeline plumbing: the Kafka source in batch and streaming, and what argv may hold."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.pipelines import replay_dead_letters, stream_etl, windowed_metrics
from headwater.pipelines.config import validate_source
from headwater.pipelines.options import FLAGS, check_argv
from headwater.pipelines.sources import read_source

KAFKA = {
    "source": "kafka",
    "bootstrap_servers": "127.0.0.1:9",
    "topic": "events",
    "format": "json",
    "event_time_field": "event_time",
    "event_time_unit": "ms",
}


def _kafka_read(*flags: str, **values):
    p = beam.Pipeline("FnApiRunner", options=PipelineOptions(list(flags)))
    return read_source(p, {**KAFKA, **values}).kafka


def test_batch_kafka_read_leaves_event_time_to_the_parse_step():
    """A read that ends by itself, in batch, does not decode values for a watermark."""
    read = _kafka_read(stop_at_end=True)
    assert read.event_time is None
    assert read.value_format is None


def test_streaming_kafka_read_takes_event_time_for_its_watermark():
    """With --streaming the source decodes event times: its watermark depends on them."""
    read = _kafka_read("--streaming", stop_at_end=True)
    assert read.event_time is not None
    assert read.event_time.field == "event_time"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--input=a", "--windw=fixed:1m"], "unknown flag --windw .* did you mean --window\\?"),
        (["--input=a", "--metric=count"], "unknown flag --metric .* did you mean --metrics\\?"),
        (["--input=a", "-q"], "unknown flag -q .* put it before the command \\(headwater -q run"),
        (["--input=a", "--progress=2"], "before the command \\(headwater --progress=SECONDS run"),
        (["--input", "a.jsonl", "b.jsonl"], "unexpected argument 'b.jsonl' after --input: .*Quote"),
        (["--input=a", "stray"], "unexpected argument 'stray'"),
    ],
)
def test_unknown_flags_and_stray_arguments_are_refused(argv, message):
    """What Beam's parser drops (a misspelt flag, a stray word) is an error naming it."""
    with pytest.raises(ValueError, match=message):
        check_argv(argv, windowed_metrics.Options, pipeline="windowed_metrics")


def test_unknown_flag_error_never_shows_its_value():
    """A misspelt flag's value (perhaps a secret) is not echoed."""
    with pytest.raises(ValueError, match="did you mean --kafka_config") as caught:
        check_argv(
            ["--kafka-config=sasl.password=pw-1234"], stream_etl.Options, pipeline="stream_etl"
        )
    assert "pw-1234" not in str(caught.value)


def test_another_pipelines_flag_is_refused():
    """--metrics belongs to windowed_metrics: stream_etl refuses it instead of ignoring it."""
    with pytest.raises(ValueError, match="--metrics does not apply to stream_etl"):
        check_argv(["--input=a", "--metrics=count"], stream_etl.Options, pipeline="stream_etl")


def test_beam_pipeline_options_pass_through():
    """Flags of Beam's own PipelineOptions classes (runner, GCP, portable, Flink...) pass."""
    check_argv(
        [
            "--input=a",
            "--runner=DirectRunner",
            "--project=p",
            "--region=r",
            "--temp_location=gs://b/t",
            "--streaming",
            "--setup_file=./setup.py",
            "--experiments=x",
            "--environment_type=LOOPBACK",
            "--flink_master=[local]",
            "--parallelism=2",
            "--direct_num_workers=2",
            "--prism_location=/bin/prism",
            "--save_main_session",
            "--requirements_cache=skip",
        ],
        windowed_metrics.Options,
        pipeline="windowed_metrics",
    )


@pytest.mark.parametrize(
    ("values", "flag"),
    [
        ({"source": "files", "input": "a", "topic": "t"}, "--topic"),
        ({"source": "files", "input": "a", "stop_at_end": True}, "--stop_at_end"),
        ({"source": "files", "input": "a", "bootstrap_servers": "h:1"}, "--bootstrap_servers"),
        ({**KAFKA, "input": "a.jsonl"}, "--input"),
    ],
)
def test_flags_of_the_other_source_are_refused(values, flag):
    """A flag of the other kind of source is an error naming it, not silently unused."""
    with pytest.raises(ValueError, match=f"^{flag} does not apply to --source="):
        validate_source(values, injected=False)


def test_kafka_connection_flags_are_kept_for_a_kafka_sink():
    """--bootstrap_servers with files is fine when the pipeline writes to Kafka."""
    values = {"source": "files", "input": "a", "bootstrap_servers": "h:1"}
    validate_source(values, injected=False, kafka_sink=True)


def test_replay_does_not_offer_source_flags():
    """replay_dead_letters reads dead-letter files: no Kafka-source or file-source flag."""
    offered = set(replay_dead_letters.Options.FLAG_NAMES)
    assert not offered & {"topic", "start", "stop_at_end", "max_records", "input", "source"}
    assert {"bootstrap_servers", "output_topic", "max_dead_letter_rate"} <= offered


def test_max_records_help_says_total():
    """--max_records is a total across partitions, and its help says so."""
    text = FLAGS["max_records"].help
    assert "in total" in text
    assert "per partition" not in text


def test_the_summary_counts_each_output_folders_own_files(tmp_path, monkeypatch):
    """Relative folders, the late folder nested in the dead-letter folder, a writer's temp
    file and the completion marker: each file is counted once, in its own folder."""
    from headwater.pipelines.running import _output_files

    monkeypatch.chdir(tmp_path)
    for name in (
        "out/window_start=1/part-0.parquet",
        "out/window_start=2/part-0.parquet",
        "out/window_start=2/.tmp-part-1.parquet-0a1b",
        "out/_SUCCESS",
        "dlq/dead_letters-0.jsonl",
        "dlq/late/dead_letters-0.jsonl",
        "dlq/late/dead_letters-1.jsonl",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    listed = _output_files({"output": "out", "dead_letter": "dlq/", "late": "dlq/late"})
    relative = {
        name: sorted(str(path)[len(str(tmp_path)) + 1 :] for path in paths)
        for name, paths in listed.items()
    }
    assert relative == {
        "output": ["out/window_start=1/part-0.parquet", "out/window_start=2/part-0.parquet"],
        "dead_letter": ["dlq/dead_letters-0.jsonl"],
        "late": ["dlq/late/dead_letters-0.jsonl", "dlq/late/dead_letters-1.jsonl"],
    }
