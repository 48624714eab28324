"""PartitionWatermarks: a split reports the read's minimum; stale and finished splits drop out;
a silent partition holding the read back is logged."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from headwater.io import partitionwatermarks
from headwater.io.partitionwatermarks import (
    SILENT_WARN_S,
    PartitionWatermarks,
    SharedWatermarkProvider,
)
from headwater.windowing.watermark import BoundedOutOfOrderness


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


def _estimators(monkeypatch: pytest.MonkeyPatch, now: list[float], **policy: Any) -> list[Any]:
    """Two partitions of one read, (t, 0) and (t, 1), on the clock ``now`` (a registry of their
    own in place of the process's)."""
    monkeypatch.setattr(
        partitionwatermarks, "WATERMARKS", PartitionWatermarks(clock=lambda: now[0])
    )
    provider = SharedWatermarkProvider(
        BoundedOutOfOrderness(max_delay="5s", **policy).estimator_provider(lambda: now[0]),
        read_id="r",
        split_of=lambda split: split,
    )
    return [
        provider.create_watermark_estimator(provider.initial_estimator_state(("t", p), None))
        for p in (0, 1)
    ]


def _round(busy: Any, empty: Any, now: list[float], at: float) -> None:
    """At ``at`` s the busy partition reads a record and both report their watermarks."""
    now[0] = at
    busy.observe_timestamp(Timestamp(1_000 + at))
    busy.current_watermark()
    empty.current_watermark()


def test_a_silent_partition_holding_the_read_back_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without an idle timeout, a partition silent for a minute while another moves on holds
    every window: one warning names it, how long, where it holds and the flag that helps."""
    now = [0.0]
    busy, empty = _estimators(monkeypatch, now)
    with caplog.at_level(logging.WARNING, logger=partitionwatermarks.__name__):
        for at in (1.0, 30.0, SILENT_WARN_S - 1):
            _round(busy, empty, now, at)
        assert caplog.records == []
        for at in (SILENT_WARN_S + 1, SILENT_WARN_S + 100):
            _round(busy, empty, now, at)
    [warning] = caplog.records
    assert warning.getMessage().startswith(
        "partition t[1] has had no record for 61 s and holds the watermark at the start of "
        "time while another partition is at 1970-01-01T00:17:"
    )
    assert "set --idle_timeout (e.g. 30s)" in warning.getMessage()


@pytest.mark.parametrize("case", ["idle_timeout", "all_silent"])
def test_no_warning_with_an_idle_timeout_or_when_no_partition_moved(
    case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With --idle_timeout the silent partition follows the clock; with every partition silent
    nothing is held behind another."""
    now = [0.0]
    policy = {"idle_timeout": "30s"} if case == "idle_timeout" else {}
    busy, empty = _estimators(monkeypatch, now, **policy)
    with caplog.at_level(logging.WARNING, logger=partitionwatermarks.__name__):
        for at in (1.0, SILENT_WARN_S + 1, SILENT_WARN_S + 100):
            if case == "idle_timeout":
                _round(busy, empty, now, at)
            else:
                now[0] = at
                busy.current_watermark()
                empty.current_watermark()
    assert caplog.records == []
