"""Observability: freshness/throughput metrics and progress lines."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from headwater.transforms.observe import RecordFreshness, ShowProgress
from headwater.transforms.progress import ProgressLines, records_read


def test_freshness_distribution_measures_now_minus_window_end():
    """Windows that ended at the epoch are decades old: freshness_ms says so."""
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    _ = (
        p
        | beam.Create([1, 2, 3])
        | beam.Map(lambda x: TimestampedValue(x, 10))
        | beam.WindowInto(FixedWindows(60))
        | RecordFreshness()
    )
    result = p.run()
    [dist] = result.metrics().query(
        MetricsFilter().with_namespace("headwater").with_name("freshness_ms")
    )["distributions"]
    value = dist.committed or dist.attempted
    assert value.count == 3
    assert value.min > 50 * 365 * 86_400_000  # the window ended in 1970


def test_progress_counts_what_passes_and_passes_it_through():
    """ShowProgress adds every element to the process's progress count, and changes none."""
    with ProgressLines(period=None):
        with TestPipeline(runner="FnApiRunner") as p:
            out = p | beam.Create(range(2500)) | ShowProgress()
            assert_that(out, equal_to(list(range(2500))))
        assert records_read() == 2500
