"""PartitionWatermarks: a split reports the read's minimum; stale and finished splits drop out."""

from __future__ import annotations

import pytest
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from headwater.io.partitionwatermarks import PartitionWatermarks


def test_each_split_reports_the_minimum_of_the_read() -> None:
    """A split ahead of another reports the one behind; reads do not mix."""
    marks = PartitionWatermarks(clock=lambda: 0.0)
    assert marks.report("r", 0, Timestamp(30)) == Timestamp(30)
    assert marks.report("r", 1, Timestamp(20)) == Timestamp(20)
    assert marks.report("r", 0, Timestamp(40)) == Timestamp(20)
    assert marks.report("other", 0, Timestamp(99)) == Timestamp(99)


def test_registered_split_holds_the_read_until_it_reports() -> None:
    """A split registered but not yet read holds the read at the minimum timestamp."""
    marks = PartitionWatermarks(clock=lambda: 0.0)
    marks.register("r", 1)
    assert marks.report("r", 0, Timestamp(30)) == MIN_TIMESTAMP
    assert marks.report("r", 1, Timestamp(35)) == Timestamp(30)


def test_finished_and_stale_splits_stop_holding() -> None:
    """A finished split, or one silent for stale_after, no longer holds the others back."""
    now = [0.0]
    marks = PartitionWatermarks(stale_after=10, clock=lambda: now[0])
    marks.report("r", 0, Timestamp(5))
    marks.report("r", 1, Timestamp(8))
    marks.finish("r", 0)
    assert marks.report("r", 1, Timestamp(9)) == Timestamp(9)
    marks.report("r", 2, Timestamp(1))
    now[0] = 11.0
    assert marks.report("r", 1, Timestamp(12)) == Timestamp(12)


def test_stale_after_must_be_positive() -> None:
    """stale_after=0 is refused with the bad value named."""
    with pytest.raises(ValueError, match=r"stale_after=0 must be a positive"):
        PartitionWatermarks(stale_after=0)
