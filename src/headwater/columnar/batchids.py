"""The batch dedup's ids: the record path's rule over blocks, the ids in memory or on disk.

:class:`BatchIds` judges each block of ``(id, event time)`` rows, in arrival order, by the batch
rule: a copy is a duplicate iff its event time is at most its anchor plus the horizon
(:func:`headwater.windowing.rules.is_duplicate`), the anchor being the newest event time among
the id's earlier copies in the input -- however far back, since the record path in batch never
forgets an id. Within a block the anchor is a running maximum over the rows grouped by id;
across blocks it is carried in :class:`~headwater.columnar.idtable.IdAnchors`.

Memory follows the ids within the horizon, not the input. The table is sized once for the run's
records (:meth:`BatchIds.expect`, up to ``_SIZED_IDS``); when it fills up, the *settled* ids --
anchors older than how far the input has come (the newest block median) by more than the horizon
and the out-of-orderness -- move to local disk (:class:`~headwater.columnar.spill.SpilledAnchors`)
instead of the table growing. A copy whose id is not in memory asks the disk when its event time
is within the horizon of the newest anchor there: it is then judged against every earlier copy,
as if nothing had moved. Which ids move only decides what the run costs: records in order (less
than the out-of-orderness behind the stream) never ask the disk, and one record from a clock
years ahead does not move the bound (a median does not follow it).

>>> import pyarrow as pa
>>> ids = BatchIds(horizon_micros=10, out_of_order_micros=0)
>>> ids.keep(pa.array(["a", "b", "a"]), np.array([100, 100, 105])).tolist()
[True, True, False]
>>> ids.keep(pa.array(["a", "b"]), np.array([116, 110])).tolist()  # a's anchor is 105 now
[True, False]
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from headwater.columnar import idtable
from headwater.columnar.idtable import IdAnchors
from headwater.columnar.spill import SpilledAnchors
from headwater.windowing import rules
from headwater.windowing.rules import NO_TIME

__all__ = ["BatchIds", "GroupedIds", "group_ids"]

# The ids the table is sized for at once (expect): a table that fills up moves its settled ids
# to disk instead of growing.
_SIZED_IDS = 1 << 20


@dataclasses.dataclass
class GroupedIds:
    """A block's rows grouped by id, and what the rule needs of them within the block: no state
    of the run, so any process may compute it (:func:`group_ids`) for :meth:`BatchIds.keep`."""

    unique: pa.Array  # the block's distinct ids
    hashes: np.ndarray  # hash_ids(unique)
    order: np.ndarray  # the rows grouped by id (in the order of unique), arrival order within
    sorted_group: np.ndarray  # per row in that order, its id's index in unique
    sorted_ts: np.ndarray  # per row in that order, its event time
    starts: np.ndarray  # where each id's rows start in that order
    previous: np.ndarray  # per row in that order, the newest event time of its id's earlier
    # copies in the block (NO_TIME for the first)
    median: int  # of the block's event times


def group_ids(ids: pa.Array, ts: np.ndarray) -> GroupedIds:
    """A block's rows grouped by id (ids: strings, no nulls; ts: event time, micros)."""
    n = len(ts)
    encoded = ids.dictionary_encode()
    group = encoded.indices.to_numpy().astype(np.int64)
    unique = encoded.dictionary
    # rows grouped by id, arrival order within an id (16-bit indexes sort by radix)
    narrow = group.astype(np.uint16) if len(unique) <= 1 << 16 else group
    order = np.argsort(narrow, kind="stable")
    sorted_group = group[order]
    sorted_ts = ts[order]
    same = np.zeros(n, dtype=bool)
    same[1:] = sorted_group[1:] == sorted_group[:-1]
    # the newest earlier copy within the block, per id (rows grouped by id)
    running = rules.running_max_v(sorted_group, sorted_ts)
    previous = np.full(n, NO_TIME, dtype=np.int64)
    previous[1:][same[1:]] = running[:-1][same[1:]]
    starts = np.flatnonzero(~same)  # each id's first row (ids in dictionary order)
    median = int(np.median(sorted_ts))
    hashes = idtable.hash_ids(unique)  # the table's hash, as the table calls it
    return GroupedIds(unique, hashes, order, sorted_group, sorted_ts, starts, previous, median)


class BatchIds:
    """The ids of one batch run (see the module docstring)."""

    def __init__(self, horizon_micros: int, out_of_order_micros: int):
        self._horizon = horizon_micros
        self._out_of_order = out_of_order_micros
        self.anchors = IdAnchors()  # the ids in memory: id -> anchor
        self.spilled: SpilledAnchors | None = None  # the ids moved to disk
        self._spilled_newest = int(NO_TIME)  # the newest anchor among them
        self._expected = 0  # see expect
        self._progress = int(NO_TIME)  # how far the input has come: the newest block median

    def __len__(self) -> int:
        """Ids held in memory."""
        return len(self.anchors)

    @property
    def on_disk(self) -> int:
        """Entries moved to disk so far (0 when the table never had to)."""
        return 0 if self.spilled is None else len(self.spilled)

    def expect(self, records: int) -> None:
        """A hint: about ``records`` more records are coming. The next :meth:`keep` sizes the
        table for them at once instead of growing it in steps (nothing is allocated before a
        block is judged). Results do not depend on it."""
        self._expected += max(records, 0)

    def keep(
        self, ids: pa.Array | None, ts: np.ndarray, grouped: GroupedIds | None = None
    ) -> np.ndarray:
        """The keep mask of a block's rows (ids: strings, no nulls; ts: event time, micros).

        ``grouped``: the block's :func:`group_ids`, when computed already (then ``ids`` may be
        None).
        """
        n = len(ts)
        if n == 0:  # (a median of nothing is not a time)
            return np.ones(0, dtype=bool)
        horizon = self._horizon
        if grouped is None:
            assert ids is not None
            grouped = group_ids(ids, ts)
        unique, order, starts = grouped.unique, grouped.order, grouped.starts
        sorted_group, sorted_ts = grouped.sorted_group, grouped.sorted_ts
        if self._expected:  # never sized past _SIZED_IDS: a run of many files fills and spills
            self.anchors.reserve(min(self._expected, _SIZED_IDS - len(self.anchors)))
            self._expected = 0
        carried, handle = self.anchors.lookup(unique, grouped.hashes)
        if self.spilled is not None:  # ids on disk: only a copy within their horizon asks
            oldest = np.minimum.reduceat(sorted_ts, starts)
            ask = np.flatnonzero((carried == NO_TIME) & (oldest <= self._spilled_newest + horizon))
            if len(ask):
                carried[ask] = self.spilled.get(unique.take(pa.array(ask)))
        anchor = np.maximum(grouped.previous, carried[sorted_group])
        duplicate_sorted = rules.is_duplicate_v(sorted_ts, anchor, horizon)
        keep = np.ones(n, dtype=bool)
        keep[order] = ~duplicate_sorted
        # carry each id's newest event time to the next blocks
        newest = np.maximum(np.maximum.reduceat(sorted_ts, starts), carried)
        self._progress = max(self._progress, grouped.median)
        self.anchors.store(unique, handle, newest, self._settled, self._spill)
        return keep

    def _settled(self, anchors: np.ndarray) -> np.ndarray:
        """The anchors the table may move to disk when it fills (see the module docstring)."""
        if self._progress == NO_TIME:
            return np.zeros(len(anchors), dtype=bool)
        return anchors < self._progress - self._horizon - self._out_of_order

    def _spill(self, ids: pa.Array, anchors: np.ndarray, hashes: np.ndarray | None) -> None:
        if self.spilled is None:
            self.spilled = SpilledAnchors()
        self.spilled.put(ids, anchors, hashes)
        self._spilled_newest = max(self._spilled_newest, int(anchors.max()))
