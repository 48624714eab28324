"""Run observability as Beam metrics (they show in Dataflow's UI) and local progress lines.

:class:`RecordFreshness` -- a pass-through step before a sink that publishes the distribution
``headwater/freshness_ms``: processing time minus the event time of what is emitted (the end of
an emitted window for windowed outputs, the element timestamp otherwise), and the gauge
``headwater/throughput_per_s`` (elements per second of the last bundle through the step).

:class:`ShowProgress` -- for local runs: every ``every`` records it prints one line to stderr
with the count and the rate, so a long run is visibly alive. Nothing is logged per element.

Rates (duplicate, dead-letter, late) are the accounting counters divided by ``records_in``; the
run summary prints them and Dataflow shows the counters side by side.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow

__all__ = ["RecordFreshness", "ShowProgress"]


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
    _seen = 0  # per process: local runners run every bundle in this process
    _started = 0.0

    def __init__(self, every: int, what: str):
        self._every = every
        self._what = what

    def process(self, element: Any):
        cls = type(self)
        if cls._seen == 0:
            cls._started = time.monotonic()
        cls._seen += 1
        if cls._seen % self._every == 0:
            elapsed = max(time.monotonic() - cls._started, 1e-9)
            print(
                f"  ... {cls._seen:,} {self._what} ({cls._seen / elapsed:,.0f}/s)",
                file=sys.stderr,
                flush=True,
            )
        yield element


class ShowProgress(beam.PTransform):
    """Prints a progress line to stderr every ``every`` elements (local runs)."""

    def __init__(self, *, every: int = 100_000, what: str = "records read"):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be a positive integer")
        self._every = every
        self._what = what

    def expand(self, pcoll):
        _ProgressFn._seen = 0
        return pcoll | beam.ParDo(_ProgressFn(self._every, self._what))
