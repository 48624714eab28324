"""Every pipeline runs to completion on Apache Flink and on Beam's own job service.

``FlinkRunner`` runs on Beam's Flink job server with an embedded Flink cluster (the
``flink_endpoint`` fixture, ``make tools``) at parallelism 2; ``PortableRunner`` on Beam's
local job service (``local_job_service_main``), the same portable Job API.
``--environment_type=LOOPBACK`` runs the SDK harness in this process. Each test submits a small
batch job the way ``headwater run`` does (``runners.prepare``, ``build``, ``run``), waits for
it, and checks the job finished, the files or topics it wrote, and the accounting the runner
reports through ``result.metrics()``.
"""

from __future__ import annotations

import json
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from confluent_kafka import Consumer, TopicPartition

from headwater import runners
from headwater.core.accounting import Accounting
from headwater.devtools.produce import produce_lines
from headwater.devtools.workload import write_jsonl
from headwater.pipelines import (
    kafka_to_kafka,
    replay_dead_letters,
    stream_etl,
    windowed_metrics,
)

pytestmark = pytest.mark.slow

RUNNERS = ("FlinkRunner", "PortableRunner")


def _submit(module, argv: list[str]) -> tuple[str, beam.runners.runner.PipelineResult]:
    """Submits like ``running.run_pipeline`` does and waits; returns (runner, result)."""
    options = PipelineOptions(argv)
    runner = runners.prepare(options, streaming=False)
    p = beam.Pipeline(options=options)
    module.build(p, options)
    result = p.run()
    result.wait_until_finish()
    return runner, result


def _portable(runner: str, endpoint: str) -> list[str]:
    flags = [f"--runner={runner}", f"--job_endpoint={endpoint}", "--environment_type=LOOPBACK"]
    return [*flags, "--parallelism=2"] if runner == "FlinkRunner" else flags


@pytest.fixture
def endpoint(runner_name: str, request: pytest.FixtureRequest) -> str:
    """FlinkRunner's job server is Apache Flink's; PortableRunner's Beam's job service."""
    name = "flink_endpoint" if runner_name == "FlinkRunner" else "job_endpoint"
    return str(request.getfixturevalue(name))


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _dead_letter_lines(folder: Path) -> list[dict]:
    return [
        json.loads(line)
        for p in sorted(folder.rglob("*.jsonl"))
        for line in p.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "runners-check", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[bytes] = []
    idle = 0
    while idle < 5:
        message = consumer.poll(0.5)
        if message is None:
            idle += 1
            continue
        if message.error() is None:
            out.append(message.value())
    consumer.close()
    return out


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_windowed_metrics_finishes_with_expected_rows(runner_name, endpoint, events, tmp_path):
    """windowed_metrics on the job service: one row per window and user, counts add up."""
    runner, result = _submit(
        windowed_metrics,
        [
            *_portable(runner_name, endpoint),
            f"--input={events.path}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            "--metrics=count,sum:amount",
            "--output_format=parquet",
        ],
    )
    assert runner == runner_name
    assert not runners.is_local(runner)
    assert result.state == PipelineState.DONE
    got = {
        (r["window_start"].isoformat(), r["key"]): (r["count"], r["sum_amount"])
        for r in _rows(tmp_path / "out")
    }
    assert got == events.metrics
    assert len(_dead_letter_lines(tmp_path / "dlq")) == events.dead_letters
    accounting = Accounting.from_result(result)
    assert (accounting.records_in, accounting.output, accounting.duplicate) == (
        events.records_in,
        len(events.unique_ids),
        events.records_in - len(events.unique_ids) - events.dead_letters,
    )
    assert accounting.holds


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_stream_etl_finishes_with_every_unique_record(runner_name, endpoint, events, tmp_path):
    """stream_etl on the job service: each unique event written once, the bad line dead."""
    _, result = _submit(
        stream_etl,
        [
            *_portable(runner_name, endpoint),
            f"--input={events.path}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            "--output_format=parquet",
        ],
    )
    assert result.state == PipelineState.DONE
    ids = [r["event_id"] for r in _rows(tmp_path / "out")]
    assert sorted(ids) == sorted(events.unique_ids)
    [letter] = _dead_letter_lines(tmp_path / "dlq")
    assert letter["stage"] == "decode"
    assert Accounting.from_result(result).holds


@pytest.mark.integration
@pytest.mark.parametrize("runner_name", RUNNERS)
def test_kafka_to_kafka_reads_bounded_kafka_and_writes_topics(
    runner_name, endpoint, events, kafka_bootstrap, make_kafka_topic
):
    """kafka_to_kafka on the job service: a bounded Kafka read (the SDF), dedup, two topics."""
    source, output, dlq = (make_kafka_topic(partitions=2) for _ in range(3))
    lines = events.path.read_bytes().splitlines()
    produce_lines(kafka_bootstrap, source, [(None, line) for line in lines], partitions=2)
    _, result = _submit(
        kafka_to_kafka,
        [
            *_portable(runner_name, endpoint),
            "--source=kafka",
            f"--bootstrap_servers={kafka_bootstrap}",
            f"--topic={source}",
            "--stop_at_end",
            f"--output_topic={output}",
            f"--dlq_topic={dlq}",
        ],
    )
    assert result.state == PipelineState.DONE
    written = [json.loads(v)["event_id"] for v in _consume_all(kafka_bootstrap, output, 2)]
    assert sorted(written) == sorted(events.unique_ids)
    dead = [json.loads(v) for v in _consume_all(kafka_bootstrap, dlq, 2)]
    assert [d["stage"] for d in dead] == ["decode"]
    accounting = Accounting.from_result(result)
    assert accounting.records_in == len(lines)
    assert accounting.holds


@pytest.mark.parametrize("runner_name", RUNNERS)
def test_replay_dead_letters_moves_fixed_records_into_output(runner_name, endpoint, tmp_path):
    """replay_dead_letters on the job service: letters that failed sum:price replay as output."""
    records = [
        {"event_id": f"e{i}", "user_id": "u", "event_time": 1_000 * i, "amount": i}
        | ({"price": i} if i % 2 else {})
        for i in range(1, 9)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    common = ["--window=fixed:60s", "--key_field=user_id", "--output_format=parquet"]
    first = windowed_metrics.run(  # the dead letters to replay, made on the local runner
        [
            f"--input={tmp_path / 'in.jsonl'}",
            f"--output={tmp_path / 'first' / 'out'}",
            f"--dead_letter={tmp_path / 'first' / 'dlq'}",
            "--metrics=count,sum:price",
            *common,
        ]
    )
    assert first["dead_letter"] == 4
    _, result = _submit(
        replay_dead_letters,
        [
            *_portable(runner_name, endpoint),
            f"--dead_letter_input={tmp_path / 'first' / 'dlq' / '*.jsonl'}",
            "--target=windowed_metrics",
            f"--output={tmp_path / 'replay' / 'out'}",
            f"--dead_letter={tmp_path / 'replay' / 'dlq'}",
            "--metrics=count,sum:amount",
            *common,
        ],
    )
    assert result.state == PipelineState.DONE
    [row] = _rows(tmp_path / "replay" / "out")
    assert (row["count"], row["sum_amount"]) == (4, 2 + 4 + 6 + 8)
    accounting = Accounting.from_result(result)
    assert (accounting.records_in, accounting.output, accounting.dead_letter) == (4, 4, 0)


def test_portable_batch_runs_are_waited_for_and_streaming_ones_are_not(job_endpoint):
    """waits_for_result: batch and LOOPBACK portable runs are summarized; remote streaming,
    Dataflow are not."""
    batch = PipelineOptions(_portable("FlinkRunner", job_endpoint))
    loopback = PipelineOptions([*_portable("PortableRunner", job_endpoint), "--streaming"])
    streaming = PipelineOptions(
        [
            "--runner=PortableRunner",
            f"--job_endpoint={job_endpoint}",
            "--environment_type=EXTERNAL",
            "--environment_config=localhost:50000",
            "--streaming",
        ]
    )
    assert runners.waits_for_result(runners.prepare(batch, streaming=False), batch)
    assert runners.waits_for_result(runners.prepare(loopback, streaming=False), loopback)
    assert not runners.waits_for_result(runners.prepare(streaming, streaming=False), streaming)
    assert runners.waits_for_result("FnApiRunner", PipelineOptions([]))
    assert not runners.waits_for_result("DataflowRunner", PipelineOptions([]))


def test_headwater_run_on_flink_waits_and_prints_the_accounting(
    flink_endpoint, events, tmp_path, capsys
):
    """`run()` on Apache Flink (FlinkRunner --job_endpoint) waits for the batch job and
    summarizes it from the job's metrics."""
    summary = windowed_metrics.run(
        [
            *_portable("FlinkRunner", flink_endpoint),
            f"--input={events.path}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            f"--summary_json={tmp_path / 'summary.json'}",
        ]
    )
    assert summary["runner"] == "FlinkRunner"
    assert summary["records_in"] == events.records_in
    assert summary["identity_holds"]
    assert "records_in == output + duplicate + dead_letter + late: holds" in capsys.readouterr().out
    assert json.loads((tmp_path / "summary.json").read_text())["output"] == len(events.unique_ids)


def test_flink_runner_starts_its_own_job_server_from_the_tools_jar(events, tmp_path):
    """`--runner=FlinkRunner` with no master and no endpoint: headwater passes the launcher jar
    `make tools` wrote (`.tools/flink/job-server.jar`), Beam's FlinkRunner starts the job server
    itself (an embedded Flink), headwater waits and sums up."""
    summary = windowed_metrics.run(
        [
            "--runner=FlinkRunner",
            "--environment_type=LOOPBACK",
            "--parallelism=2",
            f"--input={events.path}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            "--metrics=count,sum:amount",
            "--output_format=parquet",
        ]
    )
    assert (summary["runner"], summary["state"]) == ("FlinkRunner", "DONE")
    assert summary["identity_holds"]
    assert summary["output"] == len(events.unique_ids)
    got = {
        (r["window_start"].isoformat(), r["key"]): (r["count"], r["sum_amount"])
        for r in _rows(tmp_path / "out")
    }
    assert got == events.metrics


@pytest.mark.parametrize(
    ("window", "engine", "ms_per_event"),
    [
        ("session:20s", "columnar", 700),
        ("calendar:day@America/New_York", "columnar-parallel", 90_000),  # 3 days
    ],
)
def test_session_and_calendar_windows_on_flink_give_the_local_runs_files(
    flink_endpoint, tmp_path, window, engine, ms_per_event
):
    """On Apache Flink at parallelism 2, session windows (the one-step columnar DoFn on a Flink
    worker: a key's sessions merge across shards) and calendar days (the parallel path's
    stages) write the local run's files byte for byte, with its counters (integer amounts:
    float sums are exact for one shard count only, docs/performance.md "Scale-out")."""
    path = tmp_path / "events.jsonl"
    write_jsonl(
        path, 3_000, seed=3, users=40, malformed_frac=0.02, ms_per_event=ms_per_event,
        amounts_in_cents=True,  # the parallel path's float sums may differ in the last bits
    )  # fmt: skip

    def run(name: str, flags: list[str]) -> tuple[dict, dict[str, bytes]]:
        out = tmp_path / name
        summary = windowed_metrics.run(
            [
                *flags,
                f"--input={path}",
                f"--window={window}",
                "--metrics=count,sum:amount,max:amount",
                "--output_format=parquet",
                f"--output={out / 'rows'}",
                f"--dead_letter={out / 'dlq'}",
            ]
        )
        files = {
            str(f.relative_to(out / "rows")): f.read_bytes()
            for f in sorted((out / "rows").rglob("*.parquet"))
        }
        return summary, files

    local, local_files = run("local", [])
    flink, flink_files = run("flink", _portable("FlinkRunner", flink_endpoint))
    assert (flink["runner"], flink["engine"]) == ("FlinkRunner", engine)
    counters = ("records_in", "output", "duplicate", "dead_letter", "late")
    assert [flink[name] for name in counters] == [local[name] for name in counters]
    assert local["duplicate"] > 0
    assert local["dead_letter"] > 0
    assert len(local_files) > 1
    assert flink_files == local_files
