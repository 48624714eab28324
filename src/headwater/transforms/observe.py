"""Run observability as Beam metrics (they show in Dataflow's UI) and local progress lines.

:class:`RecordFreshness` -- a pass-through step before a sink that publishes the distribution
``headwater/freshness_ms``: processing time minus the event time of what is emitted (the end of
an emitted window for windowed outputs, the element timestamp otherwise), and the gauge
``headwater/throughput_per_s`` (elements per second of the last bundle through the step).

:class:`ShowProgress` and :class:`ProgressLines` (:mod:`headwater.transforms.progress`) -- for
local runs: a source's records are counted in this process (:func:`count_read`: the record path
through ``ShowProgress``, the columnar engines per block) and a thread prints one line to stderr
every few seconds with the count, the rate and the time elapsed, so a long run is visibly alive
on any engine. Nothing is printed or logged per element; ``headwater -q`` turns the lines off.

Rates (duplicate, dead-letter, late) are the accounting counters divided by ``records_in``; the
run summary prints them and Dataflow shows the counters side by side.
"""

from __future__ import annotations

import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow

from headwater.transforms.progress import (
    ProgressLines,
    count_read,
    progress_period,
    records_read,
    set_progress_period,
)

__all__ = [
    "ProgressLines",
    "RecordFreshness",
    "ShowProgress",
    "count_read",
    "progress_period",
    "records_read",
    "set_progress_period",
]


class _FreshnessFn(beam.DoFn):
    def __init__(self) -> None:
        self._freshness = Metrics.distribution("headwater", "freshness_ms")
        self._throughput = Metrics.gauge("headwater", "throughput_per_s")
        self._count = 0
        self._started = 0.0

    def start_bundle(self) -> None:
        self._count = 0
        self._started = time.monotonic()

    def process(
        self, element: Any, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam
    ):
        now_ms = int(time.time() * 1000)
        if isinstance(window, GlobalWindow):
            event_ms = timestamp.micros // 1000
        else:
            event_ms = window.end.micros // 1000
        if event_ms > -(2**53):
            self._freshness.update(max(0, now_ms - event_ms))
        self._count += 1
        yield element

    def finish_bundle(self) -> None:
        elapsed = time.monotonic() - self._started
        if self._count and elapsed > 0:
            self._throughput.set(int(self._count / elapsed))


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
