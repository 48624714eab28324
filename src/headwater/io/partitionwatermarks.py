"""One watermark for a partitioned source's splits read in this process (a Prism workaround).

A splittable DoFn reports a watermark per split (for Kafka: per partition) and the runner should
take their minimum. Prism (Beam 2.77) does not: it sets the step's output watermark to the
minimum over the residuals of the *last bundle that finished*, so with two partitions read in
separate bundles the watermark follows whichever partition was read last. On a stream where one
partition is behind the other, its records then arrive behind the watermark and are judged late
(seen here: records 2 s inside the out-of-orderness bound routed to ``late``).

:class:`SharedWatermarkProvider` wraps a split's watermark-estimator provider: each split's
estimator reports the minimum of its own watermark and those of the other splits of the same
read last reported in this process. Reporting a watermark at or below a split's own is always
allowed (it only holds the output back), so on runners that take the minimum themselves
(Dataflow, Flink) this changes nothing they would not compute. A split that has not reported for
``stale_after`` seconds (it finished, or the runner moved it to another worker) stops counting,
so a split gone elsewhere cannot stall the watermark for longer than that.

A split that has had no element for ``SILENT_WARN_S`` while its source has no idle timeout, and
whose watermark is behind another split's of the same read, holds the read's watermark for as
long as it stays silent: no window closes. That is logged once per split (a Kafka partition that
gets no records: the fix is ``--idle_timeout``), since the job otherwise reads on and writes
nothing without a word.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from apache_beam.io.watermark_estimators import WatermarkEstimator
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

__all__ = ["SILENT_WARN_S", "PartitionWatermarks", "SharedWatermarkProvider", "WATERMARKS"]

STALE_AFTER_S = 30.0
#: A split silent this long (seconds of processing time) that holds its read back is logged.
SILENT_WARN_S = 60.0
_LOG = logging.getLogger(__name__)


class PartitionWatermarks:
    """The last watermark each split of each read reported in this process; thread-safe."""

    def __init__(
        self, *, stale_after: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic
    ):
        if stale_after <= 0:
            raise ValueError(f"stale_after={stale_after!r} must be a positive number of seconds")
        self._stale_after = stale_after
        self._clock = clock
        self._lock = threading.Lock()
        self._reads: dict[str, dict[Hashable, tuple[Timestamp, float]]] = {}
        self._warned: set[tuple[str, Hashable]] = set()

    def register(self, read_id: str, split: Hashable) -> None:
        """A split about to be read: it holds the read's watermark at the minimum until it
        reports (or goes stale)."""
        with self._lock:
            splits = self._reads.setdefault(read_id, {})
            if split not in splits:
                splits[split] = (MIN_TIMESTAMP, self._clock())

    def report(self, read_id: str, split: Hashable, watermark: Timestamp) -> Timestamp:
        """Records ``split``'s own watermark; returns the minimum over the read's live splits."""
        now = self._clock()
        with self._lock:
            splits = self._reads.setdefault(read_id, {})
            splits[split] = (watermark, now)
            live = [w for w, at in splits.values() if now - at <= self._stale_after]
        return min(live, default=watermark)

    def finish(self, read_id: str, split: Hashable) -> None:
        """A split that is done no longer holds the read's watermark."""
        with self._lock:
            self._reads.get(read_id, {}).pop(split, None)

    def ahead_of(self, read_id: str, split: Hashable, watermark: Timestamp) -> Timestamp | None:
        """The newest watermark of the read's other live splits if it is past ``watermark``
        (``split`` holds them back), else ``None``."""
        now = self._clock()
        with self._lock:
            others = [
                w
                for key, (w, at) in self._reads.get(read_id, {}).items()
                if key != split and now - at <= self._stale_after
            ]
        newest = max(others, default=None)
        return newest if newest is not None and newest > watermark else None

    def first_warning(self, read_id: str, split: Hashable) -> bool:
        """True the first time it is asked for ``split`` of ``read_id`` in this process."""
        with self._lock:
            if (read_id, split) in self._warned:
                return False
            self._warned.add((read_id, split))
            return True


WATERMARKS = PartitionWatermarks()
"""The registry of this process (the SDK harness of a ``LOOPBACK`` run is this process)."""


class _SharedEstimator(WatermarkEstimator):
    def __init__(self, inner: Any, read_id: str, split: Hashable):
        self._inner = inner
        self._read_id = read_id
        self._split = split

    def observe_timestamp(self, timestamp: Timestamp) -> None:
        self._inner.observe_timestamp(timestamp)

    def current_watermark(self) -> Timestamp:
        own = self._inner.current_watermark()
        if own >= MAX_TIMESTAMP:
            WATERMARKS.finish(self._read_id, self._split)
            return own
        shared = WATERMARKS.report(self._read_id, self._split, own)
        self._warn_if_silent_holder(own)
        return shared

    def _warn_if_silent_holder(self, own: Timestamp) -> None:
        """Logs once when this split, silent for :data:`SILENT_WARN_S` and never idle, holds
        the read's watermark behind another split's."""
        silent_hold = getattr(self._inner, "silent_hold", None)
        silent = None if silent_hold is None else silent_hold()
        if silent is None or silent < SILENT_WARN_S:
            return
        ahead = WATERMARKS.ahead_of(self._read_id, self._split, own)
        if ahead is None or not WATERMARKS.first_warning(self._read_id, self._split):
            return
        held = "the start of time" if own <= MIN_TIMESTAMP else own.to_rfc3339()
        _LOG.warning(
            "%s has had no record for %.0f s and holds the watermark at %s while another "
            "partition is at %s: no window closes and nothing is judged late until it gets "
            "one. Without an idle timeout a silent partition is never idle: set --idle_timeout "
            "(e.g. 30s) if it may stay empty",
            _split_name(self._split),
            silent,
            held,
            ahead.to_rfc3339(),
        )

    def get_estimator_state(self) -> Any:
        return (self._split, self._inner.get_estimator_state())


def _split_name(split: Hashable) -> str:
    """``topic[partition]`` for a Kafka partition's ``(topic, partition)``, else the split."""
    if isinstance(split, tuple) and len(split) == 2 and isinstance(split[1], int):
        return f"partition {split[0]}[{split[1]}]"
    return f"split {split!r}"


class SharedWatermarkProvider(WatermarkEstimatorProvider):
    """Wraps ``inner`` (a provider per split) so each split reports the read's minimum.

    ``split_of(element)`` names an element's split (e.g. ``(topic, partition)``); ``read_id``
    tells reads apart. The estimator state is ``(split, inner state)``.
    """

    def __init__(
        self,
        inner: WatermarkEstimatorProvider,
        *,
        read_id: str,
        split_of: Callable[[Any], Hashable],
    ):
        if not read_id:
            raise ValueError(f"read_id={read_id!r} must be a non-empty string")
        self._inner = inner
        self._read_id = read_id
        self._split_of = split_of

    def initial_estimator_state(self, element: Any, restriction: Any) -> Any:
        split = self._split_of(element)
        WATERMARKS.register(self._read_id, split)
        return (split, self._inner.initial_estimator_state(element, restriction))

    def create_watermark_estimator(self, estimator_state: Any) -> _SharedEstimator:
        split, inner_state = estimator_state
        inner = self._inner.create_watermark_estimator(inner_state)
        return _SharedEstimator(inner, self._read_id, split)

    def estimator_state_coder(self) -> Any:
        return self._inner.estimator_state_coder()
