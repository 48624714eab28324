"""An example: testing a transform *you* wrote with headwater's stream harness.

``SpendAlerts`` is the kind of transform a team writes on top of headwater: per user, the amount
spent in each 1-minute event-time window, flagged when it reaches a threshold, with speculative
(early) results every 10 seconds, late corrections within 30 seconds of allowed lateness, and
anything later routed to a ``late`` output instead of being dropped.

The tests replay events with event times and control steps ("close the window now", "10
seconds of processing time pass") and check the panes the transform emitted: the on-time
result, an early pane, a late correction, and a record too late for any pane landing in the
``late`` output. Run them with ``pytest examples`` (``make test`` runs them too).
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger
from apache_beam.transforms.window import FixedWindows, IntervalWindow

from headwater.testing import (
    AdvanceProcessingTime,
    AdvanceWatermark,
    AdvanceWatermarkPast,
    run_transform,
)
from headwater.windowing.late import WindowWithLateRouting

# ---------------------------------------------------------------------------------------------
# The transform under test (in a real project it lives in your package, not in the test file).


def _to_row(user_total, threshold):
    user, total = user_total
    return {"user": user, "total": total, "alert": total >= threshold}


class SpendAlerts(beam.PTransform):
    """Per-user spend per minute of event time, with ``alert`` set at or above ``threshold``.

    Input: dicts with ``user`` and ``amount``, timestamped with their event time. Outputs: a dict
    with ``main`` (one row per user, window and pane; panes accumulate) and ``late`` (records
    more than ``allowed_lateness`` behind their window's end, as dead-letter envelopes).
    """

    def __init__(self, *, threshold: float, allowed_lateness="30s", early_every=10):
        super().__init__()
        if threshold <= 0:
            raise ValueError(f"threshold={threshold!r} must be positive")
        self._threshold = threshold
        self._window = WindowWithLateRouting(
            FixedWindows(60),
            allowed_lateness=allowed_lateness,
            trigger=trigger.AfterWatermark(
                early=trigger.AfterProcessingTime(early_every), late=trigger.AfterCount(1)
            ),
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        )

    def expand(self, records):
        routed = records | "Window" >> self._window
        rows = (
            routed.main
            | "ByUser" >> beam.Map(lambda r: (r["user"], r["amount"]))
            | "Sum" >> beam.CombinePerKey(sum)
            | "Row" >> beam.Map(_to_row, self._threshold)
        )
        return {"main": rows, "late": routed.late}


# ---------------------------------------------------------------------------------------------
# The tests.

FIRST_MINUTE = IntervalWindow(0, 60)


def spend(user, amount, at):
    """One event: a record and its event time (epoch seconds here, to keep the example short)."""
    return {"user": user, "amount": amount}, at


def test_on_time_pane_sums_each_user_and_flags_the_big_spender():
    """When the watermark passes the minute, its on-time pane has one row per user."""
    events = [
        spend("ann", 70, at=5),
        spend("bob", 20, at=12),
        spend("ann", 40, at=50),
        AdvanceWatermarkPast("fixed:60s", at=0),
        spend("bob", 5, at=65),  # next minute
    ]
    result = run_transform(SpendAlerts(threshold=100), events, max_out_of_orderness=None)
    on_time = result.values(window=FIRST_MINUTE, timing="ON_TIME")
    assert sorted(on_time, key=lambda row: row["user"]) == [
        {"user": "ann", "total": 110, "alert": True},
        {"user": "bob", "total": 20, "alert": False},
    ]
    assert result.windows() == [FIRST_MINUTE, IntervalWindow(60, 120)]


def test_early_pane_alerts_before_the_window_closes():
    """After 10 s of processing time an early pane already carries the alert."""
    events = [
        spend("ann", 120, at=5),
        AdvanceProcessingTime(by="10s"),
        spend("ann", 1, at=30),
    ]
    result = run_transform(
        SpendAlerts(threshold=100),
        events,
        max_out_of_orderness=None,
        advance_processing_time=False,  # only the explicit step moves processing time
    )
    [early] = result.early_panes
    assert (early.window, early.index) == (FIRST_MINUTE, 0)
    assert early.values == ({"user": "ann", "total": 120, "alert": True},)
    # Panes accumulate: the on-time pane has everything the window saw.
    assert result.values(window=FIRST_MINUTE, timing="ON_TIME") == [
        {"user": "ann", "total": 121, "alert": True}
    ]


def test_late_record_within_allowed_lateness_corrects_the_window():
    """A record 20 s after the window closed (lateness 30 s) comes out in a late pane."""
    events = [
        spend("bob", 90, at=10),
        AdvanceWatermark(to=80),  # the minute's on-time pane fires; 80 < 60 + 30
        spend("bob", 15, at=40),
    ]
    result = run_transform(SpendAlerts(threshold=100), events, max_out_of_orderness=None)
    panes = [(p.timing, p.values) for p in result.panes_for(FIRST_MINUTE)]
    assert panes == [
        ("ON_TIME", ({"user": "bob", "total": 90, "alert": False},)),
        ("LATE", ({"user": "bob", "total": 105, "alert": True},)),
    ]
    assert result.late == []


def test_record_beyond_allowed_lateness_lands_in_the_late_output():
    """A record whose window closed more than 30 s ago is in ``late``, never silently dropped."""
    events = [
        spend("ann", 50, at=10),
        spend("ann", 10, at=200),  # with 5 s of out-of-orderness the watermark reaches 195
        spend("ann", 99, at=20),  # its window closed at 60 + 30 = 90
    ]
    result = run_transform(SpendAlerts(threshold=100), events, max_out_of_orderness="5s")
    assert result.values(window=FIRST_MINUTE) == [{"user": "ann", "total": 50, "alert": False}]
    [late] = result.late
    assert late.window == "1970-01-01T00:00:00Z/1970-01-01T00:01:00Z"
    # How far behind the watermark it was, as the late router last saw it pass (00:02:30).
    assert late.lateness_ms == 130_000
