"""BundleState: a state cell is read from the runner once per bundle, and writes are seen."""

from __future__ import annotations

import doctest

from headwater.core import bundlestate
from headwater.core.bundlestate import BundleState


class _Cell:
    def __init__(self, value=None):
        self.value, self.reads = value, 0

    def read(self):
        self.reads += 1
        return self.value

    def write(self, value):
        self.value = value

    def clear(self):
        self.value = None


def test_the_module_example_runs():
    outcome = doctest.testmod(bundlestate)
    assert outcome.attempted > 0
    assert outcome.failed == 0


def test_cells_are_told_apart_by_object_and_forgotten_at_reset():
    """Two keys' cells (two objects) keep their own values; a reset reads the runner again."""
    cells, a, b = BundleState(), _Cell(1), _Cell(2)
    assert [cells.read(a), cells.read(b), cells.read(a)] == [1, 2, 1]
    cells.clear(b)
    assert cells.read(b) is None
    assert (a.reads, b.reads) == (1, 1)
    a.value = 5  # written elsewhere between bundles
    assert cells.read(a) == 1  # still this bundle's
    cells.reset()
    assert cells.read(a) == 5
    assert a.reads == 2
