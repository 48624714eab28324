"""The streaming commit's ledger: never past a record whose outcome is not written."""

from __future__ import annotations

import random

import pytest

from headwater.core.deadletter import DeadLetter
from headwater.core.records import with_origin
from headwater.io.kafka.ledger import OffsetLedger, done_notices, kafka_position, offset_runs
from headwater.io.kafka.record import KafkaRecord


@pytest.mark.parametrize("seed", range(40))
def test_commit_point_never_passes_a_record_not_done_whatever_the_report_order(seed: int) -> None:
    """Ranges with gaps, reports shuffled (done before its range, waits released late)."""
    rng = random.Random(seed)
    base = rng.randrange(0, 50)
    offsets: list[int] = []
    ranges: list[tuple[int, int, int]] = []
    start = base
    for _ in range(rng.randrange(1, 12)):
        stop = start + rng.randrange(1, 8)
        inside = [o for o in range(start, stop) if rng.random() < 0.8]  # others: no record
        offsets += inside
        ranges.append((start, stop, offset_runs(inside)))
        start = stop
    # Each record's outcome: final on arrival, or waiting for a watermark time.
    waits = {o: rng.randrange(0, 5) for o in offsets if rng.random() < 0.5}
    reports: list[tuple[str, object]] = [("read", r) for r in ranges]
    reports += [("wait", o) if o in waits else ("done", o) for o in offsets]
    rng.shuffle(reports)
    released_upto = 0
    ledger = OffsetLedger()
    final: set[int] = set()
    committed: list[int] = []
    steps = [*reports, *(("release", t) for t in range(1, 6))]
    seen_ranges: set[int] = set()
    for kind, payload in steps:
        if kind == "read":
            ledger.begin(base)
            ledger.read(*payload)  # type: ignore[misc]
            seen_ranges.add(payload[0])  # type: ignore[index]
        elif kind == "done":
            ledger.done([payload])  # type: ignore[list-item]
            final.add(payload)  # type: ignore[arg-type]
        elif kind == "wait":
            ledger.wait(at=waits[payload], offsets=[payload])  # type: ignore[index]
        else:
            released_upto = payload  # type: ignore[assignment]
            ledger.release(released_upto)
            final |= {o for o, at in waits.items() if at <= released_upto}
        point = ledger.advance()
        if point is not None:
            committed.append(point)
            assert all(o in final for o in offsets if o < point), (seed, point)
            # ... and as far as that allows: the first record read and not done, or the end
            read_to = _contiguous_end(base, ranges, seen_ranges)
            pending = [o for o in offsets if o < read_to and o not in final]
            assert point == min(pending, default=read_to), (seed, point)
    assert committed == sorted(committed)
    assert ledger.committed == ranges[-1][1]  # everything final: committed to the end
    assert ledger.pending_runs == 0
    assert not ledger.orphans


def _contiguous_end(base: int, ranges: list[tuple[int, int, object]], seen: set[int]) -> int:
    end = base
    for start, stop, _ in ranges:
        if start != end or start not in seen:
            break
        end = stop
    return end


def test_nothing_is_committed_before_the_read_reports_where_it_began() -> None:
    ledger = OffsetLedger()
    ledger.done([7, 8])
    ledger.read(7, 9, ((7, 9),))
    assert ledger.advance() is None
    ledger.begin(7)
    assert ledger.advance() == 9


def test_a_range_reported_again_or_a_record_reported_twice_changes_nothing() -> None:
    ledger = OffsetLedger()
    ledger.begin(0)
    ledger.read(0, 2, ((0, 2),))
    ledger.done([0, 1])
    assert ledger.advance() == 2
    ledger.read(0, 2, ((0, 2),))
    ledger.done([1])
    ledger.read(2, 4, ((3, 4),))  # offset 2: no record (a transaction marker)
    assert ledger.advance() == 3
    ledger.done([3])
    assert ledger.advance() == 4
    assert ledger.pending_runs == 0


def test_a_range_that_is_not_one_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"range \[5, 5\) with records at \[\]"):
        OffsetLedger().read(5, 5, ())
    with pytest.raises(ValueError, match=r"range \[5, 7\) with records at \[\(4, 6\)\]"):
        OffsetLedger().read(5, 7, ((4, 6),))


def test_done_reports_group_kafka_positions_and_skip_records_of_files() -> None:
    record = KafkaRecord("t", 1, 5, None, b"{}")
    parsed = with_origin({"id": 1}, {"topic": "t", "partition": 0, "offset": 9})
    letter = DeadLetter(
        stage="decode",
        error_type="ValueError",
        error_message="bad",
        payload=b"x",
        origin={"topic": "t", "partition": 1, "offset": 6},
    )
    from_file = with_origin({"id": 2}, {"file": "a.jsonl", "line": 3})
    assert kafka_position(from_file) is None
    assert kafka_position(parsed) == (("t", 0), 9)
    assert sorted(done_notices([record, parsed, letter, from_file])) == [
        (("t", 0), ("done", (9,))),
        (("t", 1), ("done", (5, 6))),
    ]
