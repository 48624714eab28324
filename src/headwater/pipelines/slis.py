"""SLIs out of the process: a run's Beam metrics served to Prometheus (``--metrics_port``).

The pipelines publish their service-level indicators as Beam metrics, which every runner keeps
(a Dataflow job shows them in its UI and in Cloud Monitoring under the same names). With
``--metrics_port=N`` the ``headwater run`` process also serves them in the Prometheus text format
on ``http://127.0.0.1:N/metrics`` (``HOST:N`` binds another address) while the job runs.

How: a thread asks the runner for the job's metrics about once a second and keeps the latest
answer; a scrape converts that answer (:func:`metric_families`). The runner is asked through
the portable Job API (``GetJobMetrics``: what ``PipelineResult.metrics()`` calls once and then
caches), which Prism answers for a running streaming job (measured: the counters, gauges and
distributions of finished bundles, about every second), and Flink's job server and Beam's
local job service answer too; the streaming DirectRunner's result reads its live metrics in
process. So one mechanism serves every runner headwater waits on. The ``FnApiRunner`` (a local
batch run) reports nothing until the run has ended and Dataflow's metrics stay in Dataflow:
:func:`check_metrics_port` refuses the flag there, and refuses a port that is in use.

Names (stable: they are derived from the Beam metric names only). Every metric in the namespace
``headwater`` or ``headwater.*`` is exported, summed over the steps that publish it, with the
label ``pipeline``: ``<namespace>_<name>`` with every character outside ``[a-zA-Z0-9_]`` made
``_`` (``headwater/kafka.records_read`` -> ``headwater_kafka_records_read``), and a name ending in
``_ms`` is exported in seconds as ``..._seconds``.

* a counter -> a Prometheus counter ``<name>_total``;
* counters ``<name>.le_<bound>`` and ``<name>.le_inf`` (one per bucket, not cumulative; the
  bound in the name's unit) -> the histogram ``<name>`` (cumulative ``le`` buckets; ``_sum``
  from the distribution ``<name>`` when there is one), so ``histogram_quantile`` gives p50/p95;
* a distribution -> a summary ``<name>`` (``_count``, ``_sum``; none when it has buckets) and
  gauges ``<name>_min``/``<name>_max`` (the unit stays last: ``freshness_max_seconds``);
* a distribution ``<name>watermark_ms`` (watermarks seen, epoch ms) -> the gauges
  ``<name>watermark_seconds`` (its max: the newest watermark seen) and
  ``<name>watermark_lag_seconds`` (now minus that, computed at each scrape);
* a gauge -> a gauge;
* a name ``<metric>/<a>/<b>`` -> ``<metric>`` with labels: ``topic`` and ``partition`` for the
  Kafka source's ``consumer_lag_messages`` and ``consumer_lag_bytes``, else ``key="<a>/<b>"``.

``headwater_metrics_updated_timestamp_seconds`` says when the runner last answered.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from apache_beam.runners.runner import PipelineState

from headwater import runners
from headwater.io.kafka.backlog import LAG_BYTES, LAG_MESSAGES
from headwater.pipelines.options import MetricsAddress

if TYPE_CHECKING:  # prometheus_client is imported only by a run that serves --metrics_port
    from prometheus_client.metrics_core import Metric

__all__ = [
    "MetricsEndpoint",
    "MetricsPortError",
    "check_metrics_port",
    "live_metrics",
    "metric_families",
    "prometheus_name",
]

_LOG = logging.getLogger("headwater.pipelines")

NAMESPACE = "headwater"
_INVALID = re.compile(r"[^a-zA-Z0-9_]+")
_BUCKET = re.compile(r"^(?P<name>.+)\.le_(?P<bound>\d+(\.\d+)?|inf)$")
_UNITS = (("_ms", "_seconds", 1e-3),)
#: Beam metric names that carry label values after "/": the name before it -> the label names.
_LABELLED = {LAG_MESSAGES: ("topic", "partition"), LAG_BYTES: ("topic", "partition")}
#: Seconds between two questions to the runner.
POLL_INTERVAL_S = 1.0


class MetricsPortError(ValueError):
    """``--metrics_port`` cannot be served (one line, names the port)."""


def prometheus_name(namespace: str, name: str) -> tuple[str, str, float]:
    """``(stem, unit suffix, scale)`` of the Prometheus name of Beam metric ``namespace/name``.

    ``("headwater", "freshness_ms")`` -> ``("headwater_freshness", "_seconds", 0.001)``: the
    exported name is stem + suffix, values are multiplied by scale.
    """
    full = _INVALID.sub("_", f"{namespace}_{name}").strip("_")
    for suffix, unit, scale in _UNITS:
        if full.endswith(suffix):
            return full[: -len(suffix)], unit, scale
    return full, "", 1.0


def _ours(namespace: str | None) -> bool:
    return namespace == NAMESPACE or bool(namespace and namespace.startswith(NAMESPACE + "."))


def _value(result: Any) -> Any:
    """A metric's committed value where the runner has one, else the attempted one."""
    return result.committed if result.committed is not None else result.attempted


def _summed(query: Mapping[str, Any]) -> tuple[dict, dict, dict]:
    """Counters, distributions and gauges of our namespaces, combined over steps."""
    counters: dict[tuple[str, str], int] = defaultdict(int)
    distributions: dict[tuple[str, str], list[float]] = {}
    gauges: dict[tuple[str, str], tuple[float, float]] = {}
    for result in query.get("counters", ()):
        metric = result.key.metric
        if _ours(metric.namespace):
            counters[(metric.namespace, metric.name)] += _value(result) or 0
    for result in query.get("distributions", ()):
        metric, value = result.key.metric, _value(result)
        if not _ours(metric.namespace) or value is None or not value.count:
            continue
        seen = distributions.get((metric.namespace, metric.name))
        if seen is None:
            distributions[(metric.namespace, metric.name)] = [
                value.count,
                value.sum,
                value.min,
                value.max,
            ]
        else:
            seen[0] += value.count
            seen[1] += value.sum
            seen[2] = min(seen[2], value.min)
            seen[3] = max(seen[3], value.max)
    for result in query.get("gauges", ()):
        metric, value = result.key.metric, _value(result)
        if not _ours(metric.namespace) or value is None:
            continue
        key = (metric.namespace, metric.name)
        stamp = float(value.timestamp or 0)
        if key not in gauges or stamp >= gauges[key][1]:  # the newest value wins
            gauges[key] = (value.value, stamp)
    return counters, distributions, gauges


def _help(namespace: str, name: str, kind: str) -> str:
    return f"Beam {kind} {namespace}/{name}, summed over the steps that publish it"


def _split(name: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """A Beam metric name -> (its base, label names, label values).

    ``consumer_lag_messages/<topic>/<partition>`` -> ``("consumer_lag_messages", ("topic",
    "partition"), (topic, partition))``; another name with ``/`` keeps what follows the first
    ``/`` as the label ``key``.
    """
    base, *parts = name.split("/")
    if not parts:
        return name, (), ()
    label_names = _LABELLED.get(base)
    if label_names is None or len(label_names) != len(parts):
        return base, ("key",), ("/".join(parts),)
    return base, label_names, tuple(parts)


def _grouped(metrics: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], list]:
    """{(namespace, base): [(label names, label values, value)]}, in name order."""
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for (namespace, name), value in sorted(metrics.items()):
        base, label_names, label_values = _split(name)
        groups[(namespace, base)].append((label_names, label_values, value))
    return groups


def _labelled(series: list, labels: Mapping[str, str]) -> tuple[list[str], list[tuple]]:
    """The label names of a family and its rows ``(label values, value)``: ``labels`` on every
    series, then each series' own (padded with "" where a series has fewer)."""
    extra = max((names for names, _, _ in series), key=len)
    rows = [
        ([*labels.values(), *values, *[""] * (len(extra) - len(values))], value)
        for _, values, value in series
    ]
    return [*labels, *extra], rows


def metric_families(
    query: Mapping[str, Any], *, labels: Mapping[str, str], now: float | None = None
) -> list[Metric]:
    """Prometheus metric families from a Beam ``MetricResults.query()`` answer.

    ``labels`` are put on every series (e.g. ``{"pipeline": "stream_etl"}``); ``now`` (epoch
    seconds, default the clock) is what watermark lags are measured against.
    """
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        SummaryMetricFamily,
    )
    from prometheus_client.utils import floatToGoString

    now = time.time() if now is None else now
    counters, distributions, gauges = _summed(query)
    families: list[Metric] = []

    buckets: dict[tuple[str, str], dict[float, int]] = defaultdict(dict)
    plain = {}
    for (namespace, name), count in counters.items():
        match = _BUCKET.match(name)
        if match:
            bound = float("inf") if match["bound"] == "inf" else float(match["bound"])
            buckets[(namespace, match["name"])][bound] = count
        else:
            plain[(namespace, name)] = count
    for (namespace, base), series in _grouped(plain).items():
        stem, unit, scale = prometheus_name(namespace, base)
        names, rows = _labelled(series, labels)
        counter = CounterMetricFamily(stem + unit, _help(namespace, base, "counter"), labels=names)
        for values, count in rows:
            counter.add_metric(values, count * scale)
        families.append(counter)

    for (namespace, name), counts in sorted(buckets.items()):
        stem, unit, scale = prometheus_name(namespace, name)
        cumulative, running = [], 0
        for bound in sorted(counts):
            running += counts[bound]
            shown = "+Inf" if bound == float("inf") else floatToGoString(bound * scale)
            cumulative.append((shown, running))
        if cumulative[-1][0] != "+Inf":
            cumulative.append(("+Inf", running))
        dist = distributions.get((namespace, name))
        histogram = HistogramMetricFamily(
            stem + unit,
            _help(namespace, name, "histogram (counters per bucket)"),
            labels=list(labels),
        )
        histogram.add_metric(
            list(labels.values()), cumulative, sum_value=dist[1] * scale if dist else None
        )
        families.append(histogram)

    for (namespace, base), series in _grouped(distributions).items():
        stem, unit, scale = prometheus_name(namespace, base)
        names, rows = _labelled(series, labels)
        if base.endswith("watermark_ms"):  # the newest watermark seen, and how far behind now
            text = f"the newest watermark in Beam distribution {namespace}/{base} (its max)"
            watermark = GaugeMetricFamily(stem + unit, text, labels=names)
            lag = GaugeMetricFamily(f"{stem}_lag{unit}", f"now minus {stem}{unit}", labels=names)
            for values, dist in rows:
                watermark.add_metric(values, dist[3] * scale)
                lag.add_metric(values, max(0.0, now - dist[3] * scale))
            families += [watermark, lag]
            continue
        if (namespace, base) not in buckets:
            text = _help(namespace, base, "distribution")
            summary = SummaryMetricFamily(stem + unit, text, labels=names)
            for values, (count, total, _, _) in rows:
                summary.add_metric(values, count_value=count, sum_value=total * scale)
            families.append(summary)
        for which, index in (("min", 2), ("max", 3)):
            text = f"{which} of Beam distribution {namespace}/{base} since the job started"
            extreme = GaugeMetricFamily(f"{stem}_{which}{unit}", text, labels=names)
            for values, dist in rows:
                extreme.add_metric(values, dist[index] * scale)
            families.append(extreme)

    for (namespace, base), series in _grouped(gauges).items():
        stem, unit, scale = prometheus_name(namespace, base)
        names, rows = _labelled(series, labels)
        gauge = GaugeMetricFamily(stem + unit, _help(namespace, base, "gauge"), labels=names)
        for values, (number, _stamp) in rows:
            gauge.add_metric(values, number * scale)
        families.append(gauge)
    return families


def live_metrics(result: Any) -> Any:
    """The job's metrics as of now, from a ``PipelineResult`` that may still be running.

    A portable result (Prism, Flink, the portable runner) is asked through the Job API on every
    call: its ``metrics()`` keeps the first answer it got.
    """
    service, job_id = getattr(result, "_job_service", None), getattr(result, "_job_id", None)
    if service is None or not job_id:
        return result.metrics()
    from apache_beam.portability.api import beam_job_api_pb2
    from apache_beam.runners.portability.portable_runner import PortableMetrics

    request = beam_job_api_pb2.GetJobMetricsRequest(job_id=job_id)
    return PortableMetrics(service.GetJobMetrics(request))


def check_metrics_port(address: MetricsAddress | None, runner: str) -> None:
    """Refuses ``--metrics_port`` where it cannot be served; ``ValueError`` names the flag.

    Dataflow keeps the metrics in Dataflow; the ``FnApiRunner`` has no metrics until its run has
    ended; a port another process listens on (:class:`MetricsPortError`).
    """
    if address is None:
        return
    if runner == runners.DATAFLOW_RUNNER:
        raise ValueError(
            f"--metrics_port does not apply to --runner={runner}: a Dataflow job keeps these "
            "metrics as Beam metrics (its UI, Cloud Monitoring; docs/operations.md); remove it"
        )
    if runner == "FnApiRunner":
        raise ValueError(
            "--metrics_port needs a runner that reports metrics while it runs: the FnApiRunner "
            "(a local batch run) has them only when the run has ended (the run summary prints "
            "them); use --runner=PrismRunner to watch a run live"
        )
    with contextlib.closing(_socket(address)) as sock:
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            raise _port_error(address, exc) from None


def _socket(address: MetricsAddress) -> socket.socket:
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server binds
    return sock


def _port_error(address: MetricsAddress, exc: OSError) -> MetricsPortError:
    if exc.errno == errno.EADDRINUSE:
        why = "is in use (another process listens there): pick a free port"
    elif exc.errno == errno.EACCES:
        why = "needs privileges to bind: pick a port above 1023"
    else:
        why = f"cannot be bound: {exc.strerror or exc}"
    return MetricsPortError(f"--metrics_port: port {address.port} on {address.host} {why}")


class _Collector:
    """What a scrape sees: the families of the last answer the runner gave."""

    def __init__(self, labels: Mapping[str, str]):
        self._labels = dict(labels)
        self._lock = threading.Lock()
        self._query: Mapping[str, Any] = {}
        self._updated: float | None = None

    def update(self, query: Mapping[str, Any]) -> None:
        with self._lock:
            self._query, self._updated = query, time.time()

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        with self._lock:
            query, updated = self._query, self._updated
        yield from metric_families(query, labels=self._labels)
        if updated is not None:
            family = GaugeMetricFamily(
                "headwater_metrics_updated_timestamp_seconds",
                "when the runner last answered the metrics query (epoch seconds)",
                labels=list(self._labels),
            )
            family.add_metric(list(self._labels.values()), updated)
            yield family


class MetricsEndpoint:
    """Serves a running job's metrics at ``http://HOST:PORT/metrics`` while the block runs.

    ``with MetricsEndpoint(address, labels=...) as endpoint: result = p.run();
    endpoint.follow(result)`` -- the server starts on entering (``MetricsPortError`` when the
    port is taken), a thread polls the job every ``interval`` seconds once followed, and on
    leaving the block the job's final metrics are fetched once more and the server stops.
    ``address=None``: a no-op.
    """

    def __init__(
        self,
        address: MetricsAddress | None,
        *,
        labels: Mapping[str, str],
        interval: float = POLL_INTERVAL_S,
    ):
        if isinstance(interval, bool) or not interval > 0:
            raise ValueError(f"interval={interval!r} must be a positive number of seconds")
        self.address = address
        self._interval = interval
        self._collector = _Collector(labels)
        self._server: Any = None
        self._result: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MetricsEndpoint:
        if self.address is None:
            return self
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector)
        try:
            self._server, _ = start_http_server(
                self.address.port, addr=self.address.host, registry=registry
            )
        except OSError as exc:
            raise _port_error(self.address, exc) from None
        _LOG.info("serving the run's metrics on http://%s/metrics", self.address)
        return self

    def follow(self, result: Any) -> None:
        """Starts polling the job behind ``result`` (a ``PipelineResult``)."""
        if self.address is None:
            return
        self._result = result
        self.poll()
        self._thread = threading.Thread(target=self._loop, name="headwater-metrics", daemon=True)
        self._thread.start()

    def poll(self) -> bool:
        """Asks the runner for the job's metrics once; whether it answered.

        Once the job has ended, its final metrics are read through ``result.metrics()``, which
        the result keeps: the run summary then reads the same answer. (Beam's own local job
        service answers ``GetJobMetrics`` in full only once after a job has ended -- its
        FnApiRunner result holds one-shot iterators -- so a second fresh query would hand the
        summary partial counts.)
        """
        if self._result is None:
            return False
        try:
            if PipelineState.is_terminal(self._result.state):
                query = self._result.metrics().query()
            else:
                query = live_metrics(self._result).query()
        except Exception as exc:  # a job service that went away: keep the last answer
            _LOG.debug("metrics query failed: %s", exc)
            return False
        self._collector.update(query)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()  # the final counts, for a scrape that comes before the process exits
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
