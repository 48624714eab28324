"""Deduplication by id within a horizon, across bundles and windows.

:class:`DeduplicateById` takes any ``PCollection`` of records (dicts, bytes, :class:`SourceRecord`
...) and returns :class:`Deduplicated` -- ``main`` (one copy per id and horizon), ``duplicate``
(every other copy, unchanged) and ``dead_letter`` (records without a usable id, as
:class:`~headwater.core.deadletter.DeadLetter` with stage ``"dedup"``). Nothing is dropped:
``main + duplicate + dead_letter`` is exactly the input, bounded or unbounded.

Where it runs
    *Before* windowing: the input must be in the global window (``expand`` refuses anything
    else), and element timestamps are event times. Records are keyed by their id and handled by a
    stateful DoFn, so one id's copies are compared however they are split across bundles, and a
    duplicate is removed even when it would fall into a different downstream window (Beam's
    ``DeduplicatePerKey`` keeps state per window and misses those).

The id
    Exactly one of ``id_field`` (a dotted path into dict records, ``"user.id"``), ``id_fn`` (a
    callable ``record -> id``) or ``content_hash=True`` (SHA-256 of the record's bytes -- the
    payload of a raw :class:`~headwater.core.records.SourceRecord`/Kafka record, the bytes
    themselves,
    or the UTF-8 of a str -- or of the canonical JSON of a decoded record). Ids are compared as
    *text*, spelt by :func:`headwater.transforms.keys.key_text` -- the rule aggregation keys follow
    too -- so the same id spelt by two producers matches: ``1``, ``1.0``, ``"1"`` and ``b"1"``
    are one id; bytes that are not UTF-8 become ``"0x<hex>"``; a ``uuid.UUID`` its canonical text;
    a tuple (a composite id) the JSON list of its parts' texts. A missing, ``None`` or empty id
    (``""``, ``b""``, a ``None`` part) is a :class:`MissingIdError` dead letter; a bool, NaN, dict
    or list id, or text that is not Unicode (a lone surrogate), an :class:`InvalidIdError` one; an
    exception raised by ``id_fn`` a dead letter of that exception's type.

Event time (``time_domain="event"``, the default)
    Per id the state keeps ``anchor``, the largest event time among the copies seen. A copy whose
    event time is at most ``horizon`` after the anchor is a duplicate
    (:func:`headwater.windowing.rules.is_duplicate`, the rule every engine calls) -- also when it
    is *older* than the copy kept, i.e. out-of-order arrivals are handled; a later copy starts a
    new episode and is kept. The comparison is explicit, not left to the timer, so a batch run
    (where the watermark only jumps at the end) gives the same answer as a streaming run for the
    same per-id arrival order, as long as no copy is late (see below). State is bounded: with
    ``keep="first"`` a stream forgets an id once the watermark reaches
    :func:`~headwater.windowing.rules.dedup_forget_at` -- the anchor plus the horizon, rounded up
    to the millisecond (timers' precision) and then to the sweep grid
    (:func:`~headwater.windowing.rules.dedup_grid`: a minute, or a sixteenth of the horizon if
    longer); with ``keep="last"`` an event-time timer at
    :func:`~headwater.windowing.rules.dedup_expiry` (the anchor plus the horizon, to the
    millisecond) emits the kept copy and clears the id. In batch ids are held until the input
    ends. A copy that arrives after the watermark passed its id's forget time finds no state and
    is kept: it is late by the horizon's own measure. The columnar replay applies the same rule
    (:func:`~headwater.windowing.rules.is_forgotten`).

    On a stream (unbounded input) with ``keep="first"`` the ids are not keyed one by one but
    spread over ``shards`` keys (a stable hash of the id) and kept in memory between bundles,
    checked against the runner's state (:mod:`headwater.transforms.dedupshards`): one state read
    per shard and bundle instead of one per record; the same rules.

Processing time (``time_domain="processing"``)
    An id is remembered for ``horizon`` of processing time after its most recent copy (a
    processing-time timer, reset by each copy); event times are not compared. In batch (bounded
    input, not ``--streaming``) the whole input counts as arriving at once: no processing-time
    timer is set and each id keeps one copy, on every runner (the FnApiRunner would fire such
    timers only when the input ends; Prism waits for them in real time, so a 10-minute horizon
    held a batch run for 10 minutes).

``keep``
    ``"first"``: the first *arrival* of an id is emitted at once, with its own timestamp; later
    arrivals go to ``duplicate`` (arrival order, not event time, decides which copy wins; in
    batch the runner decides the order).
    ``"last"``: copies are buffered (one per id) and the last arrival is emitted when the id
    expires -- ``horizon`` of event time after its anchor, or of processing time after the
    last copy -- with *its own* event time as timestamp; each copy it displaces goes to
    ``duplicate`` at once. By then the watermark has moved on, so downstream windows see the kept
    copy up to ``horizon`` late: give them an allowed lateness that covers the horizon, route
    their late data (:mod:`headwater.windowing`), or use ``keep="first"``. When the input ends
    (or a drain) the watermark reaches the end of time and every buffered copy is emitted; in
    processing time an extra event-time timer at the end of the global window makes sure of it.
    Caveat, BundleBasedDirectRunner only: it does not hold the watermark for user timers, so a
    copy flushed by the watermark's final jump to infinity reaches a downstream ``GroupByKey``
    behind a watermark of +inf and is dropped there. ``TestStream`` tests of ``keep="last"``
    should advance the watermark (or processing time) past the last horizon first. The FnApiRunner
    (batch) is not affected (tested); runners that hold the watermark for timers should not be
    either (not verified here).

Outputs keep the global window; ``main`` and ``duplicate`` records keep their own timestamps.
Ordering within an output is not preserved (records are shuffled by id). Counters, namespace
``headwater``: ``dedup.duplicate`` and ``dedup.dead_letter`` (the accounting counters
``duplicate``/``dead_letter`` are the pipeline's, via ``CountAs``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import BooleanCoder, FastPrimitivesCoder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.transforms.window import GlobalWindow, GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from headwater.core.accounting import NAMESPACE
from headwater.core.batches import ShardBatches
from headwater.core.deadletter import dead_letter_for
from headwater.core.shards import DEFAULT_SHARDS, checked_shard_count, stable_shard
from headwater.transforms import dedupshards
from headwater.transforms.keys import InvalidKeyError, MissingKeyError, key_text
from headwater.windowing import rules
from headwater.windowing.durations import DurationLike, to_beam_duration

__all__ = [
    "DeduplicateById",
    "Deduplicated",
    "InvalidIdError",
    "MissingIdError",
]

_STAGE = "dedup"
_KEEPS = ("first", "last")
_TIME_DOMAINS = ("event", "processing")
_MIN_MICROS = -(2**62)  # below this a timestamp means "none was set" (Beam's MIN_TIMESTAMP)


class MissingIdError(MissingKeyError):
    """A record has no id: the field is absent, ``None`` or empty (the dead letter's type)."""


class InvalidIdError(InvalidKeyError):
    """A record's id has no text form (a bool, NaN, dict, list, a lone surrogate ...)."""


class Deduplicated(NamedTuple):
    """The three outputs of :class:`DeduplicateById`; together they are exactly the input."""

    main: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection


# --- ids ------------------------------------------------------------------------------------


def _normalise_id(value: Any, what: str = "id") -> str:
    """The string an id is compared as (:func:`~headwater.transforms.keys.key_text`)."""
    return key_text(value, what, missing=MissingIdError, invalid=InvalidIdError)


class _FieldId:
    """The id at a dotted path into a dict record."""

    def __init__(self, path: str):
        self._path = path
        self._parts = tuple(path.split("."))

    def __call__(self, record: Any) -> str:
        value = record
        for depth, part in enumerate(self._parts):
            if not isinstance(value, Mapping):
                where = "the record" if depth == 0 else repr(".".join(self._parts[:depth]))
                raise MissingIdError(
                    f"id field {self._path!r}: {where} is a {type(value).__name__}, not a mapping"
                )
            if part not in value:
                raise MissingIdError(f"id field {self._path!r} is missing")
            value = value[part]
        return _normalise_id(value, f"id field {self._path!r}")


class _FnId:
    """The id that a user function returns."""

    def __init__(self, fn: Callable[[Any], Hashable]):
        self._fn = fn

    def __call__(self, record: Any) -> str:
        return _normalise_id(self._fn(record), "id_fn's result")


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"a {type(value).__name__} has no canonical JSON form")


def _content_bytes(record: Any) -> bytes:
    if isinstance(record, (bytes, bytearray)):
        return bytes(record)
    for name in ("payload", "value"):  # raw SourceRecord / Kafka records: their bytes, not origin
        raw = getattr(record, name, None)
        if isinstance(raw, bytes):
            return raw
    if isinstance(record, str):
        return record.encode("utf-8")
    try:
        text = json.dumps(
            record,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=True,
            default=_json_default,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidIdError(
            f"content_hash: the record has no canonical JSON form ({exc})"
        ) from None
    return text.encode("utf-8")


class _ContentHashId:
    """SHA-256 (hex) of the record's bytes or canonical JSON."""

    def __call__(self, record: Any) -> str:
        return hashlib.sha256(_content_bytes(record)).hexdigest()


# --- DoFns ----------------------------------------------------------------------------------


def _event_time(timestamp: Any) -> Any:
    return None if timestamp is None or timestamp.micros <= _MIN_MICROS else timestamp


class _KeyByIdFn(beam.DoFn):
    """record -> (id, record); records without a usable id -> ``dead_letter``.

    With ``shards``: records -> (shard of the id, [(id, event time micros, record), ...]), one
    element per shard and bundle (:class:`~headwater.core.batches.ShardBatches`), in arrival
    order, stamped with the earliest carrier among them (:mod:`headwater.transforms.dedupshards`).
    """

    def __init__(self, id_of: Callable[[Any], str], shards: int = 0, grid: int = 0):
        self._id_of = id_of
        self._shards = shards
        self._grid = grid
        self._dead = Metrics.counter(NAMESPACE, f"{_STAGE}.dead_letter")
        self._batches = ShardBatches()

    def start_bundle(self) -> None:
        self._batches = ShardBatches()

    def finish_bundle(self):
        yield from self._batches.drain()

    def process(self, element, timestamp=beam.DoFn.TimestampParam):
        try:
            key = self._id_of(element)
        except Exception as exc:  # a bad id (or a failing id_fn) is a dead letter, never a crash
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(
                "dead_letter",
                dead_letter_for(
                    element, stage=_STAGE, error=exc, event_time=_event_time(timestamp)
                ),
            )
            return
        if not self._shards:
            yield key, element
            return
        micros = timestamp.micros
        shard = stable_shard(key, self._shards)
        carrier = dedupshards.carrier_micros(micros, self._grid)
        full = self._batches.add(shard, (key, micros, element), carrier)
        if full is not None:
            yield full


# State is keyed by id (the runner shards it); specs are shared by both time domains.
# The newest event time seen (micros): one value in a bag, so that a new id's first write is one
# state request (a ReadModifyWrite cell's write is a clear and an append: two round trips on a
# runner without a state cache, such as Prism).
_ANCHOR = BagStateSpec("anchor", VarIntCoder())
_SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
_HELD = ReadModifyWriteStateSpec(  # keep="last": (event time micros, record) of the last arrival
    "held", TupleCoder([VarIntCoder(), FastPrimitivesCoder()])
)
_EVENT_EXPIRY = TimerSpec("expiry", TimeDomain.WATERMARK)
_PROCESSING_EXPIRY = TimerSpec("expiry", TimeDomain.REAL_TIME)
_END_OF_INPUT = TimerSpec("end_of_input", TimeDomain.WATERMARK)


def _only(values: Any) -> Any:
    """The one value a single-value bag holds, or ``None`` when it is empty."""
    for value in values:
        return value
    return None


def _processing_now() -> Timestamp:
    """The worker's processing time (the seam tests use to follow a TestStream's clock)."""
    return Timestamp.now()


class _DeduplicateEventTimeFn(beam.DoFn):
    """Keyed by id; a copy within the horizon of its id's anchor is a duplicate (rules)."""

    def __init__(self, keep: str, horizon_micros: int):
        self._keep_last = keep == "last"
        self._horizon = horizon_micros
        self._duplicates = Metrics.counter(NAMESPACE, f"{_STAGE}.duplicate")

    def _expiry(self, anchor: int) -> Timestamp:
        # keep="last" emits its copy at the expiry; keep="first" forgets the id on the sweep
        # grid, as the sharded streaming step does (rules.dedup_forget_at)
        if self._keep_last:
            return Timestamp(micros=rules.dedup_expiry(anchor, self._horizon))
        return Timestamp(micros=rules.dedup_forget_at(anchor, self._horizon))

    def process(
        self,
        keyed,
        timestamp=beam.DoFn.TimestampParam,
        anchor_state=beam.DoFn.StateParam(_ANCHOR),
        held_state=beam.DoFn.StateParam(_HELD),
        expiry=beam.DoFn.TimerParam(_EVENT_EXPIRY),
    ):
        _, element = keyed
        ts = timestamp.micros
        anchor = _only(anchor_state.read())
        if rules.is_duplicate(ts, anchor, self._horizon):  # a copy of a held id
            self._duplicates.inc()
            if self._keep_last:
                previous_ts, previous = held_state.read()
                held_state.write((ts, element))
                yield beam.pvalue.TaggedOutput(
                    "duplicate", TimestampedValue(previous, Timestamp(micros=previous_ts))
                )
            else:
                yield beam.pvalue.TaggedOutput("duplicate", element)
            if ts > anchor:
                anchor_state.clear()
                anchor_state.add(ts)
                expiry.set(self._expiry(ts))
            return
        # A new id, or a new episode of one whose horizon passed before the watermark did (batch).
        if anchor is not None and self._keep_last:
            previous_ts, previous = held_state.read()
            yield TimestampedValue(previous, Timestamp(micros=previous_ts))
        if anchor is not None:
            anchor_state.clear()
        anchor_state.add(ts)
        expiry.set(self._expiry(ts))
        if self._keep_last:
            held_state.write((ts, element))
        else:
            yield element

    @on_timer(_EVENT_EXPIRY)
    def expire(
        self,
        fired_at=beam.DoFn.TimestampParam,
        anchor_state=beam.DoFn.StateParam(_ANCHOR),
        held_state=beam.DoFn.StateParam(_HELD),
        expiry=beam.DoFn.TimerParam(_EVENT_EXPIRY),
    ):
        anchor = _only(anchor_state.read())
        if anchor is None:
            return
        if self._expiry(anchor) > fired_at:  # a firing overtaken by a newer copy: wait for it
            expiry.set(self._expiry(anchor))
            return
        if self._keep_last:  # (keep="first" never writes held: no clear request for it)
            held = held_state.read()
            if held is not None:
                yield TimestampedValue(held[1], Timestamp(micros=held[0]))
            held_state.clear()
        anchor_state.clear()


class _DeduplicateProcessingTimeFn(beam.DoFn):
    """Keyed by id; an id is remembered for ``horizon`` of processing time after its last copy."""

    def __init__(self, keep: str, horizon_micros: int, *, batch: bool = False):
        self._keep_last = keep == "last"
        self._horizon = horizon_micros
        self._batch = batch  # the input arrives at once: no clock to wait for
        self._duplicates = Metrics.counter(NAMESPACE, f"{_STAGE}.duplicate")

    def process(
        self,
        keyed,
        timestamp=beam.DoFn.TimestampParam,
        seen_state=beam.DoFn.StateParam(_SEEN),
        held_state=beam.DoFn.StateParam(_HELD),
        expiry=beam.DoFn.TimerParam(_PROCESSING_EXPIRY),
        end_of_input=beam.DoFn.TimerParam(_END_OF_INPUT),
    ):
        _, element = keyed
        if not self._batch:
            expiry.set(_processing_now() + self._horizon / 1_000_000)
        if self._keep_last:
            previous = held_state.read()
            held_state.write((timestamp.micros, element))
            if previous is None:
                # Flushes the buffered copy when the input ends, if the clock never gets there.
                end_of_input.set(GlobalWindow().max_timestamp())
                return
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput(
                "duplicate", TimestampedValue(previous[1], Timestamp(micros=previous[0]))
            )
            return
        if seen_state.read():
            self._duplicates.inc()
            yield beam.pvalue.TaggedOutput("duplicate", element)
            return
        seen_state.write(True)
        yield element

    def _flush(self, seen_state, held_state):
        # Each keep writes one of the two cells: the other is left alone (no clear request).
        if not self._keep_last:
            seen_state.clear()
            return
        held = held_state.read()
        if held is not None:
            yield TimestampedValue(held[1], Timestamp(micros=held[0]))
        held_state.clear()

    @on_timer(_PROCESSING_EXPIRY)
    def expire(
        self,
        seen_state=beam.DoFn.StateParam(_SEEN),
        held_state=beam.DoFn.StateParam(_HELD),
        end_of_input=beam.DoFn.TimerParam(_END_OF_INPUT),
    ):
        if self._keep_last:
            end_of_input.clear()
        yield from self._flush(seen_state, held_state)

    @on_timer(_END_OF_INPUT)
    def end(
        self,
        seen_state=beam.DoFn.StateParam(_SEEN),
        held_state=beam.DoFn.StateParam(_HELD),
    ):
        yield from self._flush(seen_state, held_state)


# --- the transform --------------------------------------------------------------------------


class DeduplicateById(beam.PTransform):
    """Keeps one copy of each id within ``horizon``; returns :class:`Deduplicated`.

    Give exactly one of ``id_field`` (dotted path into dict records), ``id_fn`` (``record ->
    id``) or ``content_hash=True``. ``keep`` is ``"first"`` (first arrival, emitted at once) or
    ``"last"`` (last arrival, emitted when the id expires); ``horizon`` (seconds, a ``timedelta``
    or ``"10m"``, > 0) bounds how long an id is remembered, in ``time_domain`` ``"event"`` (past
    the newest copy's event time) or ``"processing"`` (past the last copy's arrival). Apply it
    before ``WindowInto``. ``shards`` (1 to 4096) is how many keys a stream's event-time
    keep-first ids are spread over (the step's parallelism). See the module docstring for the
    exact semantics.

    >>> import apache_beam as beam
    >>> from apache_beam.transforms.window import TimestampedValue
    >>> rows = [({"id": 1, "v": "a"}, 0), ({"id": "1", "v": "b"}, 5), ({"v": "c"}, 7)]
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     out = (p | beam.Create(rows) | beam.MapTuple(TimestampedValue)
    ...            | DeduplicateById(id_field="id", horizon="1m"))
    ...     _ = out.main | "Main" >> beam.Map(lambda r: print("main", r["v"]))
    ...     _ = out.duplicate | "Dup" >> beam.Map(lambda r: print("duplicate", r["v"]))
    ...     _ = out.dead_letter | "Dead" >> beam.Map(lambda d: print(d.error_type))
    main a
    duplicate b
    MissingIdError
    """

    def __init__(
        self,
        *,
        id_field: str | None = None,
        id_fn: Callable[[Any], Hashable] | None = None,
        content_hash: bool = False,
        keep: str = "first",
        horizon: DurationLike,
        time_domain: str = "event",
        shards: int = DEFAULT_SHARDS,
    ):
        super().__init__()
        self._shards = checked_shard_count(shards)
        self.sharded = False  # once applied: whether the ids went by shard (a stream)
        if not isinstance(content_hash, bool):
            raise ValueError(f"content_hash={content_hash!r} must be True or False")
        given = [
            name
            for name, value in (
                ("id_field", id_field),
                ("id_fn", id_fn),
                ("content_hash", content_hash or None),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of id_field, id_fn or content_hash=True; got "
                f"id_field={id_field!r}, id_fn={id_fn!r}, content_hash={content_hash!r}"
            )
        self._id_of: Callable[[Any], str]
        if id_field is not None:
            if not isinstance(id_field, str) or not all(id_field.split(".")):
                raise ValueError(
                    f"id_field={id_field!r} must be a dotted path of field names, e.g. 'user.id'"
                )
            self._id_of = _FieldId(id_field)
        elif id_fn is not None:
            if not callable(id_fn):
                raise ValueError(f"id_fn={id_fn!r} is not callable")
            self._id_of = _FnId(id_fn)
        else:
            self._id_of = _ContentHashId()
        if keep not in _KEEPS:
            raise ValueError(f"keep={keep!r} is not one of {', '.join(map(repr, _KEEPS))}")
        if time_domain not in _TIME_DOMAINS:
            raise ValueError(
                f"time_domain={time_domain!r} is not one of {', '.join(map(repr, _TIME_DOMAINS))}"
            )
        self._keep = keep
        self._horizon_micros = to_beam_duration(horizon, name="horizon", allow_zero=False).micros
        self._time_domain = time_domain
        self._id_field = id_field

    @property
    def id_field(self) -> str | None:
        """The ``id_field`` given (a dotted path), or None for ``id_fn`` / ``content_hash``."""
        return self._id_field

    @property
    def id_of(self) -> Callable[[Any], str]:
        """The record -> id text function (raises :class:`MissingIdError` ... as documented)."""
        return self._id_of

    @property
    def keep(self) -> str:
        """``"first"`` or ``"last"``."""
        return self._keep

    @property
    def time_domain(self) -> str:
        """``"event"`` or ``"processing"``."""
        return self._time_domain

    @property
    def horizon_micros(self) -> int:
        """The horizon in microseconds."""
        return self._horizon_micros

    def expand(self, pcoll):
        windowfn = pcoll.windowing.windowfn
        if not isinstance(windowfn, GlobalWindows):
            raise ValueError(
                f"DeduplicateById must run before windowing, on the global window; its input is "
                f"windowed by {windowfn!r} (dedup per window would miss copies in other windows)"
            )
        sharded = self._time_domain == "event" and self._keep == "first" and not pcoll.is_bounded
        self.sharded = sharded
        if sharded:  # a stream: ids by shard, in memory between bundles (dedupshards)
            grid = rules.dedup_grid(self._horizon_micros)
            key_by: beam.DoFn = _KeyByIdFn(self._id_of, self._shards, grid)
            key_type: Any = tuple[int, Any]
        else:
            key_by, key_type = _KeyByIdFn(self._id_of), tuple[str, Any]
        keyed = pcoll | "KeyById" >> beam.ParDo(key_by).with_output_types(
            key_type  # a deterministic key coder for the stateful step
        ).with_outputs("dead_letter", main="keyed")
        if sharded:
            fn: beam.DoFn = dedupshards.DeduplicateShardsFn(self._horizon_micros)
        elif self._time_domain == "event":
            fn = _DeduplicateEventTimeFn(self._keep, self._horizon_micros)
        else:
            streaming = pcoll.pipeline.options.view_as(StandardOptions).streaming
            batch = pcoll.is_bounded and not streaming
            fn = _DeduplicateProcessingTimeFn(self._keep, self._horizon_micros, batch=batch)
        deduplicated = keyed.keyed | "Deduplicate" >> beam.ParDo(fn).with_outputs(
            "duplicate", main="main"
        )
        return Deduplicated(deduplicated.main, deduplicated.duplicate, keyed.dead_letter)
