"""Work split over forked processes: a local run's CPU-bound tail on every core.

A local batch run ends on one thread: a session run encodes and writes thousands of small
Parquet files there (~0.1-0.3 ms each: Arrow's encoder holds the GIL for most of it, so threads
do not help). :func:`run_split` cuts such work into contiguous parts and runs each part but the
first in a child process forked from the caller, which shares the caller's memory (copy on
write): the inputs need no pickling, and each child ends with ``os._exit`` once its part is
done, never returning into the caller's stack.

Forking is for a process the caller knows to be safe to fork: the in-memory local runner's own
process (no gRPC channel, no other thread in the middle of work); a worker of a distributed runner
keeps ``processes=1``. Only Linux forks here (:data:`CAN_FORK`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
from collections.abc import Callable
from itertools import pairwise

from headwater.core.checks import check_count

__all__ = ["CAN_FORK", "ForkedWorkError", "run_split"]

#: Whether :func:`run_split` may fork on this platform.
CAN_FORK = sys.platform.startswith("linux") and hasattr(os, "fork")

_LOG = logging.getLogger(__name__)
_Child = tuple[int, int, int, int]  # pid, the read end of its pipe, its part's start and stop
_MESSAGE_CHARS = 2_000  # of a child's error, sent through a pipe (well under its buffer)


class ForkedWorkError(RuntimeError):
    """A forked part of :func:`run_split` failed; the message names the part and the error."""


def run_split(count: int, work: Callable[[int, int], None], *, processes: int) -> None:
    """Runs ``work(start, stop)`` over ``[0, count)``, cut into ``processes`` contiguous parts.

    The first part runs here; each other part runs in a child process forked here (on Linux;
    elsewhere, or with ``processes=1`` or one item, the one part runs here; with fewer items
    than processes, a part per item). A part whose process cannot be forked (a process limit,
    memory) runs here after the first, with a warning. Returns when every part has ended. A
    part that fails fails the call after every child has ended: the caller's own exception as
    it was, a child's as :class:`ForkedWorkError` naming the part and the child's error (its
    type and message; a child killed by a signal names the signal). ``work`` must not rely on
    side effects in this process beyond what its part does (a child's changes to memory stay in
    the child).

    >>> seen = []
    >>> run_split(5, lambda start, stop: seen.append((start, stop)), processes=1)
    >>> seen
    [(0, 5)]
    """
    check_count("processes", processes)
    parts = min(processes, count) if CAN_FORK else 1
    if parts <= 1:
        work(0, count)
        return
    bounds = [count * i // parts for i in range(parts + 1)]
    children: list[_Child] = []
    here = [(bounds[0], bounds[1])]
    try:
        for start, stop in pairwise(bounds[1:]):
            try:
                children.append(_fork_part(work, start, stop))
            except OSError as exc:
                _LOG.warning(
                    "items [%d, %d) run in this process: no process forked (%s)", start, stop, exc
                )
                here.append((start, stop))
        for start, stop in here:
            work(start, stop)
    finally:
        failures = [failure for failure in map(_wait, children) if failure is not None]
    if failures:
        raise ForkedWorkError("; ".join(failures))


def _fork_part(work: Callable[[int, int], None], start: int, stop: int) -> _Child:
    """Forks a child that runs ``work(start, stop)`` and reports a failure through a pipe."""
    read, write = os.pipe()
    sys.stdout.flush()  # what the caller printed is not the child's to print again
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if pid == 0:  # the child: never returns
        code = 1
        try:
            # the objects it shares with the caller leave the collector's generations: a full
            # collection here would write to every one of them, copying the caller's memory
            gc.freeze()
            os.close(read)
            work(start, stop)
            code = 0
        except BaseException as exc:  # reported to the parent, which raises
            text = f"{type(exc).__name__}: {exc}"[:_MESSAGE_CHARS]
            with contextlib.suppress(OSError):
                os.write(write, text.encode("utf-8", "replace"))
        finally:
            os._exit(code)
    os.close(write)
    return pid, read, start, stop


def _wait(child: _Child) -> str | None:
    """Waits for a child; its failure (a message naming its part), or None."""
    pid, read, start, stop = child
    try:
        _, status = os.waitpid(pid, 0)
        message = os.read(read, _MESSAGE_CHARS * 4).decode("utf-8", "replace")
    finally:
        os.close(read)
    if os.WIFSIGNALED(status):
        message = f"killed by signal {os.WTERMSIG(status)}"
    elif os.waitstatus_to_exitcode(status) != 0:
        message = message or f"exit code {os.waitstatus_to_exitcode(status)}"
    else:
        return None
    return f"items [{start}, {stop}) in forked process {pid}: {message}"
