"""State cells of a stateful DoFn read from the runner once per bundle, not once per element.

Beam's Python SDK worker sends a state request to the runner every time a ``ReadModifyWrite``
cell that was not written in the bundle is read, unless the runner hands out cache tokens
(Prism does not; headwater also turns the FnApiRunner's embedded cache off, see
:mod:`headwater._compat`). Each request is a blocking round trip. A DoFn that reads the same
cells for every element of a key (the late router reads its clock per record) paid that round
trip per element: on Prism most of the SDK harness's time went there.

:class:`BundleState` remembers what it read and wrote, per cell, until the bundle ends. Within a
bundle the SDK hands a DoFn the *same* state object for the same key, window and spec (it keeps
them until the bundle's commit), and different objects for different keys, so a cell is known by
the object's identity. The cache holds a reference to each object, so an identity is never
reused while it is remembered. Every read, write and clear of a cell must go through the same
:class:`BundleState` for the bundle, and :meth:`BundleState.reset` must run at the start and
end of each bundle. A runner that builds a new state object per access only misses the cache:
the answers stay those of the state itself.

>>> class Cell:
...     def __init__(self): self.value, self.reads = None, 0
...     def read(self): self.reads += 1; return self.value
...     def write(self, value): self.value = value
...     def clear(self): self.value = None
>>> cells, cell = BundleState(), Cell()
>>> cells.read(cell), cells.read(cell), cell.reads
(None, None, 1)
>>> cells.write(cell, 7); cells.read(cell), cell.reads
(7, 1)
"""

from __future__ import annotations

from typing import Any

__all__ = ["BundleState"]


class BundleState:
    """Reads of state cells, remembered per cell until :meth:`reset` (a bundle's start, end)."""

    def __init__(self) -> None:
        self._cells: dict[int, tuple[Any, Any]] = {}

    def reset(self) -> None:
        self._cells.clear()

    def read(self, state: Any) -> Any:
        cell = self._cells.get(id(state))
        if cell is None or cell[0] is not state:
            value = state.read()
            self._cells[id(state)] = (state, value)
            return value
        return cell[1]

    def write(self, state: Any, value: Any) -> None:
        state.write(value)
        self._cells[id(state)] = (state, value)

    def clear(self, state: Any) -> None:
        state.clear()
        self._cells[id(state)] = (state, None)
