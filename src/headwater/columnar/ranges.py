"""Window starts cut into ranges, one per process that merges or writes them (Linux forks).

A local batch run ends merging its groups and writing its window files; with
``write_processes`` the columnar DoFn cuts that work by window start
(:meth:`ColumnarState.window_parts <headwater.columnar.state.ColumnarState.window_parts>`;
merged sessions in :mod:`headwater.columnar.batch`), so that every window's rows, and so its
files, belong to one range.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["start_ranges", "starting_in"]


def start_ranges(starts: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Rows' window ``starts`` cut into up to ``count`` ranges of starts ``(first, last)``, in
    order, of about as many rows each (the rows of one start in one range).

    >>> start_ranges(np.array([0, 0, 60, 120, 120, 120]), 2)
    [(0, 60), (120, 120)]
    """
    distinct, rows = np.unique(starts, return_counts=True)
    if len(distinct) == 0:
        return []
    total = np.cumsum(rows)
    # a range ends with the start where the rows reach its share
    cuts = np.searchsorted(total, total[-1] * np.arange(1, count) / count) + 1
    bounds = np.unique(np.concatenate(([0], cuts, [len(distinct)])))
    return [(int(distinct[a]), int(distinct[b - 1])) for a, b in pairwise(bounds.tolist())]


def starting_in(table: pa.Table, windows: tuple[int, int]) -> pa.Table:
    """The rows of ``table`` whose window starts (column ``w``) in ``[first, last]``."""
    first, last = windows
    return table.filter((pc.field("w") >= first) & (pc.field("w") <= last))
