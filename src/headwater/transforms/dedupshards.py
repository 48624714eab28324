"""Event-time deduplication keeping the first copy, keyed by shards of ids (streaming).

:class:`~headwater.transforms.dedup.DeduplicateById` with ``time_domain="event"`` and
``keep="first"`` on unbounded input runs here. The rule is the one every engine calls
(:func:`headwater.windowing.rules.is_duplicate`): a copy whose event time is at most ``horizon``
after its id's anchor (the newest event time among the id's copies seen) is a duplicate, and an
id is forgotten once the watermark reaches :func:`~headwater.windowing.rules.dedup_forget_at`.
What differs from the per-id DoFn is where the ids live.

Why shards
    Keyed by id, each new id costs a blocking state read (is there an anchor?) and its expiry
    another; on a runner that hands the SDK no cache tokens (Prism), every one is a round trip,
    and they were half of a stream's processing time there. Here the ids are spread over
    ``shards`` keys by a stable hash, and each shard's ids are kept in this process's memory
    between bundles, next to the runner's state: a bag of ``(id, anchor)`` entries (the last
    entry of an id is its anchor) and a small *meta* cell. A bundle reads the meta cell of each
    shard it touches (one round trip per shard, not per record) and uses the table in memory
    when the meta cell's *token* is the one that table was written with; otherwise (another
    worker wrote the shard, this process is new, a bundle that wrote it failed) it reads the bag
    and builds the table again. Every bundle that changes a shard writes a new random token with
    its changes, so a table in memory is used only when it is exactly the committed state.

Forgetting
    An id is forgotten once the watermark reaches :func:`~headwater.windowing.rules.
    dedup_forget_at`: its expiry rounded up to the sweep grid
    (:func:`~headwater.windowing.rules.dedup_grid`: a minute, or a sixteenth of the horizon if
    that is longer) -- the rule the columnar replay applies too. Each shard arms one event-time
    timer per grid point at which some of its ids are forgotten (a dynamic tag per point, so a
    watermark that jumps fires them all in one round); when one fires at ``T`` every id with
    ``dedup_forget_at(anchor) <= T`` is forgotten, and the bag is rewritten once most of its
    entries are dead. A copy that arrives after the watermark passed its id's forget time
    (late, by the horizon's own measure) finds no anchor and is kept.

Carriers
    A record travels into this step stamped with its event time rounded down to the grid (its
    own event time goes with it, and it leaves with it again). Prism hands a key's data and
    timers over in timestamp order and fires no timer past the watermark: stamped with its own
    event time, a record past a sweep of its shard would wait for the watermark to pass it
    (and, if the stream then went quiet, for good). Rounded down, it ties with a sweep on that
    grid point, and data goes first at a tie: only a record more than a grid step ahead of the
    watermark waits.

Batches
    A bundle upstream sends each shard its records as one element, in arrival order, stamped
    with the earliest carrier among them (:class:`~headwater.core.batches.ShardBatches`): the
    runner's per-element cost is paid per shard and bundle, not per record. The answer is the
    one the records would get one by one. A batch comes before every sweep of its shard at or
    after its stamp, as its earliest record would; a later record of the batch may now come
    before a sweep at ``T`` between its own carrier and the stamp, but that sweep only forgets
    ids whose anchor is more than ``horizon`` before ``T``, and such an anchor does not make a
    record after ``T`` a duplicate: its answer, and the anchor it leaves, are the same.

State per shard: the ids within the horizon (plus up to a grid step) and the meta cell; in
memory, the same per shard touched in this process.
"""

from __future__ import annotations

import heapq
import random
import time
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.coders import StrUtf8Coder, TupleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import (
    BagStateSpec,
    ReadModifyWriteStateSpec,
    TimerSpec,
    on_timer,
)
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Timestamp

from headwater.core.accounting import NAMESPACE
from headwater.core.stamps import in_global_window
from headwater.windowing import rules

__all__ = ["DeduplicateShardsFn", "carrier_micros"]

_MIN_MICROS = MIN_TIMESTAMP.micros
_COMPACT_SLACK = 1024  # dead bag entries tolerated beyond the live ones before a rewrite

# (id, anchor) entries in the order written; an id's last entry is its anchor.
_IDS = BagStateSpec("shard_ids", TupleCoder([StrUtf8Coder(), VarIntCoder()]))
# (token, swept to): written once per bundle that changes the shard, and by each sweep
_META = ReadModifyWriteStateSpec("shard_meta", TupleCoder([VarIntCoder()] * 2))
_SWEEP = TimerSpec("sweep", TimeDomain.WATERMARK)


def carrier_micros(micros: int, grid: int) -> int:
    """The timestamp a record travels with (micros): its event time rounded down to ``grid``."""
    return max(micros - micros % grid, _MIN_MICROS)


class _Table:
    """A shard's ids as the runner's state holds them after the bundle that wrote ``token``."""

    __slots__ = ("anchors", "armed", "entries", "forgets", "swept_to", "token", "touched")

    def __init__(self, meta: tuple[int, ...] | None, entries: Any, horizon: int):
        self.token, self.swept_to = meta or (0, _MIN_MICROS)
        self.anchors: dict[str, int] = {}
        count = 0
        for record_id, anchor in entries:
            self.anchors[record_id] = anchor
            count += 1
        self.entries = count  # the bag's entries, dead ones included: when to rewrite it
        # (forget time, id), the earliest first; entries of an id whose anchor moved stay
        # until popped (an id is forgotten only when its current anchor's time has come).
        self.forgets: list[tuple[int, str]] = []
        for record_id, anchor in list(self.anchors.items()):
            forget = rules.dedup_forget_at(anchor, horizon)
            if forget <= self.swept_to:
                del self.anchors[record_id]
            else:
                self.forgets.append((forget, record_id))
        heapq.heapify(self.forgets)
        self.armed: set[int] = set()  # the grid points whose sweep this process has set
        self.touched = time.monotonic()

    def meta(self) -> tuple[int, int]:
        return (self.token, self.swept_to)


# This process's shard tables, by (step, shard): shared by the step's DoFn instances (one per
# worker thread), each checked against the runner's token before use. A table no bundle has
# touched for _IDLE_S (its shard moved to another worker) is dropped.
_TABLES: dict[tuple[str, int], _Table] = {}
_IDLE_S = 600.0


class DeduplicateShardsFn(beam.DoFn):
    """Keyed by shard, elements ``[(id, event time micros, record), ...]`` in arrival order (or
    one such tuple); the first copy of an id within the horizon goes to ``main``, the others to
    ``duplicate``, each stamped with its own event time."""

    def __init__(self, horizon_micros: int):
        self._horizon = horizon_micros
        self._step = uuid.uuid4().hex  # this step's tables in _TABLES (pickled with the DoFn)
        self._duplicates = Metrics.counter(NAMESPACE, "dedup.duplicate")
        self._touched: dict[int, _Table] = {}  # shards checked against their token this bundle
        self._written: set[int] = set()  # shards this bundle changed (a new token written)
        self._evicted = 0.0  # when idle tables were last dropped (monotonic seconds)

    def start_bundle(self) -> None:
        self._touched = {}
        self._written = set()

    def finish_bundle(self) -> None:
        now = time.monotonic()
        for table in self._touched.values():
            table.touched = now
        if now - self._evicted > _IDLE_S / 10:
            self._evicted = now
            for key in [k for k, t in list(_TABLES.items()) if now - t.touched > _IDLE_S]:
                _TABLES.pop(key, None)
        self._touched = {}
        self._written = set()

    def _table(self, shard: int, meta_state: Any, ids_state: Any, sweep: Any) -> _Table:
        """The shard's table: the one in memory if its token is the committed one, else the
        bag read again and its sweeps armed (one meta read per shard and bundle)."""
        table = self._touched.get(shard)
        if table is not None:
            return table
        meta = meta_state.read()
        table = _TABLES.get((self._step, shard))
        if table is None or meta is None or table.token != meta[0]:
            table = _Table(meta, ids_state.read() if meta is not None else (), self._horizon)
            for forget, _ in table.forgets:
                self._arm(table, sweep, forget)  # (setting an armed timer again is harmless)
            _TABLES[(self._step, shard)] = table
        self._touched[shard] = table
        return table

    def _write(self, shard: int, table: _Table, meta_state: Any, *, swept: bool = False) -> None:
        """Records the shard's changes under a token of this bundle's own: the meta cell is
        written with the bundle's first change to the shard (and again after a sweep, which
        moves ``swept_to``), not with every record."""
        if shard not in self._written:
            self._written.add(shard)
            table.token = random.getrandbits(62) | 1
        elif not swept:
            return
        meta_state.write(table.meta())

    @staticmethod
    def _arm(table: _Table, sweep: Any, forget: int) -> None:
        if forget not in table.armed:
            sweep.set(Timestamp(micros=forget), dynamic_timer_tag=str(forget))
            table.armed.add(forget)

    def process(
        self,
        element,
        meta_state=beam.DoFn.StateParam(_META),
        ids_state=beam.DoFn.StateParam(_IDS),
        sweep=beam.DoFn.TimerParam(_SWEEP),
    ):
        shard, items = element
        table = self._table(shard, meta_state, ids_state, sweep)
        if isinstance(items, tuple):  # one item alone (a job updated in flight may hold some)
            items = (items,)
        changed = False
        for record_id, micros, record in items:
            anchor = table.anchors.get(record_id)
            stamped = in_global_window(record, micros)
            if rules.is_duplicate(micros, anchor, self._horizon):
                self._duplicates.inc()
                yield beam.pvalue.TaggedOutput("duplicate", stamped)
                if micros <= anchor:
                    continue
            else:
                yield stamped
            table.anchors[record_id] = micros
            forget = rules.dedup_forget_at(micros, self._horizon)
            heapq.heappush(table.forgets, (forget, record_id))
            self._arm(table, sweep, forget)
            ids_state.add((record_id, micros))
            table.entries += 1
            changed = True
        if changed:
            self._write(shard, table, meta_state)

    @on_timer(_SWEEP)
    def swept(
        self,
        fired_at=beam.DoFn.TimestampParam,
        shard=beam.DoFn.KeyParam,
        meta_state=beam.DoFn.StateParam(_META),
        ids_state=beam.DoFn.StateParam(_IDS),
        sweep=beam.DoFn.TimerParam(_SWEEP),
    ):
        """Forgets the ids whose forget time the watermark has reached; rewrites a mostly dead
        bag."""
        table = self._table(shard, meta_state, ids_state, sweep)
        table.swept_to = max(table.swept_to, fired_at.micros)
        table.armed.discard(fired_at.micros)
        forgets = table.forgets
        while forgets and forgets[0][0] <= table.swept_to:
            _, record_id = heapq.heappop(forgets)
            anchor = table.anchors.get(record_id)
            if anchor is not None and rules.is_forgotten(anchor, self._horizon, table.swept_to):
                del table.anchors[record_id]
        if table.entries > 2 * len(table.anchors) + _COMPACT_SLACK:
            ids_state.clear()
            for record_id, anchor in table.anchors.items():
                ids_state.add((record_id, anchor))
            table.entries = len(table.anchors)
        self._write(shard, table, meta_state, swept=True)
        return ()
