"""Progress lines of a local run: a process-wide count of records read, printed every few seconds.

Plain Python (no Beam import), so the command line can set the period (``--progress``) or turn
the lines off (``-q``) without loading Beam. The engines count what they read with
:func:`count_read` -- the record path through :class:`headwater.transforms.observe.ShowProgress`,
the columnar engines once per block -- and :class:`ProgressLines` prints from a thread while a
run runs. Nothing is printed or logged per element.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, TextIO

__all__ = [
    "DEFAULT_PROGRESS_PERIOD",
    "ProgressLines",
    "count_read",
    "last_records_read",
    "progress_period",
    "records_read",
    "set_progress_period",
]

_LOCK = threading.Lock()
_read = 0  # records read in this process (local runners run every bundle here)

#: Seconds between progress lines of a local run; ``None``: no progress lines (``-q``).
DEFAULT_PROGRESS_PERIOD = 5.0
_period: float | None = DEFAULT_PROGRESS_PERIOD


def _check_period(period: float | None) -> None:
    if period is not None and (isinstance(period, bool) or not period > 0):
        raise ValueError(f"progress period {period!r} must be a positive number of seconds")


def count_read(n: int) -> None:
    """Adds ``n`` records read to this process's count (any engine calls it, per batch)."""
    global _read
    with _LOCK:
        _read += n


def records_read() -> int:
    """Records read in this process since the last :class:`ProgressLines` started."""
    return _read


_LINE = re.compile(r"headwater: ([\d,]+) records read, ")


def last_records_read(log: str) -> int:
    """The count of the last progress line in a run's output ``log`` (0 before the first).

    What a caller waits for before draining a streaming job (a drain stops the read where it
    is): the consumer group's committed offsets trail the open windows, so they cannot say it.
    """
    counts = _LINE.findall(log)
    return int(counts[-1].replace(",", "")) if counts else 0


def set_progress_period(period: float | None) -> float | None:
    """Sets the seconds between progress lines (``None``: none); returns the previous value."""
    global _period
    _check_period(period)
    previous, _period = _period, period
    return previous


def progress_period() -> float | None:
    """The seconds between progress lines (``None`` when they are off)."""
    return _period


class ProgressLines:
    """While a local run runs: one line to stderr every ``period`` seconds, from a thread.

    ``headwater: 1,234,567 records read, 301,204/s, 4.1 s`` -- the records counted by
    :class:`ShowProgress` (record path, TestStream, Prism) or by the columnar engines, their
    rate since the start and the time elapsed. ``period=None`` prints nothing.
    """

    def __init__(self, *, period: float | None, out: TextIO | None = None):
        _check_period(period)
        self._period = period
        self._out = out
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._printed = 0

    def __enter__(self) -> ProgressLines:
        global _read
        with _LOCK:
            _read = 0
        self._started = time.monotonic()
        if self._period is not None:
            self._thread = threading.Thread(
                target=self._loop, name="headwater-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._printed:  # a run long enough to show progress shows its last count too
                self._print()

    def _print(self) -> None:
        print(self.line(), file=self._out or sys.stderr, flush=True)
        self._printed += 1

    def line(self) -> str:
        """The progress line as of now."""
        elapsed = max(time.monotonic() - self._started, 1e-9)
        n = records_read()
        return f"headwater: {n:,} records read, {n / elapsed:,.0f}/s, {elapsed:,.1f} s"

    def _loop(self) -> None:
        assert self._period is not None
        while not self._stop.wait(self._period):
            self._print()
