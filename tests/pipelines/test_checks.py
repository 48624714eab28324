"""Checks around a run: unwritable outputs refused before it, data that must not pass after it."""

from __future__ import annotations

import json
import re

import pytest

from headwater import pipelines
from headwater.core.deadletter import dead_letter_for
from headwater.pipelines.checks import (
    OutputPathError,
    check_data,
    check_output_paths,
    diagnose,
)
from headwater.templates.metadata import metadata_for

VALUES = {"event_time_field": "event_time", "event_time_unit": "ms", "metrics": "count,sum:amount"}


def _summary(records_in: int, output: int, dead_letter: int) -> dict[str, int]:
    return {"records_in": records_in, "output": output, "dead_letter": dead_letter}


def _letters(records, *, stage: str, error: str):
    return [dead_letter_for(json.dumps(r).encode(), stage=stage, error=error) for r in records]


def test_records_in_and_no_output_fail_the_run():
    """Records in and nothing out is a failure, whatever --max_dead_letter_rate says."""
    verdict = check_data(_summary(10, 0, 10), VALUES, dead_letter_folder=None)
    assert verdict["passed"] is False
    assert verdict["failure"].startswith("no output from 10 records in")


def test_no_records_in_is_not_a_failure():
    """An empty input (nothing new to process) passes, with no warning."""
    verdict = check_data(_summary(0, 0, 0), VALUES, dead_letter_folder=None)
    assert verdict == {"passed": True, "failure": None, "warning": None}


def test_dead_letter_rate_above_the_limit_fails_naming_the_flag():
    """A dead-letter rate above --max_dead_letter_rate fails; at or under it passes."""
    values = {**VALUES, "max_dead_letter_rate": 0.1}
    over = check_data(_summary(10, 8, 2), values, dead_letter_folder=None)
    assert re.search(r"20\.00% .*--max_dead_letter_rate=0\.1", over["failure"])
    assert check_data(_summary(10, 9, 1), values, dead_letter_folder=None)["passed"] is True


def test_mostly_dead_letters_warn_with_the_top_stage(caplog):
    """Half the records or more as dead letters warns, naming the top stage from the counters."""
    verdict = check_data(
        _summary(10, 4, 6),
        VALUES,
        dead_letter_folder=None,
        stage_counts={"parse": 1, "event_time": 5},
    )
    assert verdict["passed"] is True
    assert "6 of 10 records" in verdict["warning"]
    assert "event_time" in verdict["warning"]
    assert verdict["warning"] in caplog.text


def test_dead_letters_written_to_files_give_the_reason_and_hint(tmp_path):
    """The warning samples the dead-letter files the run wrote: reason and hint from them."""
    letters = _letters(
        [{"event_time": 1_700_000_000_000}] * 4,
        stage="event_time",
        error="event time field 'event_time': 1700000000000 is after 9999-12-31",
    )
    (tmp_path / "dead_letters-00000-of-00001.jsonl").write_text(
        "".join(letter.to_json() + "\n" for letter in letters)
    )
    verdict = check_data(
        _summary(4, 0, 4), {**VALUES, "event_time_unit": "us"}, dead_letter_folder=str(tmp_path)
    )
    assert "top reason (100% of those sampled): event_time: " in verdict["warning"]
    assert "try --event_time_unit=ms" in verdict["warning"]


def test_wrong_event_time_unit_is_diagnosed_from_the_payloads():
    """Epoch-ms values read as seconds: the hint names milliseconds and the flag to use."""
    letters = _letters(
        [{"event_time": 1_700_000_000_000 + i} for i in range(5)],
        stage="event_time",
        error="event time field 'event_time': 1700000000000 is after 9999-12-31",
    )
    diagnosis = diagnose(letters, {**VALUES, "event_time_unit": "s"})
    assert diagnosis.reason.startswith("event_time: ")
    assert "epoch milliseconds" in diagnosis.hint
    assert "--event_time_unit=ms" in diagnosis.hint
    assert "2023-11-14T22:13:20Z" in diagnosis.hint


def test_misspelt_field_is_diagnosed_with_the_closest_field():
    """A field the records lack is named with the closest one they have and the flag."""
    letters = _letters(
        [{"event_time": 1_700_000_000_000, "amount": 1.5}] * 3,
        stage="validate",
        error="field 'amout' is missing (needed by sum:amout)",
    )
    diagnosis = diagnose(letters, {**VALUES, "metrics": "count,sum:amout"})
    assert "did you mean 'amount'?" in diagnosis.hint
    assert "--metrics" in diagnosis.hint


def test_output_path_that_is_a_file_is_refused_before_the_run(tmp_path):
    """An output folder that is a file, or lies under one, is refused naming the flag."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match=r"--output=.* is a file; expected a folder"):
        check_output_paths({"output": str(tmp_path / "file")})
    # A folder that cannot be created (its parent is a file): unwritable even for root.
    with pytest.raises(OutputPathError, match=r"--dead_letter=.* cannot be created: .* is a file"):
        check_output_paths({"dead_letter": str(tmp_path / "file" / "dlq")})


def test_summary_file_folders_are_made_before_the_run(tmp_path):
    """--summary_json into a missing folder gets the folder before the run, not an error after."""
    target = tmp_path / "a" / "b" / "summary.json"
    check_output_paths({}, {"summary_json": str(target)})
    assert target.parent.is_dir()


@pytest.mark.parametrize("name", pipelines.NAMES)
def test_every_template_offers_max_dead_letter_rate(name):
    """--max_dead_letter_rate is a parameter of every pipeline's Flex Template."""
    params = {p["name"]: p for p in metadata_for(name)["parameters"]}
    assert "max_dead_letter_rate" in params
    assert params["max_dead_letter_rate"]["isOptional"] is True
