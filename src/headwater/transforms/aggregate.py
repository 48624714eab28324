"""Windowed aggregation per key: count, sum, min, max and mean of dict records in one pass.

Input
    An already-windowed ``PCollection`` of dict records, bounded or unbounded. The caller has
    applied ``beam.WindowInto`` (fixed, sliding, session or calendar windows; never the global
    window), chosen the trigger, accumulation mode and allowed lateness, and routed late records
    to its own ``late`` output. Anything that reaches this transform after the allowed lateness
    would be dropped by the ``GroupByKey`` inside ``CombinePerKey``, which is why late routing
    belongs upstream.

Output
    :class:`~headwater.core.deadletter.Routed`: ``main`` holds one row per (key, window,
    pane)::

        {"window_start": datetime (UTC, tz-aware), "window_end": datetime (UTC, tz-aware),
         "key": <key>, "count": int, "sum_amount": float, "max_latency_ms": float, ...}

    and ``dead_letter`` holds a :class:`~headwater.core.deadletter.DeadLetter` (stage
    ``"aggregate"``) for each record that has no usable key or a missing or non-numeric
    aggregated field. Such records are excluded from every row; the transform never raises on a
    record. Pipelines should call :meth:`AggregateMetrics.check` at parse time so that invalid
    records are counted as dead letters before windowing; the routing here is a safety net.

Metrics
    ``count``, ``sum:FIELD``, ``min:FIELD``, ``max:FIELD``, ``mean:FIELD``; FIELD is a dotted
    path into nested dicts (``stats.latency_ms`` reads ``record["stats"]["latency_ms"]``). The
    output column is ``count`` or ``KIND_FIELD`` with dots replaced by ``_``. ``count`` is an
    ``int``; sum, min, max and mean are ``float`` whatever the input type, so the row schema does
    not depend on the data (ints are summed exactly and converted once, at output; float sums are
    added in the order the runner combines them, so they may differ in the last bits between
    runs). ``mean`` is ``sum / count``. On an empty aggregate sum is ``0.0`` and min, max and
    mean are ``None``. Numeric means ``int`` or a finite ``float`` (any ``numbers.Real``); ``bool``,
    strings, ``None``, NaN and infinities are rejected.

Keys
    Text, in every row and every output file (the ``key`` column is a string): the value at
    ``key_field`` (a dotted path) spelt by :func:`headwater.transforms.keys.key_text`, the rule
    every engine and the dedup ids share. ``"1"``, ``1`` and ``1.0`` are one key, ``1``; ``1.5``
    is ``1.5``. A missing key, ``None``, an empty or blank string, a ``bool``, NaN, a list or dict,
    and text that is not Unicode (a lone surrogate such as ``"\\ud800"``) make the record a dead
    letter (:class:`~headwater.transforms.keys.MissingKeyError` or
    :class:`~headwater.transforms.keys.InvalidKeyError`).

Panes and ordering
    All metrics are computed by a single ``CombineFn`` applied with ``CombinePerKey``, so runners
    can lift the combine before the shuffle. A row is emitted for every pane Beam produces for a
    (key, window): with an early or late trigger there are several rows per window. Accumulating
    mode makes each row cover everything seen so far in the window; discarding mode makes each row
    cover only the records since the previous pane. ``with_pane_info=True`` adds the columns
    ``pane_timing`` (``"EARLY"``, ``"ON_TIME"``, ``"LATE"``), ``pane_index`` and ``is_last_pane``
    so that consumers can tell speculative rows from final ones (``is_last_pane`` is what the
    runner reports: the streaming DirectRunner marks the final pane, while the batch FnApiRunner
    reports ``False`` for its single on-time pane). Rows carry the timestamp that
    the window's timestamp combiner gives them (by default the end of the window); their order is
    unspecified.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import numbers
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from headwater.core.deadletter import Routed, dead_letter_for
from headwater.transforms.keys import MissingKeyError, key_text

__all__ = [
    "METRIC_KINDS",
    "STAGE",
    "AggregateMetrics",
    "MetricSpec",
    "RecordCheck",
    "check_record",
    "parse_metrics",
    "record_check",
]

METRIC_KINDS = ("count", "sum", "min", "max", "mean")
STAGE = "aggregate"
_ROW_COLUMNS = ("window_start", "window_end", "key")
_PANE_COLUMNS = ("pane_timing", "pane_index", "is_last_pane")
_PATH_RE = re.compile(r"^[\w\-]+(?:\.[\w\-]+)*$")
_MAX_VALUE_CHARS = 80
_MISSING = object()


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS] + "..."


def _is_path(text: Any) -> bool:
    return isinstance(text, str) and bool(_PATH_RE.match(text))


@dataclasses.dataclass(frozen=True)
class MetricSpec:
    """One metric: its ``kind`` and, except for ``count``, the dotted ``field`` it reads.

    ``str(spec)`` is the spec's text form, which :meth:`parse` reads back.

    >>> spec = MetricSpec.parse("max:stats.latency_ms")
    >>> spec.column, str(spec)
    ('max_stats_latency_ms', 'max:stats.latency_ms')
    """

    kind: str
    field: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in METRIC_KINDS:
            raise ValueError(
                f"metric {self._text()!r}: unknown kind {self.kind!r}; "
                f"expected one of {', '.join(METRIC_KINDS)}"
            )
        if self.kind == "count":
            if self.field is not None:
                raise ValueError(f"metric {self._text()!r}: count takes no field; write 'count'")
        elif self.field is None or self.field == "":
            raise ValueError(
                f"metric {self._text()!r}: {self.kind} needs a field, e.g. '{self.kind}:amount'"
            )
        elif not _is_path(self.field):
            raise ValueError(
                f"metric {self._text()!r}: field {self.field!r} is not a dotted path of names "
                "(letters, digits, '_' or '-', separated by '.')"
            )

    def _text(self) -> str:
        return str(self.kind) if self.field is None else f"{self.kind}:{self.field}"

    def __str__(self) -> str:
        return self._text()

    @property
    def column(self) -> str:
        """The output column: ``count`` or ``KIND_FIELD`` with dots replaced by ``_``."""
        if self.field is None:
            return self.kind
        return f"{self.kind}_{self.field.replace('.', '_')}"

    @classmethod
    def parse(cls, text: str) -> MetricSpec:
        """Reads ``count`` or ``KIND:FIELD``; raises ``ValueError`` naming ``text``."""
        if not isinstance(text, str):
            raise ValueError(f"metric {text!r} is not a string such as 'sum:amount'")
        kind, sep, field = text.strip().partition(":")
        if kind not in METRIC_KINDS:
            raise ValueError(
                f"metric {text!r}: unknown kind {kind!r}; expected one of {', '.join(METRIC_KINDS)}"
            )
        return cls(kind, field.strip() if sep else None)


def parse_metrics(spec: str | Iterable[str | MetricSpec]) -> tuple[MetricSpec, ...]:
    """Reads a comma-separated metrics spec (or a sequence of parts) into :class:`MetricSpec`.

    Raises ``ValueError`` naming the bad part for an unknown kind, ``count:FIELD``, a kind without
    a field, an empty spec or part, and two metrics that would write the same column.

    >>> [s.column for s in parse_metrics("count,sum:amount,max:latency_ms")]
    ['count', 'sum_amount', 'max_latency_ms']
    """
    if isinstance(spec, str):
        if not spec.strip():
            raise ValueError(f"metrics={spec!r} is empty; expected e.g. 'count,sum:amount'")
        parts: list[str | MetricSpec] = list(spec.split(","))
    elif isinstance(spec, Iterable):
        parts = list(spec)
        if not parts:
            raise ValueError(f"metrics={spec!r} is empty; expected e.g. 'count,sum:amount'")
    else:
        raise ValueError(f"metrics={spec!r} is not a spec such as 'count,sum:amount'")
    specs: list[MetricSpec] = []
    seen: dict[str, MetricSpec] = {}
    for position, part in enumerate(parts, start=1):
        if isinstance(part, MetricSpec):
            metric = part
        elif isinstance(part, str) and not part.strip():
            raise ValueError(f"metrics={spec!r}: part {position} is empty")
        else:
            metric = MetricSpec.parse(part)
        if metric.column in seen:
            raise ValueError(
                f"metric {str(metric)!r} writes column {metric.column!r}, "
                f"which {str(seen[metric.column])!r} already writes"
            )
        seen[metric.column] = metric
        specs.append(metric)
    return tuple(specs)


def _lookup(record: Any, path: tuple[str, ...]) -> Any:
    value = record
    for name in path:
        if not isinstance(value, Mapping) or name not in value:
            return _MISSING
        value = value[name]
    return value


class RecordCheck:
    """Validates one record and extracts its key and the aggregated fields' values."""

    def __init__(self, key_field: str, metrics: tuple[MetricSpec, ...]):
        self.key_field = key_field
        self.metrics = metrics
        self._key_path = tuple(key_field.split("."))
        fields: dict[str, list[str]] = {}
        for metric in metrics:
            if metric.field is not None:
                fields.setdefault(metric.field, []).append(str(metric))
        self.fields = tuple(fields)
        self._paths = tuple(tuple(name.split(".")) for name in self.fields)
        self._needed_by = {name: ", ".join(users) for name, users in fields.items()}

    def key_and_values(self, record: Any) -> tuple[str, tuple[int | float, ...]]:
        """``(key text, values)`` with one value per distinct field; ``ValueError`` when invalid."""
        if not isinstance(record, Mapping):
            raise ValueError(f"record is a {type(record).__name__}, not a dict")
        key = _lookup(record, self._key_path)
        if key is _MISSING:
            raise MissingKeyError(f"key field {self.key_field!r} is missing")
        key = key_text(key, f"key field {self.key_field!r}")
        if not key.strip():
            raise MissingKeyError(f"key field {self.key_field!r}={key!r} is blank")
        values = tuple(
            self._number(name, _lookup(record, path))
            for name, path in zip(self.fields, self._paths, strict=True)
        )
        return key, values

    def _number(self, name: str, value: Any) -> int | float:
        if value is _MISSING:
            raise ValueError(f"field {name!r} is missing (needed by {self._needed_by[name]})")
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(
                f"field {name!r}={_short_repr(value)} is not numeric (needed by "
                f"{self._needed_by[name]}); expected an int or a finite float"
            )
        try:
            number = float(value)
        except OverflowError:  # an int past the float range: no sum or output could hold it
            number = math.inf
        if math.isfinite(number) and isinstance(value, numbers.Integral):
            return int(value)
        if not math.isfinite(number):
            raise ValueError(
                f"field {name!r}={_short_repr(value)} is not a finite number (needed by "
                f"{self._needed_by[name]})"
            )
        return number

    def __call__(self, record: Any) -> Any:
        self.key_and_values(record)
        return record


def record_check(key_field: str, metrics: str | Iterable[str | MetricSpec]) -> RecordCheck:
    """A :class:`RecordCheck` of ``key_field`` and ``metrics``, both validated (``ValueError``
    names the bad one): build it once and call it per record.

    >>> record_check("user", "sum:amount").key_and_values({"user": "a", "amount": 2})
    ('a', (2,))
    """
    if not isinstance(metrics, str) and isinstance(metrics, Iterable):
        metrics = tuple(metrics)
    return RecordCheck(_validated_key_field(key_field), parse_metrics(metrics))


@functools.lru_cache(maxsize=64)
def _checker_for(key_field: str, metrics: str | tuple[str | MetricSpec, ...]) -> RecordCheck:
    return record_check(key_field, metrics)


def _validated_key_field(key_field: Any) -> str:
    if not _is_path(key_field):
        raise ValueError(
            f"key_field={key_field!r} must be a dotted path of names, e.g. 'user_id' or 'user.id'"
        )
    return key_field


def check_record(record: Any, key_field: str, metrics: str | Iterable[str | MetricSpec]) -> Any:
    """Returns ``record`` unchanged when :class:`AggregateMetrics` can aggregate it.

    Raises ``ValueError`` naming the field and its value when the key is missing or empty, or an
    aggregated field is missing or not numeric.

    >>> check_record({"user": "a", "amount": 2.5}, "user", "count,sum:amount")
    {'user': 'a', 'amount': 2.5}
    >>> check_record({"user": "a", "amount": "2.5"}, "user", "sum:amount")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: field 'amount'='2.5' is not numeric (needed by sum:amount); ...
    """
    if isinstance(metrics, str) or not isinstance(metrics, Iterable):
        normalized: Any = metrics
    else:
        normalized = tuple(metrics)
    try:
        checker = _checker_for(key_field, normalized)
    except TypeError:  # an unhashable argument: validate the same way, without the cache
        checker = record_check(key_field, normalized)
    return checker(record)


def _float_or_none(value: int | float | None) -> float | None:
    return None if value is None else float(value)


class _CombineMetricsFn(beam.CombineFn):
    """All metrics of one (key, window) in one accumulator.

    The accumulator is a list ``[count, sum_0, min_0, max_0, sum_1, min_1, max_1, ...]`` with one
    (sum, min, max) triple per distinct field; inputs are the value tuples of
    :meth:`RecordCheck.key_and_values`.
    """

    def __init__(self, metrics: tuple[MetricSpec, ...], fields: tuple[str, ...]):
        super().__init__()
        self._metrics = metrics
        self._fields = fields
        self._slot = {name: 1 + 3 * index for index, name in enumerate(fields)}

    def create_accumulator(self) -> list[Any]:
        return [0, *([0, None, None] * len(self._fields))]

    def add_input(self, mutable_accumulator: list[Any], element: Any) -> list[Any]:
        acc = mutable_accumulator
        acc[0] += 1
        slot = 1
        for value in element:
            acc[slot] += value
            low, high = acc[slot + 1], acc[slot + 2]
            if low is None or value < low:
                acc[slot + 1] = value
            if high is None or value > high:
                acc[slot + 2] = value
            slot += 3
        return acc

    def merge_accumulators(self, accumulators: Iterable[list[Any]]) -> list[Any]:
        merged: list[Any] | None = None
        for acc in accumulators:
            if merged is None:
                merged = acc
                continue
            merged[0] += acc[0]
            for slot in range(1, len(merged), 3):
                merged[slot] += acc[slot]
                low, high = acc[slot + 1], acc[slot + 2]
                if low is not None and (merged[slot + 1] is None or low < merged[slot + 1]):
                    merged[slot + 1] = low
                if high is not None and (merged[slot + 2] is None or high > merged[slot + 2]):
                    merged[slot + 2] = high
        return merged if merged is not None else self.create_accumulator()

    def extract_output(self, accumulator: list[Any]) -> dict[str, Any]:
        count = accumulator[0]
        row: dict[str, Any] = {}
        for metric in self._metrics:
            if metric.field is None:
                row[metric.column] = count
                continue
            slot = self._slot[metric.field]
            total = accumulator[slot]
            if metric.kind == "sum":
                row[metric.column] = float(total)
            elif metric.kind == "min":
                row[metric.column] = _float_or_none(accumulator[slot + 1])
            elif metric.kind == "max":
                row[metric.column] = _float_or_none(accumulator[slot + 2])
            else:  # mean
                row[metric.column] = total / count if count else None
        return row


def _utc(timestamp: Timestamp) -> dt.datetime:
    return timestamp.to_utc_datetime(has_tz=True)


class _KeyAndCheckFn(beam.DoFn):
    """Emits ``(key, values)`` for valid records and a dead letter for the others."""

    def __init__(self, check: RecordCheck):
        self._check = check
        self._dead = Metrics.counter("headwater", f"{STAGE}.dead_letter")

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        try:
            keyed = self._check.key_and_values(element)
        except Exception as exc:  # every invalid record becomes a dead letter, never a crash
            self._dead.inc()
            event_time = None if timestamp is None or timestamp.micros <= -(2**62) else timestamp
            yield beam.pvalue.TaggedOutput(
                "dead_letter",
                dead_letter_for(element, stage=STAGE, error=exc, event_time=event_time),
            )
            return
        yield keyed


class _FormatRowFn(beam.DoFn):
    """Turns ``(key, metrics)`` of one pane into a row with the window's bounds."""

    def __init__(self, with_pane_info: bool):
        self._with_pane_info = with_pane_info
        self._rows = Metrics.counter("headwater", f"{STAGE}.rows")

    def process(self, element, window=beam.DoFn.WindowParam, pane_info=beam.DoFn.PaneInfoParam):
        key, metrics = element
        row = {"window_start": _utc(window.start), "window_end": _utc(window.end), "key": key}
        row.update(metrics)
        if self._with_pane_info:
            row["pane_timing"] = PaneInfoTiming.to_string(pane_info.timing)
            row["pane_index"] = pane_info.index
            row["is_last_pane"] = pane_info.is_last
        self._rows.inc()
        yield row


class AggregateMetrics(beam.PTransform):
    """Aggregates windowed dict records per key into one row per (key, window, pane).

    ``key_field`` is the dotted path of the key; ``metrics`` a spec such as
    ``"count,sum:amount,max:latency_ms"`` (or a sequence of parts or :class:`MetricSpec`).
    ``with_pane_info=True`` adds ``pane_timing``, ``pane_index`` and ``is_last_pane`` columns.
    Returns :class:`~headwater.core.deadletter.Routed` (``main`` rows, ``dead_letter``).
    See the module docstring for types, keys and panes.

    The record whose amount is ``"x"`` goes to ``dead_letter``; the others make one row:

    >>> from apache_beam.transforms.window import FixedWindows, TimestampedValue
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     routed = (
    ...         p
    ...         | beam.Create([(0, "a", 2), (10, "a", 4), (5, "a", "x")])
    ...         | beam.Map(lambda t: TimestampedValue({"user": t[1], "amount": t[2]}, t[0]))
    ...         | beam.WindowInto(FixedWindows(60))
    ...         | AggregateMetrics(key_field="user", metrics="count,mean:amount")
    ...     )
    ...     _ = routed.main | beam.Map(
    ...         lambda r: print(r["window_end"].isoformat(), r["key"], r["count"], r["mean_amount"])
    ...     )
    1970-01-01T00:01:00+00:00 a 2 3.0
    """

    def __init__(
        self,
        *,
        key_field: str,
        metrics: str | Iterable[str | MetricSpec],
        with_pane_info: bool = False,
    ):
        super().__init__()
        if not isinstance(with_pane_info, bool):
            raise ValueError(f"with_pane_info={with_pane_info!r} must be True or False")
        self._key_field = _validated_key_field(key_field)
        self._metrics = parse_metrics(metrics)
        self._with_pane_info = with_pane_info
        self._check = RecordCheck(self._key_field, self._metrics)

    @property
    def key_field(self) -> str:
        """The dotted path of the key."""
        return self._key_field

    @property
    def metrics(self) -> tuple[MetricSpec, ...]:
        """The parsed metrics, in the order their columns appear."""
        return self._metrics

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of every output row, in order."""
        pane = _PANE_COLUMNS if self._with_pane_info else ()
        return (*_ROW_COLUMNS, *(m.column for m in self._metrics), *pane)

    @property
    def check(self) -> Callable[[Any], Any]:
        """A picklable ``check(record) -> record`` that raises ``ValueError`` on an invalid record.

        It is :func:`check_record` with this transform's key and metrics: call it where records
        are parsed (e.g. inside ``ApplyOrDeadLetter``) so every invalid record is a dead letter
        before windowing.
        """
        return self._check

    def expand(self, pcoll):
        if isinstance(pcoll.windowing.windowfn, GlobalWindows):
            raise ValueError(
                "AggregateMetrics needs windowed input, got the global window; "
                "apply beam.WindowInto(...) first"
            )
        keyed = pcoll | "KeyAndCheck" >> beam.ParDo(_KeyAndCheckFn(self._check)).with_outputs(
            "dead_letter", main="main"
        )
        rows = (
            keyed.main
            | "Combine" >> beam.CombinePerKey(_CombineMetricsFn(self._metrics, self._check.fields))
            | "FormatRows" >> beam.ParDo(_FormatRowFn(self._with_pane_info))
        )
        return Routed(rows, keyed.dead_letter)
