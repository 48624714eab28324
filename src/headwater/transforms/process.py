"""The event-time core as one composite: parse -> dedup -> window with late routing, accounted.

:class:`ProcessEvents` takes raw records (bytes, :class:`~headwater.core.records.SourceRecord`,
Kafka records) and returns :class:`Processed`:

``main``         decoded records, deduplicated, windowed (``WindowInto`` with the trigger), on time
                 or within allowed lateness -- ready to group, aggregate or write per window;
``late``         records whose windows had closed (beyond ``allowed_lateness``), as dead-letter
                 envelopes with ``window`` and ``lateness_ms``;
``duplicate``    records removed by deduplication;
``dead_letter``  records that could not be decoded, had no usable event time or failed a check.

Dedup runs *before* windowing, so a re-delivered record whose window has closed is a duplicate,
not late. Every record is counted once: ``records_in`` on entry and exactly one of ``output``
(``main``), ``duplicate``, ``dead_letter`` or ``late`` (metrics namespace ``headwater``).

:class:`ComputeWindowedMetrics` adds per-key metrics per window on top (``windowed_metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.window import GlobalWindows, WindowFn
from apache_beam.utils.timestamp import Timestamp

from headwater.core.shards import DEFAULT_SHARDS, checked_shard_count
from headwater.transforms.accounting import CountAs
from headwater.transforms.aggregate import (
    AggregateMetrics,
    MetricSpec,
    RecordCheck,
    parse_metrics,
    record_check,
)
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.parse import Check, Decoder, ParseRecords
from headwater.windowing.durations import DurationLike, parse_duration
from headwater.windowing.late import WindowWithLateRouting
from headwater.windowing.triggers import TriggerSpec, parse_trigger_spec
from headwater.windowing.windows import WindowSpec, parse_window_spec

__all__ = [
    "ComputeWindowedMetrics",
    "MetricsCheck",
    "MetricsResult",
    "ProcessEvents",
    "Processed",
    "batch_trigger_problem",
    "to_trigger_spec",
    "to_window_fn",
]


class Processed(NamedTuple):
    """The four outcomes of :class:`ProcessEvents`."""

    main: beam.PCollection
    late: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection


class MetricsResult(NamedTuple):
    """The outcomes of :class:`ComputeWindowedMetrics`: metric rows instead of records."""

    rows: beam.PCollection
    late: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection
    records: beam.PCollection | None = None  # the windowed on-time records the rows fold


def to_window_fn(window: str | WindowSpec | WindowFn) -> WindowFn:
    if isinstance(window, WindowFn):
        return window
    if isinstance(window, str):
        window = parse_window_spec(window)
    return window.window_fn()


def batch_trigger_problem(trigger: str | TriggerSpec | None) -> str | None:
    """Why ``trigger`` has no meaning in a batch run, or ``None`` when it has one.

    Early panes fire on processing time while a window is open; a batch run over bounded input
    has no processing time to fire them on (its panes all fire when the input ends), and Beam's
    batch runners crash on the timer. The pipelines refuse the flag; :class:`ProcessEvents`
    refuses the transform.

    >>> batch_trigger_problem("early:10s,late") is None, batch_trigger_problem("late") is None
    (False, True)
    """
    spec = to_trigger_spec(trigger)
    if spec.early_every is None:
        return None
    return (
        "early panes fire on processing time while the input streams in, and a batch run has "
        "none (all its panes fire when the input ends); use the on-time trigger in batch, or "
        "run as a stream (--replay_as_stream for files, --streaming for Kafka)"
    )


def to_trigger_spec(trigger: str | TriggerSpec | None) -> TriggerSpec:
    if trigger is None:
        trigger = TriggerSpec()
    elif isinstance(trigger, str):
        trigger = parse_trigger_spec(trigger)
    if not trigger.late_firings:
        # AfterWatermark() without late firings finishes the window at the on-time pane and
        # discards what arrives after it, even a record the late router admitted while the
        # window was still open: late firings are always on (they fire only for such records).
        trigger = TriggerSpec(
            early_every=trigger.early_every, late_firings=True, accumulating=trigger.accumulating
        )
    return trigger


class ProcessEvents(beam.PTransform):
    """Parse, deduplicate and window raw records; every record ends in one counted outcome.

    Args:
      decode: ``bytes -> dict`` raising on bad input (a format's ``decode``).
      event_time: ``dict -> Timestamp`` (an ``EventTimeExtractor``), or ``None`` for the
        source's timestamp.
      window: a spec (``"fixed:60s"``, ``"calendar:day@Europe/Berlin"`` ...), a spec object, a
        Beam ``WindowFn``, or ``None`` to leave records in the global window (nothing is late).
      allowed_lateness: how long after a window's end records are still accepted (late panes);
        later ones go to ``late``. Required -- there is no silent default.
      dedup: a configured :class:`DeduplicateById`, or ``None`` to keep every record.
      trigger: a trigger preset (``"on_time"``, ``"early:10s"``, ``"early:10s,late,accumulating"``)
        or :class:`TriggerSpec`; late firings are always on, so a record admitted while its
        window was open is never discarded by a finished trigger.
      checks: validations applied at parse time (a failing record becomes a dead letter).
      max_record_bytes: larger records become dead letters before decoding (``None``: no limit).
      shards: how many keys late routing is spread over on a stream (1 to 4096; event-time dedup
        has its own, given to :class:`DeduplicateById`).

    Once applied, ``sharded`` tells whether a step was spread over shards (a stream's late
    routing or event-time dedup keeping the first copy).

    Ordering: none is promised across records; the ``main`` output is windowed with the trigger.
    An early trigger on bounded input in a batch pipeline is refused when the transform is
    applied (``ValueError``, :func:`batch_trigger_problem`).

    >>> import json, apache_beam as beam
    >>> from headwater.windowing.eventtime import EventTimeExtractor
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     out = (p | beam.Create([b'{"id": 1, "t": 5}', b'{"id": 1, "t": 5}', b'{"id": 2}'])
    ...              | ProcessEvents(decode=json.loads, window="fixed:60s", allowed_lateness=0,
    ...                              event_time=EventTimeExtractor(field="t", unit="s"),
    ...                              dedup=DeduplicateById(id_field="id", horizon="10m")))
    ...     _ = out.duplicate | "dup" >> beam.Map(print)
    ...     _ = out.dead_letter | "dl" >> beam.Map(lambda d: print(d.stage))
    {'id': 1, 't': 5}
    event_time
    """

    def __init__(
        self,
        *,
        decode: Decoder,
        event_time: Callable[[Mapping[str, Any]], Timestamp] | None,
        window: str | WindowSpec | WindowFn | None,
        allowed_lateness: DurationLike,
        dedup: DeduplicateById | None = None,
        trigger: str | TriggerSpec | None = None,
        checks: Iterable[Check] = (),
        max_record_bytes: int | None = None,
        shards: int = DEFAULT_SHARDS,
    ):
        super().__init__()
        self.sharded = False
        self._shards = checked_shard_count(shards)
        self._lateness_s = parse_duration(allowed_lateness, name="allowed_lateness")
        self._window_fn = None if window is None else to_window_fn(window)
        self._trigger = to_trigger_spec(trigger)
        if dedup is not None and not isinstance(dedup, DeduplicateById):
            raise ValueError(f"dedup={dedup!r} must be a DeduplicateById or None")
        self._dedup = dedup
        self._parse = ParseRecords(
            decode=decode, event_time=event_time, checks=checks, max_record_bytes=max_record_bytes
        )

    def expand(self, pcoll):
        streaming = pcoll.pipeline.options.view_as(StandardOptions).streaming
        if self._window_fn is not None and pcoll.is_bounded and not streaming:
            problem = batch_trigger_problem(self._trigger)
            if problem is not None:
                raise ValueError(f"trigger={str(self._trigger)!r} in a batch pipeline: {problem}")
        raw = pcoll | "CountRecordsIn" >> CountAs("records_in")
        parsed = raw | "Parse" >> self._parse
        records = parsed.main
        dead_letters = [parsed.dead_letter]
        if self._dedup is not None:
            deduped = records | "Deduplicate" >> self._dedup
            records = deduped.main
            duplicates = deduped.duplicate
            self.sharded = self._dedup.sharded
            dead_letters.append(deduped.dead_letter)
        else:
            duplicates = raw.pipeline | "NoDuplicates" >> beam.Create([])
        if self._window_fn is None:
            main, late = records, raw.pipeline | "NoLateData" >> beam.Create([])
        else:
            window = WindowWithLateRouting(
                self._window_fn,
                allowed_lateness=self._lateness_s,
                trigger=self._trigger.trigger(),
                accumulation_mode=self._trigger.accumulation_mode(),
                shards=self._shards,
            )
            windowed = records | "Window" >> window
            main, late = windowed.main, windowed.late
            self.sharded = self.sharded or window.sharded
        dead = (
            tuple(dead_letters) | "FlattenDeadLetters" >> beam.Flatten()
            if len(dead_letters) > 1
            else dead_letters[0]
        )
        return Processed(
            main=main | "CountOutput" >> CountAs("output"),
            late=late | "CountLate" >> CountAs("late"),
            duplicate=duplicates | "CountDuplicates" >> CountAs("duplicate"),
            dead_letter=dead | "CountDeadLetters" >> CountAs("dead_letter"),
        )


class ComputeWindowedMetrics(beam.PTransform):
    """Per-key metrics per window over raw records, with every record accounted for.

    Takes the arguments of :class:`ProcessEvents` plus ``key_field`` and ``metrics``
    (``"count,sum:amount,max:latency_ms"``). Records whose key is missing or whose aggregated
    fields are not numeric become dead letters at parse time, so ``output`` counts exactly the
    records folded into the emitted rows. Rows: ``window_start``, ``window_end`` (UTC datetimes),
    ``key``, one column per metric; one row per key, window and pane.
    """

    def __init__(
        self,
        *,
        key_field: str,
        metrics: str | Iterable[MetricSpec],
        checks: Iterable[Check] = (),
        **process_options: Any,
    ):
        super().__init__()
        self._metrics = parse_metrics(metrics) if isinstance(metrics, str) else tuple(metrics)
        self._key_field = key_field
        self._aggregate = AggregateMetrics(key_field=key_field, metrics=self._metrics)
        check = MetricsCheck(key_field, self._metrics)
        self._process = ProcessEvents(checks=(*checks, check), **process_options)

    @property
    def sharded(self) -> bool:
        """Whether a step was spread over shards (see :class:`ProcessEvents`)."""
        return self._process.sharded

    def expand(self, pcoll):
        processed = pcoll | "Process" >> self._process
        aggregated = processed.main | "Aggregate" >> self._aggregate
        # Records were checked at parse time with the same rule, so the aggregation's own
        # dead-letter output stays empty; it is kept in the dead-letter output all the same.
        aggregate_dead = aggregated.dead_letter | "Unwindow" >> beam.WindowInto(GlobalWindows())
        dead = (processed.dead_letter, aggregate_dead) | "FlattenDeadLetters" >> beam.Flatten()
        return MetricsResult(
            aggregated.main, processed.late, processed.duplicate, dead, processed.main
        )


class MetricsCheck:
    """A picklable check: the record has a key and numeric aggregated fields (the rule of
    :func:`~headwater.transforms.aggregate.check_record`; its checker is built at the first
    record and kept, and a key field or metrics it cannot be built from refuse every record,
    as ``check_record`` does)."""

    def __init__(self, key_field: str, metrics: tuple[MetricSpec, ...]):
        self._key_field = key_field
        self._metrics = metrics
        self._check: RecordCheck | None = None

    def __call__(self, record: Mapping[str, Any]) -> None:
        if self._check is None:
            self._check = record_check(self._key_field, self._metrics)
        self._check.key_and_values(record)
