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

__all__ = [
    "COUNTERS",
    "IDS_ON_DISK",
    "LATE_ROUTING_SHARD",
    "NAMESPACE",
    "OUTCOMES",
    "Accounting",
    "counter_total",
    "shard_counts",
]

NAMESPACE = "headwater"
OUTCOMES = ("output", "duplicate", "dead_letter", "late")
COUNTERS = ("records_in", *OUTCOMES)
#: The late router's counter of records routed through shard N is ``LATE_ROUTING_SHARD + "N"``.
LATE_ROUTING_SHARD = "late_routing.shard_"
#: Ids the columnar batch dedup moved to local disk (headwater.columnar.batchids).
IDS_ON_DISK = "dedup.ids_on_disk"


def counter_total(result: Any, name: str) -> int:
    """The total of the counter ``name`` (namespace ``headwater``) in a ``PipelineResult``."""
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))
    return sum(_value(counter) for counter in query["counters"])


def shard_counts(result: Any, prefix: str = LATE_ROUTING_SHARD) -> list[int]:
    """The ``headwater`` counters ``PREFIX0``, ``PREFIX1`` ... as a list by shard (0 where absent).

    By default the late router's: the records it routed through each of its shards, i.e. how a
    stream spread over the runner's workers. Empty when no such counter was incremented.
    """
    from apache_beam.metrics.metric import MetricsFilter

    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    by_shard: dict[int, int] = {}
    for counter in query["counters"]:
        name = counter.key.metric.name
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            shard = int(name[len(prefix) :])
            by_shard[shard] = by_shard.get(shard, 0) + _value(counter)
    return [by_shard.get(i, 0) for i in range(max(by_shard) + 1)] if by_shard else []


def _value(counter: Any) -> int:
    """A counter's committed value, or its attempted one where the runner commits none."""
    value = counter.committed
    if value is None:
        value = counter.attempted
    return int(value or 0)


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
