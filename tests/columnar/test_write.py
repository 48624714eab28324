"""Column-wise window files: byte for byte what the row-dict writer writes."""

from __future__ import annotations

import pytest

from headwater.columnar.batch import ComputeColumnarFn
from headwater.columnar.state import ColumnarOptions
from headwater.io.formats import JsonFormat
from headwater.transforms.aggregate import parse_metrics
from headwater.transforms.process import to_window_fn
from headwater.windowing.eventtime import EventTimeExtractor


def _write_both(tmp_path, groups, metrics, shards, window="fixed:60s"):
    """(files of _write, files of the row-dict writer) for ``groups``: relative path -> bytes."""
    results = []
    for name in ("columns", "rows"):
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
            output=str(tmp_path / name),
            output_shards=shards,
        )
        fn = ComputeColumnarFn(options)
        paths = list((fn._write if name == "columns" else fn._write_rows)(list(groups)))
        root = tmp_path / name
        results.append(
            {
                str(pa_path): (root / pa_path).read_bytes()
                for pa_path in (__import__("pathlib").Path(p).relative_to(root) for p in paths)
            }
        )
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
