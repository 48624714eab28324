"""SLIs for Prometheus: Beam metrics -> Prometheus names, labels, histogram buckets; refusals.

The metrics come from real pipelines on the FnApiRunner (real counters, distributions, gauges
and the freshness step); the text is rendered by prometheus_client and parsed back.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.cells import DistributionData, DistributionResult
from apache_beam.metrics.execution import MetricKey, MetricResult
from apache_beam.metrics.metricbase import MetricName
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from headwater.io.kafka.backlog import LAG_MESSAGES, lag_metric_name
from headwater.pipelines import stream_etl
from headwater.pipelines.options import MetricsAddress
from headwater.pipelines.slis import (
    MetricsEndpoint,
    MetricsPortError,
    metric_families,
    prometheus_name,
)
from headwater.testing.broker import free_port
from headwater.transforms.observe import FRESHNESS_BUCKETS_MS, RecordFreshness

LABELS = {"pipeline": "stream_etl"}


class _Count(beam.DoFn):
    def __init__(self, namespace: str, name: str):
        self._counter = Metrics.counter(namespace, name)

    def process(self, element: Any):
        self._counter.inc()
        yield element


class _Set(beam.DoFn):
    def __init__(self, kind: str, name: str, value: int):
        self._metric = getattr(Metrics, kind)("headwater", name)
        self._value = value

    def process(self, element: Any):
        if hasattr(self._metric, "set"):
            self._metric.set(self._value)
        else:
            self._metric.update(element)
        yield element


def _run(build) -> Any:
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    build(p)
    return p.run()


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def _samples(query: Any, now: float | None = None) -> dict[str, float]:
    """The scraped text of ``query`` as {name{labels but pipeline}: value}."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metric_families(query, labels=LABELS, now=now)))
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.labels.pop("pipeline") == "stream_etl"
            extra = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{extra}}}" if extra else sample.name] = sample.value
    return samples


def test_prometheus_names_are_the_beam_names_made_valid_with_ms_in_seconds():
    """headwater/parse.dead_letter -> headwater_parse_dead_letter; *_ms -> *_seconds x 0.001."""
    assert prometheus_name("headwater", "parse.dead_letter") == (
        "headwater_parse_dead_letter",
        "",
        1.0,
    )
    assert prometheus_name("headwater.io", "kafka.records-read") == (
        "headwater_io_kafka_records_read",
        "",
        1.0,
    )
    assert prometheus_name("headwater", "freshness_ms") == ("headwater_freshness", "_seconds", 1e-3)


def test_counters_are_summed_over_steps_under_stable_names_with_the_pipeline_label():
    """A counter two steps publish is one series; other namespaces are not exported."""

    def build(p):
        _ = (
            p
            | beam.Create([1, 2, 3])
            | "A" >> beam.ParDo(_Count("headwater", "records_in"))
            | "B" >> beam.ParDo(_Count("headwater", "records_in"))
            | "C" >> beam.ParDo(_Count("headwater.io", "kafka.records_read"))
            | "D" >> beam.ParDo(_Count("someone.else", "records_in"))
        )

    samples = _samples(_run(build).metrics().query())
    assert samples["headwater_records_in_total"] == 6
    assert samples["headwater_io_kafka_records_read_total"] == 3
    assert not [name for name in samples if name.startswith("someone")]


def test_freshness_is_a_cumulative_histogram_in_seconds_with_sum_count_and_max():
    """Records 20 s, 200 s and 4000 s old fill the buckets so histogram_quantile works."""
    now = time.time()
    ages = [20.0, 200.0, 4000.0]

    def build(p):
        _ = (
            p
            | beam.Create(ages)
            | beam.Map(lambda age: TimestampedValue(age, now - age))
            | RecordFreshness()
        )

    samples = _samples(_run(build).metrics().query())
    buckets = {
        name.split("le=")[1].rstrip("}"): value
        for name, value in samples.items()
        if name.startswith("headwater_freshness_seconds_bucket")
    }
    assert len(buckets) == len(FRESHNESS_BUCKETS_MS) + 1  # every bound, and +Inf
    shown = ("0.1", "10.0", "30.0", "120.0", "300.0", "3600.0", "21600.0", "+Inf")
    assert [buckets[le] for le in shown] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert samples["headwater_freshness_seconds_count"] == 3
    assert samples["headwater_freshness_seconds_sum"] == pytest.approx(sum(ages), abs=5)
    assert samples["headwater_freshness_max_seconds"] == pytest.approx(4000, abs=5)
    assert samples["headwater_freshness_min_seconds"] == pytest.approx(20, abs=5)
    assert "headwater_freshness_seconds" not in samples  # no second family under the name


def test_freshness_of_a_record_in_an_open_window_is_its_own_age():
    """A record 20 s old whose hour window is still open is 20 s fresh, not 0 (window end)."""
    now = time.time()

    def build(p):
        _ = (
            p
            | beam.Create([20.0])
            | beam.Map(lambda age: TimestampedValue(age, now - age))
            | beam.WindowInto(FixedWindows(3600, offset=int(now) % 3600))  # ends in an hour
            | RecordFreshness()
        )

    samples = _samples(_run(build).metrics().query())
    assert samples["headwater_freshness_min_seconds"] == pytest.approx(20, abs=5)
    assert samples["headwater_freshness_seconds_bucket{le=10.0}"] == 0


def test_watermark_is_the_newest_one_seen_with_its_lag_behind_now():
    """Watermarks seen (distribution watermark_ms): the max, and now minus it, in seconds."""

    def build(p):
        _ = (
            p
            | beam.Create([400_000, 1_000_000, 7_000])
            | beam.ParDo(_Set("distribution", "watermark_ms", 0))
        )

    samples = _samples(_run(build).metrics().query(), now=1_500.0)
    assert samples["headwater_watermark_seconds"] == 1_000.0
    assert samples["headwater_watermark_lag_seconds"] == 500.0


def test_consumer_lag_gauges_are_one_family_labelled_by_topic_and_partition():
    """consumer_lag_messages/<topic>/<partition> -> consumer_lag_messages{topic, partition}."""

    def build(p):
        rows = p | beam.Create([1])
        for partition, lag in ((0, 5), (1, 7)):
            name = lag_metric_name(LAG_MESSAGES, "events.v1", partition)
            _ = rows | f"Lag{partition}" >> beam.ParDo(_Set("gauge", name, lag))

    samples = _samples(_run(build).metrics().query())
    assert samples["headwater_consumer_lag_messages{partition=0,topic=events.v1}"] == 5
    assert samples["headwater_consumer_lag_messages{partition=1,topic=events.v1}"] == 7


def test_distribution_without_buckets_is_a_summary_with_min_and_max():
    """A plain distribution: _count and _sum, and gauges _min and _max (since the start)."""

    def build(p):
        _ = p | beam.Create([3, 9, 4]) | beam.ParDo(_Set("distribution", "rows_per_file", 0))

    samples = _samples(_run(build).metrics().query())
    assert samples["headwater_rows_per_file_count"] == 3
    assert samples["headwater_rows_per_file_sum"] == 16
    assert (samples["headwater_rows_per_file_min"], samples["headwater_rows_per_file_max"]) == (
        3,
        9,
    )


def test_committed_values_are_used_and_attempted_ones_where_none_are_committed():
    """A runner that commits nothing yet (Flink while running) still shows its counts."""
    key = MetricKey("step", MetricName("headwater", "records_in"))
    dist_key = MetricKey("step", MetricName("headwater", "freshness_ms"))
    query = {
        "counters": [MetricResult(key, None, 4), MetricResult(key, 2, 9)],
        "distributions": [
            MetricResult(dist_key, None, DistributionResult(DistributionData(3000, 2, 1000, 2000)))
        ],
        "gauges": [],
    }
    samples = _samples(query)
    assert samples["headwater_records_in_total"] == 6
    assert samples["headwater_freshness_seconds_sum"] == 3.0
    assert samples["headwater_freshness_max_seconds"] == 2.0


def test_endpoint_serves_a_runs_metrics_over_http_and_frees_its_port():
    """/metrics answers with the followed run's counters; the server stops with the block."""
    result = _run(lambda p: p | beam.Create([1, 2]) | beam.ParDo(_Count("headwater", "records_in")))
    address = MetricsAddress("127.0.0.1", free_port())
    with MetricsEndpoint(address, labels=LABELS) as endpoint:
        endpoint.follow(result)
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    assert 'headwater_records_in_total{pipeline="stream_etl"} 2.0' in text
    assert "headwater_metrics_updated_timestamp_seconds" in text
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address.host, address.port), timeout=5)


# ------------------------------------------------------------------------------------------
# Refusals


def _files_argv(tmp_path: Path, *extra: str) -> list[str]:
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event_id": "e1", "event_time": 1_000}) + "\n")
    return [
        f"--input={events}",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dead'}",
        *extra,
    ]


def test_metrics_port_is_refused_on_dataflow_naming_the_flag(tmp_path):
    """Dataflow keeps the SLIs as Beam metrics: --metrics_port there is refused, not ignored."""
    argv = _files_argv(
        tmp_path,
        "--runner=DataflowRunner",
        "--project=p",
        "--region=europe-west1",
        "--temp_location=gs://bucket/tmp",
        "--metrics_port=9464",
    )
    with pytest.raises(ValueError, match=r"^--metrics_port does not apply to --runner=Dataflow"):
        stream_etl.run(argv)


def test_metrics_port_is_refused_on_the_local_batch_runner(tmp_path):
    """The FnApiRunner has metrics only when it ends: the flag is refused, naming Prism."""
    with pytest.raises(ValueError, match=r"^--metrics_port needs .*--runner=PrismRunner"):
        stream_etl.run(_files_argv(tmp_path, "--metrics_port=9464"))


def test_metrics_port_in_use_is_one_line_naming_the_port(tmp_path):
    """A port another process listens on fails before the run, naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = _files_argv(
            tmp_path, "--replay_as_stream", "--replay_engine=teststream", f"--metrics_port={port}"
        )
        with pytest.raises(MetricsPortError) as raised:
            stream_etl.run(argv)
    message = str(raised.value)
    assert message == (
        f"--metrics_port: port {port} on 127.0.0.1 is in use (another process "
        "listens there): pick a free port"
    )
    assert not (tmp_path / "out").exists(), "refused before anything is written"


def test_cli_says_the_taken_port_in_one_line_and_exits_2(tmp_path):
    """headwater run with a taken --metrics_port: exit status 2, one error line naming the port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = _files_argv(
            tmp_path, "--replay_as_stream", "--replay_engine=teststream", f"--metrics_port={port}"
        )
        result = subprocess.run(
            [sys.executable, "-m", "headwater", "run", "stream_etl", *argv],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("headwater: error")]
    assert errors == [
        f"headwater: error: --metrics_port: port {port} on 127.0.0.1 is in "
        "use (another process listens there): pick a free port"
    ]


@pytest.mark.parametrize("bad", ["http", "0", "70000", "host:", "a b:80"])
def test_bad_metrics_port_names_the_flag_and_what_is_expected(tmp_path, bad):
    """--metrics_port takes N or HOST:N; anything else is one line naming the flag."""
    with pytest.raises(ValueError, match=rf"^--metrics_port='{bad}': expected a port number"):
        stream_etl.run(_files_argv(tmp_path, f"--metrics_port={bad}"))
