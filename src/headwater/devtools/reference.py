"""A plain-Python computation of ``windowed_metrics`` semantics, for tests and benchmarks.

It shares no code with the Beam path: ``json`` + a dict for dedup + a dict per window. Semantics
(batch, where nothing is late):

- a line is a dead letter when it is not a JSON object, lacks a numeric event time (``unit``) in
  range, lacks the id or the key, or has a non-numeric value in an aggregated field;
- dedup keeps the first arrival of an id; a later copy is a duplicate when its event time is at
  most ``horizon`` after the newest event time seen for that id (each copy moves that anchor);
- fixed windows of ``window_s`` seconds aligned to the epoch; per (window, key) the metrics.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["windowed_metrics_reference"]

_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 0.001}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def windowed_metrics_reference(
    lines: Iterable[bytes],
    *,
    id_field: str = "event_id",
    key_field: str = "user_id",
    time_field: str = "event_time",
    unit: str = "ms",
    horizon_s: float = 600.0,
    window_s: int = 60,
    sum_fields: tuple[str, ...] = ("amount",),
    late_lines: frozenset[bytes] = frozenset(),
) -> dict[str, Any]:
    """Returns ``{"rows": {(window_start, key): {...}}, "records_in": n, "output": n,
    "duplicate": n, "dead_letter": n, "late": n}`` for ``count`` and ``sum:<field>``.

    ``late_lines``: in a streaming comparison, the lines the run judged late; a first arrival
    with those bytes counts as ``late`` instead of ``output`` (it still anchors dedup).
    """
    anchors: dict[Any, float] = {}
    rows: dict[tuple[dt.datetime, Any], dict[str, Any]] = {}
    counts = {"records_in": 0, "output": 0, "duplicate": 0, "dead_letter": 0, "late": 0}
    for line in lines:
        counts["records_in"] += 1
        try:
            record = json.loads(line)
        except ValueError:
            counts["dead_letter"] += 1
            continue
        raw_time = record.get(time_field) if isinstance(record, dict) else None
        millis = _number(raw_time)
        values = [_number(record.get(f)) for f in sum_fields] if isinstance(record, dict) else []
        key = record.get(key_field) if isinstance(record, dict) else None
        ident = record.get(id_field) if isinstance(record, dict) else None
        if (
            millis is None
            or key in (None, "")
            or ident in (None, "")
            or any(v is None for v in values)
        ):
            counts["dead_letter"] += 1
            continue
        millis *= _UNIT_MS[unit]
        if not 0 <= millis < 253_402_300_800_000:
            counts["dead_letter"] += 1
            continue
        anchor = anchors.get(ident)
        if anchor is not None and millis <= anchor + horizon_s * 1000:
            anchors[ident] = max(anchor, millis)
            counts["duplicate"] += 1
            continue
        anchors[ident] = millis
        if line in late_lines:
            counts["late"] += 1
            continue
        counts["output"] += 1
        start_ms = math.floor(millis / (window_s * 1000)) * window_s * 1000
        start_ms = int(start_ms)
        start = _EPOCH + dt.timedelta(milliseconds=start_ms)
        row = rows.setdefault(
            (start, key),
            {
                "window_start": start,
                "window_end": start + dt.timedelta(seconds=window_s),
                "key": key,
                "count": 0,
                **{f"sum_{f}": 0.0 for f in sum_fields},
            },
        )
        row["count"] += 1
        for field, value in zip(sum_fields, values, strict=True):
            row[f"sum_{field}"] += value
    return {"rows": rows, **counts}
