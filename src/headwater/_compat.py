"""Fixes for Apache Beam behaviour that headwater's guarantees depend on.

``fix_direct_runner_metrics``: Beam's BundleBasedDirectRunner (the streaming DirectRunner that
runs ``TestStream``) creates a fresh ``MetricsContainer`` per bundle but asks its state sampler
for the step's scoped state, which the sampler caches by name together with the *first*
bundle's container. Every later bundle's counter increments then land in that first container,
whose value was already committed, so metrics stop counting after the first bundle of each step
(measured with apache-beam 2.77: three elements in three bundles count as 1). The fix makes the
sampler build a new scoped state whenever a caller passes a container, which is what the direct
runner means. Other runners do not go through this path. Applied once, at import of
:mod:`headwater.transforms.accounting`; a no-op if Beam's internals change shape.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["fix_direct_runner_metrics"]

_APPLIED = False


def fix_direct_runner_metrics() -> bool:
    """Installs the fix; returns whether it is in place."""
    global _APPLIED
    if _APPLIED:
        return True
    try:
        from apache_beam.runners.worker import statesampler
    except ImportError:  # pragma: no cover - Beam always ships it
        return False
    original = getattr(statesampler.StateSampler, "scoped_state", None)
    if original is None or not hasattr(statesampler.StateSampler, "__init__"):
        return False

    @functools.wraps(original)
    def scoped_state(self: Any, *args: Any, **kwargs: Any) -> Any:
        cache = getattr(self, "_states_by_name", None)
        if kwargs.get("metrics_container") is None or not isinstance(cache, dict):
            return original(self, *args, **kwargs)
        self._states_by_name = {}
        try:
            return original(self, *args, **kwargs)
        finally:
            cache.update(self._states_by_name)
            self._states_by_name = cache

    statesampler.StateSampler.scoped_state = scoped_state  # type: ignore[method-assign]
    _APPLIED = True
    return True
