"""The carried ``id -> anchor`` table of the columnar dedup: a numpy open-addressing hash table.

:class:`IdAnchors` maps each id seen so far to its anchor (newest event time, micros), block by
block: ids are found through a 64-bit hash of their UTF-8 bytes (:func:`hash_ids`), and every hit
is confirmed by comparing the ids themselves, so two different ids never share an anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.windowing.rules import NO_TIME

_ID_SLOTS = 1 << 16  # initial slots of the dedup id table (a power of two)


_HASH_WORDS = np.random.default_rng(0x68656164).integers(
    1, 2**64 - 1, size=64, dtype=np.uint64, endpoint=True
) | np.uint64(1)  # one odd multiplier per 8-byte word of an id (more are derived as needed)


def _word_weights(words: int) -> np.ndarray:
    """``words`` odd 64-bit multipliers, the same prefix for every call."""
    global _HASH_WORDS
    if words > len(_HASH_WORDS):
        more = np.random.default_rng(len(_HASH_WORDS)).integers(
            1, 2**64 - 1, size=words, dtype=np.uint64, endpoint=True
        )
        _HASH_WORDS = np.concatenate([_HASH_WORDS, more | np.uint64(1)])
    return _HASH_WORDS[:words]


def hash_ids(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash per id of a string array (no nulls), from its UTF-8 bytes.

    The bytes are read as zero-padded little-endian 64-bit words ``w_j``; the hash mixes
    ``sum(w_j * m_j) + length`` (mod 2**64, ``m_j`` fixed random odd multipliers). Equal ids
    always hash equal; different ids rarely do, and hits are always confirmed on the ids.
    """
    n = len(ids)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    _, offset_buffer, data_buffer = ids.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32, count=n + 1, offset=4 * ids.offset)
    offsets = offsets.astype(np.int64)
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)
    lengths = np.diff(offsets)
    width = int(lengths.max())
    words = (width + 7) // 8
    weights = _word_weights(max(words, 1))
    with np.errstate(over="ignore"):
        if width > 0 and int(lengths.min()) == width:  # one length: a matrix of words
            rows = data[offsets[0] : offsets[0] + n * width].reshape(n, width)
            if width % 8:
                padded = np.zeros((n, words * 8), dtype=np.uint8)
                padded[:, :width] = rows
                rows = padded
            matrix = np.ascontiguousarray(rows).view("<u8")
            total = (matrix * weights).sum(axis=1, dtype=np.uint64)
        else:  # byte b at position p in its id weighs m_{p // 8} << 8 * (p % 8)
            first, last = int(offsets[0]), int(offsets[-1])
            chunk = data[first:last].astype(np.uint64)
            position = np.arange(last - first, dtype=np.int64) - np.repeat(
                offsets[:-1] - first, lengths
            )
            byte_weights = weights[position // 8] << ((position % 8) * 8).astype(np.uint64)
            sums = np.zeros(len(chunk) + 1, dtype=np.uint64)
            np.cumsum(chunk * byte_weights, dtype=np.uint64, out=sums[1:])
            total = sums[offsets[1:] - first] - sums[offsets[:-1] - first]
        h = total + lengths.astype(np.uint64)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    return h


class IdAnchors(dict):
    """The carried ``id -> anchor`` map of the batch dedup, exact, mostly held in numpy arrays.

    :meth:`lookup` and :meth:`store` work on a whole block of ids: they are found through an
    open-addressing (linear probing) table keyed by a 64-bit hash of their bytes, and every hit is
    confirmed by comparing the ids themselves, so two different ids never share an anchor. The
    table holds at most one id per hash; an id whose hash another id already holds lives in the
    object itself, a plain ``dict`` (practically never). ``len()`` counts the ids held either way.
    Entries for which the ``forgotten`` test given to :meth:`store` is true are dropped when the
    table fills up.
    """

    def __init__(self) -> None:
        super().__init__()
        self._slots = np.full(_ID_SLOTS, -1, dtype=np.int64)  # entry per slot, -1: empty
        self._hashes = np.empty(_ID_SLOTS // 2, dtype=np.uint64)  # per entry
        self._values = np.empty(_ID_SLOTS // 2, dtype=np.int64)  # per entry: the anchor
        self._size = 0
        self._ids: list[pa.Array] = []  # the entries' ids, in entry order

    def __len__(self) -> int:
        return self._size + dict.__len__(self)

    def _overflowing(self) -> bool:
        return dict.__len__(self) > 0

    def _stored(self, entries: np.ndarray) -> pa.Array:
        """The held ids of ``entries``, in that order.

        Taken chunk by chunk: Arrow's take over a chunked string array joins the chunks first,
        which copied every held id for each block (30 ms a block at 900k ids; this is 0.1 ms).
        """
        if len(self._ids) > 32:
            self._ids = [pa.chunked_array(self._ids, type=pa.string()).combine_chunks()]
        bounds = np.cumsum([0] + [len(chunk) for chunk in self._ids])
        order = np.argsort(entries, kind="stable")
        ordered = entries[order]
        cuts = np.searchsorted(ordered, bounds)
        parts = [
            chunk.take(pa.array(ordered[cuts[i] : cuts[i + 1]] - bounds[i]))
            for i, chunk in enumerate(self._ids)
            if cuts[i + 1] > cuts[i]
        ]
        taken = pa.concat_arrays(parts) if parts else pa.array([], type=pa.string())
        inverse = np.empty(len(order), dtype=np.int64)
        inverse[order] = np.arange(len(order))
        return taken.take(pa.array(inverse))

    def _probe(self, hashes: np.ndarray) -> np.ndarray:
        """The entry holding each hash, or -1."""
        mask = np.uint64(len(self._slots) - 1)
        position = (hashes & mask).astype(np.int64)
        entries = np.full(len(hashes), -1, dtype=np.int64)
        pending = np.arange(len(hashes))
        while len(pending):
            occupant = self._slots[position[pending]]
            filled = occupant >= 0
            pending, occupant = pending[filled], occupant[filled]
            same = self._hashes[occupant] == hashes[pending]
            entries[pending[same]] = occupant[same]
            pending = pending[~same]
            position[pending] = (position[pending] + 1) & (len(self._slots) - 1)
        return entries

    def lookup(self, ids: pa.Array, hashes: np.ndarray | None = None) -> tuple[np.ndarray, Any]:
        """Each id's anchor (``NO_TIME`` when not held), and a handle for :meth:`put`
        (``hashes``: :func:`hash_ids` of ``ids``, when computed already)."""
        hashes = hash_ids(ids) if hashes is None else hashes
        entries = self._probe(hashes)
        hit = np.flatnonzero(entries >= 0)
        if len(hit):
            stored = self._stored(entries[hit])
            same = pc.equal(ids.take(pa.array(hit)), stored).to_numpy(zero_copy_only=False)
            entries[hit[~same]] = -2  # the hash belongs to another id
        values = np.full(len(ids), NO_TIME, dtype=np.int64)
        found = entries >= 0
        values[found] = self._values[entries[found]]
        if self._overflowing():
            for i in np.flatnonzero(~found).tolist():
                values[i] = dict.get(self, ids[i].as_py(), NO_TIME)
        return values, (hashes, entries)

    def store(
        self,
        ids: pa.Array,
        handle: Any,
        values: np.ndarray,
        forgotten: Callable[[np.ndarray], np.ndarray],
        spill: Callable[[pa.Array, np.ndarray, np.ndarray | None], None] | None = None,
    ) -> None:
        """Sets the anchors of ``ids`` (the handle is :meth:`lookup`'s for the same ids).

        When the table fills up, the entries whose anchors ``forgotten`` picks are dropped;
        ``spill(ids, anchors, hashes)`` gets them first (the batch dedup keeps them on disk;
        ``hashes`` is None for the few held outside the table).
        """
        hashes, entries = handle
        found = entries >= 0
        self._values[entries[found]] = values[found]
        new = np.flatnonzero(~found)
        if self._overflowing() and len(new):
            held = [ids[i].as_py() in self for i in new.tolist()]
            for i in new[np.array(held, dtype=bool)].tolist():
                self[ids[i].as_py()] = int(values[i])
            new = new[~np.array(held, dtype=bool)]
        if len(new) == 0:
            return
        self._reserve(len(new), forgotten, spill)
        self._insert(ids, hashes, entries, values, new)

    def reserve(self, extra: int) -> None:
        """Room for ``extra`` more ids now (a run that knows its size skips growing in steps,
        each of which places every held id again); nothing is dropped."""
        if extra > 0:
            self._reserve(extra, _nothing_forgotten)

    def _reserve(
        self,
        extra: int,
        forgotten: Callable[[np.ndarray], np.ndarray],
        spill: Callable[[pa.Array, np.ndarray, np.ndarray | None], None] | None = None,
    ) -> None:
        """Room for ``extra`` more entries, at most half the slots used (drops stale entries,
        handing them to ``spill`` first when given)."""
        if (self._size + extra) * 2 <= len(self._slots):
            return
        stale = forgotten(self._values[: self._size])
        if stale.any():
            live = np.flatnonzero(~stale)
            if spill is not None:
                dropped = np.flatnonzero(stale)
                spill(self._stored(dropped), self._values[dropped], self._hashes[dropped])
            self._ids = [self._stored(live)] if len(live) else []
            self._hashes[: len(live)] = self._hashes[live]
            self._values[: len(live)] = self._values[live]
            self._size = len(live)
        held = list(self.items())
        if held:
            gone = forgotten(np.array([v for _, v in held], dtype=np.int64)).tolist()
            out = [(key, value) for (key, value), drop in zip(held, gone, strict=True) if drop]
            if spill is not None and out:
                spill(
                    pa.array([key for key, _ in out], type=pa.string()),
                    np.array([value for _, value in out], dtype=np.int64),
                    None,
                )
            for key, _ in out:
                del self[key]
        capacity = len(self._slots)
        # Grow to at most a third full: room for a sixth of the slots before the next pruning,
        # and no more (a table that quadrupled would hold ids long stale before pruning again).
        while (self._size + extra) * 3 > capacity:
            capacity *= 2
        if capacity > len(self._hashes):
            for name in ("_hashes", "_values"):
                held = getattr(self, name)
                grown = np.empty(capacity, dtype=held.dtype)
                grown[: self._size] = held[: self._size]
                setattr(self, name, grown)
        self._slots = np.full(capacity, -1, dtype=np.int64)
        hashes = self._hashes[: self._size]
        position = (hashes & np.uint64(capacity - 1)).astype(np.int64)
        self._place(position, np.arange(self._size, dtype=np.int64))

    def _place(self, position: np.ndarray, entries: np.ndarray) -> None:
        """Puts entries (distinct hashes, not in the table) into slots, probing linearly."""
        mask = len(self._slots) - 1
        pending = np.arange(len(entries))
        while len(pending):
            empty = self._slots[position[pending]] < 0
            blocked = pending[~empty]
            position[blocked] = (position[blocked] + 1) & mask
            free = pending[empty]
            # several may want one slot: one of them is written last; it is the one placed
            self._slots[position[free]] = entries[free]
            placed = self._slots[position[free]] == entries[free]
            pending = np.concatenate([blocked, free[~placed]])

    def _insert(self, ids: pa.Array, hashes, entries, values, new: np.ndarray) -> None:
        """Adds the ids at ``new`` (not held); one whose hash is taken goes to the dict.

        ``entries`` is :meth:`lookup`'s: -1 where no held id has the hash, -2 where another does
        (that id may have been dropped since; keeping the newcomer in the dict is still exact).
        """
        own = hashes[new]
        # one entry per hash: none whose hash another id holds (-2), the first of equal hashes
        to_table = entries[new] == -1
        ordered = np.sort(own)
        if bool((ordered[1:] == ordered[:-1]).any()):
            _, first = np.unique(own, return_index=True)
            unique_new = np.zeros(len(new), dtype=bool)
            unique_new[first] = True
            to_table &= unique_new
        for i in new[~to_table].tolist():
            self[ids[i].as_py()] = int(values[i])
        add = new[to_table]
        start = self._size
        entries = np.arange(start, start + len(add), dtype=np.int64)
        self._hashes[entries] = hashes[add]
        self._values[entries] = values[add]
        self._size += len(add)
        self._ids.append(ids.take(pa.array(add)))
        mask = np.uint64(len(self._slots) - 1)
        self._place((hashes[add] & mask).astype(np.int64), entries)


def _nothing_forgotten(anchors: np.ndarray) -> np.ndarray:
    return np.zeros(len(anchors), dtype=bool)
