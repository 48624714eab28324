"""SLIs scraped from a live Prism stream: ``headwater run ... --metrics_port`` on a real broker.

A ``stream_etl`` job reads an unbounded topic on Prism and serves its metrics on a free port;
two waves of events are produced, and ``/metrics`` (read with urllib, parsed with
prometheus_client's parser) must show the accounting counters, the freshness histogram and the
watermark lag moving between the scrapes, with the values the waves imply, and the consumer lag
of every partition (0 once the job has read all: it reads 47 records faster than a scrape, so a
non-zero lag is not caught here; tests/io/kafka/test_kafka_backlog.py watches one fall on Prism).
Every metric the alert rules of docs/operations.md use must be among those served. And on Beam's
own job service (the Job API Flink's job server speaks) serving the metrics leaves the run
summary whole: that service answers in full only once after a job has ended.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from headwater.pipelines import stream_etl
from headwater.testing.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 2
PER_WAVE = 20
WINDOW_S = 60  # the windowing step's clock ticks once a window: 60 s of event time a tick
OLD_S = 300  # wave 1 happened five minutes ago; wave 2 happens now
STRAGGLER_S = 500  # wave 2's stragglers are older than wave 1: their windows have closed
FRESH_COUNT = "headwater_freshness_seconds_count"
FRESH_120 = "headwater_freshness_seconds_bucket{le=120.0}"


def _event(event_id: str, at_ms: int) -> bytes:
    return json.dumps({"event_id": event_id, "event_time": at_ms, "user_id": "u"}).encode()


def _produce(bootstrap: str, topic: str, lines: list[bytes], partitions: int = PARTITIONS) -> None:
    """Produces ``lines`` round-robin over the partitions and waits for the acks."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for i, line in enumerate(lines):
        producer.produce(topic, value=line, partition=i % partitions)
    assert producer.flush(30) == 0, "records not acknowledged"


def _argv(bootstrap: str, topic: str, out: Path, port: int, *extra: str) -> list[str]:
    """``stream_etl`` on the topic with 60 s windows, serving its metrics on ``port``."""
    return [
        "--source=kafka",
        f"--bootstrap_servers={bootstrap}",
        f"--topic={topic}",
        "--event_time_field=event_time",
        "--event_time_unit=ms",
        "--id_field=event_id",
        f"--window=fixed:{WINDOW_S}s",
        "--allowed_lateness=0s",
        "--max_out_of_orderness=5s",
        f"--output={out / 'rows'}",
        f"--dead_letter={out / 'dead'}",
        f"--metrics_port={port}",
        *extra,
    ]


def _scrape(port: int) -> dict[str, Any]:
    """``/metrics`` as {sample name + sorted labels but pipeline: value}; {} while it is down."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.get("pipeline") == "stream_etl", sample
            labels = sorted(sample.labels.items())
            extra = ",".join(f"{k}={v}" for k, v in labels if k != "pipeline")
            samples[f"{sample.name}{{{extra}}}" if extra else sample.name] = sample.value
    return samples


def _scrape_until(
    port: int, check: Callable[[dict[str, Any]], bool], wait_until: Callable[..., Any], **kw: Any
) -> dict[str, Any]:
    """The first scrape that passes ``check``; a timeout shows the last scrape."""
    last: list[dict[str, Any]] = [{}]

    def passes() -> dict[str, Any] | None:
        last[0] = _scrape(port)
        return last[0] if last[0] and check(last[0]) else None

    try:
        return wait_until(passes, **kw)
    except AssertionError as exc:
        shown = {k: v for k, v in last[0].items() if "_bucket" not in k or "le=120.0" in k}
        raise AssertionError(f"{exc}\nlast scrape: {shown}") from None


def _summary_as_samples(summary: dict[str, Any]) -> dict[str, Any]:
    """The run summary's counters under their scraped names."""
    return {f"headwater_{k}_total": v for k, v in summary.items() if isinstance(v, int)}


def _alert_rules() -> list[dict[str, Any]]:
    """The Prometheus rules in docs/operations.md (its "Alert rules" section)."""
    text = (Path(__file__).parents[2] / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Alert rules", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    [group] = yaml.safe_load(block)["groups"]
    assert {rule["alert"] for rule in group["rules"]} >= {
        "HeadwaterFreshnessP95Over5m",
        "HeadwaterDeadLetterRateOver1Percent",
        "HeadwaterDuplicateRateAnomaly",
        "HeadwaterConsumerLagGrowing",
        "HeadwaterWatermarkLag",
    }
    return group["rules"]


def _accounting(samples: dict[str, Any]) -> tuple[float, ...]:
    names = ("records_in", "output", "duplicate", "dead_letter", "late")
    return tuple(samples.get(f"headwater_{name}_total", 0) for name in names)


def test_scraped_counters_freshness_and_watermark_lag_move_with_the_stream(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Between two waves /metrics shows the counters, freshness and watermark lag move."""
    topic = make_kafka_topic(PARTITIONS)
    port = free_port()
    out = tmp_path / "out"
    job = start_stream_job(
        "stream_etl", _argv(kafka_bootstrap, topic, out, port, "--dedup_horizon=60m")
    )
    lags = [
        f"headwater_consumer_lag_messages{{partition={p},topic={topic}}}" for p in range(PARTITIONS)
    ]
    old_ms = int((time.time() - OLD_S) * 1000)
    straggler_ms = int((time.time() - STRAGGLER_S) * 1000)
    wave1 = [_event(f"a{i}", old_ms + i * 100) for i in range(PER_WAVE)]
    _produce(kafka_bootstrap, topic, [*wave1, wave1[0], wave1[1], b"not json {"])
    # Counted before the windowing step: exact. Past it, records come out as its clock walks.
    first = _scrape_until(
        port,
        lambda s: (
            _accounting(s)[0] == 23
            and _accounting(s)[2:] == (2, 1, 0)
            and _accounting(s)[1] >= 1
            and s.get(FRESH_COUNT, 0) >= 1
            # the windowing step's watermark has passed the stragglers' window: they will be late
            and s.get("headwater_watermark_seconds", 0) * 1000 > straggler_ms + WINDOW_S * 1000
            and all(lag in s for lag in lags)
        ),
        wait_until,
        what="wave 1 in the scraped metrics",
        job=job,
        timeout=120,
    )
    # Five minutes old when they reached the writer: none in the buckets up to two minutes.
    assert first[FRESH_120] == 0
    assert first["headwater_freshness_seconds_bucket{le=+Inf}"] == first[FRESH_COUNT]
    assert first["headwater_freshness_max_seconds"] >= OLD_S - 1
    assert first["headwater_watermark_lag_seconds"] >= OLD_S

    now_ms = int(time.time() * 1000)
    wave2 = [_event(f"b{i}", now_ms + i * 100) for i in range(PER_WAVE)]
    stragglers = [_event(f"s{i}", straggler_ms + i) for i in range(2)]
    _produce(kafka_bootstrap, topic, [*wave2, wave1[2], *stragglers, b"[1, 2]"])
    second = _scrape_until(
        port,
        lambda s: (
            _accounting(s)[0] == 47
            and _accounting(s)[2:] == (3, 2, 2)
            and _accounting(s)[1] > _accounting(first)[1]
            and s.get(FRESH_120, 0) >= 1
            # caught up: within one window (+ the 5 s bound) of wave 2's event times
            and s.get("headwater_watermark_seconds", 0) >= now_ms / 1000 - WINDOW_S - 6
        ),
        wait_until,
        what="wave 2 in the scraped metrics",
        job=job,
        timeout=120,
    )
    assert second[FRESH_COUNT] > first[FRESH_COUNT]
    assert second["headwater_freshness_seconds_sum"] > first["headwater_freshness_seconds_sum"]
    assert second["headwater_watermark_lag_seconds"] < first["headwater_watermark_lag_seconds"]
    assert second["headwater_metrics_updated_timestamp_seconds"] > time.time() - 30
    # Every record produced has been read: no partition has a backlog.
    assert [second[lag] for lag in lags] == [0] * PARTITIONS
    served = {name.split("{")[0] for name in second}
    for rule in _alert_rules():
        used = set(re.findall(r"headwater_\w+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= served, (rule["alert"], used - served)

    job.drain()
    summary = job.finish()
    assert summary["identity_holds"], summary
    assert _accounting(_summary_as_samples(summary)) == (47, 40, 3, 2, 2)
    assert _scrape(port) == {}, "the metrics endpoint stops with the run"


def test_a_record_just_past_a_window_close_is_routed_before_the_watermark_reaches_it(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """Prism hands a key's data and timers over in timestamp order: a record 1 s past a window
    close, with the watermark 4 s before it, used to wait behind the router's tick at that
    close until the watermark passed it (for good, as nothing more came). It is counted now.
    One partition: an empty one would hold the watermark at the start of time."""
    topic = make_kafka_topic(1)
    port = free_port()
    boundary_ms = (int(time.time()) // 60 - 60) * 60_000  # a minute boundary an hour ago
    job = start_stream_job("stream_etl", _argv(kafka_bootstrap, topic, tmp_path, port))
    _produce(kafka_bootstrap, topic, [_event("before", boundary_ms - 5_000)], partitions=1)
    _scrape_until(
        port, lambda s: _accounting(s)[:2] == (1, 1), wait_until, what="the first", job=job
    )
    _produce(kafka_bootstrap, topic, [_event("after", boundary_ms + 1_000)], partitions=1)
    second = _scrape_until(
        port,
        lambda s: _accounting(s) == (2, 2, 0, 0, 0),
        wait_until,
        what="the record past the close counted as output",
        job=job,
        timeout=60,
    )
    # the watermark (4 s before the boundary) has not reached the close it came past
    assert second.get("headwater_watermark_seconds", 0) * 1000 < boundary_ms
    job.drain()
    assert job.finish()["output"] == 2


@pytest.mark.parametrize("runner", ["FlinkRunner", "PortableRunner"])
def test_metrics_port_leaves_a_job_service_runs_summary_whole(
    runner: str, job_endpoint: str, events: Any, tmp_path: Path
) -> None:
    """A batch run on Beam's job service with --metrics_port still counts every record."""
    summary = stream_etl.run(
        [
            f"--runner={runner}",
            f"--job_endpoint={job_endpoint}",
            "--environment_type=LOOPBACK",
            f"--input={events.path}",
            f"--output={tmp_path / 'rows'}",
            f"--dead_letter={tmp_path / 'dead'}",
            f"--metrics_port={free_port()}",
        ]
    )
    assert summary["identity_holds"], summary
    assert (summary["records_in"], summary["dead_letter"]) == (
        events.records_in,
        events.dead_letters,
    )
