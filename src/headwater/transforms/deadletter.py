"""Dead letters: one envelope for every stage, and a wrapper that turns failures into them.

A record that a stage cannot process is never dropped and never crashes the pipeline: it becomes
a :class:`DeadLetter` that keeps the original payload bytes unchanged, where the record came from
(``topic``/``partition``/``offset`` or ``file``/``line``), the stage, the error type and message,
the event time when known, and when it failed. Late records use the same envelope with
``window`` and ``lateness_ms`` set. Dead letters can be written to a sink and replayed through the
same pipeline (the payload is what the source read).

:class:`ApplyOrDeadLetter` wraps any per-record function: results go to ``main``, exceptions to
``dead_letter``. Ordering and timestamps of the main output are those of the input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from headwater.core.deadletter import Routed, dead_letter_for

__all__ = ["ApplyOrDeadLetter"]


class _ApplyOrDeadLetterFn(beam.DoFn):
    def __init__(self, fn: Callable[[Any], Any], stage: str, flatten: bool):
        self._fn = fn
        self._stage = stage
        self._flatten = flatten
        self._dead = Metrics.counter("headwater", f"{stage}.dead_letter")

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        try:
            result = self._fn(element)
            outputs = list(result) if self._flatten else [result]
        except Exception as exc:  # every per-record failure becomes a dead letter
            self._dead.inc()
            event_time = None if timestamp is None or timestamp.micros <= -(2**62) else timestamp
            yield beam.pvalue.TaggedOutput(
                "dead_letter",
                dead_letter_for(element, stage=self._stage, error=exc, event_time=event_time),
            )
            return
        yield from outputs


class ApplyOrDeadLetter(beam.PTransform):
    """Applies ``fn`` to every element; an exception turns the element into a dead letter.

    ``flatten=True`` treats ``fn``'s result as an iterable of outputs (like ``FlatMap``).
    Returns :class:`Routed` (``main``, ``dead_letter``). Nothing is dropped: each input yields
    its outputs or exactly one dead letter.

    >>> import apache_beam as beam
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     routed = p | beam.Create([b"1", b"x"]) | ApplyOrDeadLetter(int, stage="parse")
    ...     _ = routed.dead_letter | beam.Map(lambda d: print(d.stage, d.payload))
    parse b'x'
    """

    def __init__(
        self,
        fn: Callable[[Any], Any] | Callable[[Any], Iterable[Any]],
        *,
        stage: str,
        flatten: bool = False,
    ):
        super().__init__()
        if not callable(fn):
            raise ValueError(f"fn={fn!r} is not callable")
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"stage={stage!r} must be a non-empty string naming the step")
        self._fn = fn
        self._stage = stage
        self._flatten = flatten

    def expand(self, pcoll):
        results = pcoll | "Apply" >> beam.ParDo(
            _ApplyOrDeadLetterFn(self._fn, self._stage, self._flatten)
        ).with_outputs("dead_letter", main="main")
        return Routed(results.main, results.dead_letter)
