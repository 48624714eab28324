"""Event time: reading it from a record field, and stamping records with it.

:class:`EventTimeExtractor` reads one field of a decoded record (a dict, possibly nested: the
field is a dotted path such as ``"meta.ts"``) and returns a Beam
:class:`~apache_beam.utils.timestamp.Timestamp`. The unit says what the field holds and is
enforced strictly: epoch seconds (``"s"``), milliseconds (``"ms"``) or microseconds (``"us"``)
as a number or a numeric string, or an ISO-8601 string that carries a zone (``"iso"``). Any other
value -- missing, ``None``, a bool, NaN, infinity, a naive ISO string, an instant before
1970-01-01T00:00:00Z or after 9999-12-31T23:59:59.999999Z -- raises :class:`EventTimeError`.

:class:`AssignEventTime` applies an extractor in a pipeline. Input: decoded records (dicts),
bounded or unbounded, in any order. Output: :class:`~headwater.core.deadletter.Routed` --
``main`` holds the same dicts, unchanged, re-stamped with their event time; records without a
usable event time go to ``dead_letter`` (stage ``"event_time"``), never dropped. This step does
not judge lateness: a record that is already behind the watermark is routed downstream, where the
windowing step sends it to its ``late`` output.

:func:`timestamp_from_millis` converts a source's own epoch-millisecond timestamp (Kafka's
record timestamp) with the same range checks.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from headwater.core.deadletter import Routed, dead_letter_for
from headwater.windowing.durations import to_beam_timestamp

__all__ = [
    "AssignEventTime",
    "EventTimeError",
    "EventTimeExtractor",
    "timestamp_from_millis",
]

#: The units a field may hold, with the number of microseconds in one unit (``iso``: none).
UNITS: dict[str, int | None] = {"s": 1_000_000, "ms": 1_000, "us": 1, "iso": None}

#: The instants an event time may take: 1970-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999Z.
MIN_EVENT_MICROS = 0
MAX_EVENT_MICROS = 253_402_300_799_999_999

_MAX_DIGITS = 18  # no event time needs a number of 10**19 or more in any unit
_STAGE = "event_time"
_MAX_VALUE_CHARS = 80
_ABSENT = object()  # an EventTimeError about a field that has no value at all
_NUMERIC_RE = re.compile(r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$")


def _shorten(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


class EventTimeError(ValueError):
    """A record has no usable event time.

    The message names the field path, the (truncated) bad value and why it was refused;
    ``field`` and ``reason`` are kept as attributes.

    >>> str(EventTimeError("meta.ts", "soon", "is not a number of ms"))
    "event time field 'meta.ts': 'soon' is not a number of ms"
    """

    def __init__(self, field: str, value: Any, reason: str):
        self.field = field
        self.reason = reason
        self.value_repr = None if value is _ABSENT else _shorten(value)
        if self.value_repr is None:
            message = f"event time field {field!r} {reason}"
        else:
            message = f"event time field {field!r}: {self.value_repr} {reason}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions travel between workers pickled; rebuild from the message parts.
        return (_rebuild_error, (self.field, self.value_repr, self.reason, self.args))


def _rebuild_error(
    field: str, value_repr: str | None, reason: str, args: tuple[Any, ...]
) -> EventTimeError:
    error = EventTimeError(field, _ABSENT, reason)
    error.value_repr = value_repr
    error.args = args
    return error


def _checked(micros: int, field: str, value: Any) -> Timestamp:
    if micros < MIN_EVENT_MICROS:
        raise EventTimeError(field, value, "is before 1970-01-01T00:00:00Z")
    if micros > MAX_EVENT_MICROS:
        raise EventTimeError(field, value, "is after 9999-12-31T23:59:59.999999Z")
    return Timestamp(micros=micros)


def timestamp_from_millis(ms: int) -> Timestamp:
    """A source's epoch-millisecond timestamp (e.g. Kafka's) as a Beam timestamp.

    Raises :class:`EventTimeError` (a ``ValueError``) for non-integers and for instants outside
    1970..9999 -- Kafka reports ``-1`` when a record has no timestamp.

    >>> timestamp_from_millis(1_700_000_000_123)
    Timestamp(1700000000.123000)
    """
    if isinstance(ms, bool) or not isinstance(ms, int):
        raise EventTimeError("timestamp_ms", ms, "is not an integer number of milliseconds")
    return _checked(ms * 1_000, "timestamp_ms", ms)


class EventTimeExtractor:
    """Reads a record's event time from ``field`` (a dotted path) holding ``unit``.

    ``unit`` is ``"s"``, ``"ms"`` or ``"us"`` (epoch numbers: int, float or a numeric string) or
    ``"iso"`` (an ISO-8601 string with ``Z`` or an offset; an aware ``datetime``, as Avro
    timestamp logical types decode to, is accepted too). Fractions finer than a microsecond are
    rounded half-to-even. Calling the extractor is the same as :meth:`extract`.

    >>> EventTimeExtractor(field="meta.ts", unit="s")({"meta": {"ts": "1700000000.5"}})
    Timestamp(1700000000.500000)
    >>> EventTimeExtractor(unit="iso")({"event_time": "2024-03-01T12:00:00+01:00"})
    Timestamp(1709290800)
    """

    def __init__(self, *, field: str = "event_time", unit: str = "ms"):
        if not isinstance(field, str) or not field or any(not p for p in field.split(".")):
            raise ValueError(
                f"field={field!r} must be a non-empty dotted path to the event-time field, "
                "e.g. 'event_time' or 'meta.ts'"
            )
        if unit not in UNITS:
            raise ValueError(f"unit={unit!r} is not one of {sorted(UNITS)}")
        self.field = field
        self.unit = unit
        self._path = tuple(field.split("."))

    def __repr__(self) -> str:
        return f"EventTimeExtractor(field={self.field!r}, unit={self.unit!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventTimeExtractor):
            return NotImplemented
        return (self.field, self.unit) == (other.field, other.unit)

    def __hash__(self) -> int:
        return hash((EventTimeExtractor, self.field, self.unit))

    def __call__(self, record: Mapping[str, Any]) -> Timestamp:
        return self.extract(record)

    def extract(self, record: Mapping[str, Any]) -> Timestamp:
        """The event time of ``record``; raises :class:`EventTimeError` when it has none."""
        value = self._lookup(record)
        if self.unit == "iso":
            return self._from_iso(value)
        return self._from_number(value)

    def _lookup(self, record: Any) -> Any:
        node = record
        for depth, key in enumerate(self._path):
            if not isinstance(node, Mapping):
                where = repr(".".join(self._path[:depth])) if depth else "the record"
                raise EventTimeError(
                    self.field,
                    _ABSENT,
                    f"cannot be read: {where} is a {type(node).__name__}, not a mapping",
                )
            if key not in node:
                raise EventTimeError(self.field, _ABSENT, "is missing")
            node = node[key]
        if node is None:
            raise EventTimeError(self.field, _ABSENT, "is null")
        return node

    def _from_number(self, value: Any) -> Timestamp:
        scale = UNITS[self.unit]
        assert scale is not None
        expected = f"is not a number of {self.unit} since 1970-01-01T00:00:00Z"
        if isinstance(value, bool):
            raise EventTimeError(self.field, value, expected)
        if isinstance(value, int):
            return _checked(value * scale, self.field, value)
        if isinstance(value, float):
            if not math.isfinite(value):
                raise EventTimeError(self.field, value, "is not a finite number")
            exact = Decimal(value)
        elif isinstance(value, str) and _NUMERIC_RE.match(value):
            exact = Decimal(value.strip())
        else:
            raise EventTimeError(self.field, value, expected)
        if exact < 0:
            raise EventTimeError(self.field, value, "is before 1970-01-01T00:00:00Z")
        if exact.adjusted() > _MAX_DIGITS:
            # Refuse before scaling: a string like '1e999999' must not overflow or build a
            # huge integer.
            raise EventTimeError(self.field, value, "is after 9999-12-31T23:59:59.999999Z")
        micros = int((exact * scale).to_integral_value(rounding=ROUND_HALF_EVEN))
        return _checked(micros, self.field, value)

    def _from_iso(self, value: Any) -> Timestamp:
        if isinstance(value, dt.datetime):
            parsed = value
        elif isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise EventTimeError(self.field, value, "is not an ISO-8601 timestamp") from None
        else:
            raise EventTimeError(self.field, value, "is not an ISO-8601 string")
        if parsed.tzinfo is None or parsed.utcoffset() is None:
            raise EventTimeError(
                self.field, value, "has no time zone; give it 'Z' or an offset like '+01:00'"
            )
        micros = to_beam_timestamp(parsed, name=self.field).micros
        return _checked(micros, self.field, value)


class _AssignEventTimeFn(beam.DoFn):
    """Re-stamps each record with its event time; failures become dead letters."""

    def __init__(self, extractor: Callable[[Any], Timestamp]):
        self._extractor = extractor
        self._dead = Metrics.counter("headwater", f"{_STAGE}.dead_letter")

    def process(self, element):
        try:
            event_time = self._extractor(element)
            if not isinstance(event_time, Timestamp):
                event_time = Timestamp.of(event_time)
        except Exception as exc:  # every per-record failure becomes a dead letter
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(
                "dead_letter", dead_letter_for(element, stage=_STAGE, error=exc)
            )
            return
        yield TimestampedValue(element, event_time)


class AssignEventTime(beam.PTransform):
    """Stamps each record with the event time ``extractor`` reads from it.

    ``extractor`` is an :class:`EventTimeExtractor` (default: field ``event_time`` in ms) or any
    picklable callable from a record to a Beam ``Timestamp``. Returns
    :class:`~headwater.core.deadletter.Routed`: ``main`` (the records, unchanged, with
    their event time as element timestamp) and ``dead_letter`` (stage ``"event_time"``).

    >>> import apache_beam as beam
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     routed = (p | beam.Create([{"event_time": 1_000}, {"id": 2}])
    ...               | AssignEventTime(EventTimeExtractor(unit="ms")))
    ...     _ = routed.dead_letter | beam.Map(lambda d: print(d.stage, d.error_message))
    event_time event time field 'event_time' is missing
    """

    def __init__(self, extractor: Callable[[Any], Timestamp] | None = None):
        super().__init__()
        if extractor is None:
            extractor = EventTimeExtractor()
        if not callable(extractor):
            raise ValueError(f"extractor={extractor!r} is not callable; pass an EventTimeExtractor")
        self._extractor = extractor

    def expand(self, pcoll):
        results = pcoll | "Stamp" >> beam.ParDo(_AssignEventTimeFn(self._extractor)).with_outputs(
            "dead_letter", main="main"
        )
        return Routed(results.main, results.dead_letter)
