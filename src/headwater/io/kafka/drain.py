"""Draining local streaming runs: :func:`request_drain` ends every unbounded Kafka read of this
process at its next claim (see :func:`headwater.io.kafka.restriction.read_ends`)."""

from __future__ import annotations

import logging
import threading

__all__ = ["drain_requested", "request_drain", "reset_drain"]

_LOG = logging.getLogger(__name__)

_DRAIN = threading.Event()


def request_drain() -> None:
    """Ends every unbounded Kafka read of this process at its next claim, with no residual.

    A local streaming run (Prism with the SDK harness in this process, ``LOOPBACK``) then
    drains: the read finishes, the watermark moves to the end of time, every open window closes
    and is written, and the job ends by itself. ``headwater run`` calls it on the first Ctrl-C.
    """
    _LOG.info("drain requested: unbounded Kafka reads stop claiming records")
    _DRAIN.set()


def reset_drain() -> None:
    """Clears :func:`request_drain` (before the next run in the same process)."""
    _DRAIN.clear()


def drain_requested() -> bool:
    """Whether :func:`request_drain` was called (and not cleared since)."""
    return _DRAIN.is_set()
