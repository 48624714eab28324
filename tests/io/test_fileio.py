"""Reading JSON lines / Avro / Parquet from globs, and writing Parquet/Avro files per window."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import FileMetadata, FileSystem
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window

from headwater.io.fileio import (
    SUCCESS_MARKER,
    NoFilesMatchedError,
    OutputFolderNotEmptyError,
    ReadFromFiles,
    WriteWindowedFiles,
    file_size,
    list_output_files,
    match_files,
    prepare_output_folders,
    stable_shard,
    write_atomically,
    write_once,
    write_success_marker,
)

UTC = dt.timezone.utc
AVRO_SCHEMA = {
    "type": "record",
    "name": "Event",
    "fields": [{"name": "id", "type": "string"}, {"name": "n", "type": "long"}],
}


def _event_rows(count: int = 12) -> list[dict]:
    """Rows spread over three 60 s windows, with mixed int/float amounts and some None notes."""
    rows = []
    for i in range(count):
        rows.append(
            {
                "id": f"e{i:02d}",
                "event_time": dt.datetime(2023, 11, 14, 22, 13, tzinfo=UTC)
                + dt.timedelta(seconds=15 * i),
                "amount": i if i % 2 else i + 0.5,
                "note": None if i % 3 == 0 else f"n{i}",
            }
        )
    return rows


def _windowed(p, rows, *, window_fn=None):
    timestamped = (
        p
        | beam.Create(rows)
        | beam.Map(lambda r: window.TimestampedValue(r, r["event_time"].timestamp()))
    )
    return timestamped | beam.WindowInto(window_fn or window.FixedWindows(60))


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _read_back(path: Path, file_format: str) -> list[dict]:
    if file_format == "parquet":
        return pq.read_table(path).to_pylist()
    with path.open("rb") as handle:
        return list(fastavro.reader(handle))


def _write_avro(path: Path, records: list[dict]) -> None:
    with path.open("wb") as handle:
        fastavro.writer(handle, fastavro.parse_schema(AVRO_SCHEMA), records)


def _write_parquet(path: Path, records: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(records), path)


# ------------------------------------------------------------------------------------------ read


def test_json_lines_become_source_records_with_file_and_line(tmp_path):
    """CRLF and LF endings are stripped, blank lines skipped, lines numbered from 1 per file."""
    (tmp_path / "a.jsonl").write_bytes(b'{"x": 1}\r\n\r\n  \n{"x": 2}\n{"x": 3}')
    (tmp_path / "b.jsonl").write_bytes(b'\xef\xbb\xbf{"y": 1}\n')
    (tmp_path / "ignored.txt").write_bytes(b"not matched\n")
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(tmp_path / "*.jsonl"), format="json")
        assert_that(
            read.main | beam.Map(lambda r: (r.payload, r.origin["file"], r.origin["line"])),
            equal_to(
                [
                    (b'{"x": 1}', a, 1),
                    (b'{"x": 2}', a, 4),
                    (b'{"x": 3}', a, 5),
                    (b'{"y": 1}', b, 1),
                ]
            ),
            label="records with origins",
        )
        assert_that(read.dead_letter, equal_to([]), label="no dead letters")


@pytest.mark.parametrize(
    ("file_format", "write"), [("avro", _write_avro), ("parquet", _write_parquet)]
)
def test_avro_and_parquet_become_decoded_records_with_index(tmp_path, file_format, write):
    """Every record of every matched file arrives as a dict with its file and 0-based index."""
    write(tmp_path / f"a.{file_format}", [{"id": "a0", "n": 1}, {"id": "a1", "n": 2}])
    write(tmp_path / f"b.{file_format}", [{"id": "b0", "n": 3}])
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(tmp_path / f"*.{file_format}"), format=file_format)
        assert_that(
            read.main
            | beam.Map(
                lambda r: (
                    r.record["id"],
                    r.record["n"],
                    Path(r.origin["file"]).name,
                    r.origin["record"],
                )
            ),
            equal_to(
                [
                    ("a0", 1, f"a.{file_format}", 0),
                    ("a1", 2, f"a.{file_format}", 1),
                    ("b0", 3, f"b.{file_format}", 0),
                ]
            ),
            label="decoded records",
        )


def test_parquet_is_read_in_record_batches_across_row_groups(tmp_path):
    """A Parquet file with many row groups is read completely, in order."""
    table = pa.table({"id": [f"r{i}" for i in range(25_000)], "n": list(range(25_000))})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=3_000)
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(tmp_path / "big.parquet"), format="parquet")
        assert_that(
            read.main | beam.Map(lambda r: (r.origin["record"], r.record["n"])),
            equal_to([(i, i) for i in range(25_000)]),
            label="all rows with their index",
        )


@pytest.mark.parametrize(
    ("file_format", "write"), [("avro", _write_avro), ("parquet", _write_parquet)]
)
def test_corrupt_file_becomes_one_dead_letter_and_other_files_are_read(
    tmp_path, file_format, write
):
    """A file that is not Avro/Parquet yields one 'read' dead letter; good files are still read."""
    write(tmp_path / f"good.{file_format}", [{"id": "g0", "n": 1}])
    (tmp_path / f"bad.{file_format}").write_bytes(b"this is not a binary file at all")
    bad = str(tmp_path / f"bad.{file_format}")
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(tmp_path / f"*.{file_format}"), format=file_format)
        assert_that(read.main | beam.Map(lambda r: r.record["id"]), equal_to(["g0"]), label="good")
        assert_that(
            read.dead_letter
            | beam.Map(lambda d: (d.stage, d.payload, d.origin["file"], bad in d.error_message)),
            equal_to([("read", b"", bad, True)]),
            label="one dead letter for the bad file",
        )


def test_truncated_avro_keeps_records_before_the_damage(tmp_path):
    """Records before a truncation are emitted, then one dead letter at the first lost index."""
    path = tmp_path / "t.avro"
    with path.open("wb") as handle:
        fastavro.writer(
            handle,
            fastavro.parse_schema(AVRO_SCHEMA),
            [{"id": f"r{i}", "n": i} for i in range(2_000)],
            sync_interval=200,
        )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(path), format="avro")
        counted = read.main | beam.combiners.Count.Globally()
        first_lost = read.dead_letter | beam.Map(lambda d: d.origin["record"])
        assert_that(
            (counted, first_lost)
            | beam.Flatten()
            | beam.combiners.ToList()
            | beam.Map(
                lambda values: len(values) == 2 and values[0] == values[1] and values[0] > 0
            ),
            equal_to([True]),
            label="records before the damage, then one dead letter at the next index",
        )


def test_pattern_matching_nothing_fails_at_construction_naming_it(tmp_path):
    """A local pattern that matches no file raises NoFilesMatchedError naming the pattern."""
    pattern = str(tmp_path / "missing-*.jsonl")
    p = TestPipeline(runner="FnApiRunner")
    with pytest.raises(NoFilesMatchedError, match="missing-"):
        _ = p | ReadFromFiles(pattern, format="json")


def test_writer_temp_files_are_never_read(tmp_path):
    """A writer's '.tmp-*' file in the folder is not matched by a read pattern."""
    (tmp_path / "a.jsonl").write_bytes(b'{"x": 1}\n')
    (tmp_path / ".tmp-a.jsonl-123").write_bytes(b'{"x": 2}\n')
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(str(tmp_path / "*"), format="json")
        assert_that(read.main | beam.Map(lambda r: r.payload), equal_to([b'{"x": 1}']), label="a")


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"pattern": "", "format": "json"}, "pattern=''"),
        ({"pattern": "x/*", "format": "csv"}, "format='csv'"),
    ],
)
def test_read_validation_errors_name_the_bad_value(kwargs, bad):
    """Invalid reader options raise ValueError naming the value."""
    pattern = kwargs.pop("pattern")
    with pytest.raises(ValueError, match=bad):
        ReadFromFiles(pattern, **kwargs)


# ----------------------------------------------------------------------------------------- write


@pytest.mark.parametrize("file_format", ["parquet", "avro"])
def test_rows_are_written_per_window_and_shard_and_read_back_equal(tmp_path, file_format):
    """Each window gets one file per shard holding exactly its rows, under deterministic names."""
    rows = _event_rows()
    out = tmp_path / "out"
    with TestPipeline(runner="FnApiRunner") as p:
        paths = _windowed(p, rows) | WriteWindowedFiles(str(out), format=file_format, num_shards=2)
        assert_that(
            paths | beam.Map(lambda path: os.path.relpath(path, out)),
            equal_to(_expected_names(rows, file_format)),
            label="paths",
        )
    written = _files(out)
    assert sorted(written) == sorted(_expected_names(rows, file_format))
    for name in written:
        window_start = dt.datetime.fromisoformat(
            name.split("/")[0].split("=")[1].replace("Z", "+00:00")
        )
        shard = int(name.split("/")[1].split("-")[1])
        expected = [
            r
            for r in rows
            if window_start <= r["event_time"] < window_start + dt.timedelta(seconds=60)
            and stable_shard(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str), 2)
            == shard
        ]
        back = _read_back(out / name, file_format)
        assert sorted(back, key=lambda r: r["id"]) == [
            {**r, "amount": float(r["amount"])} for r in sorted(expected, key=lambda r: r["id"])
        ]


def _expected_names(rows: list[dict], file_format: str) -> list[str]:
    names = set()
    for r in rows:
        start = r["event_time"].replace(second=0)
        shard = stable_shard(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str), 2)
        names.add(
            f"window_start={start.strftime('%Y-%m-%dT%H:%M:%SZ')}/"
            f"part-{shard:05d}-of-00002.{file_format}"
        )
    return sorted(names)


def test_inferred_parquet_schema_has_utc_micros_doubles_and_nullables(tmp_path):
    """Datetimes become timestamp[us, UTC], int/float mixes double, None makes a field nullable."""
    out = tmp_path / "out"
    with TestPipeline(runner="FnApiRunner") as p:
        _ = _windowed(p, _event_rows(4), window_fn=window.FixedWindows(3600)) | WriteWindowedFiles(
            str(out)
        )
    [path] = out.rglob("*.parquet")
    schema = pq.read_schema(path)
    assert schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert schema.field("amount").type == pa.float64()
    assert schema.field("note").nullable
    assert not schema.field("id").nullable
    assert schema.names == ["id", "event_time", "amount", "note"]


def test_inferred_avro_schema_uses_timestamp_micros_and_null_unions(tmp_path):
    """Avro files carry timestamp-micros for datetimes and ["null", T] for fields with None."""
    out = tmp_path / "out"
    with TestPipeline(runner="FnApiRunner") as p:
        _ = _windowed(p, _event_rows(4), window_fn=window.FixedWindows(3600)) | WriteWindowedFiles(
            str(out), format="avro"
        )
    [path] = out.rglob("*.avro")
    with path.open("rb") as handle:
        fields = {f["name"]: f["type"] for f in fastavro.reader(handle).writer_schema["fields"]}
    assert fields["event_time"] == {"type": "long", "logicalType": "timestamp-micros"}
    assert fields["amount"] == "double"
    assert fields["note"] == ["null", "string"]


@pytest.mark.parametrize("file_format", ["parquet", "avro"])
def test_rerun_rewrites_byte_identical_files_and_leaves_no_extra_or_temp_files(
    tmp_path, file_format
):
    """Running the same pipeline twice into one folder gives the same files, byte for byte."""
    out = tmp_path / "out"

    def run():
        with TestPipeline(runner="FnApiRunner") as p:
            _ = _windowed(p, _event_rows()) | WriteWindowedFiles(
                str(out), format=file_format, num_shards=3
            )
        return _files(out)

    first = run()
    second = run()
    assert first == second
    assert first  # something was written
    assert not [name for name in first if ".tmp-" in name]


def test_a_restart_rereading_part_of_a_written_window_keeps_the_earlier_file(tmp_path):
    """A second job's pane of a window already written (other rows) never replaces its file."""
    out = tmp_path / "out"
    rows = _event_rows()  # windows 22:13, 22:14, 22:15

    def run(part):
        with TestPipeline(runner="FnApiRunner") as p:
            _ = _windowed(p, part) | WriteWindowedFiles(str(out), num_shards=2)
        return _files(out)

    first = run(rows[:8])  # the first job wrote 22:13 and 22:14 whole
    assert {name.split("/")[0][-9:-4] for name in first} == {"22:13", "22:14"}
    second = run(rows[6:])  # a restart re-read part of 22:14 and reads 22:15 for the first time
    assert {name: second[name] for name in first} == first  # kept, byte for byte
    new = sorted(set(second) - set(first))
    assert new
    assert all(name.startswith("window_start=2023-11-14T22:15:00Z/") for name in new)
    back = sorted(r["id"] for name in second for r in pq.read_table(out / name).to_pylist())
    assert back == [r["id"] for r in rows]  # every row once: none lost, none twice


@pytest.mark.parametrize("folder", ["local", "hwmem://b/once"])
def test_write_once_is_a_no_op_for_the_same_bytes_and_keeps_other_bytes_out(tmp_path, folder):
    """write_once never replaces a file: same bytes -> True (no-op), other bytes -> False, kept."""
    _MemoryFileSystem.files.clear()
    path = str(tmp_path / "w" / "f.bin") if folder == "local" else f"{folder}/w/f.bin"
    assert write_once(path, b"first")
    assert write_once(path, b"first")
    assert not write_once(path, b"other")
    with beam.io.filesystems.FileSystems.open(path) as handle:
        assert handle.read() == b"first"
    siblings = list_output_files(str(tmp_path / "w") if folder == "local" else f"{folder}/w")
    assert [os.path.basename(name) for name in siblings] == ["f.bin"]


def test_listing_keeps_temporary_files_unless_asked_not_to(tmp_path):
    """A crashed writer's .tmp-* file counts for 'is this folder empty', not as an output."""
    (tmp_path / "w").mkdir()
    for name in ("part.parquet", ".tmp-part.parquet-0a1b", "_SUCCESS"):
        (tmp_path / "w" / name).write_bytes(b"x")
    names = [os.path.basename(f) for f in list_output_files(str(tmp_path))]
    assert names == [".tmp-part.parquet-0a1b", "part.parquet"]
    outputs = list_output_files(str(tmp_path), temps=False)
    assert [os.path.basename(f) for f in outputs] == ["part.parquet"]


def test_a_local_listing_finds_the_files_os_walk_finds(tmp_path):
    """Nested folders (a session run's two levels), links to a file and to a folder (listed as
    a file / neither listed nor followed, as os.walk does), a missing folder: no files."""
    root = tmp_path / "out"
    for relative in ("a/b/c.parquet", "a/b2/d.parquet", "a/e.parquet", "f.jsonl", "g/h/i/j"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"x")
    (root / "g" / "empty").mkdir()
    (root / "to-folder").symlink_to(root / "a")
    (root / "g" / "to-file").symlink_to(root / "f.jsonl")
    walked = sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names)
    assert list_output_files(str(root)) == walked
    assert len(walked) == 6
    assert list_output_files(str(tmp_path / "missing")) == []


def test_folders_made_ahead_are_written_into_and_made_again_if_gone(tmp_path, monkeypatch):
    """make_local_folders makes every folder once, parents first; a write into a folder that is
    there does not try to make it (no call), yet makes it when it is gone."""
    from headwater.io import fileio

    paths = [str(tmp_path / f"s={i}" / f"e={i}" / "part.parquet") for i in range(3)]
    calls = []
    mkdir = os.mkdir
    monkeypatch.setattr(os, "mkdir", lambda d, *a: (calls.append(d), mkdir(d, *a)))
    assert fileio.make_local_folders(paths) is True
    monkeypatch.setattr(os, "mkdir", mkdir)
    assert len(calls) == 6  # each folder once, parents first: none tried before its parent
    assert all((tmp_path / f"s={i}" / f"e={i}").is_dir() for i in range(3))
    made = []
    real = fileio._make_folder
    monkeypatch.setattr(fileio, "_make_folder", lambda d: (made.append(d), real(d)))
    write_atomically(paths[0], b"a")
    assert made == []
    (tmp_path / "s=1" / "e=1").rmdir()
    write_atomically(paths[1], b"b")
    assert made == [str(tmp_path / "s=1" / "e=1")]
    assert [Path(p).read_bytes() for p in paths[:2]] == [b"a", b"b"]
    assert fileio.make_local_folders(["gs://bucket/x/part.parquet"]) is False


def test_atomic_writes_make_missing_folders_at_any_depth_and_fail_on_a_file_in_the_way(tmp_path):
    """A new folder, a new folder in a new folder, an existing folder: all written; a file
    where the folder should be fails the write, naming the path."""
    for relative in ("a/f.bin", "b/c/d/f.bin", "a/g.bin"):
        write_atomically(str(tmp_path / relative), relative.encode())
        assert (tmp_path / relative).read_bytes() == relative.encode()
    (tmp_path / "blocked").write_bytes(b"a file")
    with pytest.raises(OSError, match="blocked"):
        write_atomically(str(tmp_path / "blocked" / "f.bin"), b"x")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "blocked",
        "f.bin",
        "f.bin",
        "g.bin",
    ]


def test_write_once_without_hard_links_still_keeps_an_existing_file(tmp_path, monkeypatch):
    """Where hard links are refused, write_once checks the name and renames; never clobbers."""

    def no_links(source, target):
        raise PermissionError(1, "Operation not permitted", source)

    monkeypatch.setattr(os, "link", no_links)
    path = str(tmp_path / "f.bin")
    assert write_once(path, b"first")
    assert not write_once(path, b"other")
    assert (tmp_path / "f.bin").read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_given_schema_is_used_for_every_file(tmp_path):
    """A pyarrow schema passed as schema= is the schema of the written files."""
    schema = pa.schema([("id", pa.string()), ("n", pa.int32())])
    out = tmp_path / "out"
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | beam.Create([{"id": "a", "n": 1}]) | WriteWindowedFiles(str(out), schema=schema)
    [path] = out.rglob("*.parquet")
    assert path.parent.name == "window=global"
    assert pq.read_schema(path).field("n").type == pa.int32()


def _streaming_panes(accumulation_mode):
    """An early pane after two rows, then one more row in the on-time pane of window [0, 60)."""
    base = dt.datetime(1970, 1, 1, tzinfo=UTC)
    stream = (
        TestStream()
        .advance_watermark_to(0)
        .add_elements(
            [
                window.TimestampedValue({"id": "a", "t": base}, 10),
                window.TimestampedValue({"id": "b", "t": base}, 20),
            ]
        )
        .add_elements([window.TimestampedValue({"id": "c", "t": base}, 30)])
        .advance_watermark_to(61)
        .advance_watermark_to_infinity()
    )
    windowing = beam.WindowInto(
        window.FixedWindows(60),
        trigger=trigger.AfterWatermark(early=trigger.AfterCount(2)),
        accumulation_mode=accumulation_mode,
        allowed_lateness=0,
    )
    return stream, windowing


@pytest.mark.parametrize(
    "accumulation_mode",
    [trigger.AccumulationMode.DISCARDING, trigger.AccumulationMode.ACCUMULATING],
)
def test_streaming_early_and_on_time_panes_write_distinct_files(tmp_path, accumulation_mode):
    """Each pane of a window gets its own file; each row is written once even when accumulating."""
    stream, windowing = _streaming_panes(accumulation_mode)
    out = tmp_path / "out"
    p = TestPipeline(runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True))
    paths = p | stream | windowing | WriteWindowedFiles(str(out))
    assert_that(
        paths | beam.Map(lambda path: os.path.relpath(path, out)),
        equal_to(
            [
                "window_start=1970-01-01T00:00:00Z/part-00000-of-00001.parquet",
                "window_start=1970-01-01T00:00:00Z/part-00000-of-00001-pane-001.parquet",
            ]
        ),
        label="one file per pane",
    )
    p.run().wait_until_finish()
    folder = out / "window_start=1970-01-01T00:00:00Z"
    early = [r["id"] for r in pq.read_table(folder / "part-00000-of-00001.parquet").to_pylist()]
    on_time = [
        r["id"] for r in pq.read_table(folder / "part-00000-of-00001-pane-001.parquet").to_pylist()
    ]
    assert (early, on_time) == (["a", "b"], ["c"])


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"output": ""}, "output=''"),
        ({"output": "o", "format": "csv"}, "format='csv'"),
        ({"output": "o", "num_shards": 0}, "num_shards=0"),
        ({"output": "o", "num_shards": True}, "num_shards=True"),
        ({"output": "o", "prefix": "a/b"}, "prefix='a/b'"),
        ({"output": "o", "prefix": ".hidden"}, "prefix='.hidden'"),
        ({"output": "o", "schema": {"type": "record"}}, "schema="),
        ({"output": "o", "format": "avro", "schema": {"type": "nope"}}, "schema="),
    ],
)
def test_write_validation_errors_name_the_bad_value(kwargs, bad):
    """Invalid writer options raise ValueError naming the value."""
    output = kwargs.pop("output")
    with pytest.raises(ValueError, match=bad):
        WriteWindowedFiles(output, **kwargs)


def test_stable_shard_is_the_same_in_processes_with_different_hash_seeds():
    """Shards do not depend on Python's per-process string hash salt."""
    code = (
        "from headwater.core.shards import stable_shard;"
        "print([stable_shard(f'row{i}', 5) for i in range(50)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs == {str([stable_shard(f"row{i}", 5) for i in range(50)]) + "\n"}


def _used_folder(folder: Path) -> Path:
    (folder / "window_start=2023-11-14T22:13:00Z").mkdir(parents=True)
    (folder / "window_start=2023-11-14T22:13:00Z" / "part-00000-of-00002.parquet").write_bytes(b"x")
    (folder / ".tmp-part-00001-of-00002.parquet-abc").write_bytes(b"partial")
    return folder


def test_a_non_empty_output_folder_is_refused_naming_it_and_the_flag(tmp_path):
    """A folder holding any file (even a writer's temp file) is refused; empty or missing pass."""
    used = _used_folder(tmp_path / "out")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    prepare_output_folders([str(tmp_path / "empty"), str(tmp_path / "missing")], overwrite=False)
    with pytest.raises(
        OutputFolderNotEmptyError, match=r"'.*out' is not empty \(2 file.*--overwrite"
    ):
        prepare_output_folders([str(tmp_path / "empty"), str(used)], overwrite=False)
    assert len(list(used.rglob("*.parquet"))) == 1


def test_overwrite_deletes_every_file_of_the_folder_and_keeps_the_folder(tmp_path):
    """overwrite=True leaves the folder empty: no shard, window folder or temp file survives."""
    used = _used_folder(tmp_path / "out")
    (used / SUCCESS_MARKER).write_text("{}")
    prepare_output_folders([str(used), None, str(used)], overwrite=True)
    assert used.is_dir()
    assert list(used.iterdir()) == []


def test_overwrite_refuses_a_folder_holding_the_input_or_the_current_directory(
    tmp_path, monkeypatch
):
    """overwrite never deletes the run's input files or the folder the run is started from."""
    used = _used_folder(tmp_path / "out")
    (used / "in.jsonl").write_text("{}\n")
    with pytest.raises(OutputFolderNotEmptyError, match=r"out/\*\.jsonl. \(an input"):
        prepare_output_folders([str(used)], overwrite=True, keep=[str(used / "*.jsonl")])
    monkeypatch.chdir(used / "window_start=2023-11-14T22:13:00Z")
    with pytest.raises(OutputFolderNotEmptyError, match="current directory"):
        prepare_output_folders([str(used)], overwrite=True)
    assert (used / "in.jsonl").exists()


def test_success_marker_lists_the_files_relative_and_is_not_read_as_input(tmp_path):
    """_SUCCESS holds the summary and the folder's files; input globs never match it."""
    folder = tmp_path / "out"
    (folder / "w").mkdir(parents=True)
    (folder / "w" / "part.jsonl").write_text("{}\n")
    path = write_success_marker(
        str(folder), {"records_in": 3, "output": 3}, [str(folder / "w" / "part.jsonl")]
    )
    assert Path(path) == folder / SUCCESS_MARKER
    assert json.loads(Path(path).read_text()) == {
        "records_in": 3,
        "output": 3,
        "files": ["w/part.jsonl"],
    }
    with pytest.raises(NoFilesMatchedError):
        match_files(str(folder / "*"))
    assert match_files(str(folder / "**")) == [str(folder / "w" / "part.jsonl")]


class _MemoryFileSystem(FileSystem):
    """A Beam FileSystem in memory under ``hwmem://``: a remote store (no folders, prefixes)."""

    files: dict[str, bytes] = {}

    @classmethod
    def scheme(cls):
        return "hwmem"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        for path, data in sorted(self.files.items()):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data))

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        store = self.files

        class _Writer(io.BytesIO):
            def close(self):
                store[path] = self.getvalue()
                super().close()

        return _Writer()

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        return io.BytesIO(self.files[path])

    def copy(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names, strict=True):
            self.files[destination] = self.files[source]

    def rename(self, source_file_names, destination_file_names):
        for source, destination in zip(source_file_names, destination_file_names, strict=True):
            self.files[destination] = self.files.pop(source)

    def exists(self, path):
        return path in self.files

    def size(self, path):
        return len(self.files[path])

    def last_updated(self, path):
        return 0.0

    def checksum(self, path):
        return str(len(self.files[path]))

    def metadata(self, path):
        return FileMetadata(path, len(self.files[path]))

    def delete(self, paths):
        for path in paths:
            del self.files[path]


def test_remote_folders_are_refused_emptied_and_marked_through_beam_filesystems():
    """hwmem:// (any FileSystems scheme, as gs://): refusal, --overwrite and _SUCCESS work."""
    store = _MemoryFileSystem.files
    store.clear()
    store["hwmem://b/out/window_start=x/part-00000-of-00001.parquet"] = b"old"
    store["hwmem://b/outside/keep.txt"] = b"other"
    with pytest.raises(OutputFolderNotEmptyError, match="hwmem://b/out' is not empty"):
        prepare_output_folders(["hwmem://b/out"], overwrite=False)
    prepare_output_folders(["hwmem://b/out/", "hwmem://b/new"], overwrite=True)
    assert list(store) == ["hwmem://b/outside/keep.txt"]
    store["hwmem://b/out/w/part.parquet"] = b"new"
    marker = write_success_marker("hwmem://b/out", {"output": 1}, ["hwmem://b/out/w/part.parquet"])
    assert marker == "hwmem://b/out/_SUCCESS"
    assert json.loads(store[marker]) == {"output": 1, "files": ["w/part.parquet"]}
    assert list_output_files("hwmem://b/out") == ["hwmem://b/out/w/part.parquet"]
    assert not [p for p in store if ".tmp-" in p]


def test_each_session_gets_its_own_folder_whatever_other_keys_do(tmp_path):
    """Sessions of two keys that overlap are written under their own bounds, not their union.

    Key ``a`` is active from 0 s to 420 s (one session, gap 300 s); key ``b`` has one record at
    100 s, inside ``a``'s session, and a second session of one record at 1000 s, when ``b`` alone
    is active. A union per shard would give one folder [0 s, 720 s) holding both keys.
    """
    events = [("a", 0), ("a", 210), ("a", 420), ("b", 100), ("b", 1000)]
    out = tmp_path / "out"
    with TestPipeline(runner="FnApiRunner") as p:
        _ = (
            p
            | beam.Create(events)
            | beam.MapTuple(lambda key, t: window.TimestampedValue((key, 1), t))
            | beam.WindowInto(window.Sessions(300))
            | beam.CombinePerKey(sum)
            | beam.MapTuple(lambda key, n: {"key": key, "n": n})
            | WriteWindowedFiles(str(out), format="avro")
        )
    folders = {
        str(path.parent.relative_to(out)): [r["key"] for r in fastavro.reader(path.open("rb"))]
        for path in out.rglob("*.avro")
    }
    assert folders == {
        "window_start=1970-01-01T00:00:00Z/window_end=1970-01-01T00:12:00Z": ["a"],
        "window_start=1970-01-01T00:01:40Z/window_end=1970-01-01T00:06:40Z": ["b"],
        "window_start=1970-01-01T00:16:40Z/window_end=1970-01-01T00:21:40Z": ["b"],
    }


def test_file_size_is_the_bytes_of_the_file_and_zero_when_it_cannot_be_told(tmp_path):
    """The columnar reader's sizing hint: a file's bytes; 0 for a path that is not there."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a": 1}\n' * 7)
    assert file_size(str(path)) == 63
    assert file_size(str(tmp_path / "missing.jsonl")) == 0


def test_temp_names_are_unique_in_a_process_and_across_forked_processes():
    """A writer's temp names: a random token per process and a counter, never the same twice;
    a forked process (a worker) draws a token of its own."""
    import multiprocessing

    from headwater.io import fileio

    names = [fileio._temp_suffix() for _ in range(10_000)]
    assert len(set(names)) == len(names)
    token = names[0].split("-")[0]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        child = pool.apply(fileio._temp_suffix)
    assert child.split("-")[0] != token
