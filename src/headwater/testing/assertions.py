"""Assertions for pipelines' outcomes: accounting, late output, panes.

Use inside ``TestPipeline`` blocks (``assert_late``, ``ReifyPanes``) and after a run
(``assert_accounting``):

>>> import apache_beam as beam
>>> from apache_beam.testing.util import assert_that, equal_to
>>> with beam.Pipeline("FnApiRunner") as p:
...     panes = p | beam.Create([1]) | ReifyPanes()
...     assert_that(panes, equal_to([("UNKNOWN", 1)]), label="panes")  # doctest: +ELLIPSIS
<PCollection...>
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import PaneInfoTiming

from headwater.core.accounting import Accounting

__all__ = ["ReifyPanes", "assert_late", "assert_accounting", "pane_timing"]

_TIMING_NAMES = {
    PaneInfoTiming.EARLY: "EARLY",
    PaneInfoTiming.ON_TIME: "ON_TIME",
    PaneInfoTiming.LATE: "LATE",
    PaneInfoTiming.UNKNOWN: "UNKNOWN",  # elements that never went through a GroupByKey
}


def pane_timing(pane_info: Any) -> str:
    """``"EARLY"``, ``"ON_TIME"``, ``"LATE"`` or ``"UNKNOWN"`` for a Beam ``PaneInfo``."""
    return _TIMING_NAMES.get(getattr(pane_info, "timing", PaneInfoTiming.UNKNOWN), "UNKNOWN")


class _ReifyPanesFn(beam.DoFn):
    def __init__(self, with_window: bool):
        self._with_window = with_window

    def process(self, element, window=beam.DoFn.WindowParam, pane=beam.DoFn.PaneInfoParam):
        timing = pane_timing(pane)
        if self._with_window:
            yield (timing, window, element)
        else:
            yield (timing, element)


class ReifyPanes(beam.PTransform):
    """Turns each element into ``(timing, element)`` (or ``(timing, window, element)``).

    ``timing`` is ``"EARLY"``, ``"ON_TIME"``, ``"LATE"`` (``"UNKNOWN"`` before any grouping),
    so a test can assert which pane a value came out in. The output is rewindowed into the
    global window so plain ``equal_to`` applies.
    """

    def __init__(self, *, with_window: bool = False):
        super().__init__()
        self._with_window = with_window

    def expand(self, pcoll):
        return (
            pcoll
            | "Reify" >> beam.ParDo(_ReifyPanesFn(self._with_window))
            | "Global" >> beam.WindowInto(GlobalWindows())
        )


def assert_late(
    late: beam.PCollection, expected: Iterable[tuple[bytes, int]], *, label: str = "late output"
) -> None:
    """Asserts the late output holds exactly ``expected`` ``(payload, lateness_ms)`` pairs."""
    pairs = (
        late
        | f"{label}: Global" >> beam.WindowInto(GlobalWindows())
        | f"{label}: Pairs" >> beam.Map(lambda d: (d.payload, d.lateness_ms))
    )
    assert_that(pairs, equal_to(list(expected)), label=label)


def assert_accounting(result_or_accounting: Any, **expected: int) -> Accounting:
    """Asserts the run's accounting identity holds and each given counter has its value.

    Returns the :class:`Accounting` read from the result, for further checks.
    """
    accounting = (
        result_or_accounting
        if isinstance(result_or_accounting, Accounting)
        else Accounting.from_result(result_or_accounting)
    )
    counts: Mapping[str, int] = accounting.to_dict()
    wrong = {
        name: (counts[name], value) for name, value in expected.items() if counts[name] != value
    }
    if wrong:
        detail = ", ".join(f"{name}={got} (expected {want})" for name, (got, want) in wrong.items())
        raise AssertionError(f"accounting mismatch: {detail}; all counters: {counts}")
    if not accounting.holds:
        raise AssertionError(
            "accounting identity broken: records_in != output + duplicate + dead_letter + late: "
            f"{counts}"
        )
    return accounting
