"""An element of the global window stamped with a time, without Beam's window assignment.

A DoFn that yields ``TimestampedValue(value, t)`` makes the SDK assign the element's windows
again with the input's WindowFn, element by element; for the global window that builds a
``GlobalWindow`` and its end timestamp each time (about a tenth of a streaming record's
processing time on Prism, several times per record). The steps of the record path whose input
is in the global window (they check it when applied) yield :func:`in_global_window` instead: a
``WindowedValue`` the SDK passes on as it is, with the same value, time and window.
"""

from __future__ import annotations

from typing import Any

from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import windowed_value

__all__ = ["GLOBAL_WINDOWS", "in_global_window"]

#: The windows of an element in the global window.
GLOBAL_WINDOWS = (GlobalWindow(),)


def in_global_window(value: Any, micros: int) -> windowed_value.WindowedValue:
    """``value`` at ``micros`` (event time, microseconds) in the global window.

    >>> stamped = in_global_window("a", 5_000_000)
    >>> stamped.value, stamped.timestamp.micros, stamped.windows
    ('a', 5000000, (GlobalWindow,))
    """
    return windowed_value.create(value, micros, GLOBAL_WINDOWS)
