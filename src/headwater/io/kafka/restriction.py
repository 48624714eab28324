"""The Kafka source's restrictions: an offset range per partition, its tracker and provider.

An unbounded range ends at :data:`UNBOUNDED_STOP`; its tracker's progress and its size count
the messages up to the partition's latest known end offset (:mod:`headwater.io.kafka.backlog`).
A range also carries the read's wall-clock deadline (``max_duration``); a claim past the
deadline, or on an unbounded range after :func:`~headwater.io.kafka.drain.request_drain`, ends
the range with no residual.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from apache_beam.io.iobase import RestrictionProgress
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from headwater.io.kafka.backlog import END_OFFSETS
from headwater.io.kafka.drain import drain_requested
from headwater.io.kafka.record import PartitionRead

__all__ = [
    "RESTRICTIONS",
    "UNBOUNDED_STOP",
    "PartitionRange",
    "PartitionRestrictions",
    "PartitionTracker",
    "read_ends",
]

#: The stop offset of an unbounded restriction.
UNBOUNDED_STOP = 2**63 - 1


class PartitionRange(OffsetRange):
    """An offset range that also carries the read's wall-clock deadline (``None``: none) and
    ``key``, the ``(topic, partition)`` it belongs to (``None``: not known), whose end offset
    its tracker looks up in :data:`~headwater.io.kafka.backlog.END_OFFSETS`."""

    def __init__(
        self,
        start: int,
        stop: int,
        deadline: float | None = None,
        key: tuple[str, int] | None = None,
    ):
        super().__init__(start, stop)
        self.deadline = deadline
        self.key = key

    def split_at(self, split_pos: int) -> tuple[PartitionRange, PartitionRange]:
        return (
            PartitionRange(self.start, split_pos, self.deadline, self.key),
            PartitionRange(split_pos, self.stop, self.deadline, self.key),
        )

    def split(self, desired_num_offsets_per_split: int, min_num_offsets_per_split: int = 1):
        for part in super().split(desired_num_offsets_per_split, min_num_offsets_per_split):
            yield PartitionRange(part.start, part.stop, self.deadline, self.key)

    def is_bounded(self) -> bool:
        return self.stop < UNBOUNDED_STOP

    def __repr__(self) -> str:
        stop = "inf" if self.stop >= UNBOUNDED_STOP else self.stop
        return (
            f"PartitionRange(start={self.start}, stop={stop}, deadline={self.deadline}, "
            f"key={self.key})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (PartitionRange, (self.start, self.stop, self.deadline, self.key))


def read_ends(restriction: OffsetRange, clock: Callable[[], float] = time.time) -> bool:
    """Whether a read of ``restriction`` stops now: its deadline passed, or a drain of an
    unbounded range was requested."""
    deadline = getattr(restriction, "deadline", None)
    if deadline is not None and clock() >= deadline:
        return True
    return restriction.stop >= UNBOUNDED_STOP and drain_requested()


class PartitionTracker(OffsetRestrictionTracker):
    """Claims offsets of one partition; ends the restriction at the deadline, with no residual.

    After the deadline (or, for an unbounded range, after :func:`request_drain`) a claim fails
    and the range is cut at the refused offset, so the restriction is done (nothing is handed
    back to the runner) and ``check_done`` holds.
    """

    def __init__(self, offset_range: PartitionRange, clock: Callable[[], float] = time.time):
        super().__init__(offset_range)
        self._clock = clock

    def try_claim(self, position: int) -> bool:
        deadline = getattr(self._range, "deadline", None)
        if (
            self._range.start <= position < self._range.stop
            and (self._last_claim_attempt is None or position > self._last_claim_attempt)
            and self.ends_now()
        ):
            self._range = PartitionRange(
                self._range.start, position, deadline, getattr(self._range, "key", None)
            )
            self._last_claim_attempt = position  # type: ignore[assignment]
            return False
        return bool(super().try_claim(position))

    def is_bounded(self) -> bool:
        return bool(self._range.stop < UNBOUNDED_STOP)

    def try_split(self, fraction_of_remainder: float) -> Any:
        # An unbounded range has no end to split toward: a split at a fraction of the
        # remainder lands near offset 2**62, which no partition has (Prism asks for such
        # splits; the residual then read from an offset out of range). Only a checkpoint
        # (fraction 0: stop after the current offset) is allowed there.
        if self._range.stop >= UNBOUNDED_STOP and fraction_of_remainder > 0:
            return None
        return super().try_split(fraction_of_remainder)

    def current_progress(self) -> RestrictionProgress:
        """Offsets claimed (``completed``) and left to read (``remaining``), in messages, for a
        bounded range; for an unbounded one Beam's own fraction of the offset range.

        An unbounded range's backlog in messages is its size
        (:meth:`PartitionRestrictions.restriction_size`) and the ``consumer_lag_*`` gauges, not
        its progress: reported as progress, a caught-up
        partition's few remaining messages made Prism ask for a split at a NaN fraction (the SDK
        then fails the bundle), seen on every drain of the Prism streaming bench.
        """
        if self._range.stop >= UNBOUNDED_STOP:
            return _finite(super().current_progress())
        done = self._range.start if self._current_position is None else self._current_position + 1
        return _finite(
            RestrictionProgress(
                completed=float(done - self._range.start),
                remaining=float(max(0, self._range.stop - done)),
            )
        )

    def ends_now(self) -> bool:
        """Whether the read stops here: past its deadline, or an unbounded range drained."""
        return read_ends(self._range, self._clock)


_LEAST_SIZE = 1e-3  # the size of an unbounded range that has nothing left to read


def _finite(progress: RestrictionProgress) -> RestrictionProgress:
    """``progress``, or no work done of one left when it has no finite fraction: Beam's split
    arithmetic turns a NaN fraction into an error that fails the bundle (seen on Prism)."""
    completed, remaining = progress.completed_work, progress.remaining_work
    fraction = progress.fraction_completed
    finite = all(math.isfinite(v) for v in (completed, remaining, fraction))
    if finite and completed + remaining > 0:
        return progress
    return RestrictionProgress(completed=0.0, remaining=_LEAST_SIZE)


class PartitionRestrictions(RestrictionProvider):
    """Restrictions of :class:`PartitionRead` elements: one offset range per partition."""

    def initial_restriction(self, element: PartitionRead) -> PartitionRange:
        stop = UNBOUNDED_STOP if element.stop is None else max(element.stop, element.start)
        return PartitionRange(
            element.start, stop, element.deadline, (element.topic, element.partition)
        )

    def create_tracker(self, restriction: PartitionRange) -> PartitionTracker:
        return PartitionTracker(restriction)

    def split(self, element: PartitionRead, restriction: PartitionRange):
        # The initial split is by partition (one element per partition); ranges are split
        # further only dynamically, by the runner, while they are read.
        yield restriction

    def restriction_size(self, element: PartitionRead, restriction: PartitionRange) -> float:
        """Messages to read: ``stop - start``; for an unbounded range, up to the partition's
        latest known end offset (``1.0`` while none is known: every partition weighs the same)."""
        if restriction.stop >= UNBOUNDED_STOP:
            end = END_OFFSETS.latest(element.topic, element.partition)
            if end is None:
                return 1.0
            # Never 0: a runner divides by sizes (Prism's split fraction became NaN at a drain).
            return max(_LEAST_SIZE, float(end - restriction.start))
        return float(restriction.stop - restriction.start)

    def truncate(self, element: PartitionRead, restriction: PartitionRange):
        # On drain an unbounded read stops where it is; a bounded one finishes.
        if restriction.stop >= UNBOUNDED_STOP:
            return None
        return restriction


RESTRICTIONS = PartitionRestrictions()
