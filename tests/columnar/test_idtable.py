"""The id table's hash: the same for an id whatever the other ids of its block."""

from __future__ import annotations

import pyarrow as pa

from headwater.columnar.idtable import hash_ids


def test_id_hash_is_the_same_for_one_length_and_mixed_lengths():
    """An id hashes equal whether its block's ids all have its length or not."""
    same = pa.array(["abcdefghij", "0123456789", "é日本語x"], type=pa.string())
    mixed = pa.array(["abcdefghij", "z", "0123456789", "é日本語x", "much longer id here"])
    one = hash_ids(same)
    other = hash_ids(mixed)
    assert one.tolist() == [other[0], other[2], other[3]]
    assert len(set(other.tolist())) == 5
    assert hash_ids(mixed.slice(2, 2)).tolist() == [other[2], other[3]]


def test_a_full_table_hands_its_stale_ids_to_spill_from_the_table_and_beside_it(monkeypatch):
    """Ids whose hash another id holds live beside the table (a dict); when the table fills,
    the stale ones of both go to ``spill`` with their anchors, and the rest stay found."""
    import numpy as np
    import pyarrow.compute as pc

    from headwater.columnar import idtable
    from headwater.windowing.rules import NO_TIME

    monkeypatch.setattr(idtable, "_ID_SLOTS", 16)
    monkeypatch.setattr(  # one hash per length: most ids collide and live in the dict
        idtable, "hash_ids", lambda ids: pc.binary_length(ids).to_numpy().astype(np.uint64)
    )
    table = idtable.IdAnchors()
    spilled: dict[str, int] = {}
    beside: list[str] = []  # spilled from the dict (no hashes given)

    def spill(ids, anchors, hashes):
        if hashes is None:
            beside.extend(ids.to_pylist())
        else:
            assert len(hashes) == len(ids)
        spilled.update(zip(ids.to_pylist(), anchors.tolist(), strict=True))

    anchors = {}
    for block in range(12):  # ids of 1..12 characters, anchors growing with the block
        ids = pa.array([f"{block:x}" * width for width in range(1, 13)][: 3 + block])
        values = np.full(len(ids), block * 10, dtype=np.int64)
        _, handle = table.lookup(ids)
        table.store(ids, handle, values, lambda a: a < 60, spill)
        anchors.update(zip(ids.to_pylist(), values.tolist(), strict=True))
    assert beside  # both kinds went: some from the table, some from beside it
    assert set(spilled) - set(beside)
    assert all(value < 60 for value in spilled.values())
    everything = pa.array(sorted(anchors))
    found, _ = table.lookup(everything)
    for ident, value in zip(everything.to_pylist(), found.tolist(), strict=True):
        if value == NO_TIME:
            assert spilled[ident] == anchors[ident]
        else:
            assert value == anchors[ident]
