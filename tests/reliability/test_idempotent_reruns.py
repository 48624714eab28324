"""Idempotent re-runs: a backfill re-run is byte-identical; a dead-letter replay adds up.

A backfill is ``windowed_metrics --source=files`` in batch: re-running it over the same files
rewrites the same file names with the same bytes. Replaying dead letters after the cause is
fixed (here: the metrics no longer need the ``amount`` field that some records had as a string)
moves them into the output; the records still broken (invalid JSON) are dead letters again, and
across the two runs every input record is counted exactly once.

Output folders of ``headwater run``: a re-run into a used folder is refused unless ``--overwrite``,
which replaces the folder's contents (no shard of the earlier run survives); a finished run
leaves ``_SUCCESS`` (its counts and files) in each folder, and its summary counts only its files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _reliability import (
    METRICS_FLAGS,
    T0_MS,
    dead_letters,
    digests,
    event,
    line,
    metric_rows,
    payload_of,
    run_built,
)

from headwater.io.fileio import OutputFolderNotEmptyError
from headwater.pipelines import replay_dead_letters, windowed_metrics
from headwater.testing.assertions import assert_accounting


def _write_inputs(folder: Path) -> list[bytes]:
    folder.mkdir()
    lines = []
    for part in range(3):
        chunk = [line(event(part * 100 + n, user=f"u{n % 4}")) for n in range(100)]
        chunk += [chunk[5], b'{"broken', line(event(part * 100 + 7, amount="n/a"))]
        (folder / f"part-{part}.jsonl").write_bytes(b"\n".join(chunk) + b"\n")
        lines += chunk
    return lines


def _backfill_flags(tmp_path: Path) -> list[str]:
    """Writes the inputs under ``tmp_path/in``; the flags of a backfill over them."""
    _write_inputs(tmp_path / "in")
    return [
        *METRICS_FLAGS,
        "--source=files",
        f"--input={tmp_path / 'in' / '*.jsonl'}",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
    ]


def test_backfill_rerun_over_the_same_files_is_byte_identical(tmp_path):
    """Two backfills over the same files write the same files with the same bytes."""
    flags = _backfill_flags(tmp_path)
    first = run_built(windowed_metrics, flags)
    # Per file: 100 good, 1 copy (duplicate), 1 invalid JSON and 1 'n/a' amount (dead letters).
    assert_accounting(first, records_in=309, output=300, duplicate=3, dead_letter=6, late=0)
    before = digests(tmp_path / "out")
    assert len(before) >= 2
    second = run_built(windowed_metrics, flags)
    assert_accounting(second, records_in=309, output=300, duplicate=3, dead_letter=6)
    assert digests(tmp_path / "out") == before


def test_replaying_fixed_dead_letters_moves_them_into_output_and_totals_add_up(tmp_path):
    """After the cause is fixed, replayed letters reach the output; the totals still add up."""
    good = [line(event(n, user="u1")) for n in range(50)]
    string_amounts = [line(event(n, user="u2", amount=f"{n}.5")) for n in range(100, 110)]
    broken = [b'{"event_id": "x1"', b"\xff\xfe"]
    inputs = tmp_path / "in.jsonl"
    inputs.write_bytes(b"\n".join(good + string_amounts + broken) + b"\n")
    first = run_built(
        windowed_metrics,
        [
            *METRICS_FLAGS,
            "--source=files",
            f"--input={inputs}",
            f"--output={tmp_path / 'out'}",
            f"--dead_letter={tmp_path / 'dlq'}",
        ],
    )
    run1 = assert_accounting(first, records_in=62, output=50, dead_letter=12, duplicate=0, late=0)
    assert sorted(payload_of(x) for x in dead_letters(tmp_path / "dlq")) == sorted(
        string_amounts + broken
    )
    flags = [
        *(f for f in METRICS_FLAGS if not f.startswith("--metrics")),
        "--metrics=count",  # the fix: the metrics no longer need a numeric amount
        f"--dead_letter_input={tmp_path / 'dlq' / '*.jsonl'}",
        "--target=windowed_metrics",
        f"--output={tmp_path / 'out2'}",
        f"--dead_letter={tmp_path / 'dlq2'}",
    ]
    second = run_built(replay_dead_letters, flags)
    run2 = assert_accounting(second, records_in=12, output=10, dead_letter=2, duplicate=0)
    assert sorted(payload_of(x) for x in dead_letters(tmp_path / "dlq2")) == sorted(broken)
    assert run1.records_in == run1.output + run1.duplicate + run2.output + run2.dead_letter
    replayed_rows = metric_rows(tmp_path / "out2")
    assert {r["key"] for r in replayed_rows} == {"u2"}
    assert sum(r["count"] for r in replayed_rows) == len(string_amounts)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_rerun_into_a_used_folder_is_refused_and_overwrite_leaves_no_stale_file(tmp_path):
    """A second run needs --overwrite; with another shard count no old shard survives."""
    flags = _backfill_flags(tmp_path)
    first = windowed_metrics.run(flags)
    rows = metric_rows(tmp_path / "out")
    with pytest.raises(OutputFolderNotEmptyError, match=r"out' is not empty.*--overwrite"):
        windowed_metrics.run([*flags, "--output_shards=3"])
    assert metric_rows(tmp_path / "out") == rows
    second = windowed_metrics.run([*flags, "--output_shards=3", "--overwrite"])
    assert metric_rows(tmp_path / "out") == rows  # read back: no doubled counts
    written = [f for f in _files(tmp_path / "out") if f != "_SUCCESS"]
    assert written
    assert all(f.endswith("-of-00003.parquet") for f in written)
    assert second["outputs"]["output"]["files"] == len(written)
    assert first["outputs"]["output"]["files"] < len(written)
    marker = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert marker["files"] == written
    assert (marker["records_in"], marker["output"], marker["dead_letter"]) == (309, 300, 6)
    letters = json.loads((tmp_path / "dlq" / "_SUCCESS").read_text())
    assert letters["files"] == [
        f for f in _files(tmp_path / "dlq") if not f.endswith("_SUCCESS") and "late/" not in f
    ]
    assert second["outputs"]["dead_letter"]["files"] == len(letters["files"])


def test_late_and_dedup_dead_letters_from_files_name_their_file_and_line(tmp_path):
    """Replayed late records and id-less records keep file/line on both replay engines."""
    lines = [line(event(n)) for n in range(2_000)]
    lines[1_499] = line(event(1_499, time_ms=T0_MS + 899_000))  # behind the replayed watermark
    lines[10] = line({k: v for k, v in event(10).items() if k != "event_id"})  # no id
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    found = {}
    for engine in ("columnar", "teststream"):
        windowed_metrics.run(
            [
                *(f for f in METRICS_FLAGS if not f.startswith("--metrics")),
                "--metrics=count",
                "--source=files",
                f"--input={tmp_path / 'in.jsonl'}",
                "--replay_as_stream",
                f"--replay_engine={engine}",
                f"--output={tmp_path / engine / 'out'}",
                f"--dead_letter={tmp_path / engine / 'dlq'}",
            ]
        )
        late = [
            json.loads(text)
            for path in sorted((tmp_path / engine / "dlq" / "late").glob("*.jsonl"))
            for text in path.read_text(encoding="utf-8").splitlines()
        ]
        found[engine] = (
            [(x["origin"], x["lateness_ms"]) for x in late],
            [(x["stage"], x["origin"]) for x in dead_letters(tmp_path / engine / "dlq")],
        )
    where = {"file": str(tmp_path / "in.jsonl")}
    assert found["columnar"] == found["teststream"]
    assert found["columnar"][0] == [({**where, "line": 1_500}, 41_000)]
    assert found["columnar"][1] == [("dedup", {**where, "line": 11})]
