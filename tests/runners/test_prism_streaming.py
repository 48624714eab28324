"""Streaming end to end on Prism (and Flink) with a real broker: unbounded Kafka reads, live
windows, drains.

Each test starts ``headwater run ... --runner=PrismRunner`` in a subprocess on an unbounded
Kafka read, produces events while it runs, waits on what the job writes (window files, the
consumer group's offsets), then drains it with Ctrl-C (the read stops, every open window is
written, the job ends by itself) and checks the files and the accounting identity against a
plain-Python computation of the same events. The adversarial stream runs on Apache Flink at
parallelism 2 too (``flink_endpoint``: Beam's Flink job server with an embedded Flink), with the
SDK harness in the job's process and with two SDK worker processes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka import Consumer, Producer, TopicPartition

from headwater import runners
from headwater.core.accounting import Accounting, shard_counts
from headwater.devtools.produce import committed_total
from headwater.devtools.reference import windowed_metrics_reference
from headwater.pipelines import windowed_metrics
from headwater.testing.flink_server import start_worker_pool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_MS = 1_700_000_040_000  # a minute boundary: 2023-11-14T22:14:00Z
WINDOW_S = 10
WAVE_MS = 4_000  # one wave spans 4 s of event time, shuffled: less than the 5 s bound
PER_WAVE = 16
PARTITIONS = 2


def _event(event_id: str, at_ms: int, user: str, amount: float) -> bytes:
    return json.dumps(
        {"event_id": event_id, "event_time": at_ms, "user_id": user, "amount": amount}
    ).encode()


def _wave(k: int, rng: random.Random) -> list[bytes]:
    """Wave ``k``: events in [k*4 s, (k+1)*4 s), shuffled, and two exact re-deliveries."""
    lines = [
        _event(f"w{k}-{i}", BASE_MS + k * WAVE_MS + i * (WAVE_MS // PER_WAVE), f"u{i % 3}", i + k)
        for i in range(PER_WAVE)
    ]
    lines += rng.sample(lines, 2)
    rng.shuffle(lines)
    return lines


def _produce(bootstrap: str, topic: str, lines: list[bytes], partitions: int = PARTITIONS) -> None:
    """Produces ``lines`` round-robin over the partitions (each gets some) and waits for acks."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, line in enumerate(lines):
        producer.produce(topic, value=line, partition=i % partitions)
    assert producer.flush(30) == 0, "records not acknowledged"


def _window_file(folder: Path, start_s: int) -> list[Path]:
    """The files of the window starting ``start_s`` seconds after BASE_MS."""
    start = dt.datetime.fromtimestamp(BASE_MS / 1000 + start_s, tz=dt.timezone.utc)
    name = "window_start=" + start.strftime("%Y-%m-%dT%H:%M:%SZ")
    return sorted((folder / name).glob("*.parquet"))


def _rows(folder: Path) -> dict[tuple[Any, str], dict[str, Any]]:
    rows: dict[tuple[Any, str], dict[str, Any]] = {}
    for path in sorted(folder.rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            key = (row["window_start"], row["key"])
            assert key not in rows, f"window {key} written twice ({path})"
            rows[key] = {"count": row["count"], "sum_amount": row["sum_amount"]}
    return rows


def _expected(lines: list[bytes], late: frozenset[bytes] = frozenset()) -> dict[str, Any]:
    reference = windowed_metrics_reference(lines, horizon_s=60, window_s=WINDOW_S, late_lines=late)
    rows = {
        (start, key): {"count": row["count"], "sum_amount": row["sum_amount"]}
        for (start, key), row in reference["rows"].items()
    }
    return {**reference, "rows": rows}


def _letters(folder: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(folder.rglob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _payloads(letters: list[dict[str, Any]]) -> list[bytes]:
    return [base64.b64decode(letter["payload_b64"]) for letter in letters]


def _group_flags(topic: str) -> tuple[str, str]:
    """The flags that commit the read's offsets to the group ``g-<topic>``."""
    return (f"--group_id=g-{topic}", "--commit_offsets")


def _ids(lines: list[bytes]) -> list[str]:
    return sorted(json.loads(line)["event_id"] for line in lines)


def _argv(bootstrap: str, topic: str, out: Path, *extra: str) -> list[str]:
    return [
        "--source=kafka",
        f"--bootstrap_servers={bootstrap}",
        f"--topic={topic}",
        "--event_time_field=event_time",
        "--event_time_unit=ms",
        "--id_field=event_id",
        "--dedup_horizon=60s",
        "--key_field=user_id",
        f"--window=fixed:{WINDOW_S}s",
        "--allowed_lateness=0s",
        "--max_out_of_orderness=5s",
        "--metrics=count,sum:amount",
        f"--output={out / 'metrics'}",
        "--output_format=parquet",
        f"--dead_letter={out / 'dead'}",
        f"--late_output={out / 'late'}",
        *extra,
    ]


def _assert_identity(summary: dict[str, Any], expected: dict[str, Any]) -> None:
    assert summary["identity_holds"], summary
    for name in ("records_in", "output", "duplicate", "dead_letter", "late"):
        assert summary[name] == expected[name], (name, summary, expected)


@pytest.mark.parametrize("kafka_bootstrap", ["apache-kafka", "tansu"], indirect=True)
def test_live_windows_late_stragglers_and_final_files_match_plain_python(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Windows are written while the job runs; stragglers after a later window land in late."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(7)
    out = tmp_path / "out"
    produced: list[bytes] = []

    def produce(lines: list[bytes]) -> None:
        _produce(kafka_bootstrap, topic, lines)
        produced.extend(lines)

    produce([*_wave(0, rng), b"not json {", b"[1, 2]"])  # one unreadable record per partition
    group = f"g-{topic}"
    job = start_stream_job(
        "windowed_metrics",
        _argv(kafka_bootstrap, topic, out, f"--group_id={group}", "--commit_offsets"),
    )
    for k in range(1, 5):  # event time up to 20 s: the watermark passes 10 s
        produce(_wave(k, rng))
    first = wait_until(
        lambda: _window_file(out / "metrics", 0), what="the first window's file", job=job
    )
    assert job.running(), "the first window must be written while the job runs"
    first_bytes = {p: p.read_bytes() for p in first}
    for k in range(5, 8):  # up to 32 s: the window [10 s, 20 s) closes as well
        produce(_wave(k, rng))
    wait_until(lambda: _window_file(out / "metrics", 10), what="the second window's file", job=job)
    # Stragglers of the first window, produced after a later window's file exists: late.
    stragglers = [_event(f"late-{i}", BASE_MS + 1_000 + i, f"u{i % 3}", 100.0) for i in range(4)]
    produce(stragglers)
    for k in range(8, 10):
        produce(_wave(k, rng))
    wait_until(lambda: _window_file(out / "metrics", 20), what="the third window's file", job=job)
    wait_until(
        lambda: job.records_read() == len(produced),
        what="every record read (a drain stops the read where it is)",
        job=job,
    )
    job.drain()
    summary = job.finish()
    assert _committed(kafka_bootstrap, topic, group) == len(produced)  # the drain wrote all

    expected = _expected(produced, late=frozenset(stragglers))
    _assert_identity(summary, expected)
    assert expected["late"] == len(stragglers)
    assert expected["duplicate"] == 20
    assert _ids(_payloads(_letters(out / "late"))) == _ids(stragglers)
    assert _rows(out / "metrics") == expected["rows"]
    assert {p: p.read_bytes() for p in _window_file(out / "metrics", 0)} == first_bytes


def test_idle_partition_stops_holding_the_watermark_after_idle_timeout(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """With one partition silent, windows still close once --idle_timeout has passed."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(11)
    out = tmp_path / "out"
    produced: list[bytes] = []
    argv = _argv(kafka_bootstrap, topic, out, "--idle_timeout=3s", *_group_flags(topic))
    job = start_stream_job("windowed_metrics", argv)
    for k in range(6):  # everything to partition 0; partition 1 never gets a record
        lines = _wave(k, rng)
        _produce(kafka_bootstrap, topic, lines, partitions=1)
        produced.extend(lines)
    wait_until(lambda: _window_file(out / "metrics", 0), what="the first window's file", job=job)
    assert job.running(), "the window must close while the job runs, not at the drain"
    _drain_once_read(job, wait_until, len(produced))
    summary = job.finish()
    expected = _expected(produced)
    _assert_identity(summary, expected)
    assert _rows(out / "metrics") == expected["rows"]


def _committed(bootstrap: str, topic: str, group: str) -> int:
    return committed_total(bootstrap, topic, group, partitions=PARTITIONS)


def test_restart_from_committed_loses_nothing_and_counts_nothing_twice(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Drain, produce more, restart from the group's offsets: the two runs add up exactly."""
    topic = make_kafka_topic(PARTITIONS)
    group = f"g-{topic}"
    rng = random.Random(5)
    out, again = tmp_path / "out", tmp_path / "again"  # a run starts with empty output folders
    committed = ("--start=committed", f"--group_id={group}", "--commit_offsets")
    first_lines = [line for k in range(5) for line in _wave(k, rng)]  # event time [0 s, 20 s)
    _produce(kafka_bootstrap, topic, first_lines)
    first = start_stream_job(
        "windowed_metrics", _argv(kafka_bootstrap, topic, out, *committed), "first"
    )
    wait_until(
        lambda: first.records_read() == len(first_lines), what="the first job's reads", job=first
    )
    first.drain()
    first_summary = first.finish()
    assert _committed(kafka_bootstrap, topic, group) == len(first_lines)
    first_files = {p: p.read_bytes() for p in (out / "metrics").rglob("*.parquet")}
    assert len(first_files) == 2

    second_lines = [line for k in range(5, 10) for line in _wave(k, rng)]  # [20 s, 40 s)
    _produce(kafka_bootstrap, topic, second_lines)
    second = start_stream_job(
        "windowed_metrics", _argv(kafka_bootstrap, topic, again, *committed), "second"
    )
    wait_until(lambda: _window_file(again / "metrics", 20), what="a second window", job=second)
    wait_until(
        lambda: second.records_read() == len(second_lines),
        what="the second job's records read",
        job=second,
    )
    second.drain()
    second_summary = second.finish()

    assert first_summary["records_in"] == len(first_lines)
    assert second_summary["records_in"] == len(second_lines)
    _assert_identity(first_summary, _expected(first_lines))
    _assert_identity(second_summary, _expected(second_lines))
    first_rows, second_rows = _rows(out / "metrics"), _rows(again / "metrics")
    assert not set(first_rows) & set(second_rows), "a window written by both runs"
    assert {**first_rows, **second_rows} == _expected(first_lines + second_lines)["rows"]
    assert {p: p.read_bytes() for p in first_files} == first_files
    assert _committed(kafka_bootstrap, topic, group) == len(first_lines) + len(second_lines)


def _drain_once_read(job: Any, wait_until: Any, count: int) -> None:
    """Drains ``job`` once it has read ``count`` records: a drain stops the read where it is,
    so records not read yet would not be counted."""
    wait_until(lambda: job.records_read() == count, what=f"all {count} records read", job=job)
    job.drain()


def _consume_values(bootstrap: str, topic: str, partitions: int, expected: int) -> list[bytes]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    values: list[bytes] = []
    try:
        while len(values) < expected:
            message = consumer.poll(10)
            assert message is not None, f"only {len(values)} of {expected} records in {topic}"
            if message.error() is None:
                values.append(message.value())
        extra = consumer.poll(1)
        assert extra is None or extra.error() is not None, "more records than expected"
    finally:
        consumer.close()
    return values


def test_kafka_to_kafka_streaming_writes_input_minus_duplicates_and_dead_letters(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
) -> None:
    """Unbounded kafka_to_kafka: the output topic holds each valid id once; DLQ the rest."""
    source, target, dlq = make_kafka_topic(PARTITIONS), make_kafka_topic(1), make_kafka_topic(1)
    rng = random.Random(3)
    lines = [line for k in range(4) for line in _wave(k, rng)] + [b"not json {", b"[1, 2]"]
    job = start_stream_job(
        "kafka_to_kafka",
        [
            "--source=kafka",
            f"--bootstrap_servers={kafka_bootstrap}",
            f"--topic={source}",
            "--event_time_field=event_time",
            "--event_time_unit=ms",
            "--id_field=event_id",
            "--dedup_horizon=60s",
            "--key_field=user_id",
            f"--output_topic={target}",
            f"--dlq_topic={dlq}",
            *_group_flags(source),
        ],
    )
    _produce(kafka_bootstrap, source, lines)
    expected = _expected(lines)
    written = _consume_values(kafka_bootstrap, target, 1, expected["output"])
    dead = _consume_values(kafka_bootstrap, dlq, 1, expected["dead_letter"])
    # Offsets are committed as the records are delivered (or dropped as duplicates or dead):
    # before the drain, with nothing waiting for a window.
    wait_until(
        lambda: _committed(kafka_bootstrap, source, f"g-{source}") == len(lines),
        what="every record's offset committed once delivered",
        job=job,
    )
    _drain_once_read(job, wait_until, len(lines))
    summary = job.finish()
    _assert_identity(summary, expected)
    unique = {json.loads(line)["event_id"]: json.loads(line) for line in lines[:-2]}
    assert sorted(json.loads(v)["event_id"] for v in written) == sorted(unique)
    assert [json.loads(v)["stage"] for v in dead] == ["decode", "decode"]


def test_parallelism_two_on_prisms_job_server_writes_the_same_files_as_one(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    prism_endpoint: str,
    tmp_path: Path,
) -> None:
    """PortableRunner on Prism's job server with 2 SDK workers: the files of 1 worker."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(13)
    lines = [line for k in range(8) for line in _wave(k, rng)]
    _produce(kafka_bootstrap, topic, lines)
    files = {}
    for name, extra in (
        ("one", ["--sdk_worker_parallelism=1"]),
        (
            "two",
            [
                "--runner=PortableRunner",
                f"--job_endpoint={prism_endpoint}",
                "--environment_type=LOOPBACK",
                "--sdk_worker_parallelism=2",
            ],
        ),
    ):
        out, group = tmp_path / name, f"g-{name}-{topic}"
        job = start_stream_job(
            "windowed_metrics",
            _argv(kafka_bootstrap, topic, out, f"--group_id={group}", "--commit_offsets", *extra),
            name,
        )
        _drain_once_read(job, wait_until, len(lines))
        summary = job.finish()
        assert _committed(kafka_bootstrap, topic, group) == len(lines)
        assert summary["runner"] == ("PortableRunner" if name == "two" else "PrismRunner")
        _assert_identity(summary, _expected(lines))
        files[name] = {
            p.relative_to(out / "metrics"): p.read_bytes()
            for p in (out / "metrics").rglob("*.parquet")
        }
    assert len(files["one"]) == 4  # 8 waves of 4 s: windows of 10 s from 0 s to 40 s
    assert files["two"] == files["one"]
    assert _rows(tmp_path / "two" / "metrics") == _expected(lines)["rows"]


def test_partition_behind_another_is_not_judged_late(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The watermark is the minimum over partitions, not the partition read last."""
    topic = make_kafka_topic(PARTITIONS)
    group = f"g-{topic}"
    out = tmp_path / "out"

    def produce(partition: int, seconds: list[float], tag: str) -> list[bytes]:
        lines = [
            _event(f"{tag}-{i}", BASE_MS + round(s * 1000), "u1", 1.0)
            for i, s in enumerate(seconds)
        ]
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for line in lines:
            producer.produce(topic, value=line, partition=partition)
        assert producer.flush(30) == 0
        return lines

    job = start_stream_job(
        "windowed_metrics",
        _argv(kafka_bootstrap, topic, out, f"--group_id={group}", "--commit_offsets"),
    )
    lines = produce(0, [1, 2, 3], "a0") + produce(1, [1, 2, 3], "a1")
    lines += produce(0, [100], "ahead")  # partition 0 alone moves to 95 s
    wait_until(lambda: job.records_read() == len(lines), what="partition 0's jump read", job=job)
    lines += produce(1, [5, 6, 7, 8], "behind")  # within partition 1's bound: on time
    lines += produce(1, [200], "end1") + produce(0, [200], "end0")
    _drain_once_read(job, wait_until, len(lines))
    summary = job.finish()
    assert _committed(kafka_bootstrap, topic, group) == len(lines)
    expected = _expected(lines)
    _assert_identity(summary, expected)
    assert summary["late"] == 0
    assert _rows(out / "metrics") == expected["rows"]


def test_second_interrupt_cancels_the_job_and_still_reports(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Ctrl-C twice: the job is cancelled (not left running) and the summary says so."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(17)
    out = tmp_path / "out"
    job = start_stream_job("windowed_metrics", _argv(kafka_bootstrap, topic, out))
    for k in range(5):
        _produce(kafka_bootstrap, topic, _wave(k, rng))
    wait_until(lambda: _window_file(out / "metrics", 0), what="the first window's file", job=job)
    job.drain()
    wait_until(lambda: b"draining the job" in job.log.read_bytes(), what="the drain", job=job)
    job.drain()
    try:
        job.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the job did not stop:\n{job.log_tail()}") from None
    summary = json.loads(job.summary_path.read_text(encoding="utf-8"))
    assert summary["state"] == "CANCELLED"
    assert summary["records_in"] <= 5 * (PER_WAVE + 2)


def test_stream_etl_writes_each_on_time_record_once_into_its_window(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Unbounded stream_etl on Prism: window files while running, every kept id once."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(19)
    out = tmp_path / "out"
    lines = [line for k in range(6) for line in _wave(k, rng)]
    argv = [a for a in _argv(kafka_bootstrap, topic, out) if not a.startswith(("--key", "--met"))]
    job = start_stream_job("stream_etl", [*argv, *_group_flags(topic)])
    _produce(kafka_bootstrap, topic, lines)
    wait_until(lambda: _window_file(out / "metrics", 0), what="the first window's file", job=job)
    assert job.running()
    _drain_once_read(job, wait_until, len(lines))
    summary = job.finish()
    expected = _expected(lines)
    _assert_identity(summary, expected)
    written = [
        row["event_id"]
        for path in sorted((out / "metrics").rglob("*.parquet"))
        for row in pq.read_table(path).to_pylist()
    ]
    assert sorted(written) == sorted({json.loads(line)["event_id"] for line in lines})


def test_max_duration_drains_the_job_by_itself(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """--max_duration: the read stops at its deadline and every window is written, no Ctrl-C."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(23)
    out = tmp_path / "out"
    lines = [line for k in range(6) for line in _wave(k, rng)]
    _produce(kafka_bootstrap, topic, lines)
    job = start_stream_job(
        "windowed_metrics", _argv(kafka_bootstrap, topic, out, "--max_duration=30s")
    )
    wait_until(lambda: _window_file(out / "metrics", 0), what="the first window's file", job=job)
    summary = job.finish()
    expected = _expected(lines)
    assert summary["state"] == "DONE"
    _assert_identity(summary, expected)
    assert _rows(out / "metrics") == expected["rows"]


def _runner_flags(workers: str, request: pytest.FixtureRequest) -> list[str]:
    """Prism itself, Prism's job server with 2 SDK workers, or Apache Flink at parallelism 2."""
    if workers == "prism":
        return []
    if workers == "flink-parallelism-2":
        endpoint = request.getfixturevalue("flink_endpoint")
        return [
            "--runner=FlinkRunner",
            f"--job_endpoint={endpoint}",
            "--environment_type=LOOPBACK",
            "--parallelism=2",
        ]
    return [
        "--runner=PortableRunner",
        f"--job_endpoint={request.getfixturevalue('prism_endpoint')}",
        "--environment_type=LOOPBACK",
        "--sdk_worker_parallelism=2",
    ]


@pytest.mark.parametrize("workers", ["prism", "job-server-2-workers", "flink-parallelism-2"])
def test_adversarial_stream_puts_every_record_in_one_place(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    workers: str,
) -> None:
    """One hot key, a gap of event time, stragglers into a window nothing touched and a record
    five minutes older than the stream: each record ends in a window file or late, never both,
    never neither -- on Prism, on its job server with two SDK workers, and on Apache Flink with
    parallelism 2 (the late router's shards spread over its two subtasks)."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(17)
    out = tmp_path / "out"
    produced: list[bytes] = []

    def produce(lines: list[bytes]) -> None:
        _produce(kafka_bootstrap, topic, lines)
        produced.extend(lines)

    hot = [_event(f"hot-{i}", BASE_MS + i * 250, "hot", 1.0) for i in range(32)]  # [0 s, 8 s)
    produce(hot)
    extra = _runner_flags(workers, request)
    job = start_stream_job(
        "windowed_metrics", _argv(kafka_bootstrap, topic, out, *_group_flags(topic), *extra)
    )
    for k in range(6, 10):  # event time jumps to [24 s, 40 s): window [10 s, 20 s) stays empty
        produce(_wave(k, rng))
    wait_until(lambda: _window_file(out / "metrics", 20), what="window [20 s, 30 s)", job=job)
    stragglers = [_event(f"gap-{i}", BASE_MS + 15_000 + i, "u9", 5.0) for i in range(3)]
    stragglers += [_event(f"old-{i}", BASE_MS - 300_000 + i, "u1", 7.0) for i in range(2)]
    produce(stragglers)
    for k in range(10, 13):  # [40 s, 52 s): the window [30 s, 40 s) closes after them
        produce(_wave(k, rng))
    wait_until(lambda: _window_file(out / "metrics", 30), what="window [30 s, 40 s)", job=job)
    _drain_once_read(job, wait_until, len(produced))
    summary = job.finish()

    expected = _expected(produced, late=frozenset(stragglers))
    _assert_identity(summary, expected)
    assert _ids(_payloads(_letters(out / "late"))) == _ids(stragglers)
    assert _rows(out / "metrics") == expected["rows"]
    assert not _window_file(out / "metrics", 10), "nothing may reach the window nothing touched"
    spread = summary["late_routing_shards"]
    print("records per late-routing shard:", spread)
    assert sum(spread) == expected["output"] + expected["late"]  # every unique record, once
    assert sum(1 for n in spread if n) > 1, f"one shard took every record: {spread}"


def test_flink_worker_processes_put_every_record_in_one_place(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    flink_endpoint: str,
    tmp_path: Path,
) -> None:
    """Apache Flink at parallelism 2 with two SDK worker *processes* (Beam's worker pool,
    ``EXTERNAL``): the adversarial stream, produced first, is read live (``--streaming``) until
    ``--max_duration`` drains the job from inside the workers, over 256 late-routing shards (more
    than the records: most shards stay idle and must hold nothing back). Which stragglers are
    late depends on how far the two partitions' reads are apart, so the late output is read back:
    every record is in the rows or late, never both, never neither."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(23)
    out = tmp_path / "out"
    lines = [_event(f"hot-{i}", BASE_MS + i * 250, "hot", 1.0) for i in range(32)]
    lines += [line for k in range(6, 10) for line in _wave(k, rng)]
    stragglers = [_event(f"gap-{i}", BASE_MS + 15_000 + i, "u9", 5.0) for i in range(3)]
    stragglers += [_event(f"old-{i}", BASE_MS - 300_000 + i, "u1", 7.0) for i in range(2)]
    lines += stragglers + [line for k in range(10, 13) for line in _wave(k, rng)]
    _produce(kafka_bootstrap, topic, lines)
    with start_worker_pool() as pool:
        flags = [
            "--runner=FlinkRunner",
            f"--job_endpoint={flink_endpoint}",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool.address}",
            "--parallelism=2",
            "--sdk_worker_parallelism=2",
            "--streaming",
            "--max_duration=20s",
            "--stream_shards=256",
        ]
        options = PipelineOptions(_argv(kafka_bootstrap, topic, out, *flags))
        assert runners.prepare(options, streaming=True) == "FlinkRunner"
        p = beam.Pipeline(options=options)
        windowed_metrics.build(p, options)
        result = p.run()
        assert result.wait_until_finish() == "DONE"
        workers = pool.log_tail(400).count("Starting worker")
    assert workers >= 2, "the job ran on fewer than two SDK worker processes"
    late = frozenset(_payloads(_letters(out / "late")))
    assert late <= frozenset(stragglers), "only stragglers can be late"
    expected = _expected(lines, late=late)
    accounting = Accounting.from_result(result)
    _assert_identity(accounting.to_dict(), expected)
    assert _rows(out / "metrics") == expected["rows"]
    spread = shard_counts(result)
    assert sum(spread) == expected["output"] + expected["late"] < 256
    assert sum(1 for n in spread if n) > 1, spread
