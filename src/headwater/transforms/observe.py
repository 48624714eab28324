"""Run observability as Beam metrics (they show in Dataflow's UI) and local progress lines.

:class:`RecordFreshness` -- a pass-through step before a sink that publishes the distribution
``headwater/freshness_ms``: processing time minus the event time of what is emitted (the element
timestamp: a record's own event time, the end of its window for an aggregate), the same values
counted in the fixed buckets :data:`FRESHNESS_BUCKETS_MS` (counters
``headwater/freshness_ms.le_<bound>`` and ``.le_inf``, one per bucket, not cumulative: a
histogram that ``--metrics_port`` serves to Prometheus, see :mod:`headwater.pipelines.slis`), and
the gauge ``headwater/throughput_per_s`` (elements per second of the last bundle through the
step). Per element the step only adds to a local bucket count; the counters are incremented
once per bundle.

:class:`ShowProgress` and :class:`ProgressLines` (:mod:`headwater.transforms.progress`) -- for
local runs: a source's records are counted in this process (:func:`count_read`: the record path
through ``ShowProgress``, the columnar engines per block) and a thread prints one line to stderr
every few seconds with the count, the rate and the time elapsed, so a long run is visibly alive
on any engine. Nothing is printed or logged per element; ``headwater -q`` turns the lines off.

Rates (duplicate, dead-letter, late) are the accounting counters divided by ``records_in``; the
run summary prints them and Dataflow shows the counters side by side.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from headwater.transforms.progress import (
    ProgressLines,
    count_read,
    progress_period,
    records_read,
    set_progress_period,
)

__all__ = [
    "FRESHNESS_BUCKETS_MS",
    "ProgressLines",
    "RecordFreshness",
    "ShowProgress",
    "count_read",
    "progress_period",
    "records_read",
    "set_progress_period",
]


#: Upper bounds (ms) of the freshness buckets: 100 ms to a day; one more bucket holds the rest.
FRESHNESS_BUCKETS_MS = (
    *(100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 120_000),
    *(300_000, 600_000, 1_800_000, 3_600_000, 21_600_000, 86_400_000),
)


class _FreshnessFn(beam.DoFn):
    def __init__(self) -> None:
        self._freshness = Metrics.distribution("headwater", "freshness_ms")
        self._buckets = [
            Metrics.counter("headwater", f"freshness_ms.le_{bound}")
            for bound in (*FRESHNESS_BUCKETS_MS, "inf")
        ]
        self._throughput = Metrics.gauge("headwater", "throughput_per_s")
        self._count = 0
        self._started = 0.0
        self._counts = [0] * len(self._buckets)

    def start_bundle(self) -> None:
        self._count = 0
        self._started = time.monotonic()
        self._counts = [0] * len(self._buckets)

    def process(self, element: Any, timestamp=beam.DoFn.TimestampParam):
        event_ms = timestamp.micros // 1000
        if event_ms > -(2**53):
            age_ms = max(0, int(time.time() * 1000) - event_ms)
            self._freshness.update(age_ms)
            self._counts[bisect.bisect_left(FRESHNESS_BUCKETS_MS, age_ms)] += 1
        self._count += 1
        yield element

    def finish_bundle(self) -> None:
        elapsed = time.monotonic() - self._started
        if self._count and elapsed > 0:
            self._throughput.set(int(self._count / elapsed))
            for counter, n in zip(self._buckets, self._counts, strict=True):
                counter.inc(n)  # zeros too: every bucket is reported from the first bundle


class RecordFreshness(beam.PTransform):
    """Passes elements through, publishing ``freshness_ms`` and ``throughput_per_s``."""

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_FreshnessFn())


class _ProgressFn(beam.DoFn):
    """Adds the elements it passes to the process-wide count (in batches, not per element)."""

    _BATCH = 1024

    def start_bundle(self) -> None:
        self._pending = 0

    def process(self, element: Any):
        self._pending += 1
        if self._pending >= self._BATCH:
            count_read(self._pending)
            self._pending = 0
        yield element

    def finish_bundle(self) -> None:
        if self._pending:
            count_read(self._pending)
            self._pending = 0


class ShowProgress(beam.PTransform):
    """Passes elements through, counting them as records read for :class:`ProgressLines`."""

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_ProgressFn())
