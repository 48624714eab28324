"""The bounded-out-of-orderness watermark policy, for sources and for stream replay.

A source split (a Kafka partition, a replayed file) sees event times roughly in order: any
element may arrive up to ``max_delay`` after a later one. The policy turns the event times a
split has emitted into its watermark, the promise that no element older than it is still to come:

* the watermark is ``max event time observed - max_delay``; it starts at Beam's
  ``MIN_TIMESTAMP`` and never moves back (an older, out-of-order element leaves it where it is);
* with an ``idle_timeout``, a split that has observed nothing for that long in processing
  (wall-clock) time is idle, and its watermark advances to ``max(current, now - max_delay)``, so
  an empty Kafka partition does not hold back the whole pipeline. Elements that arrive after that
  and are behind the watermark are late: the windowing step routes them to its ``late`` output.

Per split the policy is applied through a :class:`WatermarkTracker` (plain Python; stream replay
uses it to place ``advance_watermark_to`` events in a ``TestStream``) or, inside a splittable
``DoFn``, through :meth:`BoundedOutOfOrderness.estimator_provider`, whose estimator state is a
picklable :class:`WatermarkState` that survives checkpoints. Beam combines the splits' watermarks
as their minimum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from headwater.windowing.durations import DurationLike, format_duration, parse_duration

__all__ = [
    "BoundedOutOfOrderness",
    "BoundedOutOfOrdernessEstimator",
    "BoundedOutOfOrdernessProvider",
    "WatermarkState",
    "WatermarkTracker",
]

Clock = Callable[[], float]


def wall_clock() -> float:
    """Processing time in epoch seconds (``time.time``); the default clock of the policy."""
    return time.time()


class WatermarkState(NamedTuple):
    """What a tracker needs to resume: a checkpoint of one split's watermark.

    ``last_activity`` is the processing time (epoch seconds) of the last observed element, or of
    the tracker's start; ``None`` means "not started yet" (the clock is read on resume).
    """

    watermark: Timestamp = MIN_TIMESTAMP
    max_event_time: Timestamp | None = None
    last_activity: float | None = None


def _clamp(micros: int) -> Timestamp:
    return Timestamp(micros=min(max(micros, MIN_TIMESTAMP.micros), MAX_TIMESTAMP.micros))


class BoundedOutOfOrderness:
    """Watermark = max event time seen - ``max_delay``; idle splits advance with the clock.

    ``max_delay`` and ``idle_timeout`` are durations (seconds, ``timedelta`` or e.g. ``"30s"``);
    ``idle_timeout=None`` means a split is never considered idle.

    >>> policy = BoundedOutOfOrderness(max_delay="10s", idle_timeout="1m")
    >>> tracker = policy.tracker(clock=lambda: 0.0)
    >>> tracker.observe(Timestamp(100)); tracker.observe(Timestamp(95))
    >>> tracker.watermark()
    Timestamp(90)
    """

    def __init__(self, *, max_delay: DurationLike, idle_timeout: DurationLike | None = None):
        self.max_delay = parse_duration(max_delay, name="max_delay")
        self.idle_timeout = (
            None
            if idle_timeout is None
            else parse_duration(idle_timeout, name="idle_timeout", allow_zero=False)
        )
        self._delay_micros = round(self.max_delay * 1_000_000)

    def __repr__(self) -> str:
        idle = "None" if self.idle_timeout is None else repr(format_duration(self.idle_timeout))
        return (
            f"BoundedOutOfOrderness(max_delay={format_duration(self.max_delay)!r}, "
            f"idle_timeout={idle})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BoundedOutOfOrderness):
            return NotImplemented
        return (self.max_delay, self.idle_timeout) == (other.max_delay, other.idle_timeout)

    def __hash__(self) -> int:
        return hash((BoundedOutOfOrderness, self.max_delay, self.idle_timeout))

    def initial_state(self) -> WatermarkState:
        """The state of a split that has seen nothing: watermark ``MIN_TIMESTAMP``."""
        return WatermarkState()

    def tracker(
        self, clock: Clock = wall_clock, state: WatermarkState | None = None
    ) -> WatermarkTracker:
        """A tracker for one split, reading processing time from ``clock`` (epoch seconds)."""
        return WatermarkTracker(self, clock=clock, state=state)

    def estimator_provider(self, clock: Clock | None = None) -> BoundedOutOfOrdernessProvider:
        """The policy as a splittable DoFn's ``WatermarkEstimatorProvider``.

        Use it as ``watermark_estimator=beam.DoFn.WatermarkEstimatorParam(provider)`` in
        ``process``. ``clock`` defaults to the wall clock; pass a module-level function (the
        provider is pickled with the DoFn).
        """
        return BoundedOutOfOrdernessProvider(self, clock=clock)

    def _bounded(self, event_time: Timestamp) -> Timestamp:
        return _clamp(event_time.micros - self._delay_micros)


class WatermarkTracker:
    """One split's watermark under a :class:`BoundedOutOfOrderness` policy.

    Call :meth:`observe` with every element's event time and :meth:`watermark` whenever the
    watermark is needed; :attr:`state` and :meth:`from_state` checkpoint and resume it.
    """

    def __init__(
        self,
        policy: BoundedOutOfOrderness,
        *,
        clock: Clock = wall_clock,
        state: WatermarkState | tuple[Any, ...] | None = None,
    ):
        if not isinstance(policy, BoundedOutOfOrderness):
            raise ValueError(f"policy={policy!r} is not a BoundedOutOfOrderness")
        if not callable(clock):
            raise ValueError(f"clock={clock!r} is not callable")
        self.policy = policy
        self._clock = clock
        if state is None:
            state = policy.initial_state()
        try:
            watermark, max_event_time, last_activity = state
        except (TypeError, ValueError):
            raise ValueError(
                f"state={state!r} is not a WatermarkState (watermark, max_event_time, "
                "last_activity)"
            ) from None
        self._watermark = Timestamp.of(watermark)
        self._max_event_time = None if max_event_time is None else Timestamp.of(max_event_time)
        self._last_activity = clock() if last_activity is None else float(last_activity)

    @classmethod
    def from_state(
        cls,
        policy: BoundedOutOfOrderness,
        state: WatermarkState | tuple[Any, ...] | None,
        *,
        clock: Clock = wall_clock,
    ) -> WatermarkTracker:
        """Resumes a tracker from a checkpointed :attr:`state`."""
        return cls(policy, clock=clock, state=state)

    @property
    def state(self) -> WatermarkState:
        """The picklable checkpoint of this tracker."""
        return WatermarkState(self._watermark, self._max_event_time, self._last_activity)

    @property
    def max_event_time(self) -> Timestamp | None:
        """The largest event time observed, ``None`` before the first element."""
        return self._max_event_time

    def observe(self, event_time: Timestamp | float) -> None:
        """Records an element with ``event_time`` (a ``Timestamp`` or epoch seconds)."""
        event_time = Timestamp.of(event_time)
        self._last_activity = self._clock()
        if self._max_event_time is None or event_time > self._max_event_time:
            self._max_event_time = event_time
            self._watermark = max(self._watermark, self.policy._bounded(event_time))

    def is_idle(self) -> bool:
        """Whether nothing was observed for ``idle_timeout`` of processing time."""
        return self._idle_at(self._clock())

    def silent_for(self) -> float:
        """Processing-time seconds since the last observed element (or the tracker's start)."""
        return max(0.0, self._clock() - self._last_activity)

    def watermark(self) -> Timestamp:
        """The current watermark: monotonic, advanced by the clock while the split is idle."""
        now = self._clock()
        if self._idle_at(now):
            now_ts = _clamp(round(now * 1_000_000))
            self._watermark = max(self._watermark, self.policy._bounded(now_ts))
        return self._watermark

    def _idle_at(self, now: float) -> bool:
        timeout = self.policy.idle_timeout
        return timeout is not None and now - self._last_activity >= timeout

    def __repr__(self) -> str:
        return f"WatermarkTracker({self.policy!r}, state={self.state!r})"


class BoundedOutOfOrdernessEstimator(WatermarkEstimator):
    """A splittable DoFn's watermark estimator applying :class:`BoundedOutOfOrderness`.

    Beam calls :meth:`observe_timestamp` with the timestamp of every element the DoFn outputs,
    :meth:`current_watermark` to report the split's output watermark, and
    :meth:`get_estimator_state` at a checkpoint; the state resumes it through
    :meth:`BoundedOutOfOrdernessProvider.create_watermark_estimator`.
    """

    def __init__(
        self,
        policy: BoundedOutOfOrderness,
        state: WatermarkState | tuple[Any, ...] | None = None,
        *,
        clock: Clock = wall_clock,
    ):
        self._tracker = WatermarkTracker(policy, clock=clock, state=state)

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        self._tracker.observe(timestamp)

    def current_watermark(self) -> Timestamp:
        return self._tracker.watermark()

    def get_estimator_state(self) -> WatermarkState:
        return self._tracker.state

    def is_idle(self) -> bool:
        """Whether the split has observed nothing for the policy's ``idle_timeout``."""
        return self._tracker.is_idle()

    def silent_hold(self) -> float | None:
        """How long (processing seconds) the split has observed nothing, when silence never
        makes it idle (no ``idle_timeout``): it then holds its watermark for as long; else
        ``None``."""
        if self._tracker.policy.idle_timeout is not None:
            return None
        return self._tracker.silent_for()


class BoundedOutOfOrdernessProvider(WatermarkEstimatorProvider):
    """Provides :class:`BoundedOutOfOrdernessEstimator` to a splittable DoFn; picklable.

    The initial state's watermark is ``MIN_TIMESTAMP`` (never ``None``), so the first
    checkpoint can encode it.
    """

    def __init__(self, policy: BoundedOutOfOrderness, *, clock: Clock | None = None):
        if not isinstance(policy, BoundedOutOfOrderness):
            raise ValueError(f"policy={policy!r} is not a BoundedOutOfOrderness")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock={clock!r} is not callable")
        self.policy = policy
        self._clock = wall_clock if clock is None else clock

    def initial_estimator_state(self, element: Any, restriction: Any) -> WatermarkState:
        return self.policy.initial_state()

    def create_watermark_estimator(
        self, estimator_state: WatermarkState | tuple[Any, ...] | None
    ) -> BoundedOutOfOrdernessEstimator:
        return BoundedOutOfOrdernessEstimator(self.policy, estimator_state, clock=self._clock)

    def __repr__(self) -> str:
        return f"BoundedOutOfOrdernessProvider({self.policy!r})"
