"""Sample events shaped like the reference workload, deterministic for a given seed.

Each event is a JSON object ``{"event_id", "user_id", "event_time" (epoch ms), "amount", "kind"}``
emitted in *arrival order*, ``ms_per_event`` apart in event time (default 1: about 1,000 events
per second of event time):

- normal events have an event time up to ``max_disorder_ms`` behind their arrival position;
- ``late_frac`` of the events are 2-5 minutes behind the newest event time seen so far;
- ``dup_frac`` of the events re-deliver, byte for byte, an original that arrived within the last
  30 seconds of arrivals (duplicates are never duplicated again);
- ``malformed_frac`` of the events are broken on purpose (truncated JSON, invalid UTF-8, a missing
  or non-numeric event time, a missing user id, a non-numeric amount) so that dead-letter paths
  have something to do. Malformed lines are never re-delivered.

:func:`generate` yields :class:`Event` values; :func:`write_jsonl` writes them to a file and
returns the :class:`WorkloadStats`, written as JSON to ``stats_path`` only when one is given: a
file next to the data would be read as data by a glob such as ``--input='dir/*'``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Event", "WorkloadStats", "generate", "write_jsonl", "T0_MS"]

T0_MS = 1_700_000_000_000  # 2023-11-14T22:13:20Z
_KINDS = ("view", "click", "add_to_cart", "purchase", "refund")
_KIND_WEIGHTS = (60, 25, 8, 5, 2)
_DUP_WINDOW = 30_000  # arrivals: 30 s at 1,000 events/s
_LATE_MS = (120_001, 300_000)
_MALFORMED_KINDS = (
    "truncated_json",
    "invalid_utf8",
    "missing_event_time",
    "non_numeric_event_time",
    "missing_user_id",
    "non_numeric_amount",
)


class Event(NamedTuple):
    """One line of the stream: its bytes, the decoded record (``None`` if malformed), a tag.

    ``tag`` is ``"normal"``, ``"late"``, ``"duplicate"`` or ``"malformed:<kind>"``.
    """

    line: bytes
    record: dict[str, Any] | None
    tag: str


@dataclasses.dataclass
class WorkloadStats:
    """How many events of each kind a generated stream holds."""

    events: int = 0
    normal: int = 0
    late: int = 0
    duplicate: int = 0
    malformed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def _malformed(kind: str, record: dict[str, Any]) -> bytes:
    bad = dict(record)
    if kind == "truncated_json":
        text = json.dumps(bad, separators=(",", ":"))
        return text[: len(text) // 2].encode()
    if kind == "invalid_utf8":
        return json.dumps(bad, separators=(",", ":")).encode()[:-2] + b'\xff\xfe"}'
    if kind == "missing_event_time":
        del bad["event_time"]
    elif kind == "non_numeric_event_time":
        bad["event_time"] = "yesterday"
    elif kind == "missing_user_id":
        del bad["user_id"]
    elif kind == "non_numeric_amount":
        bad["amount"] = "12.5 EUR"
    return json.dumps(bad, separators=(",", ":")).encode()


def generate(
    n: int,
    *,
    seed: int = 42,
    dup_frac: float = 0.10,
    late_frac: float = 0.01,
    malformed_frac: float = 0.0,
    max_disorder_ms: int = 5_000,
    users: int = 10_000,
    t0_ms: int = T0_MS,
    ms_per_event: int = 1,
    amounts_in_cents: bool = False,
) -> Iterator[Event]:
    """Yields ``n`` events in arrival order; the same arguments always give the same bytes.

    ``amount`` is a float with two decimals, or with ``amounts_in_cents`` the same draw as an
    integer number of cents (integer sums are exact in any order of adding: engines that add
    in different orders write the same bytes).

    >>> [e.tag for e in generate(3, dup_frac=0, late_frac=0)]
    ['normal', 'normal', 'normal']
    >>> [e.record["amount"] for e in generate(2, amounts_in_cents=True)]
    [36837, 10971]
    """
    for name, frac in (
        ("dup_frac", dup_frac),
        ("late_frac", late_frac),
        ("malformed_frac", malformed_frac),
    ):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name}={frac!r} must be in [0, 1)")
    if dup_frac + late_frac + malformed_frac >= 1.0:
        raise ValueError("dup_frac + late_frac + malformed_frac must stay below 1")
    if n < 0:
        raise ValueError(f"n={n!r} must not be negative")
    if isinstance(ms_per_event, bool) or not isinstance(ms_per_event, int) or ms_per_event < 1:
        raise ValueError(f"ms_per_event={ms_per_event!r} must be a positive integer")
    if not isinstance(amounts_in_cents, bool):
        raise ValueError(f"amounts_in_cents={amounts_in_cents!r} must be True or False")
    rng = random.Random(seed)
    originals: list[tuple[int, bytes, dict[str, Any]]] = []  # (arrival, line, record)
    first_live = 0
    max_seen: int | None = None
    for position in range(n):
        while first_live < len(originals) and originals[first_live][0] < position - _DUP_WINDOW:
            first_live += 1
        draw = rng.random()
        if draw < dup_frac and first_live < len(originals):
            _, line, record = originals[rng.randrange(first_live, len(originals))]
            yield Event(line, record, "duplicate")
            continue
        if draw < dup_frac + late_frac and max_seen is not None:
            event_time = max_seen - rng.randint(*_LATE_MS)
            tag = "late"
        else:
            event_time = t0_ms + position * ms_per_event - rng.randint(0, max_disorder_ms)
            tag = "normal"
        record = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"u{rng.randrange(users):05d}",
            "event_time": event_time,
            "amount": _amount(rng.uniform(0.5, 500.0), amounts_in_cents),
            "kind": rng.choices(_KINDS, weights=_KIND_WEIGHTS)[0],
        }
        if draw >= 1.0 - malformed_frac:
            kind = _MALFORMED_KINDS[rng.randrange(len(_MALFORMED_KINDS))]
            yield Event(_malformed(kind, record), None, f"malformed:{kind}")
            continue
        line = json.dumps(record, separators=(",", ":")).encode()
        max_seen = event_time if max_seen is None else max(max_seen, event_time)
        originals.append((position, line, record))
        yield Event(line, record, tag)


def _amount(drawn: float, in_cents: bool) -> float | int:
    return round(drawn * 100) if in_cents else round(drawn, 2)


def write_jsonl(
    path: str | Path, n: int, *, stats_path: str | Path | None = None, **options: Any
) -> WorkloadStats:
    """Writes ``n`` generated events to ``path`` (one per line; missing folders are created),
    and their stats to ``stats_path`` when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stats = WorkloadStats()
    with path.open("wb") as out:
        for event in generate(n, **options):
            out.write(event.line + b"\n")
            stats.events += 1
            kind = event.tag.split(":", 1)[0]
            setattr(stats, kind, getattr(stats, kind) + 1)
    if stats_path is not None:
        Path(stats_path).parent.mkdir(parents=True, exist_ok=True)
        Path(stats_path).write_text(json.dumps(stats.to_dict(), indent=2))
    return stats
