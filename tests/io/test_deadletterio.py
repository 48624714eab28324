"""The dead-letter sink (JSON lines, Avro) and reading dead letters back for replay."""

from __future__ import annotations

import dataclasses
import json
import os

import apache_beam as beam
import fastavro
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window

from headwater.core.deadletter import dead_letter_for
from headwater.core.records import SourceRecord
from headwater.io.deadletterio import (
    BatchDeadLetterFiles,
    ReadDeadLetters,
    WriteDeadLetters,
)
from headwater.io.fileio import NoFilesMatchedError


def _letters():
    return [
        dead_letter_for(
            SourceRecord(b"\xff{not json", {"file": "a.jsonl", "line": 7}),
            stage="decode",
            error=ValueError("bad byte"),
        ),
        dead_letter_for(
            b'{"id": 1}',
            stage="late",
            error="window closed",
            event_time=1.5,
            window="1970-01-01T00:00:00Z/1970-01-01T00:01:00Z",
            lateness_ms=1200,
        ),
        dead_letter_for(
            SourceRecord(b"x", {"topic": "t", "partition": 2, "offset": 99}),
            stage="validate",
            error=KeyError("id"),
        ),
    ]


def _files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def _as_batch_writes(letters):
    """What batch files hold: the envelopes without their wall-clock failed_at."""
    return [dataclasses.replace(letter, failed_at="") for letter in letters]


@pytest.mark.parametrize(("file_format", "extension"), [("json", "jsonl"), ("avro", "avro")])
def test_dead_letters_round_trip_through_files(tmp_path, file_format, extension):
    """Written envelopes read back equal, every field and the payload bytes included."""
    letters = _letters()
    with TestPipeline(runner="FnApiRunner") as p:
        paths = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), format=file_format)
        assert_that(
            paths | beam.Map(os.path.basename),
            equal_to([f"dead_letters-00000-of-00001.{extension}"]),
            label="one file for a single batch pane",
        )
    with TestPipeline(runner="FnApiRunner") as p:
        back = p | ReadDeadLetters(str(tmp_path / f"*.{extension}"))
        assert_that(back, equal_to(_as_batch_writes(letters)), label="same envelopes")


def test_json_file_content_is_sorted_and_rewritten_identically(tmp_path):
    """Lines are sorted to_json envelopes; a re-run gives the same bytes and no extra files."""
    letters = _letters()

    def run():
        with TestPipeline(runner="FnApiRunner") as p:
            _ = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), num_shards=2)
        return _files(tmp_path)

    first, second = run(), run()
    assert first == second
    assert set(first) <= {"dead_letters-00000-of-00002.jsonl", "dead_letters-00001-of-00002.jsonl"}
    lines = [line for data in first.values() for line in data.decode().splitlines()]
    assert sorted(lines) == sorted(letter.to_json() for letter in _as_batch_writes(letters))
    for data in first.values():
        file_lines = data.decode().splitlines()
        assert file_lines == sorted(file_lines)


@pytest.mark.parametrize("file_format", ["json", "avro"])
def test_batch_files_of_letters_that_failed_at_other_times_are_byte_identical(
    tmp_path, file_format
):
    """Re-runs differ only in wall-clock failed_at; batch files leave it out, so bytes match."""
    earlier = [dataclasses.replace(x, failed_at="2024-01-01T00:00:00Z") for x in _letters()]
    later = [dataclasses.replace(x, failed_at="2025-06-30T12:34:56Z") for x in _letters()]
    for name, letters in (("a", earlier), ("b", later)):
        with TestPipeline(runner="FnApiRunner") as p:
            _ = (
                p
                | beam.Create(letters)
                | WriteDeadLetters(str(tmp_path / name), format=file_format)
            )
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert b"2024-01-01" not in b"".join(_files(tmp_path / "a").values())


@pytest.mark.parametrize("file_format", ["json", "avro"])
def test_batch_files_written_where_the_letters_are_equal_the_sinks(tmp_path, file_format):
    """BatchDeadLetterFiles (the columnar batch DoFn's writer) writes the files WriteDeadLetters
    writes in batch: the same names and bytes, letters in any order, failed_at left out."""
    letters = [
        dataclasses.replace(letter, failed_at=f"2026-01-0{i % 9 + 1}T00:00:00Z")
        for i, letter in enumerate(_letters() * 40)
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create(letters)
            | WriteDeadLetters(str(tmp_path / "sink"), format=file_format, num_shards=3)
        )
    files = BatchDeadLetterFiles(str(tmp_path / "here"), format=file_format, num_shards=3)
    for letter in letters[::-1]:
        files.add(letter)
    paths = files.write()
    assert sorted(os.path.basename(path) for path in paths) == sorted(_files(tmp_path / "here"))
    assert _files(tmp_path / "here") == _files(tmp_path / "sink")
    assert len(paths) >= 2  # the letters fall in more than one shard


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"output": " "}, "output=' ' must be a non-empty folder path"),
        ({"format": "csv"}, "format='csv' is not one of json, avro"),
        ({"num_shards": 0}, "num_shards=0 must be an integer >= 1"),
    ],
)
def test_batch_files_with_bad_settings_are_an_error_naming_them(tmp_path, settings, message):
    given = {"output": str(tmp_path), **settings}
    with pytest.raises(ValueError, match=message):
        BatchDeadLetterFiles(given.pop("output"), **given)


@pytest.mark.parametrize("file_format", ["json", "avro"])
def test_batch_letters_in_windows_and_in_lists_make_one_sorted_file_per_shard(
    tmp_path, file_format
):
    """2,500 letters (more than a shard's list holds) in fixed windows or in the global window,
    in either order: one file per shard, every letter once, sorted, the same bytes each way."""
    letters = [
        dead_letter_for(
            SourceRecord(b'{"n":%d}' % i, {"file": "f.jsonl", "line": i}),
            stage="validate",
            error=ValueError(f"bad {i % 7}"),
        )
        for i in range(2_500)
    ]

    def run(name, items, windowed):
        with TestPipeline(runner="FnApiRunner") as p:
            pcoll = p | beam.Create(items)
            if windowed:
                pcoll = (
                    pcoll
                    | beam.Map(lambda x: window.TimestampedValue(x, int(x.origin["line"])))
                    | beam.WindowInto(window.FixedWindows(60))
                )
            _ = pcoll | WriteDeadLetters(str(tmp_path / name), format=file_format, num_shards=2)
        return _files(tmp_path / name)

    windowed = run("windowed", letters, True)
    plain = run("plain", letters[::-1], False)
    assert windowed == plain
    extension = "jsonl" if file_format == "json" else "avro"
    assert sorted(plain) == [f"dead_letters-0000{i}-of-00002.{extension}" for i in (0, 1)]
    if file_format == "json":
        lines = [line for data in plain.values() for line in data.decode().splitlines()]
        assert sorted(lines) == sorted(letter.to_json(failed_at="") for letter in letters)
        for data in plain.values():
            assert data.decode().splitlines() == sorted(data.decode().splitlines())
    else:
        with TestPipeline(runner="FnApiRunner") as p:
            back = p | ReadDeadLetters(str(tmp_path / "plain" / "*.avro"))
            assert_that(back, equal_to(_as_batch_writes(letters)))


def test_batch_letters_under_a_trigger_still_make_one_pane_per_shard(tmp_path):
    """Letters arriving in the global window with a count trigger (an earlier step's) are
    re-windowed: one pane, one file, every letter, not a file per fired pane."""
    letters = _letters() * 5
    with TestPipeline(runner="FnApiRunner") as p:
        triggered = (
            p
            | beam.Create(letters)
            | beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.Repeatedly(trigger.AfterCount(2)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
            )
        )
        _ = triggered | WriteDeadLetters(str(tmp_path))
    files = _files(tmp_path)
    assert list(files) == ["dead_letters-00000-of-00001.jsonl"]
    lines = files["dead_letters-00000-of-00001.jsonl"].decode().splitlines()
    assert sorted(lines) == sorted(letter.to_json(failed_at="") for letter in letters)


def test_avro_dead_letter_file_has_bytes_payload_and_typed_origin(tmp_path):
    """The Avro schema keeps the payload as bytes and origin ints as longs."""
    letters = _letters()[:1]
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), format="avro")
    with (tmp_path / "dead_letters-00000-of-00001.avro").open("rb") as handle:
        [record] = list(fastavro.reader(handle))
    assert record["payload"] == b"\xff{not json"
    assert record["origin"] == {"file": "a.jsonl", "line": 7}


def test_streaming_dead_letters_are_written_per_pane_in_the_global_window(tmp_path):
    """Event-time windows and the watermark do not matter: count-triggered panes get own files."""
    letters = [
        dataclasses.replace(letter, failed_at="2024-01-01T00:00:00Z") for letter in _letters()
    ]
    stream = (
        TestStream()
        .advance_watermark_to(1_000)
        .add_elements(
            [window.TimestampedValue(letters[0], 10), window.TimestampedValue(letters[1], 20)]
        )
        .advance_watermark_to(5_000)
        .add_elements([window.TimestampedValue(letters[2], 30)])  # behind the watermark
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    paths = (
        p
        | stream
        | beam.WindowInto(window.FixedWindows(60))
        | WriteDeadLetters(str(tmp_path), max_records_per_file=2)
    )
    assert_that(
        paths | beam.Map(lambda path: os.path.basename(path).rsplit("-", 1)[0]),
        equal_to(["dead_letters-00000-of-00001", "dead_letters-00000-of-00001-pane-001"]),
        label="one file per pane",
    )
    p.run().wait_until_finish()
    files = _files(tmp_path)
    assert len(files) == 2
    back = [json.loads(line) for data in files.values() for line in data.decode().splitlines()]
    assert sorted(row["stage"] for row in back) == ["decode", "late", "validate"]
    assert {row["failed_at"] for row in back} == {"2024-01-01T00:00:00Z"}  # streaming keeps it


def test_malformed_json_row_fails_naming_file_and_line(tmp_path):
    """A line that is not an envelope raises an error with the file and the line number."""
    path = tmp_path / "dl.jsonl"
    path.write_text(_letters()[0].to_json() + "\n\n" + '{"stage": "x"}\n')
    p = TestPipeline(runner="FnApiRunner")
    _ = p | ReadDeadLetters(str(path))
    with pytest.raises(Exception, match=r"dl\.jsonl line 3: not a dead letter"):
        p.run().wait_until_finish()


def test_avro_file_of_other_records_fails_naming_file_and_record(tmp_path):
    """An Avro file that does not hold envelopes raises naming the file and record number."""
    path = tmp_path / "other.avro"
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "long"}]}
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(schema), [{"a": 1}])
    p = TestPipeline(runner="FnApiRunner")
    _ = p | ReadDeadLetters(str(path))
    with pytest.raises(Exception, match=r"other\.avro record 1: not a dead letter"):
        p.run().wait_until_finish()


def test_reading_a_pattern_matching_nothing_names_it(tmp_path):
    """ReadDeadLetters on an empty folder raises NoFilesMatchedError naming the pattern."""
    p = TestPipeline(runner="FnApiRunner")
    with pytest.raises(NoFilesMatchedError, match="nothing-here"):
        _ = p | ReadDeadLetters(str(tmp_path / "nothing-here*.jsonl"))


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"output": ""}, "output=''"),
        ({"output": "o", "format": "csv"}, "format='csv'"),
        ({"output": "o", "num_shards": 0}, "num_shards=0"),
        ({"output": "o", "max_records_per_file": -1}, "max_records_per_file=-1"),
        ({"output": "o", "max_delay": "soon"}, "max_delay"),
        ({"output": "o", "max_delay": 0}, "max_delay"),
    ],
)
def test_write_validation_errors_name_the_bad_value(kwargs, bad):
    """Invalid sink options raise ValueError naming the value."""
    output = kwargs.pop("output")
    with pytest.raises(ValueError, match=bad):
        WriteDeadLetters(output, **kwargs)


def test_read_validation_error_names_the_bad_pattern():
    """An empty pattern is refused with its value in the message."""
    with pytest.raises(ValueError, match="pattern=''"):
        ReadDeadLetters("")


def test_streaming_pane_fires_after_max_delay_of_processing_time(tmp_path):
    """A shard holding fewer than max_records_per_file envelopes is flushed after max_delay."""
    letters = _letters()
    stream = (
        TestStream()
        .add_elements([letters[0]])
        .advance_processing_time(61)
        .add_elements([letters[1]])
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    paths = p | stream | WriteDeadLetters(str(tmp_path), max_records_per_file=100, max_delay="60s")
    assert_that(
        paths | beam.Map(lambda path: os.path.basename(path).rsplit("-", 1)[0]),
        equal_to(["dead_letters-00000-of-00001", "dead_letters-00000-of-00001-pane-001"]),
        label="a pane per delay, then the rest at the end",
    )
    p.run().wait_until_finish()


def _stream_letters_into(folder, letters):
    """One streaming run (TestStream) writing ``letters`` as a single pane into ``folder``."""
    stream = TestStream().add_elements(letters).advance_watermark_to_infinity()
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    _ = p | stream | WriteDeadLetters(str(folder), max_records_per_file=100)
    p.run().wait_until_finish()


def test_restarted_streaming_job_never_overwrites_or_repeats_dead_letter_files(tmp_path):
    """Same letters failing later (a restart re-read them) keep the first file; others are new."""
    first = [dataclasses.replace(d, failed_at="2024-01-01T00:00:00Z") for d in _letters()]
    _stream_letters_into(tmp_path, first)
    written = _files(tmp_path)
    [name] = written
    assert name.startswith("dead_letters-00000-of-00001-")
    assert name.endswith(".jsonl")
    again = [dataclasses.replace(d, failed_at="2024-01-01T00:05:00Z") for d in reversed(first)]
    _stream_letters_into(tmp_path, again)
    assert _files(tmp_path) == written  # the same letters: the same name, the first bytes kept
    _stream_letters_into(tmp_path, again[:2])  # another pane (other letters): its own file
    after = _files(tmp_path)
    assert len(after) == 2
    assert after[name] == written[name]
    assert not [n for n in after if n.startswith(".tmp-")]
