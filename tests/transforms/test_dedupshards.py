"""The sharded dedup step's state: one meta read per shard and bundle, the ids in memory only
while they are exactly what the runner committed, and a bag that sweeps keep bounded.

The DoFn is driven directly with state cells that buffer a bundle's writes until it commits, as
a runner does (the rule itself is checked end to end in test_dedup.py).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from apache_beam.pvalue import TaggedOutput
from apache_beam.utils.timestamp import Timestamp

from headwater.core.shards import stable_shard
from headwater.transforms import dedupshards
from headwater.transforms.dedup import _KeyByIdFn
from headwater.transforms.dedupshards import DeduplicateShardsFn
from headwater.windowing.rules import dedup_grid

S = 1_000_000
HORIZON = 30 * S


class _Store:
    """One shard's committed state: the meta cell, the bag and the armed sweeps by tag."""

    def __init__(self) -> None:
        self.meta: Any = None
        self.ids: list[tuple[str, int]] = []
        self.sweeps: dict[str, Timestamp] = {}
        self.reads = {"meta": 0, "ids": 0}
        self.meta_writes = 0


class _Meta:
    def __init__(self, store: _Store):
        self.store, self.value, self.written = store, None, False

    def read(self) -> Any:
        if self.written:
            return self.value
        self.store.reads["meta"] += 1
        return self.store.meta

    def write(self, value: Any) -> None:
        self.value, self.written = value, True
        self.store.meta_writes += 1


class _Ids:
    def __init__(self, store: _Store):
        self.store, self.cleared, self.added = store, False, []

    def read(self) -> list[tuple[str, int]]:
        self.store.reads["ids"] += 1
        return ([] if self.cleared else list(self.store.ids)) + self.added

    def add(self, value: tuple[str, int]) -> None:
        self.added.append(value)

    def clear(self) -> None:
        self.cleared, self.added = True, []


class _Sweep:
    def __init__(self, store: _Store):
        self.store, self.armed = store, dict(store.sweeps)

    def set(self, when: Timestamp, dynamic_timer_tag: str = "") -> None:
        self.armed[dynamic_timer_tag] = when


def _bundle(fn: DeduplicateShardsFn, stores: dict[int, _Store], work: list, *, commit=True):
    """Runs ``work`` -- ``(shard, id, seconds)`` records or ``(shard, "sweep", seconds)`` firings
    -- as one bundle, consecutive records of a shard as one batch (as the feeder sends them);
    commits its writes, or drops them as a failed bundle. Returns ``(id, "main" |
    "duplicate")`` per record."""
    views: dict[int, tuple[_Meta, _Ids, _Sweep]] = {}
    out = []
    fn.start_bundle()
    for (shard, is_sweep), run in itertools.groupby(work, lambda w: (w[0], w[1] == "sweep")):
        store = stores.setdefault(shard, _Store())
        meta, ids, sweep = views.setdefault(shard, (_Meta(store), _Ids(store), _Sweep(store)))
        if is_sweep:
            for _, _, seconds in run:
                sweep.armed.pop(str(seconds * S))  # (the runner drops a timer as it fires it)
                fired = Timestamp(micros=seconds * S)
                assert list(fn.swept(fired, shard, meta, ids, sweep)) == []
            continue
        batch = [(what, seconds * S, {"id": what}) for _, what, seconds in run]
        for item in fn.process((shard, batch), meta, ids, sweep):
            stamped = item.value if isinstance(item, TaggedOutput) else item
            out.append((stamped.value["id"], "duplicate" if stamped is not item else "main"))
    fn.finish_bundle()
    if commit:
        for shard, (meta, ids, sweep) in views.items():
            store = stores[shard]
            if meta.written:
                store.meta = meta.value
            store.ids = ([] if ids.cleared else store.ids) + ids.added
            store.sweeps = sweep.armed
    return out


def test_a_batch_is_judged_record_by_record_in_order_and_stamped_back():
    """A shard's batch: each record in arrival order against the anchors the earlier ones
    left, each output stamped with its own event time; one item alone (an element written
    before batches, still in flight after an update) is judged the same way."""
    fn, stores = DeduplicateShardsFn(HORIZON), {}
    store = stores.setdefault(0, _Store())
    cells = (_Meta(store), _Ids(store), _Sweep(store))
    fn.start_bundle()
    batch = [("a", 100 * S, "a1"), ("b", 101 * S, "b1"), ("a", 120 * S, "a2"), ("a", 90 * S, "a0")]
    out = list(fn.process((0, batch), *cells))
    alone = list(fn.process((0, ("b", 200 * S, "b2")), *cells))
    fn.finish_bundle()
    seen = [
        (o.tag, o.value.value, o.value.timestamp.micros)
        if isinstance(o, TaggedOutput)
        else ("main", o.value, o.timestamp.micros)
        for o in out + alone
    ]
    assert seen == [
        ("main", "a1", 100 * S),
        ("main", "b1", 101 * S),
        ("duplicate", "a2", 120 * S),  # within 30 s of a1; its anchor moves to 120 s
        ("duplicate", "a0", 90 * S),
        ("main", "b2", 200 * S),  # 99 s after b1: a new episode
    ]
    assert cells[0].value[0] != 0
    assert store.meta_writes == 1


def test_the_feeder_sends_each_shard_one_batch_per_bundle_at_its_earliest_carrier():
    """KeyById with shards: one (shard, [(id, micros, record), ...]) per shard and bundle, in
    arrival order, stamped with the earliest carrier (event time rounded down to the grid)."""
    grid = dedup_grid(HORIZON)
    fn = _KeyByIdFn(lambda r: r["id"], 4, grid)
    fn.start_bundle()
    times = {"x": [130, 65, 200], "y": [70], "z": [10, 400]}
    arrivals = [("x", 130), ("y", 70), ("z", 10), ("x", 65), ("z", 400), ("x", 200)]
    for record_id, seconds in arrivals:
        assert list(fn.process({"id": record_id}, Timestamp(micros=seconds * S))) == []
    batches = list(fn.finish_bundle())
    by_id: dict[str, list[int]] = {}
    for batch in batches:
        shard, items = batch.value
        assert all(stable_shard(i, 4) == shard for i, _, _ in items)
        low = min(dedupshards.carrier_micros(micros, grid) for _, micros, _ in items)
        assert batch.timestamp == Timestamp(micros=low)
        for record_id, micros, record in items:
            assert record == {"id": record_id}
            by_id.setdefault(record_id, []).append(micros // S)
    assert by_id == times  # every record once, each id's copies in arrival order
    assert len(batches) == len({stable_shard(i, 4) for i in times})


def test_a_bundle_reads_each_shards_meta_once_and_its_ids_only_when_the_table_is_stale():
    """On a runner without a state cache every read is a round trip: a bundle reads one meta
    cell per shard it touches (the per-id step read one anchor per record), and the bag only
    when the table in memory is not the committed one: another instance of the step in this
    process shares the table; a shard another worker wrote is read again."""
    fn, stores = DeduplicateShardsFn(HORIZON), {}
    first = _bundle(fn, stores, [(0, f"id{n}", 100 + n) for n in range(50)])
    assert first == [(f"id{n}", "main") for n in range(50)]
    assert stores[0].meta_writes == 1  # once per shard and bundle, not per record
    again = _bundle(fn, stores, [(0, f"id{n}", 110 + n) for n in range(50)])
    assert again == [(f"id{n}", "duplicate") for n in range(50)]
    assert stores[0].reads == {"meta": 2, "ids": 0}
    other = copy.deepcopy(fn)  # another worker thread's instance of the step (same step id)
    assert _bundle(other, stores, [(0, "id0", 120), (0, "new", 120)]) == [
        ("id0", "duplicate"),
        ("new", "main"),
    ]
    assert stores[0].reads == {"meta": 3, "ids": 0}
    stores[0].ids.append(("elsewhere", 125 * S))  # another worker's bundle wrote the shard
    stores[0].meta = (7, *stores[0].meta[1:])
    assert _bundle(fn, stores, [(0, "elsewhere", 126)]) == [("elsewhere", "duplicate")]
    assert stores[0].reads == {"meta": 4, "ids": 1}


def test_a_failed_bundle_leaves_nothing_behind_in_memory():
    """A bundle that fails after its records changed the table in memory: its writes never
    commit, so the next bundle finds another token, reads the bag, and judges the records anew
    (the retry's copies are not taken for duplicates of themselves)."""
    fn, stores = DeduplicateShardsFn(HORIZON), {}
    assert _bundle(fn, stores, [(0, "a", 100)]) == [("a", "main")]
    assert _bundle(fn, stores, [(0, "b", 101), (0, "a", 102)], commit=False) == [
        ("b", "main"),
        ("a", "duplicate"),
    ]
    assert _bundle(fn, stores, [(0, "b", 101), (0, "a", 102)]) == [
        ("b", "main"),
        ("a", "duplicate"),
    ]
    assert stores[0].reads["ids"] == 1


def test_sweeps_forget_expired_ids_and_keep_the_bag_bounded():
    """A shard arms one sweep per grid point at which some of its ids are forgotten (their
    expiry rounded up to the grid); firing, a sweep forgets every id whose time has come and
    rewrites a bag whose entries are mostly dead: the state holds the ids within the horizon
    (plus a grid step), not the stream."""
    grid = dedup_grid(HORIZON) // S
    fn, stores = DeduplicateShardsFn(HORIZON), {}
    _bundle(fn, stores, [(0, f"old{n}", 10) for n in range(3_000)])
    assert stores[0].sweeps == {str(grid * S): Timestamp(micros=grid * S)}  # 40 s, up to 60 s
    _bundle(fn, stores, [(0, "old0", 35)])  # a copy moves its id's expiry to 65 s: swept at 120
    assert sorted(stores[0].sweeps, key=int) == [str(grid * S), str(2 * grid * S)]
    _bundle(fn, stores, [(0, "sweep", grid)])
    assert stores[0].ids == [("old0", 35 * S)]  # 2,999 forgotten: the bag was rewritten
    assert _bundle(fn, stores, [(0, "old1", 61), (0, "old0", 61)]) == [
        ("old1", "main"),  # forgotten: a new episode
        ("old0", "duplicate"),  # within 30 s of its newest copy
    ]
    fresh = DeduplicateShardsFn(HORIZON)  # a new process: the table is built from the bag
    fresh._step = fn._step
    dedupshards._TABLES.clear()
    assert _bundle(fresh, stores, [(0, "old0", 62), (0, "old2", 62)]) == [
        ("old0", "duplicate"),
        ("old2", "main"),
    ]


def test_a_record_travels_stamped_with_its_event_time_rounded_down_to_the_grid():
    """Prism fires no timer past the watermark and hands data and timers over in timestamp
    order: a record stamped with its own event time would wait behind its shard's sweep."""
    grid = dedup_grid(HORIZON)
    assert grid == 60 * S
    assert dedupshards.carrier_micros(125 * S + 7, grid) == 120 * S
    assert dedupshards.carrier_micros(-1, grid) == -grid


def test_a_table_no_bundle_touched_for_ten_minutes_is_dropped(monkeypatch):
    """A shard that moved to another worker leaves its table here; it is dropped once idle, so
    a worker holds the ids of the shards it runs, not of every shard it ever ran."""
    now = [1_000.0]
    monkeypatch.setattr(dedupshards.time, "monotonic", lambda: now[0])
    fn, stores = DeduplicateShardsFn(HORIZON), {}
    _bundle(fn, stores, [(0, "a", 100), (1, "b", 100)])
    now[0] += 500
    _bundle(fn, stores, [(1, "c", 101)])
    now[0] += 200  # shard 0 untouched for 700 s, shard 1 for 200 s
    _bundle(fn, stores, [(2, "d", 102)])
    assert {shard for step, shard in dedupshards._TABLES if step == fn._step} == {1, 2}
    assert _bundle(fn, stores, [(0, "a", 103)]) == [("a", "duplicate")]  # read back from state
    assert stores[0].reads["ids"] == 1
