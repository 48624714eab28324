"""Tests for the bounded-out-of-orderness watermark policy, its tracker and its SDF estimator."""

from __future__ import annotations

import datetime as dt
import pickle
import re

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from headwater.windowing.watermark import (
    BoundedOutOfOrderness,
    BoundedOutOfOrdernessEstimator,
    WatermarkState,
    WatermarkTracker,
    wall_clock,
)


class FakeClock:
    """A processing-time clock the test moves by hand (epoch seconds)."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def ts(seconds: float) -> Timestamp:
    return Timestamp(seconds)


# -- construction ----------------------------------------------------------------------------


def test_policy_parses_durations():
    """max_delay and idle_timeout accept seconds, timedelta and compact strings."""
    policy = BoundedOutOfOrderness(max_delay="500ms", idle_timeout=dt.timedelta(minutes=2))
    assert (policy.max_delay, policy.idle_timeout) == (0.5, 120.0)
    assert BoundedOutOfOrderness(max_delay=3).idle_timeout is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_delay": -1}, "max_delay=-1"),
        ({"max_delay": "soon"}, "max_delay='soon'"),
        ({"max_delay": True}, "max_delay=True"),
        ({"max_delay": 1, "idle_timeout": 0}, "idle_timeout=0"),
        ({"max_delay": 1, "idle_timeout": "-5s"}, "idle_timeout='-5s'"),
    ],
)
def test_invalid_policy_options_name_the_bad_value(kwargs, named):
    """Each invalid policy option raises ValueError naming the option and its value."""
    with pytest.raises(ValueError, match=re.escape(named)):
        BoundedOutOfOrderness(**kwargs)


def test_invalid_tracker_arguments_name_the_bad_value():
    """A tracker refuses a non-policy, a non-callable clock and a malformed state by value."""
    policy = BoundedOutOfOrderness(max_delay=1)
    with pytest.raises(ValueError, match="policy='10s'"):
        WatermarkTracker("10s")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock=42"):
        policy.tracker(clock=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"state=\(1, 2\)"):
        WatermarkTracker.from_state(policy, (1, 2))
    with pytest.raises(ValueError, match="clock='now'"):
        policy.estimator_provider(clock="now")  # type: ignore[arg-type]


def test_repr_shows_the_options():
    """The policy's repr shows max_delay and idle_timeout in compact form."""
    policy = BoundedOutOfOrderness(max_delay=90, idle_timeout="10m")
    assert repr(policy) == "BoundedOutOfOrderness(max_delay='90s', idle_timeout='10m')"
    assert "idle_timeout=None" in repr(BoundedOutOfOrderness(max_delay=1))


# -- the tracker -----------------------------------------------------------------------------


def test_watermark_starts_at_min_timestamp():
    """Before any element the watermark is MIN_TIMESTAMP."""
    tracker = BoundedOutOfOrderness(max_delay=5).tracker(clock=FakeClock())
    assert tracker.watermark() == MIN_TIMESTAMP
    assert tracker.max_event_time is None


def test_watermark_is_max_event_time_minus_max_delay():
    """In-order elements move the watermark to the latest event time minus max_delay."""
    tracker = BoundedOutOfOrderness(max_delay=5).tracker(clock=FakeClock())
    seen = []
    for seconds in (100, 103, 110):
        tracker.observe(ts(seconds))
        seen.append(tracker.watermark())
    assert seen == [ts(95), ts(98), ts(105)]


def test_disorder_within_the_bound_keeps_watermark_at_max_minus_delay():
    """Elements older than the max but within max_delay leave the watermark at max - delay."""
    tracker = BoundedOutOfOrderness(max_delay=10).tracker(clock=FakeClock())
    for seconds in (100, 95, 92, 108, 99, 101):
        tracker.observe(ts(seconds))
    assert tracker.watermark() == ts(98)
    assert tracker.max_event_time == ts(108)


def test_out_of_order_older_element_never_moves_watermark_back():
    """An element far older than the watermark leaves the watermark unchanged."""
    tracker = BoundedOutOfOrderness(max_delay=1).tracker(clock=FakeClock())
    tracker.observe(ts(1_000))
    before = tracker.watermark()
    tracker.observe(ts(10))
    assert before == ts(999)
    assert tracker.watermark() == before


def test_zero_max_delay_follows_the_max_event_time():
    """With max_delay=0 the watermark is the max event time itself."""
    tracker = BoundedOutOfOrderness(max_delay=0).tracker(clock=FakeClock())
    tracker.observe(Timestamp(micros=1_234_567))
    assert tracker.watermark() == Timestamp(micros=1_234_567)


def test_observe_accepts_epoch_seconds():
    """observe() takes a Timestamp or epoch seconds."""
    tracker = BoundedOutOfOrderness(max_delay="250ms").tracker(clock=FakeClock())
    tracker.observe(10.5)
    assert tracker.watermark() == Timestamp(micros=10_250_000)


def test_idle_split_advances_watermark_to_now_minus_max_delay():
    """After idle_timeout without elements the watermark advances to now - max_delay."""
    clock = FakeClock(now=1_000.0)
    tracker = BoundedOutOfOrderness(max_delay=5, idle_timeout=30).tracker(clock=clock)
    tracker.observe(ts(500))
    clock.now = 1_029.0
    assert tracker.watermark() == ts(495)
    assert not tracker.is_idle()
    clock.now = 1_030.0
    assert tracker.is_idle()
    assert tracker.watermark() == ts(1_025)
    clock.now = 1_100.0
    assert tracker.watermark() == ts(1_095)


def test_split_that_never_saw_an_element_becomes_idle_from_its_start():
    """An empty split is idle idle_timeout after the tracker started."""
    clock = FakeClock(now=2_000.0)
    tracker = BoundedOutOfOrderness(max_delay=10, idle_timeout=60).tracker(clock=clock)
    clock.now = 2_059.0
    assert tracker.watermark() == MIN_TIMESTAMP
    clock.now = 2_060.0
    assert tracker.watermark() == ts(2_050)


def test_active_split_is_not_idle():
    """Elements arriving more often than idle_timeout keep the watermark event-time driven."""
    clock = FakeClock(now=1_000.0)
    tracker = BoundedOutOfOrderness(max_delay=5, idle_timeout=30).tracker(clock=clock)
    for step in range(10):
        clock.now += 20
        tracker.observe(ts(100 + step))
        assert tracker.watermark() == ts(95 + step), step


def test_late_arrival_after_idleness_resets_idle_but_not_the_watermark():
    """An element after an idle advance restarts the idle clock and cannot pull the watermark."""
    clock = FakeClock(now=1_000.0)
    tracker = BoundedOutOfOrderness(max_delay=5, idle_timeout=30).tracker(clock=clock)
    clock.now = 1_040.0
    assert tracker.watermark() == ts(1_035)
    tracker.observe(ts(100))
    assert not tracker.is_idle()
    assert tracker.watermark() == ts(1_035)


def test_idle_advance_never_moves_watermark_back():
    """When event time runs ahead of the clock, idleness leaves the watermark where it is."""
    clock = FakeClock(now=1_000.0)
    tracker = BoundedOutOfOrderness(max_delay=5, idle_timeout=30).tracker(clock=clock)
    tracker.observe(ts(5_000))
    clock.now = 2_000.0
    assert tracker.is_idle()
    assert tracker.watermark() == ts(4_995)


def test_without_idle_timeout_a_split_is_never_idle():
    """idle_timeout=None: however long nothing arrives, the watermark stays put."""
    clock = FakeClock(now=1_000.0)
    tracker = BoundedOutOfOrderness(max_delay=5).tracker(clock=clock)
    tracker.observe(ts(100))
    clock.now = 1_000_000.0
    assert not tracker.is_idle()
    assert tracker.watermark() == ts(95)


def test_tracker_state_round_trips_through_pickle():
    """state -> pickle -> from_state resumes watermark, max event time and idle clock."""
    policy = BoundedOutOfOrderness(max_delay=5, idle_timeout=30)
    clock = FakeClock(now=1_000.0)
    tracker = policy.tracker(clock=clock)
    tracker.observe(ts(200))
    tracker.observe(ts(190))
    state = pickle.loads(pickle.dumps(tracker.state))  # noqa: S301 -- our own bytes
    assert isinstance(state, WatermarkState)
    resumed = WatermarkTracker.from_state(policy, state, clock=clock)
    assert (resumed.watermark(), resumed.max_event_time) == (ts(195), ts(200))
    resumed.observe(ts(199))
    assert resumed.watermark() == ts(195)
    clock.now = 1_030.0
    assert resumed.watermark() == ts(1_025)


def test_initial_state_watermark_is_min_timestamp():
    """The policy's initial state carries MIN_TIMESTAMP, not None."""
    state = BoundedOutOfOrderness(max_delay=1).initial_state()
    assert state.watermark == MIN_TIMESTAMP
    assert state == WatermarkState(MIN_TIMESTAMP, None, None)


# -- the SDF watermark estimator -------------------------------------------------------------


def test_provider_initial_state_is_min_timestamp_and_encodable():
    """initial_estimator_state has watermark MIN_TIMESTAMP and survives the state coder."""
    provider = BoundedOutOfOrderness(max_delay=5).estimator_provider(clock=FakeClock())
    assert isinstance(provider, WatermarkEstimatorProvider)
    state = provider.initial_estimator_state("element", OffsetRange(0, 10))
    assert state.watermark == MIN_TIMESTAMP
    coder = provider.estimator_state_coder()
    decoded = coder.decode(coder.encode(state))
    estimator = provider.create_watermark_estimator(decoded)
    assert isinstance(estimator, WatermarkEstimator)
    assert isinstance(estimator, BoundedOutOfOrdernessEstimator)
    assert estimator.current_watermark() == MIN_TIMESTAMP


def test_estimator_follows_observed_timestamps():
    """observe_timestamp drives current_watermark as max - max_delay, monotonically."""
    provider = BoundedOutOfOrderness(max_delay=10).estimator_provider(clock=FakeClock())
    estimator = provider.create_watermark_estimator(provider.initial_estimator_state(None, None))
    marks = []
    for seconds in (50, 70, 60, 65, 80):
        estimator.observe_timestamp(ts(seconds))
        marks.append(estimator.current_watermark())
    assert marks == [ts(40), ts(60), ts(60), ts(60), ts(70)]


def test_checkpoint_preserves_the_watermark():
    """get_estimator_state -> coder -> create_watermark_estimator keeps the watermark."""
    clock = FakeClock(now=5_000.0)
    provider = BoundedOutOfOrderness(max_delay=3, idle_timeout=60).estimator_provider(clock)
    estimator = provider.create_watermark_estimator(provider.initial_estimator_state(None, None))
    estimator.observe_timestamp(ts(1_000))
    estimator.observe_timestamp(ts(998))
    assert estimator.current_watermark() == ts(997)
    coder = provider.estimator_state_coder()
    checkpoint = coder.decode(coder.encode(estimator.get_estimator_state()))
    resumed = provider.create_watermark_estimator(checkpoint)
    assert resumed.current_watermark() == ts(997)
    resumed.observe_timestamp(ts(999))
    assert resumed.current_watermark() == ts(997)
    resumed.observe_timestamp(ts(1_010))
    assert resumed.current_watermark() == ts(1_007)


def test_estimator_advances_when_idle_with_fake_clock():
    """An estimator with nothing observed for idle_timeout advances to now - max_delay."""
    clock = FakeClock(now=10_000.0)
    provider = BoundedOutOfOrderness(max_delay=5, idle_timeout=20).estimator_provider(clock)
    estimator = provider.create_watermark_estimator(provider.initial_estimator_state(None, None))
    estimator.observe_timestamp(ts(9_000))
    clock.now = 10_019.0
    assert estimator.current_watermark() == ts(8_995)
    assert not estimator.is_idle()
    clock.now = 10_020.0
    assert estimator.is_idle()
    assert estimator.current_watermark() == ts(10_015)


def test_idle_clock_survives_a_checkpoint():
    """The time of the last element is part of the state: idleness continues after resume."""
    clock = FakeClock(now=10_000.0)
    provider = BoundedOutOfOrderness(max_delay=5, idle_timeout=20).estimator_provider(clock)
    estimator = provider.create_watermark_estimator(provider.initial_estimator_state(None, None))
    estimator.observe_timestamp(ts(9_000))
    clock.now = 10_015.0
    resumed = provider.create_watermark_estimator(estimator.get_estimator_state())
    clock.now = 10_020.0
    assert resumed.current_watermark() == ts(10_015)


def test_provider_pickles_with_default_and_injected_clock():
    """The provider survives Beam's pickler with the wall clock and with a fake clock."""
    policy = BoundedOutOfOrderness(max_delay=5, idle_timeout=20)
    default = pickler.loads(pickler.dumps(policy.estimator_provider()))
    assert default.policy == policy
    assert default._clock is wall_clock
    clock = FakeClock(now=77.0)
    injected = pickler.loads(pickler.dumps(policy.estimator_provider(clock=clock)))
    estimator = injected.create_watermark_estimator(injected.initial_estimator_state(None, None))
    assert estimator.get_estimator_state().last_activity == 77.0


# -- a real splittable DoFn ------------------------------------------------------------------

_POLICY = BoundedOutOfOrderness(max_delay="2s", idle_timeout="1m")


class _EmitTimestampsFn(beam.DoFn, beam.transforms.core.RestrictionProvider):
    """Emits the epoch seconds in its element as timestamped values, one offset each.

    It checkpoints after every element, so each resume goes through the estimator state.
    """

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def initial_restriction(self, element):
        return OffsetRange(0, len(element))

    def restriction_size(self, element, restriction):
        return restriction.size()

    def process(
        self,
        element,
        tracker=beam.DoFn.RestrictionParam(),
        watermark_estimator=beam.DoFn.WatermarkEstimatorParam(_POLICY.estimator_provider()),
    ):
        position = tracker.current_restriction().start
        if tracker.try_claim(position):
            seconds = element[position]
            yield beam.window.TimestampedValue(seconds, Timestamp(seconds))
            tracker.defer_remainder()


class _KeepTimestampFn(beam.DoFn):
    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        yield (element, timestamp.micros // 1_000_000)


def test_sdf_with_the_provider_emits_every_element_across_checkpoints():
    """A bounded SDF using the provider on FnApiRunner outputs exactly its input."""
    emitted = [1_700_000_000, 1_700_000_005, 1_700_000_003, 1_700_000_009, 1_700_000_001]
    with TestPipeline(runner="FnApiRunner") as p:
        out = (
            p
            | beam.Create([emitted])
            | "Emit" >> beam.ParDo(_EmitTimestampsFn())
            | "Keep" >> beam.ParDo(_KeepTimestampFn())
        )
        assert_that(out, equal_to([(s, s) for s in emitted]), label="CheckEmitted")
