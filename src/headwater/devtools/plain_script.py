"""The plain-Python baseline of ``make bench``: ``windowed_metrics`` as one small script.

A standalone program (standard library only, no headwater import) that ``make bench`` runs as a
subprocess next to ``headwater run windowed_metrics``, timed the same way (start to exit)::

    python plain_script.py EVENTS.jsonl OUT_FOLDER

Single thread: ``json.loads`` per line, a dict of id -> anchor for dedup, a dict per (window,
key) for count and sum of ``amount``. The semantics are :mod:`headwater.devtools.reference`'s
(written again here so the script stays self-contained):

- a line is a dead letter when it is not a JSON object, lacks a numeric ``event_time`` (epoch
  ms) in range, lacks ``event_id`` or ``user_id``, or has a non-numeric ``amount``;
- dedup keeps the first arrival of an id; a later copy is a duplicate when its event time is at
  most 10 minutes after the newest event time seen for that id (each copy moves that anchor);
- fixed 60 s windows aligned to the epoch; per (window, ``user_id``): count and sum of amount.

It writes what headwater writes, in the simplest form: ``OUT/rows/window_start=<ISO>/rows.jsonl``
(one row per key, sorted), ``OUT/dead_letters.jsonl`` (line number, reason, the payload in
base64) and prints the counters as one JSON line (records_in, output, duplicate, dead_letter,
late).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import sys
from pathlib import Path
from typing import Any

HORIZON_MS = 600_000
WINDOW_MS = 60_000
MAX_MS = 253_402_300_800_000  # year 10000
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _reason(record: object) -> tuple[str | None, float, float]:
    """Why ``record`` is a dead letter (None when it is not), its event time and amount."""
    if not isinstance(record, dict):
        return "not a JSON object", 0.0, 0.0
    millis = _number(record.get("event_time"))
    if millis is None:
        return "event_time missing or not a number", 0.0, 0.0
    if not 0 <= millis < MAX_MS:
        return "event_time out of range", 0.0, 0.0
    if record.get("event_id") in (None, ""):
        return "event_id missing", 0.0, 0.0
    if record.get("user_id") in (None, ""):
        return "user_id missing", 0.0, 0.0
    amount = _number(record.get("amount"))
    if amount is None:
        return "amount missing or not a number", 0.0, 0.0
    return None, millis, amount


def check_line(payload: bytes) -> tuple[str | None, Any, float, float]:
    """(why ``payload`` is a dead letter or None, the record, its event time ms, its amount)."""
    try:
        record = json.loads(payload)
    except ValueError as exc:
        return f"invalid JSON: {exc}", None, 0.0, 0.0
    reason, millis, amount = _reason(record)
    return reason, record, millis, amount


def run(events: Path, out: Path) -> dict[str, int]:
    """Reads ``events``, writes rows and dead letters under ``out``; returns the counters."""
    anchors: dict[object, float] = {}
    windows: dict[int, dict[object, list[float]]] = {}
    counts = {"records_in": 0, "output": 0, "duplicate": 0, "dead_letter": 0, "late": 0}
    out.mkdir(parents=True, exist_ok=True)
    with events.open("rb") as lines, (out / "dead_letters.jsonl").open("w") as dead:
        for number, line in enumerate(lines, 1):
            counts["records_in"] += 1
            payload = line.rstrip(b"\n")
            reason, record, millis, amount = check_line(payload)
            if reason is not None:
                counts["dead_letter"] += 1
                letter = {
                    "line": number,
                    "error_message": reason,
                    "payload_b64": base64.b64encode(payload).decode("ascii"),
                }
                dead.write(json.dumps(letter) + "\n")
                continue
            ident = record["event_id"]
            anchor = anchors.get(ident)
            if anchor is not None and millis <= anchor + HORIZON_MS:
                anchors[ident] = max(anchor, millis)
                counts["duplicate"] += 1
                continue
            anchors[ident] = millis
            counts["output"] += 1
            start = math.floor(millis / WINDOW_MS) * WINDOW_MS
            row = windows.setdefault(start, {}).setdefault(record["user_id"], [0, 0.0])
            row[0] += 1
            row[1] += amount
    for start, rows in sorted(windows.items()):
        begin = EPOCH + dt.timedelta(milliseconds=start)
        end = begin + dt.timedelta(milliseconds=WINDOW_MS)
        folder = out / "rows" / f"window_start={begin.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "rows.jsonl").open("w") as handle:
            for key in sorted(rows, key=str):
                count, total = rows[key]
                out_row = {
                    "window_start": begin.isoformat(),
                    "window_end": end.isoformat(),
                    "key": key,
                    "count": count,
                    "sum_amount": total,
                }
                handle.write(json.dumps(out_row) + "\n")
    return counts


def main(argv: list[str]) -> int:
    """``plain_script.py EVENTS OUT``: prints the counters as one JSON line."""
    if len(argv) != 2:
        print("usage: plain_script.py EVENTS.jsonl OUT_FOLDER", file=sys.stderr)
        return 2
    print(json.dumps(run(Path(argv[0]), Path(argv[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
