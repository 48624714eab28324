"""Parse raw records: decode, stamp with event time, validate -- or dead-letter them.

Input: raw records from a source (:class:`~headwater.core.records.SourceRecord`,
:class:`~headwater.io.kafka.KafkaRecord`, or plain ``bytes``; a
:class:`~headwater.core.records.DecodedRecord` skips decoding), in any window. Output:
:class:`~headwater.core.deadletter.Routed` -- ``main`` holds the decoded dicts with their
event time as the element timestamp (a :class:`~headwater.core.records.ParsedRecord` when the source
named an origin, so a later stage's dead letter still names it); ``dead_letter`` holds one
envelope per rejected record, with the record's *original* bytes and coordinates and the stage
that rejected it:

``decode``      the bytes are not a valid record in the format (bad UTF-8, bad JSON, bad Avro
                ...), or the decoded record holds a string that is not Unicode text: JSON can
                escape a lone surrogate (``"\\ud800"``), but no UTF-8 output could hold it
                (:class:`InvalidTextError`, naming the field)
``event_time``  the record has no usable event time
``validate``    a check failed (missing id or key, non-numeric aggregated field, schema ...)

Each input yields exactly one main element or one dead letter, in input order within a bundle.
Doing all three in one step keeps the original bytes at hand for every failure without carrying
them through the rest of the pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from headwater.core.deadletter import DeadLetter, Routed, dead_letter_for
from headwater.core.records import DecodedRecord, origin_of, payload_of, with_origin
from headwater.core.stamps import in_global_window
from headwater.transforms.keys import unicode_problem

__all__ = ["InvalidTextError", "ParseFn", "ParseRecords", "RecordTooLargeError"]

Decoder = Callable[[bytes], Mapping[str, Any]]
Check = Callable[[Mapping[str, Any]], None]


class RecordTooLargeError(ValueError):
    """A record's bytes exceed the configured ``max_record_bytes``."""


class InvalidTextError(ValueError):
    """A decoded record holds a string that is not Unicode text (a lone surrogate)."""


# A JSON escape of a surrogate code point (U+D800..U+DFFF). Bytes that are valid UTF-8 cannot
# hold a surrogate, so only such an escape can put one into a decoded record; a proper pair
# (an escaped emoji) matches too and is then found to be fine.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _refuse_lone_surrogates(value: Any, path: str = "") -> None:
    """Raises :class:`InvalidTextError` naming the first string (key or value) UTF-8 cannot hold."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        if problem is not None:
            where = f"field {path!r}" if path else "the record"
            raise InvalidTextError(f"{where} holds {problem}")
    elif isinstance(value, Mapping):
        for name, item in value.items():
            inner = f"{path}.{name}" if path else str(name)
            if isinstance(name, str) and unicode_problem(name) is not None:
                raise InvalidTextError(f"field name {inner!a} holds {unicode_problem(name)}")
            _refuse_lone_surrogates(item, inner)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{path}[{index}]")


def _source_timestamp(element: Any) -> Timestamp | None:
    millis = getattr(element, "timestamp_ms", None)
    return None if millis is None else Timestamp(micros=int(millis) * 1000)


class ParseFn(beam.DoFn):
    def __init__(
        self,
        decode: Decoder,
        event_time: Callable[[Mapping[str, Any]], Timestamp] | None,
        checks: tuple[Check, ...],
        max_record_bytes: int | None = None,
        *,
        global_window: bool = False,
    ):
        self._max_bytes = max_record_bytes
        self._global_window = global_window  # the input is in the global window (core.stamps)
        self._decode = decode
        self._event_time = event_time
        self._checks = checks
        self._parsed = Metrics.counter("headwater", "parse.ok")
        self._rejected = Metrics.counter("headwater", "parse.dead_letter")

    def parse(self, element: Any) -> tuple[Any, Timestamp] | DeadLetter:
        """The record (with its origin) and its event time, or the element's dead letter.

        What :meth:`process` emits, without counting or windowing it: it changes nothing, so
        any thread may call it (the columnar reader's parse threads do, and count the results as
        :meth:`process` does).
        """
        stage = "decode"
        timestamp = None
        try:
            if isinstance(element, DecodedRecord):
                record = element.record  # the source decoded it (Avro, Parquet files)
            else:
                payload = payload_of(element)
                if self._max_bytes is not None and len(payload) > self._max_bytes:
                    raise RecordTooLargeError(
                        f"record of {len(payload)} bytes is larger than max_record_bytes="
                        f"{self._max_bytes}"
                    )
                record = self._decode(payload)
                if _SURROGATE_ESCAPE.search(payload):  # rare: only then walk the record
                    _refuse_lone_surrogates(record)
            stage = "event_time"
            if self._event_time is None:
                timestamp = _source_timestamp(element)
                if timestamp is None:
                    raise ValueError("the source gave this record no timestamp")
            else:
                timestamp = self._event_time(record)
            stage = "validate"
            for check in self._checks:
                check(record)
        except Exception as exc:  # any per-record failure becomes a dead letter
            return dead_letter_for(element, stage=stage, error=exc, event_time=timestamp)
        # Later stages that reject the record still name its file/line or topic/offset.
        return with_origin(record, origin_of(element)), timestamp

    def process(self, element):
        out = self.parse(element)
        if isinstance(out, DeadLetter):
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput("dead_letter", out)
            return
        self._parsed.inc()
        parsed, timestamp = out
        if self._global_window:
            yield in_global_window(parsed, timestamp.micros)
        else:
            yield TimestampedValue(parsed, timestamp)


class ParseRecords(beam.PTransform):
    """Decodes raw records, assigns event time, runs checks; failures become dead letters.

    Args:
      decode: ``bytes -> dict``, raising on bad input (e.g. ``JsonFormat().decode``).
      event_time: ``dict -> Timestamp`` (e.g. an ``EventTimeExtractor``), or ``None`` to use
        the source's own timestamp (the Kafka timestamp).
      checks: callables that raise ``ValueError`` naming the bad field when a record is unusable.
      max_record_bytes: records with more bytes become dead letters (stage ``decode``) before
        any decoding is attempted; ``None`` for no limit.

    >>> import json, apache_beam as beam
    >>> from headwater.windowing.eventtime import EventTimeExtractor
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     parsed = (p | beam.Create([b'{"t": 1000}', b'{oops']) | ParseRecords(
    ...         decode=json.loads, event_time=EventTimeExtractor(field="t", unit="ms")))
    ...     _ = parsed.dead_letter | beam.Map(lambda d: print(d.stage, d.payload))
    decode b'{oops'
    """

    def __init__(
        self,
        *,
        decode: Decoder,
        event_time: Callable[[Mapping[str, Any]], Timestamp] | None,
        checks: Iterable[Check] = (),
        max_record_bytes: int | None = None,
    ):
        super().__init__()
        if max_record_bytes is not None and (
            isinstance(max_record_bytes, bool)
            or not isinstance(max_record_bytes, int)
            or max_record_bytes < 1
        ):
            raise ValueError(f"max_record_bytes={max_record_bytes!r} must be a positive integer")
        self._max_record_bytes = max_record_bytes
        if not callable(decode):
            raise ValueError(f"decode={decode!r} is not callable")
        if event_time is not None and not callable(event_time):
            raise ValueError(f"event_time={event_time!r} is not callable")
        checks = tuple(checks)
        for check in checks:
            if not callable(check):
                raise ValueError(f"check {check!r} is not callable")
        self._decode = decode
        self._event_time = event_time
        self._checks = checks

    def expand(self, pcoll):
        results = pcoll | "Parse" >> beam.ParDo(
            ParseFn(
                self._decode,
                self._event_time,
                self._checks,
                self._max_record_bytes,
                global_window=isinstance(pcoll.windowing.windowfn, GlobalWindows),
            )
        ).with_outputs("dead_letter", main="main")
        return Routed(results.main, results.dead_letter)
