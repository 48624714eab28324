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
