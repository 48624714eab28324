"""Work split over forked processes: a local run's CPU-bound tail on every core.

A local batch run ends on one thread: a session run encodes and writes thousands of small
Parquet files there (~0.1-0.3 ms each: Arrow's encoder holds the GIL for most of it, so threads
do not help). :func:`run_split` cuts such work into contiguous parts and runs each part but the
first in a child process forked from the caller, which shares the caller's memory (copy on
write): the inputs need no pickling, and each child ends with ``os._exit`` once its part is
done, never returning into the caller's stack.

A local batch run's decoding is CPU work too, half of it Python that holds the GIL (the record
path's code for the lines set aside, the fast checks' calls): :func:`forked_stream` runs an
ordered sequence of such work items in forked children, item ``i`` in child ``i % processes``,
and gives the caller the results in order (pickled through a pipe each), at most a few items
ahead of the caller, so that memory follows the processes, not the input.

Forking is for a process the caller knows to be safe to fork: the in-memory local runner's own
process (no gRPC channel, no other thread in the middle of work); a worker of a distributed runner
keeps ``processes=1``. Only Linux forks here (:data:`CAN_FORK`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import signal
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

from headwater.core.checks import check_count

__all__ = ["CAN_FORK", "ForkedWorkError", "forked_stream", "run_split"]

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
    read, write, pid = _fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            work(start, stop)
            code = 0
        except BaseException as exc:  # reported to the parent, which raises
            with contextlib.suppress(OSError):
                os.write(write, _error_text(exc))
        finally:
            os._exit(code)
    return pid, read, start, stop


def _fork() -> tuple[int, int, int]:
    """A pipe and a fork: ``(read end, write end, pid)``; the child keeps only the write end.

    In the child, the objects it shares with the caller leave the collector's generations: a
    full collection there would write to every one of them, copying the caller's memory.
    """
    read, write = os.pipe()
    sys.stdout.flush()  # what the caller printed is not the child's to print again
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(read)
        os.close(write)
        raise
    if pid == 0:
        gc.freeze()
        os.close(read)
    else:
        os.close(write)
    return read, write, pid


def _wait(child: _Child) -> str | None:
    """Waits for a child; its failure (a message naming its part), or None."""
    pid, read, start, stop = child
    try:
        _, status = os.waitpid(pid, 0)
        message = os.read(read, _MESSAGE_CHARS * 4).decode("utf-8", "replace")
    finally:
        os.close(read)
    if os.WIFSIGNALED(status):
        message = _ended(status)
    elif os.waitstatus_to_exitcode(status) != 0:
        message = message or _ended(status)
    else:
        return None
    return f"items [{start}, {stop}) in forked process {pid}: {message}"


def _error_text(exc: BaseException) -> bytes:
    """A child's error as it sends it to the caller: its type and message, capped."""
    return f"{type(exc).__name__}: {exc}"[:_MESSAGE_CHARS].encode("utf-8", "replace")


def _ended(status: int) -> str:
    """How a child ended, from its wait status: the signal that killed it, or its exit code."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


# --- an ordered stream of items computed in forked children ---------------------------------

_HEADER = struct.Struct("<cQ")  # a frame's kind and length, then its bytes
_ITEM, _END, _FAILED = b"i", b"e", b"f"


def forked_stream(
    produce: Callable[[int, int], Iterator[Any]], *, processes: int, ahead: int = 2
) -> Iterator[Any]:
    """The items of a sequence, in order, computed by ``processes`` forked children.

    Child ``k`` runs ``produce(k, processes)``, which yields items ``k``, ``k + processes``,
    ``k + 2 * processes``... of the sequence (each child skips the items of the others), so
    item ``i`` comes from child ``i % processes``; the sequence ends at the first child whose
    turn it is and that has no item left. Items travel pickled through a pipe; a thread here
    reads each child's pipe at most ``ahead`` items ahead of the caller, so a child waits for
    the caller rather than filling memory. A child's failure fails the iteration with
    :class:`ForkedWorkError` naming the child's item and its error (type and message), or the
    signal that ended it. Closing the iterator early (or an error here) kills the children.

    ``processes=1``, or a platform that does not fork (:data:`CAN_FORK`), runs
    ``produce(0, 1)`` here; so does a stream whose processes cannot all be forked (a process
    limit, memory), with a warning.

    >>> list(forked_stream(lambda k, n: iter(range(k, 5, n)), processes=1))
    [0, 1, 2, 3, 4]
    """
    check_count("processes", processes)
    check_count("ahead", ahead)
    if processes == 1 or not CAN_FORK:
        yield from produce(0, 1)
        return
    children: list[_Streaming] = []
    try:
        try:
            for index in range(processes):
                children.append(_Streaming(produce, index, processes, ahead))
        except OSError as exc:
            _LOG.warning("the items are computed in this process: no process forked (%s)", exc)
            for child in children:
                child.close()
            children.clear()
            yield from produce(0, 1)
            return
        turn = 0
        while True:
            child = children[turn % processes]
            kind, data = child.frames.get()
            if kind == _END:
                return
            if kind != _ITEM:
                raise ForkedWorkError(
                    f"item {turn} in forked process {child.pid}: {child.failure(data)}"
                )
            yield pickle.loads(data)  # noqa: S301 -- written by our own child, through a pipe
            turn += 1
    finally:
        for child in children:
            child.close()


class _Streaming:
    """One child of :func:`forked_stream`: its pid, and a thread reading its frames."""

    def __init__(
        self, produce: Callable[[int, int], Iterator[Any]], index: int, of: int, ahead: int
    ):
        read, write, pid = _fork()
        if pid == 0:  # the child: never returns
            _stream_child(produce, index, of, write)
        self.pid = pid
        self._status: int | None = None  # its exit status, once waited for
        self.frames: queue.Queue[tuple[bytes, bytes]] = queue.Queue(maxsize=ahead)
        self._stream = os.fdopen(read, "rb", buffering=1 << 16)
        self._done = threading.Event()  # set when the caller stops reading
        self._reader = threading.Thread(
            target=self._read, name=f"headwater-forked-{pid}", daemon=True
        )
        self._reader.start()

    def _read(self) -> None:
        """Reads frames into the queue up to the child's last one (or the end of its pipe)."""
        kind = _ITEM
        while kind == _ITEM and not self._done.is_set():
            header = self._stream.read(_HEADER.size)
            kind, size = _HEADER.unpack(header) if len(header) == _HEADER.size else (_FAILED, 0)
            data = self._stream.read(size) if size else b""
            if len(data) < size:  # the pipe ended inside a frame
                kind, data = _FAILED, b""
            while not self._done.is_set():  # the caller may stop reading: check every 0.1 s
                with contextlib.suppress(queue.Full):
                    self.frames.put((kind, data), timeout=0.1)
                    break

    def _wait(self, flags: int = 0) -> int | None:
        if self._status is None:
            pid, status = os.waitpid(self.pid, flags)
            self._status = status if pid else None
        return self._status

    def failure(self, data: bytes) -> str:
        """What ended the child: the error it sent, else how it exited."""
        if data:
            return data.decode("utf-8", "replace")
        status = self._wait()
        assert status is not None
        return f"{_ended(status)}, before its last item"

    def close(self) -> None:
        """Stops the child (killed unless it has ended: the caller is done) and the reader."""
        self._done.set()
        if self._wait(os.WNOHANG) is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait()
        self._reader.join()
        self._stream.close()


def _stream_child(
    produce: Callable[[int, int], Iterator[Any]], index: int, of: int, write: int
) -> None:
    """A child of :func:`forked_stream`: its items as frames, then an end or a failure frame."""
    code = 1
    stream = os.fdopen(write, "wb", buffering=1 << 16)
    try:
        try:
            for item in produce(index, of):
                data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
                stream.write(_HEADER.pack(_ITEM, len(data)))
                stream.write(data)
                stream.flush()  # the caller may take it now
            stream.write(_HEADER.pack(_END, 0))
            code = 0
        except BrokenPipeError:  # the caller stopped reading
            code = 0
        except BaseException as exc:  # sent to the caller, which raises
            text = _error_text(exc)
            with contextlib.suppress(OSError):
                stream.write(_HEADER.pack(_FAILED, len(text)))
                stream.write(text)
        with contextlib.suppress(OSError):
            stream.flush()
    finally:
        os._exit(code)
