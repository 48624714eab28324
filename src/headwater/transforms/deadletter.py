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

import base64
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp

from headwater.records import origin_of, payload_of

__all__ = ["DeadLetter", "ApplyOrDeadLetter", "Routed", "dead_letter_for", "utc_iso"]

_MAX_MESSAGE_CHARS = 2_000


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """The envelope of a record that did not make it to the output.

    ``event_time`` and ``failed_at`` are ISO-8601 strings in UTC; ``payload`` is the record's
    original bytes. ``window`` (``"start/end"`` in ISO-8601) and ``lateness_ms`` are set for late
    records only.
    """

    stage: str
    error_type: str
    error_message: str
    payload: bytes
    origin: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    event_time: str | None = None
    failed_at: str = ""
    window: str | None = None
    lateness_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; the payload travels as base64 in ``payload_b64``."""
        row = dataclasses.asdict(self)
        row["origin"] = dict(self.origin)
        row["payload_b64"] = base64.b64encode(row.pop("payload")).decode("ascii")
        return row

    def to_json(self) -> str:
        """One JSON line (keys sorted), the dead-letter files' format."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> DeadLetter:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed row."""
        try:
            fields = {
                f.name: row[f.name]
                for f in dataclasses.fields(cls)
                if f.name != "payload" and f.name in row
            }
            payload = base64.b64decode(row["payload_b64"], validate=True)
            return cls(payload=payload, **fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a dead-letter row ({exc!s}): keys {sorted(row)!r}") from None


def utc_iso(micros: int) -> str:
    """Epoch microseconds as ISO-8601 UTC (``...Z``); Beam's own form beyond year 1..9999.

    >>> utc_iso(1_500_000)
    '1970-01-01T00:00:01.500000Z'
    """
    try:
        instant = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(
            microseconds=micros
        )
    except OverflowError:  # near Beam's MIN/MAX timestamps, outside what datetime can show
        return str(Timestamp(micros=micros))
    return instant.isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    """The current wall-clock time, ISO-8601 UTC."""
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def event_time_iso(timestamp: Any) -> str | None:
    """A Beam timestamp (or epoch seconds) as ISO-8601 UTC, ``None`` when unknown."""
    if timestamp is None:
        return None
    micros = getattr(timestamp, "micros", None)
    if micros is None:
        try:
            micros = round(float(timestamp) * 1_000_000)
        except (TypeError, ValueError):
            return None
    if not -62_135_596_800_000_000 <= micros <= 253_402_300_799_000_000:
        return None  # outside what datetime can show (Beam's MIN/MAX timestamps)
    return utc_iso(micros)


def dead_letter_for(
    element: Any,
    *,
    stage: str,
    error: BaseException | str,
    event_time: Any = None,
    window: str | None = None,
    lateness_ms: int | None = None,
) -> DeadLetter:
    """Builds the envelope for ``element`` rejected at ``stage``.

    ``error`` is the exception (its type and message are kept) or a reason string.
    """
    if isinstance(error, BaseException):
        error_type, message = type(error).__name__, str(error) or repr(error)
    else:
        error_type, message = "Rejected", error
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return DeadLetter(
        stage=stage,
        error_type=error_type,
        error_message=message,
        payload=payload_of(element),
        origin=origin_of(element),
        event_time=event_time_iso(event_time),
        failed_at=now_iso(),
        window=window,
        lateness_ms=lateness_ms,
    )


class Routed(NamedTuple):
    """The two outputs of a step that can reject records."""

    main: beam.PCollection
    dead_letter: beam.PCollection


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
