"""Ready-made pipelines: one module each, with ``Options``, ``build()`` and ``run()``.

``NAMES`` lists the pipelines (as ``headwater run NAME`` takes them), :func:`load` imports one's
module; their names, descriptions and flags are plain data in :mod:`headwater.pipelines.catalog`
(read without importing Apache Beam).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from headwater.pipelines.catalog import SPECS

__all__ = ["NAMES", "load"]

NAMES = tuple(SPECS)


def load(name: str) -> ModuleType:
    """The module of pipeline ``name``; ``ValueError`` names the unknown pipeline."""
    if name not in NAMES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(NAMES)}")
    return importlib.import_module(f"headwater.pipelines.{name}")
