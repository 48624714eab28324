"""Counting the accounting outcomes in a pipeline: :class:`CountAs`.

``CountAs(name)`` passes elements through unchanged and increments the Beam counter ``name``
(namespace ``headwater``) once per element. The counters, their meaning and the identity
``records_in == output + duplicate + dead_letter + late`` are defined in
:mod:`headwater.core.accounting`, which also reads them back from a finished run.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

__all__ = ["CountAs"]

from headwater.core.accounting import COUNTERS, NAMESPACE


class _CountFn(beam.DoFn):
    def __init__(self, counter: str):
        self._name = counter
        self._counter = Metrics.counter(NAMESPACE, counter)

    def start_bundle(self):
        # Reported from every bundle, even one that counts nothing: Prism (2.77) parks the
        # payload of a metric it does not know yet in one slot per short id until it has
        # asked the SDK what the id means, so of two bundles first counting it at once, one's
        # counts were lost (a few dead letters short in about one run in three). Reported
        # before any record flows, the metric is known by the time records do.
        self._counter.inc(0)

    def process(self, element):
        self._counter.inc()
        yield element


class CountAs(beam.PTransform):
    """Passes elements through unchanged, counting each one under ``counter``.

    ``counter`` is one of ``records_in``, ``output``, ``duplicate``, ``dead_letter``, ``late``.
    """

    def __init__(self, counter: str):
        super().__init__()
        if counter not in COUNTERS:
            raise ValueError(f"counter={counter!r} is not one of {', '.join(COUNTERS)}")
        self._counter = counter

    def default_label(self) -> str:
        return f"CountAs({self._counter})"

    def expand(self, pcoll):
        return pcoll | beam.ParDo(_CountFn(self._counter))
