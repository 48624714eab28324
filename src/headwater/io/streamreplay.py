"""Stream replay: turn a list or file of records into a ``TestStream`` with a watermark policy.

Beam's streaming DirectRunner cannot run a splittable DoFn, so a file cannot be read *as a stream*
there. :func:`replay_stream` builds a :class:`~apache_beam.testing.test_stream.TestStream` instead:

- elements come out in the given (arrival) order, each stamped with its event time;
- every ``watermark_every`` elements (and at the end) the watermark advances to
  ``max event time seen - max_out_of_orderness`` (rounded down to the millisecond) -- the
  bounded-out-of-orderness policy of :class:`headwater.windowing.watermark.BoundedOutOfOrderness`
  -- and, with
  ``advance_processing_time=True``, processing time advances by the same amount, so early
  (processing-time) panes fire as they would in a live run at the original pace;
- at the end the watermark goes to +infinity, closing every window.

Records without a usable event time are still replayed (stamped at the current watermark, or the
epoch before the first watermark), so that a parse step downstream can turn them into dead
letters. Elements behind the watermark are late exactly as they would be in production.

>>> import apache_beam as beam
>>> from headwater.windowing.eventtime import EventTimeExtractor
>>> stream = replay_stream([{"t": 1_000}, {"t": 7_000}], event_time=EventTimeExtractor(field="t"),
...                        max_out_of_orderness="5s", watermark_every=1)
>>> [type(e).__name__ for e in stream._events][:3]
['ElementEvent', 'WatermarkEvent', 'ElementEvent']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from apache_beam import coders
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from headwater.core.records import DecodedRecord, SourceRecord, payload_of
from headwater.io.timeline import MAX_WATERMARK_EVERY as MAX_WATERMARK_EVERY  # re-exported
from headwater.io.timeline import build_stream
from headwater.windowing.durations import DurationLike

__all__ = ["RecordEventTime", "read_lines", "replay_stream"]


def replay_stream(
    elements: Iterable[Any],
    *,
    event_time: Callable[[Any], Timestamp | None],
    max_out_of_orderness: DurationLike,
    watermark_every: int = 1_000,
    advance_processing_time: bool = True,
    coder: coders.Coder | None = None,
) -> TestStream:
    """Builds a ``TestStream`` replaying ``elements`` in order under a watermark policy.

    Args:
      elements: records in arrival order (dicts, :class:`SourceRecord`, bytes ...).
      event_time: element -> event time; may raise or return ``None`` for an unusable record.
      max_out_of_orderness: how far behind the newest event time the watermark trails.
      watermark_every: how many elements at most between two watermark advances.
      advance_processing_time: advance processing time with the watermark (early panes).
    """
    return build_stream(
        elements,
        event_time=event_time,
        max_out_of_orderness=max_out_of_orderness,
        watermark_every=watermark_every,
        advance_processing_time=advance_processing_time,
        coder=coder,
    ).stream


class RecordEventTime:
    """The event time a replay stamps a raw record with: decode it, extract; ``None`` if unusable.

    ``fmt`` is the value format (``decode(bytes) -> dict``); a :class:`DecodedRecord` (Avro or
    Parquet files) is used as it is. ``extractor`` ``None`` means no event time (``None``).
    """

    def __init__(self, fmt: Any, extractor: Callable[[Any], Timestamp] | None):
        self._format = fmt
        self._extractor = extractor

    def __call__(self, element: Any) -> Timestamp | None:
        if self._extractor is None:
            return None
        record = (
            element.record
            if isinstance(element, DecodedRecord)
            else self._format.decode(payload_of(element))
        )
        return self._extractor(record)


def read_lines(path: str | Path) -> Iterable[SourceRecord]:
    """The lines of a file as :class:`SourceRecord` values with ``file``/``line`` origins."""
    path = Path(path)
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            payload = line.rstrip(b"\r\n")
            if payload:
                yield SourceRecord(payload, {"file": str(path), "line": number})
