"""The sample workload: deterministic, shaped like the reference, malformed on request."""

from __future__ import annotations

import collections
import json

import pytest

from headwater.devtools.workload import generate, write_jsonl


def test_same_seed_same_bytes_and_other_seed_differs():
    """Generation is deterministic for a seed."""
    first = [e.line for e in generate(500, seed=3)]
    assert first == [e.line for e in generate(500, seed=3)]
    assert first != [e.line for e in generate(500, seed=4)]


def test_shape_matches_reference_workload():
    """~10% re-deliveries of recent originals, ~1% late, disorder within 5 s."""
    events = list(generate(20_000, seed=1))
    tags = collections.Counter(e.tag for e in events)
    assert 0.08 < tags["duplicate"] / len(events) < 0.12
    assert 0.005 < tags["late"] / len(events) < 0.015
    originals = {}
    max_seen = None
    for position, event in enumerate(events):
        record = event.record
        if event.tag == "duplicate":
            assert originals[record["event_id"]][1] == event.line
            assert position - originals[record["event_id"]][0] <= 30_000
            continue
        originals[record["event_id"]] = (position, event.line)
        if event.tag == "normal":
            assert 0 <= 1_700_000_000_000 + position - record["event_time"] <= 5_000
        else:
            assert 120_000 < max_seen - record["event_time"] <= 300_000
        max_seen = max(max_seen or record["event_time"], record["event_time"])


def test_malformed_records_are_really_malformed(tmp_path):
    """Malformed lines fail to decode or lack/garble a field; stats count them."""
    stats = write_jsonl(
        tmp_path / "e.jsonl", 5_000, malformed_frac=0.05, seed=2, stats_path=tmp_path / "s.json"
    )
    assert stats.malformed > 100
    assert stats.events == 5_000
    assert json.loads((tmp_path / "s.json").read_text())["malformed"] == stats.malformed
    for event in generate(5_000, malformed_frac=0.05, seed=2):
        if not event.tag.startswith("malformed"):
            continue
        kind = event.tag.split(":")[1]
        try:
            record = json.loads(event.line)
        except ValueError:
            assert kind in ("truncated_json", "invalid_utf8")
            continue
        assert kind not in ("truncated_json", "invalid_utf8")
        assert (
            not isinstance(record.get("event_time"), int)
            or "user_id" not in record
            or isinstance(record["amount"], str)
        )


@pytest.mark.parametrize("option", ["dup_frac", "late_frac", "malformed_frac"])
def test_bad_fractions_are_refused(option):
    """Fractions outside [0, 1) raise ValueError naming the option."""
    with pytest.raises(ValueError, match=option):
        list(generate(1, **{option: 1.5}))


def test_amounts_in_cents_are_the_same_draws_as_integers():
    """With amounts_in_cents every decodable line (re-deliveries and late events too) carries
    the float amount's draw in whole cents; the rest of the stream is unchanged."""
    floats = list(generate(3_000, seed=4, malformed_frac=0.02))
    cents = list(generate(3_000, seed=4, malformed_frac=0.02, amounts_in_cents=True))
    assert [e.tag for e in cents] == [e.tag for e in floats]
    decoded = [(f, c) for f, c in zip(floats, cents, strict=True) if c.record is not None]
    assert {c.tag for _, c in decoded} == {"normal", "duplicate", "late"}
    for f, c in decoded:
        assert json.loads(c.line) == c.record
        assert isinstance(c.record["amount"], int)
        assert abs(c.record["amount"] - f.record["amount"] * 100) <= 1
        assert {**c.record, "amount": 0} == {**f.record, "amount": 0}
    with pytest.raises(ValueError, match="amounts_in_cents='yes'"):
        list(generate(1, amounts_in_cents="yes"))
