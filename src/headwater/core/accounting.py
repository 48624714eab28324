"""Accounting: every input record ends in exactly one of four outcomes, and a run can prove it.

The counters live in the Beam metrics namespace ``headwater``:

``records_in``
    records read from the source (counted once, at the first step).
``output``
    records that reached the main output (for an aggregating pipeline: records folded into the
    emitted aggregates, counted once each however many panes or windows they feed).
``duplicate``
    records dropped by deduplication.
``dead_letter``
    records turned into dead letters at any stage.
``late``
    records routed to the late output.

``records_in == output + duplicate + dead_letter + late`` holds for every completed run;
:meth:`Accounting.from_result` reads the counters back from a ``PipelineResult`` and
:attr:`Accounting.holds` checks the identity. :class:`CountAs` is the pass-through step that
increments one counter per element.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["COUNTERS", "NAMESPACE", "OUTCOMES", "Accounting", "counter_total"]

NAMESPACE = "headwater"
OUTCOMES = ("output", "duplicate", "dead_letter", "late")
COUNTERS = ("records_in", *OUTCOMES)


def counter_total(result: Any, name: str) -> int:
    """The total of the counter ``name`` (namespace ``headwater``) in a ``PipelineResult``."""
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    total = 0
    for counter in query["counters"]:
        value = counter.committed
        if value is None:
            value = counter.attempted
        total += value or 0
    return total


@dataclasses.dataclass(frozen=True)
class Accounting:
    """The five counters of one run."""

    records_in: int = 0
    output: int = 0
    duplicate: int = 0
    dead_letter: int = 0
    late: int = 0

    @property
    def holds(self) -> bool:
        """Whether ``records_in == output + duplicate + dead_letter + late``."""
        return self.records_in == self.output + self.duplicate + self.dead_letter + self.late

    @classmethod
    def from_result(cls, result: Any) -> Accounting:
        """Reads the counters from a finished ``PipelineResult``."""
        return cls(**{name: counter_total(result, name) for name in COUNTERS})

    def to_dict(self) -> dict[str, Any]:
        """The counters and ``identity_holds``, as the run summary writes them."""
        return {**dataclasses.asdict(self), "identity_holds": self.holds}
