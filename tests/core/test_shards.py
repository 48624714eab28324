"""Shard batches: one element per shard and bundle, items in arrival order, stamped with the
earliest item's time, in the global window (their docstring examples run here too)."""

from __future__ import annotations

import doctest

import pytest
from apache_beam.transforms.window import GlobalWindow

from headwater.core import batches, shards, stamps
from headwater.core.batches import ShardBatches


@pytest.mark.parametrize("module", [batches, shards, stamps])
def test_the_docstring_examples_run(module):
    outcome = doctest.testmod(module)
    assert outcome.attempted > 0
    assert outcome.failed == 0


def test_batches_keep_arrival_order_and_leave_full_or_at_the_end():
    batches = ShardBatches(limit=3)
    out = [batches.add(i % 2, f"item{i}", 100 - i) for i in range(7)]
    full = [o for o in out if o is not None]
    # shard 0 fills with items 0, 2, 4 (times 100, 98, 96); shard 1 with 1, 3, 5
    assert [(o.value, o.timestamp.micros) for o in full] == [
        ((0, ["item0", "item2", "item4"]), 96),
        ((1, ["item1", "item3", "item5"]), 95),
    ]
    rest = list(batches.drain())
    assert [(o.value, o.timestamp.micros, o.windows) for o in rest] == [
        ((0, ["item6"]), 94, (GlobalWindow(),))
    ]
    assert list(batches.drain()) == []


def test_a_limit_below_one_is_refused_naming_it():
    with pytest.raises(ValueError, match="limit=0"):
        ShardBatches(limit=0)
