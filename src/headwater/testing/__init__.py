"""Helpers for testing pipelines and your own transforms (see docs/testing.md).

The harness is importable from here: ``from headwater.testing import run_transform,
AdvanceWatermarkPast``. Names load on first use, so importing a submodule (the broker, the pytest
plugin) does not import Beam.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AdvanceProcessingTime",
    "AdvanceWatermark",
    "AdvanceWatermarkPast",
    "HarnessResult",
    "Pane",
    "StreamHarness",
    "run_transform",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("headwater.testing.harness"), name)
    raise AttributeError(f"module 'headwater.testing' has no attribute {name!r}")
