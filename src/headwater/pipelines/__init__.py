"""Ready-made pipelines: one module each, with ``Options``, ``build()`` and ``run()``.

``REGISTRY`` maps a pipeline's name (as ``headwater run NAME`` takes it) to its module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["NAMES", "load"]

NAMES = ("windowed_metrics", "stream_etl", "kafka_to_kafka", "replay_dead_letters")


def load(name: str) -> ModuleType:
    """The module of pipeline ``name``; ``ValueError`` names the unknown pipeline."""
    if name not in NAMES:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(NAMES)}")
    return importlib.import_module(f"headwater.pipelines.{name}")
