"""The dead-letter envelope and the wrapper that turns failures into dead letters."""

from __future__ import annotations

import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from headwater.core.deadletter import DeadLetter, dead_letter_for
from headwater.core.records import SourceRecord
from headwater.transforms.deadletter import ApplyOrDeadLetter


def test_envelope_keeps_original_bytes_and_origin():
    """A rejected SourceRecord keeps its exact bytes and file/line, with type and message."""
    record = SourceRecord(b"\xff{not json", {"file": "a.jsonl", "line": 7})
    letter = dead_letter_for(record, stage="decode", error=ValueError("bad byte 0xff"))
    assert letter.payload == b"\xff{not json"
    assert letter.origin == {"file": "a.jsonl", "line": 7}
    assert (letter.stage, letter.error_type, letter.error_message) == (
        "decode",
        "ValueError",
        "bad byte 0xff",
    )
    assert letter.failed_at.endswith("Z")


def test_envelope_json_round_trip_preserves_payload_bytes():
    """to_json/from_dict round-trip every field, binary payloads included."""
    letter = dead_letter_for(
        b"\x00\x01binary",
        stage="late",
        error="window closed",
        event_time=1.5,
        window="a/b",
        lateness_ms=1200,
    )
    back = DeadLetter.from_dict(json.loads(letter.to_json()))
    assert back == letter
    assert back.event_time == "1970-01-01T00:00:01.500000Z"


def test_malformed_dead_letter_row_names_what_is_wrong():
    """from_dict on a row that is not an envelope raises ValueError listing its keys."""
    with pytest.raises(ValueError, match="not a dead-letter row"):
        DeadLetter.from_dict({"stage": "x"})


def test_long_error_messages_are_truncated():
    """Huge error texts are cut so one bad record cannot bloat the dead-letter sink."""
    letter = dead_letter_for(b"x", stage="s", error=ValueError("e" * 10_000))
    assert len(letter.error_message) < 2_100


def test_apply_or_dead_letter_routes_each_element_once():
    """Successes go to main, failures to dead_letter with stage and payload; none are lost."""
    p = TestPipeline(runner="FnApiRunner")
    routed = p | beam.Create([b"1", b"two", b"3"]) | ApplyOrDeadLetter(int, stage="to_int")
    assert_that(routed.main, equal_to([1, 3]), label="main")
    assert_that(
        routed.dead_letter | beam.Map(lambda d: (d.stage, d.error_type, d.payload)),
        equal_to([("to_int", "ValueError", b"two")]),
        label="dead letters",
    )
    p.run().wait_until_finish()


def test_apply_or_dead_letter_flatten():
    """flatten=True emits every item of the result."""
    p = TestPipeline(runner="FnApiRunner")
    routed = (
        p | beam.Create([2, 0]) | ApplyOrDeadLetter(lambda n: [n] * n, stage="rep", flatten=True)
    )
    assert_that(routed.main, equal_to([2, 2]), label="main")
    p.run().wait_until_finish()


@pytest.mark.parametrize(("fn", "stage", "match"), [(None, "s", "fn="), (int, "", "stage=")])
def test_apply_or_dead_letter_validates_arguments(fn, stage, match):
    """Bad arguments raise ValueError naming them."""
    with pytest.raises(ValueError, match=match):
        ApplyOrDeadLetter(fn, stage=stage)


def test_utc_iso_formats_any_beam_timestamp():
    """Epoch micros become ISO-8601 UTC; Beam's MIN/MAX fall back to Beam's own form."""
    from apache_beam.utils.timestamp import MAX_TIMESTAMP

    from headwater.core.deadletter import utc_iso

    assert utc_iso(60_000_000) == "1970-01-01T00:01:00Z"
    assert utc_iso(MAX_TIMESTAMP.micros) == str(MAX_TIMESTAMP)
