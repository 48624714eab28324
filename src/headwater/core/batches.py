"""The batches a bundle sends to keyed shards.

A stateful step keyed by shard pays the runner's per-element cost (encoding, the data channel,
the runner's per-key queue, the SDK's state and timer parameters) once per element, so its
feeders send each shard one element per bundle: :class:`ShardBatches` gathers a bundle's items
per shard, in arrival order, and emits ``(shard, [item, ...])`` stamped with the earliest
timestamp among the items, in the global window. The earliest timestamp keeps the guarantee
the items had alone: the batch is due no later than any of its items (a runner that hands a
key's data and timers over in timestamp order hands it over before any timer at or after that
time), and the step stamps each item's output back with the item's own time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from apache_beam.utils.windowed_value import WindowedValue

from headwater.core.stamps import in_global_window

__all__ = ["BATCH_LIMIT", "ShardBatches"]

#: Items per batch at most: a fuller shard's batch leaves mid-bundle.
BATCH_LIMIT = 1024


class ShardBatches:
    """One bundle's items per shard, each shard's in the order they were added.

    ``add`` returns a full batch to emit at once, or ``None``; ``drain`` (in ``finish_bundle``)
    yields the rest and empties the batches. Batches are ``WindowedValue`` in the global window
    (:func:`~headwater.core.stamps.in_global_window`), timestamped with the earliest of their
    items' times (micros).

    >>> batches = ShardBatches(limit=2)
    >>> batches.add(0, "a", 20), batches.add(1, "b", 5)
    (None, None)
    >>> full = batches.add(0, "c", 10)
    >>> full.value, full.timestamp.micros
    ((0, ['a', 'c']), 10)
    >>> [(w.value, w.timestamp.micros) for w in batches.drain()]
    [((1, ['b']), 5)]
    """

    __slots__ = ("_items", "_limit", "_low")

    def __init__(self, *, limit: int | None = None):
        limit = BATCH_LIMIT if limit is None else limit
        if limit < 1:
            raise ValueError(f"limit={limit!r} must be at least 1")
        self._limit = limit
        self._items: dict[int, list[Any]] = {}
        self._low: dict[int, int] = {}

    def add(self, shard: int, item: Any, micros: int) -> WindowedValue | None:
        items = self._items.get(shard)
        if items is None:
            self._items[shard] = [item]
            self._low[shard] = micros
            items = self._items[shard]
        else:
            items.append(item)
            if micros < self._low[shard]:
                self._low[shard] = micros
        if len(items) < self._limit:
            return None
        del self._items[shard]
        return in_global_window((shard, items), self._low.pop(shard))

    def drain(self) -> Iterator[WindowedValue]:
        items, low = self._items, self._low
        self._items, self._low = {}, {}
        for shard, batch in items.items():
            yield in_global_window((shard, batch), low[shard])
