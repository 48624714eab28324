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

``skip_embedded_state_cache``: the FnApiRunner's in-process worker caches user state in a
cache of ``worker_handlers.STATE_CACHE_SIZE_MB`` (a module constant, 100) and weighs every cached
value with ``objsize``, which dominated stateful steps (dedup, late routing) here: with the cache
off the record path ran 5x faster with identical output (20k events: 677 -> 3,404 events/s).
Beam's supported option ``--max_cache_memory_usage_mb`` only reaches SDK workers in separate
processes (measured: 1.2x with two of them), and the embedded worker reads no option, so
:func:`headwater.runners.prepare` sets the constant to 0 for local FnApiRunner runs. State is then
read from the runner on each access: the same values, no cache.

``shorten_state_sampling``: every bundle the FnApiRunner's worker runs is watched by a state
sampler thread (execution-time counters, stuck-bundle logging) whose sleep grows to
``DEFAULT_SAMPLING_PERIOD_MS`` (200 ms); at the end of the bundle the worker joins that thread and
waits out its current sleep. A local run of a few long bundles (the columnar paths: one bundle
does all the work) spent 0.15-0.19 s of ~1.1 s there, idle (cProfile, 1M events). Beam passes no
option for the period, so :func:`headwater.runners.prepare` lowers the sampler's default period
to 20 ms for local FnApiRunner runs: the thread wakes 50 times a second instead of 5 (negligible
CPU), and a bundle's end waits at most 20 ms. Counters and outputs are unchanged.

``lighter_local_workers``: with ``--direct_running_mode=multi_processing`` the FnApiRunner starts
its SDK workers with the command ``<python> -m apache_beam.runners.worker.sdk_worker_main``,
which imports Beam with every Google Cloud library it finds (1.2-1.3 s of each worker's start
here). When the run's own process imported Beam without them (a local run:
:mod:`headwater._startup`), :func:`headwater.runners.prepare` has that exact command become
``<python> -m headwater._local_worker``: the same worker, imported without them (0.6-0.7 s). Any
other command (a user's own environment) is left as it is.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "fix_direct_runner_metrics",
    "lighter_local_workers",
    "shorten_state_sampling",
    "skip_embedded_state_cache",
]

LOCAL_SAMPLING_PERIOD_MS = 20

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


def skip_embedded_state_cache() -> bool:
    """Turns off the FnApiRunner's embedded-worker state cache; returns whether it is off."""
    try:
        from apache_beam.runners.portability.fn_api_runner import worker_handlers
    except ImportError:  # pragma: no cover - Beam always ships it
        return False
    if not hasattr(worker_handlers, "STATE_CACHE_SIZE_MB"):
        return False
    worker_handlers.STATE_CACHE_SIZE_MB = 0
    return True


def shorten_state_sampling(period_ms: int = LOCAL_SAMPLING_PERIOD_MS) -> bool:
    """Makes new state samplers sleep at most ``period_ms``; returns whether it is in place."""
    try:
        from apache_beam.runners.worker import statesampler
    except ImportError:  # pragma: no cover - Beam always ships it
        return False
    init = statesampler.StateSampler.__init__
    defaults = getattr(init, "__defaults__", None)
    names = init.__code__.co_varnames[: init.__code__.co_argcount]
    if not defaults or names[-1] != "sampling_period_ms" or not isinstance(defaults[-1], int):
        return False  # Beam's internals changed shape: leave them alone
    init.__defaults__ = (*defaults[:-1], period_ms)
    return True


_BEAM_WORKER = "-m apache_beam.runners.worker.sdk_worker_main"


def lighter_local_workers() -> bool:
    """Has Beam's local worker command start :mod:`headwater._local_worker`; returns whether
    it is in place."""
    import sys

    try:
        from apache_beam.transforms import environments
    except ImportError:  # pragma: no cover - Beam always ships it
        return False
    subprocess_env = environments.SubprocessSDKEnvironment
    original = subprocess_env.__dict__.get("from_command_string")
    if not isinstance(original, classmethod):
        return False  # Beam's internals changed shape: leave them alone
    if getattr(original.__func__, "_headwater", False):
        return True
    beams = f"{sys.executable} {_BEAM_WORKER}"
    ours = f"{sys.executable} -m headwater._local_worker"

    def from_command_string(cls: Any, command_string: str) -> Any:
        command = ours if command_string == beams else command_string
        return original.__func__(cls, command)

    from_command_string._headwater = True  # type: ignore[attr-defined]
    setattr(subprocess_env, "from_command_string", classmethod(from_command_string))  # noqa: B010
    return True
