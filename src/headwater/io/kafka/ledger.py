"""Which offsets of a partition a streaming job may commit: up to its first record not written.

A streaming read used to commit each partition's next offset when the runner finalized the bundle
that read it. The records of windows still open were then only in the runner's memory: a job
killed (not drained) had committed them, and its restart from ``start="committed"`` never read
them again. :class:`OffsetLedger` keeps, per partition, what was read and what became final, so
the commit follows the writes instead:

* the reader reports each batch it consumed as a **range** ``[start, stop)`` with the runs of
  offsets that hold a record (offsets without one -- transaction markers, compacted records --
  are in no run);
* every record reports once that its outcome is final (**done**): a duplicate when dedup drops
  it, a dead letter or late record once its file is written, an on-time record once its windows'
  files are written (a **wait** until the watermark reaches the close of its last window, its end
  plus the allowed lateness: :meth:`release`, :func:`headwater.windowing.rules.is_late`);
* the commit point is the first offset, from where the read began, that was read and is not
  done, or the end of what was read when every record is done. A restart from it re-reads every
  record whose outcome was not written (and some whose outcome was: window files are written
  once, so those panes are kept out).

Reports may arrive in any order: a record's done report before its range's waits in ``orphans``;
a range before the ranges preceding it waits until they arrive. The state is the records read
and not done, as runs of offsets (a few runs per open window, not one entry per record), plus
the waits.

>>> ledger = OffsetLedger()
>>> ledger.begin(10)
>>> ledger.read(10, 13, ((10, 13),)); ledger.read(13, 15, ((13, 14),))  # 14 holds no record
>>> ledger.done([11, 10]); ledger.wait(at=5_000, offsets=[12])
>>> ledger.advance()  # offset 12 waits for its window
12
>>> ledger.release(5_000); ledger.done([13]); ledger.advance()
15
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from headwater.core.records import origin_of
from headwater.windowing.rules import is_late

__all__ = ["OffsetLedger", "done_notices", "kafka_position", "offset_runs", "position_notices"]

Runs = tuple[tuple[int, int], ...]


def kafka_position(element: Any) -> tuple[tuple[str, int], int] | None:
    """``((topic, partition), offset)`` of a Kafka record, a record parsed from one or its dead
    letter; ``None`` for anything else (a file's record)."""
    origin = origin_of(element)
    offset = origin.get("offset")
    if isinstance(offset, int) and "topic" in origin and "partition" in origin:
        return (origin["topic"], origin["partition"]), offset
    return None


def done_notices(elements: Iterable[Any]) -> list[tuple[tuple[str, int], tuple[Any, ...]]]:
    """The "done" reports of ``elements`` (records, dead letters): one per partition."""
    return position_notices(map(kafka_position, elements))


def position_notices(
    positions: Iterable[tuple[tuple[str, int], int] | None],
) -> list[tuple[tuple[str, int], tuple[Any, ...]]]:
    """The "done" reports of Kafka positions (:func:`kafka_position`; None is skipped):
    ``((topic, partition), ("done", offsets))``, one per partition."""
    by_partition: dict[tuple[str, int], list[int]] = {}
    for position in positions:
        if position is not None:
            by_partition.setdefault(position[0], []).append(position[1])
    return [(key, ("done", tuple(offsets))) for key, offsets in by_partition.items()]


def offset_runs(offsets: Iterable[int]) -> Runs:
    """Sorted, distinct ``offsets`` as runs ``(first, last + 1)`` of consecutive offsets."""
    runs: list[list[int]] = []
    for offset in sorted(set(offsets)):
        if runs and runs[-1][1] == offset:
            runs[-1][1] = offset + 1
        else:
            runs.append([offset, offset + 1])
    return tuple((a, b) for a, b in runs)


@dataclass
class OffsetLedger:
    """The read ranges and final outcomes of one partition; see the module docstring.

    Nothing is committed before :meth:`begin` gives where the job's read of the partition began
    (every range report repeats it). Timestamps (``at``, ``release``) are microseconds, as Beam's.
    """

    committed: int | None = None
    _read_to: int | None = None  # the ranges from the beginning are contiguous up to here
    _ahead: dict[int, tuple[int, Runs]] = field(default_factory=dict)  # out-of-order ranges
    _lo: list[int] = field(default_factory=list)  # runs read and not done: [_lo[i], _hi[i])
    _hi: list[int] = field(default_factory=list)
    orphans: set[int] = field(default_factory=set)  # done before their range was reported
    _waits: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def begin(self, base: int) -> None:
        """Where the read began (the first report counts)."""
        if self.committed is None:
            self.committed = self._read_to = base
            self._absorb()

    def read(self, start: int, stop: int, runs: Sequence[tuple[int, int]]) -> None:
        """The reader consumed ``[start, stop)``; ``runs``: where its records are."""
        if not start < stop or any(not start <= a < b <= stop for a, b in runs):
            raise ValueError(f"range [{start}, {stop}) with records at {list(runs)} is not a range")
        if self._read_to is not None and start < self._read_to:
            return  # reported again
        self._ahead[start] = (stop, tuple(runs))
        self._absorb()

    def _absorb(self) -> None:
        while self._read_to is not None and self._read_to in self._ahead:
            stop, runs = self._ahead.pop(self._read_to)
            for a, b in runs:
                self._add_run(a, b)
            self._read_to = stop
        if self.orphans and self._read_to is not None:
            known = {o for o in self.orphans if o < self._read_to}
            if known:
                self.orphans -= known
                self.done(known)

    def _add_run(self, a: int, b: int) -> None:
        at = bisect.bisect_left(self._lo, a)
        if at > 0 and self._hi[at - 1] == a:  # extends the run before it
            self._hi[at - 1] = b
        else:
            self._lo.insert(at, a)
            self._hi.insert(at, b)

    def done(self, offsets: Iterable[int]) -> None:
        """These records' outcomes are final (each offset is reported once)."""
        for a, b in offset_runs(offsets):
            if self._read_to is None or b > self._read_to:
                # (past what was read: its range has not been reported yet)
                start = a if self._read_to is None else max(a, self._read_to)
                self.orphans.update(range(start, b))
                if self._read_to is None:
                    continue
                b = self._read_to
                if a >= b:
                    continue
            self._remove_run(a, b)

    def _remove_run(self, a: int, b: int) -> None:
        """Takes ``[a, b)`` out of the runs not done (offsets not in them are ignored)."""
        at = max(bisect.bisect_right(self._lo, a) - 1, 0)
        while at < len(self._lo) and self._lo[at] < b:
            lo, hi = self._lo[at], self._hi[at]
            if hi <= a:
                at += 1
                continue
            pieces = [(x, y) for x, y in ((lo, a), (b, hi)) if x < y]
            self._lo[at : at + 1] = [x for x, _ in pieces]
            self._hi[at : at + 1] = [y for _, y in pieces]
            at += len(pieces)

    def wait(self, *, at: int, offsets: Iterable[int]) -> None:
        """These records are done once the watermark given to :meth:`release` has reached
        ``at``, the close of their last window (``rules.is_late(at, watermark)``)."""
        self._waits.append((at, tuple(offsets)))

    def release(self, watermark: int) -> None:
        """Marks done every record whose last window has closed at ``watermark``."""
        ready = [offsets for at, offsets in self._waits if is_late(at, watermark)]
        if ready:
            self._waits = [(at, o) for at, o in self._waits if not is_late(at, watermark)]
            self.done(o for offsets in ready for o in offsets)

    def next_wait(self) -> int | None:
        """The earliest watermark that releases a waiting record, or ``None``."""
        return min((at for at, _ in self._waits), default=None)

    def advance(self) -> int | None:
        """Moves the commit point to the first record read and not done; the new point or
        ``None`` when it did not move."""
        if self.committed is None or self._read_to is None:
            return None
        point = self._lo[0] if self._lo else self._read_to
        if point <= self.committed:
            return None
        self.committed = point
        return point

    @property
    def pending_runs(self) -> int:
        """Runs of records read and not done (the ledger's size)."""
        return len(self._lo)

    def __bool__(self) -> bool:  # (a ledger is never "empty" for ``state.read() or ...``)
        return True
