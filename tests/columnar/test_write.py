"""Column-wise window files: byte for byte what the row-dict writer writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.columnar.batch import ComputeColumnarFn
from headwater.columnar.state import ColumnarOptions
from headwater.io.formats import JsonFormat
from headwater.transforms.aggregate import parse_metrics
from headwater.transforms.process import to_window_fn
from headwater.windowing.eventtime import EventTimeExtractor


def _writer(root, metrics, shards, window="fixed:60s", write_processes=1, output_format="parquet"):
    """A ComputeColumnarFn writing window files (Parquet by default) below ``root``."""
    options = ColumnarOptions(
        file_format="json",
        decode=JsonFormat(),
        event_time=EventTimeExtractor(field="t", unit="ms"),
        dedup=None,
        window_fn=to_window_fn(window),
        key_field="k",
        metrics=parse_metrics(metrics),
        max_record_bytes=None,
        out_of_order_micros=0,
        emit_duplicates=False,
        output=str(root),
        output_shards=shards,
        output_format=output_format,
        write_processes=write_processes,
    )
    return ComputeColumnarFn(options)


def _files(root, paths):
    """The written files: path relative to ``root`` -> bytes."""
    return {str(Path(p).relative_to(root)): Path(p).read_bytes() for p in paths}


def _write_both(tmp_path, groups, metrics, shards, window="fixed:60s"):
    """(files of _write, files of the row-dict writer) for ``groups``: relative path -> bytes."""
    results = []
    for name in ("columns", "rows"):
        fn = _writer(tmp_path / name, metrics, shards, window)
        paths = list((fn._write if name == "columns" else fn._write_rows)(list(groups)))
        results.append(_files(tmp_path / name, paths))
    return results


def _groups(seed, key, ints=False, fields=1):
    import random

    rng = random.Random(seed)
    groups, seen = [], set()
    for _ in range(600):
        start, k = rng.randrange(4) * 60_000_000, key(rng)
        if (start, k) in seen:
            continue
        seen.add((start, k))
        values = []
        for _ in range(fields):
            if ints:
                total = rng.randrange(-(10**6), 10**6)
                values += [total, min(total, 0), max(total, 0)]
            else:
                total = rng.choice([rng.uniform(-1e3, 1e3), rng.uniform(-1e20, 1e20), 1e16, 1e-7])
                values += [total, total - 1.0, total + 1.0]
        groups.append((start, k, rng.randrange(1, 40), *values))
    return groups


_ODD = ['a"b', "a\\b", "é", "日本", "a\nb", "a%sb", "%", "ab", "a", "a b", "\x7f", "~", "a!"]


@pytest.mark.parametrize(
    ("key", "ints", "metrics", "shards"),
    [
        (lambda r: f"u{r.randrange(300):05d}", False, "count,sum:a", 1),
        (lambda r: f"u{r.randrange(300):05d}", False, "count,sum:a", 3),
        (lambda r: r.choice(_ODD) + str(r.randrange(30)), False, "count,sum:a,mean:a", 2),
        (lambda r: r.randrange(-(10**5), 10**5), True, "count,sum:a,min:a,max:a,mean:a", 2),
        (lambda r: r.choice([r.randrange(50), f"s{r.randrange(50)}"]), False, "count,max:a", 2),
    ],
)
def test_column_wise_files_equal_the_row_dict_files(tmp_path, key, ints, metrics, shards):
    """_write's Parquet files are byte-identical to the row-dict writer's for the same groups."""
    groups = _groups(7, key, ints=ints)
    columns, rows = _write_both(tmp_path, groups, metrics, shards)
    assert len(rows) >= 4
    assert columns == rows


def test_column_wise_files_keep_non_finite_floats_and_huge_ints(tmp_path):
    """NaN and infinite sums, and an int sum beyond 2**63, are written as the row writer does."""
    nan, inf = float("nan"), float("inf")
    groups = [
        (0, "nan", 2, nan, nan, 1.0),
        (0, "inf", 2, inf, -inf, 1.0),
        (0, "big", 1, 2**70, 2**70, 2**70),
        (60_000_000, "x", 3, 1.5, 0.5, 1.0),
    ]
    columns, rows = _write_both(tmp_path, groups, "count,sum:a,min:a,mean:a", 2)
    assert len(rows) >= 2
    assert columns == rows


def _merged_table(seed, ints):
    """A merged groups table (ColumnarState.merged's columns) with sums that need both limbs."""
    import random

    import pyarrow as pa

    rng = random.Random(seed)
    columns = {name: [] for name in ("w", "k", "n", "s0", "h0", "m0", "x0")}
    for index in range(400):
        columns["w"].append(rng.randrange(3) * 60_000_000)
        columns["k"].append(f"u{index:04d}")
        columns["n"].append(rng.randrange(1, 5000))
        if ints:  # low limbs below 2**63; high limbs of either sign, often 0; sums past 2**53
            columns["s0"].append(rng.choice([rng.randrange(1 << 40), rng.randrange(1 << 62)]))
            columns["h0"].append(rng.choice([0, 0, rng.randrange(-(1 << 30), 1 << 30)]))
        else:
            columns["s0"].append(rng.choice([rng.uniform(-1e20, 1e20), 0.1, 1e16, -3.5]))
            columns["h0"].append(0)
        columns["m0"].append(float(rng.randrange(-(1 << 60), 1 << 60)))
        columns["x0"].append(rng.uniform(-1e3, 1e3))
    types = {"w": pa.int64(), "k": pa.string(), "n": pa.int64(), "h0": pa.int64()}
    types["s0"] = pa.int64() if ints else pa.float64()
    return pa.table({name: pa.array(v, type=types.get(name)) for name, v in columns.items()})


@pytest.mark.parametrize("ints", [True, False])
@pytest.mark.parametrize("shards", [1, 3])
def test_files_of_a_merged_table_equal_the_row_dict_files(tmp_path, ints, shards):
    """_write_table (the batch path's, vectorized over the merged groups) writes what the
    row-dict writer writes for the same groups as Python values: sums exact before their one
    conversion to float, means of the exact sums (int sums past 2**53 included)."""
    from headwater.columnar.state import group_columns

    table = _merged_table(3, ints)
    metrics = "count,sum:a,mean:a,min:a,max:a"
    by_table = _writer(tmp_path / "table", metrics, shards)
    by_rows = _writer(tmp_path / "rows", metrics, shards)
    groups = list(zip(*group_columns(table, 1), strict=True))
    rows = _files(tmp_path / "rows", by_rows._write_rows(groups))
    assert len(rows) >= 3
    assert _files(tmp_path / "table", by_table._write_table(table)) == rows


@pytest.mark.parametrize("processes", [2, 3])
def test_files_written_by_several_processes_equal_one_process_files(
    tmp_path, monkeypatch, processes
):
    """With write_processes, a run of many files splits them over forked processes: the same
    files (names and bytes), the same paths in the same order; a run of few files, and a run
    asked for one process, stays in this process."""
    from headwater.columnar import write

    asked = []

    def recording_split(count, work, *, processes):
        asked.append((count, processes))
        write_split(count, work, processes=processes)

    write_split = write.run_split
    monkeypatch.setattr(write, "run_split", recording_split)
    monkeypatch.setattr(write, "FORK_FILES", 6)
    groups = _groups(11, lambda r: f"u{r.randrange(300):05d}")
    metrics = "count,sum:a,mean:a"
    one = _writer(tmp_path / "one", metrics, 3)
    many = _writer(tmp_path / "many", metrics, 3, write_processes=processes)
    one_paths = [str(Path(p).relative_to(tmp_path / "one")) for p in one._write(groups)]
    many_paths = [str(Path(p).relative_to(tmp_path / "many")) for p in many._write(groups)]
    assert len(one_paths) == 12  # 4 windows x 3 shards
    assert many_paths == one_paths
    assert _files(tmp_path / "many", tmp_path.joinpath("many").rglob("*.parquet")) == _files(
        tmp_path / "one", tmp_path.joinpath("one").rglob("*.parquet")
    )
    few = _writer(tmp_path / "few", metrics, 1, write_processes=processes)
    assert len(list(few._write(groups))) == 4  # 4 windows, under FORK_FILES
    assert asked == [(12, 1), (12, processes), (4, 1)]
    # the row-dict writer (Avro output, colliding column names) splits its files the same way
    written = {}
    for name, count in (("avro-one", 1), ("avro-many", processes)):
        fn = _writer(tmp_path / name, metrics, 3, write_processes=count, output_format="avro")
        paths = [str(Path(p).relative_to(tmp_path / name)) for p in fn._write_rows(groups)]
        written[name] = (paths, _files(tmp_path / name, tmp_path.joinpath(name).rglob("*.avro")))
    assert len(written["avro-one"][0]) == 12
    assert written["avro-many"] == written["avro-one"]
    assert asked[-2:] == [(12, 1), (12, processes)]
