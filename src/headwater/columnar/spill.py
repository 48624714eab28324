"""Ids the batch dedup moved out of memory: sorted runs on local disk, read memory-mapped.

The batch rule never forgets an id (a copy arriving any time later is judged against its
anchor), so a backfill's id table would grow with its input. :class:`SpilledAnchors` holds the
ids the table moved out (:meth:`headwater.columnar.idtable.IdAnchors.store`'s ``spill``): each
move writes one *run* -- the ids' 64-bit hashes sorted, their anchors in that order, and the
ids themselves with the permutation to them, one Arrow IPC file -- into a temporary folder, and
maps it back read-only, so the runs cost page cache, not the process's memory. :meth:`get`
finds ids by hash with a binary search in every run and confirms each hit on the id itself, so
two ids never share an anchor; an id in several runs (moved out, seen again, moved out again)
gets its newest anchor.

The folder is removed when the object is garbage collected or the process exits.

>>> import pyarrow as pa
>>> spilled = SpilledAnchors()
>>> spilled.put(pa.array(["a", "b"]), np.array([10, 20]))
>>> spilled.put(pa.array(["a"]), np.array([5]))
>>> spilled.get(pa.array(["a", "c", "b"])).tolist() == [10, NO_TIME, 20]
True
>>> len(spilled)
3
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from headwater.columnar import idtable
from headwater.windowing.rules import NO_TIME

__all__ = ["SpilledAnchors"]


@dataclasses.dataclass
class _Run:
    hashes: np.ndarray  # sorted
    anchors: np.ndarray  # in the same order
    order: np.ndarray  # per sorted position, the id's row in ``ids``
    ids: pa.Array  # as given to put


class SpilledAnchors:
    """An append-only ``id -> anchor`` store on local disk (see the module docstring)."""

    def __init__(self) -> None:
        self._folder: Path | None = None
        self._runs: list[_Run] = []

    def __len__(self) -> int:
        """Entries written (an id moved out twice counts twice)."""
        return sum(len(run.hashes) for run in self._runs)

    @property
    def runs(self) -> int:
        return len(self._runs)

    def _next_path(self) -> Path:
        if self._folder is None:
            try:
                self._folder = Path(tempfile.mkdtemp(prefix="headwater-dedup-"))
            except OSError as exc:
                raise OSError(
                    f"the batch dedup could not create its folder for ids past the horizon in "
                    f"{tempfile.gettempdir()} ({exc}): set TMPDIR to a writable local folder"
                ) from exc
            weakref.finalize(self, shutil.rmtree, self._folder, ignore_errors=True)
        return self._folder / f"run-{len(self._runs):06d}.arrow"

    def put(self, ids: pa.Array, anchors: np.ndarray, hashes: np.ndarray | None = None) -> None:
        """Writes one run: ``ids`` (distinct strings, no nulls) with their anchors.

        ``hashes``: the ids' :func:`~headwater.columnar.idtable.hash_ids` when the caller holds
        them (the id table does); hashing a large run again would cost memory in proportion.
        A run is one file (one open file while the store lives).
        """
        if len(ids) == 0:
            return
        if hashes is None:
            hashes = idtable.hash_ids(ids)
        order = np.argsort(hashes, kind="stable")
        batch = pa.record_batch(
            [
                pa.array(hashes[order], type=pa.uint64()),
                pa.array(np.asarray(anchors, dtype=np.int64)[order]),
                pa.array(order.astype(np.int64)),
                ids.cast(pa.string()),
            ],
            names=["hash", "anchor", "order", "id"],
        )
        path = self._next_path()
        try:
            with ipc.new_file(str(path), batch.schema) as writer:
                writer.write_batch(batch)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise OSError(
                f"the batch dedup could not move {len(ids):,} ids to {path.parent} ({exc}); "
                "it keeps the ids past its horizon on local disk: set TMPDIR to a folder with "
                "room (about 30 bytes per id plus the id itself)"
            ) from exc
        mapped = ipc.open_file(pa.memory_map(str(path))).get_batch(0)
        self._runs.append(
            _Run(
                hashes=mapped.column(0).to_numpy(),  # views of the mapped file, no copies
                anchors=mapped.column(1).to_numpy(),
                order=mapped.column(2).to_numpy(),
                ids=mapped.column(3),
            )
        )

    def get(self, ids: pa.Array) -> np.ndarray:
        """Each id's newest anchor over the runs, ``NO_TIME`` when no run holds it."""
        found = np.full(len(ids), NO_TIME, dtype=np.int64)
        if len(ids) == 0 or not self._runs:
            return found
        hashes = idtable.hash_ids(ids)
        for run in self._runs:
            low = np.searchsorted(run.hashes, hashes, side="left")
            high = np.searchsorted(run.hashes, hashes, side="right")
            width = high - low
            # almost always one entry per hash; different ids sharing a hash take more rounds
            for step in range(int(width.max()) if len(width) else 0):
                query = np.flatnonzero(width > step)
                position = low[query] + step
                same = pc.equal(
                    ids.take(pa.array(query)), run.ids.take(pa.array(run.order[position]))
                ).to_numpy(zero_copy_only=False)
                hit, at = query[same], position[same]
                found[hit] = np.maximum(found[hit], run.anchors[at])
        return found
