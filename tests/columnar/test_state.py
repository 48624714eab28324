"""The columnar run state: block dedup against the carried anchors, which batch never forgets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from headwater.columnar import idtable
from headwater.columnar.state import AcceptedRows, ColumnarOptions, ColumnarState
from headwater.io.formats import JsonFormat
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import to_window_fn
from headwater.windowing import rules
from headwater.windowing.eventtime import EventTimeExtractor


def _dedup_options(*, out_of_order_micros: int):
    """Options for dedup-only state tests: id ``id``, event time ``t`` in us, 20 s horizon."""
    return ColumnarOptions(
        file_format="json",
        decode=JsonFormat(),
        event_time=EventTimeExtractor(field="t", unit="us"),
        dedup=DeduplicateById(id_field="id", horizon="20s"),
        window_fn=to_window_fn("fixed:60s"),
        key_field="k",
        metrics=(),
        max_record_bytes=None,
        out_of_order_micros=out_of_order_micros,
        emit_duplicates=False,
    )


def _id_block(ids, times):
    """Accepted rows with only ids and event times (what the dedup reads)."""
    import numpy as np

    return AcceptedRows(
        ts=np.array(times, dtype=np.int64),
        ids=pa.array(ids, type=pa.string()),
        keys=pa.array(["k"] * len(ids)),
        values=np.zeros((len(ids), 0)),
        int_values=[],
        positions=np.arange(len(ids)),
    )


def _reference_dedup(blocks, horizon):
    """Keep masks of the batch dedup rule, with a plain dict (what the numpy table replaces)."""
    anchors, masks = {}, []
    for ids, times in blocks:
        keep = []
        for ident, t in zip(ids, times, strict=True):
            anchor = anchors.get(ident)
            keep.append(not rules.is_duplicate(t, anchor, horizon))
            anchors[ident] = t if anchor is None else max(anchor, t)
        masks.append(keep)
    return masks


_ALL_IDS = [f"id-{i}" for i in range(3000)] + ["é", "日本語", "x" * 40, "a", "b" * 9]


def _random_blocks(seed, blocks=40):
    import random

    rng = random.Random(seed)
    pool = _ALL_IDS
    out, clock = [], 0
    for _ in range(blocks):
        size = rng.randrange(1, 400)
        ids = [rng.choice(pool[: rng.randrange(1, len(pool))]) for _ in range(size)]
        times = [clock + rng.randrange(-50_000_000, 5_000_000) for _ in range(size)]
        clock += rng.randrange(0, 30_000_000)
        out.append((ids, [max(t, 0) for t in times]))
    return out


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("slots", [1 << 16, 16])
@pytest.mark.parametrize("weak_hash", [False, True])
@pytest.mark.parametrize("seed", [1, 2])
def test_dedup_table_keeps_exactly_what_a_dict_keeps(monkeypatch, seed, weak_hash, slots, grouped):
    """The numpy id table gives the dict's keep masks: shared hashes, growth, every id kept.

    ``grouped``: each block's rows come grouped by id (``group_ids``, as a forked decoding
    sends them), without their ids.
    """
    import numpy as np

    from headwater.columnar.batchids import group_ids

    monkeypatch.setattr(idtable, "_ID_SLOTS", slots)  # 16: the table grows and drops often

    if weak_hash:  # every id of one length collides: the exact overflow path does the work
        monkeypatch.setattr(
            idtable,
            "hash_ids",
            lambda ids: pc.binary_length(ids).to_numpy().astype(np.uint64),
        )
    state = ColumnarState(_dedup_options(out_of_order_micros=5_000_000))
    blocks = _random_blocks(seed)
    want = _reference_dedup(blocks, 20_000_000)
    for (ids, times), expected in zip(blocks, want, strict=True):
        rows = _id_block(ids, times)
        if grouped:
            rows.grouped, rows.ids = group_ids(rows.ids, rows.ts), None
        assert state.deduplicate(rows).tolist() == expected
    assert _held_anchors(state) == _newest_copies(blocks)
    # a table of 16 slots fills up: settled ids go to disk; a large one holds all in memory
    # (with the weak hash nearly every id lives beside the table, which seldom fills)
    if slots == 16 and not weak_hash:
        assert state.ids.on_disk > 0
    if slots > 16:
        assert state.ids.on_disk == 0


def _newest_copies(blocks):
    newest = {}
    for ids, times in blocks:
        for ident, t in zip(ids, times, strict=True):
            newest[ident] = max(t, newest.get(ident, t))
    return newest


def _held_anchors(state):
    """Every id the state holds, in its table or on disk, with its anchor."""
    import numpy as np

    everything = pa.array(sorted(_ALL_IDS), type=pa.string())
    carried, _ = state.ids.anchors.lookup(everything)
    if state.ids.spilled is not None:
        missing = np.flatnonzero(carried == rules.NO_TIME)
        carried[missing] = state.ids.spilled.get(everything.take(pa.array(missing)))
    return {
        ident: int(anchor)
        for ident, anchor in zip(everything.to_pylist(), carried.tolist(), strict=True)
        if anchor != rules.NO_TIME
    }


def test_anchors_carried_from_an_earlier_block_make_later_copies_duplicates():
    """An id seen in one block is a duplicate in the next within the horizon, not past it."""
    state = ColumnarState(_dedup_options(out_of_order_micros=0))
    assert state.deduplicate(_id_block(["a"], [1_000])).tolist() == [True]
    rows = _id_block(["a", "b", "a", "b"], [2_000, 3_000, 30_000_000, 4_000])
    assert state.deduplicate(rows).tolist() == [False, True, True, False]
    assert len(state.ids) == 2


@pytest.mark.parametrize("block_rows", [1, 2, 3])
def test_batch_dedup_never_forgets_however_the_blocks_are_cut(block_rows):
    """A copy arriving after the stream moved far past its id is still a duplicate in batch."""
    state = ColumnarState(_dedup_options(out_of_order_micros=0))
    ids, times = ["a", "b", "a"], [0, 3_600_000_000, 20_000_000]  # a, an hour on, a again
    keep = []
    for start in range(0, 3, block_rows):
        rows = _id_block(ids[start : start + block_rows], times[start : start + block_rows])
        keep += state.deduplicate(rows).tolist()
    assert keep == [True, True, False]  # 20 s after its anchor: inside the 20 s horizon


@pytest.mark.parametrize("expected", [5, 100_000])
def test_a_size_hint_sizes_the_id_table_once_and_changes_no_answer(expected):
    """``BatchIds.expect`` sizes the table at the next dedup (not before); same keep masks."""
    state = ColumnarState(_dedup_options(out_of_order_micros=5_000_000))
    initial = len(state.ids.anchors._slots)
    state.ids.expect(expected)
    assert len(state.ids.anchors._slots) == initial  # nothing allocated until a dedup
    blocks = _random_blocks(3)
    want = _reference_dedup(blocks, 20_000_000)
    for index, ((ids, times), expected_keep) in enumerate(zip(blocks, want, strict=True)):
        assert state.deduplicate(_id_block(ids, times)).tolist() == expected_keep
        if index == 0:
            assert len(state.ids.anchors._slots) >= 3 * min(expected, len(ids))
            sized = len(state.ids.anchors._slots)
            if expected > 3000:  # room for every id of the run: no growth after this
                assert sized >= 3 * expected
    assert _held_anchors(state) == _newest_copies(blocks)
    if expected > 3000:
        assert len(state.ids.anchors._slots) == sized


def test_one_record_from_a_clock_years_ahead_does_not_send_every_id_to_disk(monkeypatch):
    """How far the stream has come is a block's median: ids within the horizon of the stream
    stay in memory after a far-future record, and every answer is the dict's."""

    monkeypatch.setattr(idtable, "_ID_SLOTS", 16)
    state = ColumnarState(_dedup_options(out_of_order_micros=5_000_000))
    blocks = []
    for b in range(100):  # 50 new ids a second, one second a block
        ids = [f"id-{b}-{i}" for i in range(50)]
        times = [b * 1_000_000 + i for i in range(50)]
        if b == 3:
            ids[7], times[7] = "from-2100", 4_102_444_800_000_000
        blocks.append((ids, times))
    want = _reference_dedup(blocks, 20_000_000)
    for (ids, times), expected in zip(blocks, want, strict=True):
        assert state.deduplicate(_id_block(ids, times)).tolist() == expected
    recent = pa.array([f"id-{b}-{i}" for b in range(80, 100) for i in range(50)])
    carried, _ = state.ids.anchors.lookup(recent)
    assert bool((carried != rules.NO_TIME).all())  # the last 20 s are all in memory
    assert 0 < state.ids.on_disk <= 80 * 50


def test_size_hints_of_many_files_never_size_the_table_past_its_bound(monkeypatch):
    """Each file's first block gives a hint; together they size the table up to the bound
    only, so a run of many files fills the table (and moves settled ids) instead of growing."""
    from headwater.columnar import batchids

    monkeypatch.setattr(batchids, "_SIZED_IDS", 1_000)
    monkeypatch.setattr(idtable, "_ID_SLOTS", 16)
    state = ColumnarState(_dedup_options(out_of_order_micros=0))
    for first in range(0, 3_000, 600):  # five files of 600 ids, each hinting its size
        state.ids.expect(600)
        ids = [f"id-{i}" for i in range(first, first + 600)]
        state.deduplicate(_id_block(ids, [i * 1_000_000 for i in range(first, first + 600)]))
    # 1,000 ids sized at a third full at most: 4,096 slots; growing would double past that
    assert len(state.ids.anchors._slots) <= 4_096
    assert state.ids.on_disk > 0


def test_an_empty_block_keeps_nothing_and_changes_nothing():
    import numpy as np

    from headwater.columnar.batchids import BatchIds

    ids = BatchIds(horizon_micros=10, out_of_order_micros=0)
    assert ids.keep(pa.array([], type=pa.string()), np.zeros(0, dtype=np.int64)).tolist() == []
    assert ids.keep(pa.array(["a", "a"]), np.array([5, 6])).tolist() == [True, False]
    assert len(ids) == 1
