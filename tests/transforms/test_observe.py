"""Observability: freshness/throughput metrics and progress lines."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.transforms.window import FixedWindows, TimestampedValue

from headwater.transforms.observe import RecordFreshness, ShowProgress


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


def test_progress_prints_every_n(capsys):
    """ShowProgress prints one line per `every` elements, passing them through."""
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(range(25)) | ShowProgress(every=10, what="rows")
    err = capsys.readouterr().err
    assert err.count("rows (") == 2
    assert "20 rows" in err


def test_progress_every_must_be_positive():
    """A bad `every` names the value."""
    with pytest.raises(ValueError, match="every=0"):
        ShowProgress(every=0)
