"""Kafka faults against a real broker: unreachable, restarted, re-delivery, offsets vs durability.

* Unreachable at start: the CLI exits 1 within a bounded time with one ``headwater: error:``
  line naming the bootstrap servers.
* Broker stopped and restarted during a bounded read: Tansu keeps data in memory, so the
  restarted broker has lost the topic and the read *cannot* complete with all records. The only
  correct outcomes are therefore the full count (everything was already fetched before the
  stop) or a failure that says so; a short count reported as success, or a read that never
  ends, is a bug.
* Re-delivery: the same bounded read twice into the same folder writes byte-identical files
  (deterministic names, no extra files); the same records delivered twice in one run come out
  once (dedup), the copies counted as duplicates.
* Offsets: with ``--commit_offsets`` a run whose sink fails leaves the group's committed offsets
  where they were; a successful run moves them to the end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from _reliability import METRICS_FLAGS, digests, event, line, metric_rows, run_built
from confluent_kafka import Consumer, TopicPartition

from headwater.devtools.produce import produce_lines
from headwater.pipelines import windowed_metrics
from headwater.testing.assertions import assert_accounting

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_unreachable_broker_fails_fast_with_one_error_line(tmp_path):
    """No broker at the address: exit 1 in bounded time, one line naming the servers."""
    bootstrap = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = _cli(
        "run",
        "windowed_metrics",
        "--source=kafka",
        f"--bootstrap_servers={bootstrap}",
        "--topic=events",
        "--stop_at_end",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        cwd=tmp_path,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.startswith("headwater: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert bootstrap in lines[0]
    assert "connecting to Kafka" in lines[0]
    assert elapsed < 60, f"took {elapsed:.1f}s"  # connect_timeout is 10 s
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_broker_restart_during_bounded_read_completes_or_fails_clearly():
    """Broker stopped and restarted empty mid-read: the full count or a clear failure."""
    n = 200_000
    result = subprocess.run(
        [sys.executable, "-c", f"import _restart_read; _restart_read.main({n})"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    outcomes = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert outcomes, result.stderr[-2000:]
    outcome = outcomes[-1]
    assert outcome["seen"] >= 1000, outcome  # the broker did stop mid-read
    if outcome["outcome"] == "completed":
        assert outcome["count"] == n, f"silent short read: {outcome}"
    else:
        assert outcome["outcome"] == "failed", f"the read never ended: {outcome}"
        assert "Kafka" in outcome["error"]


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> None:
    produce_lines(bootstrap, topic, [(None, x) for x in payloads], partitions=3)


def _kafka_flags(tmp_path: Path, bootstrap: str, topic: str, *extra: str) -> list[str]:
    return [
        *METRICS_FLAGS,
        "--source=kafka",
        f"--bootstrap_servers={bootstrap}",
        f"--topic={topic}",
        "--stop_at_end",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        *extra,
    ]


def test_same_bounded_read_twice_into_one_folder_is_byte_identical(
    tmp_path, kafka_bootstrap, kafka_topic
):
    """Re-running a bounded read rewrites the same files with the same bytes, nothing extra."""
    payloads = [line(event(n, user=f"u{n % 7}")) for n in range(300)] + [b"{bad"]
    _produce(kafka_bootstrap, kafka_topic, payloads)
    flags = _kafka_flags(tmp_path, kafka_bootstrap, kafka_topic)
    first = run_built(windowed_metrics, flags)
    assert_accounting(first, records_in=301, output=300, dead_letter=1, duplicate=0, late=0)
    before = digests(tmp_path / "out")
    assert before
    second = run_built(windowed_metrics, flags)
    assert_accounting(second, records_in=301, output=300, dead_letter=1)
    assert digests(tmp_path / "out") == before
    assert sum(r["count"] for r in metric_rows(tmp_path / "out")) == 300


def test_records_delivered_twice_in_one_run_come_out_once(
    tmp_path, kafka_bootstrap, make_kafka_topic
):
    """The same records produced twice (a producer retry) are counted as duplicates, output once."""
    payloads = [line(event(n, user=f"u{n % 5}")) for n in range(200)]
    once, twice = make_kafka_topic(3), make_kafka_topic(3)
    _produce(kafka_bootstrap, once, payloads)
    _produce(kafka_bootstrap, twice, payloads + payloads)
    single = run_built(windowed_metrics, _kafka_flags(tmp_path / "once", kafka_bootstrap, once))
    assert_accounting(single, records_in=200, output=200, duplicate=0)
    double = run_built(windowed_metrics, _kafka_flags(tmp_path / "twice", kafka_bootstrap, twice))
    assert_accounting(double, records_in=400, output=200, duplicate=200)
    assert metric_rows(tmp_path / "twice" / "out") == metric_rows(tmp_path / "once" / "out")


class _FailingSinkError(RuntimeError):
    """The sink could not make the output durable."""


def _fail(_row: object) -> None:
    raise _FailingSinkError("disk full (simulated)")


def _committed(bootstrap: str, topic: str, group: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=10)
        return [tp.offset for tp in parts]
    finally:
        consumer.close()


def test_offsets_are_committed_only_after_the_output_is_durable(
    tmp_path, kafka_bootstrap, kafka_topic
):
    """A run whose sink fails commits no offsets; a successful run commits the end offsets."""
    payloads = [line(event(n)) for n in range(60)]
    counts = produce_lines(
        kafka_bootstrap, kafka_topic, [(None, x) for x in payloads], partitions=3
    )
    group = f"hw-reliability-{uuid.uuid4().hex[:8]}"
    flags = _kafka_flags(
        tmp_path, kafka_bootstrap, kafka_topic, "--commit_offsets", f"--group_id={group}"
    )
    with pytest.raises(Exception, match="disk full"):
        run_built(windowed_metrics, flags, sink=beam.Map(_fail))
    after_failure = _committed(kafka_bootstrap, kafka_topic, group)
    assert all(offset < 0 for offset in after_failure), (
        f"committed after a failed run: {after_failure}"
    )
    result = run_built(windowed_metrics, flags)
    assert_accounting(result, records_in=60, output=60)
    assert _committed(kafka_bootstrap, kafka_topic, group) == [counts.get(p, 0) for p in range(3)]
