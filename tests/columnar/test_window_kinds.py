"""Calendar and session windows on the columnar batch path: the record path's rows, counters
and files (DST days; sessions merged per key across blocks)."""

from __future__ import annotations

import datetime as dt
import json
import random
from functools import partial

import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from headwater.columnar import (
    ComputeWindowedMetricsColumnar,
    ComputeWindowedMetricsParallel,
    columnar_unsupported_reason,
    jsonblocks,
    replay_unsupported_reason,
)
from headwater.core.accounting import Accounting
from headwater.io.fileio import ReadFromFiles
from headwater.io.formats import JsonFormat
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

_SEEN: dict[str, list] = {}
_COUNTERS = ("records_in", "output", "duplicate", "dead_letter", "late")


def _collect(name, actual):
    _SEEN[name] = sorted(
        (r["window_start"], r["window_end"], r["key"], r["count"], r["sum_amount"]) for r in actual
    )


def _options(window):
    return {
        "decode": JsonFormat(),
        "event_time": EventTimeExtractor(field="t", unit="ms"),
        "dedup": DeduplicateById(id_field="id", horizon="10m"),
        "window": window,
        "allowed_lateness": 0,
        "key_field": "u",
        "metrics": "count,sum:amount",
    }


def _dst_lines(seed):
    """Events around Berlin's 2024 DST days (and a month edge), duplicates and a bad line."""
    rng = random.Random(seed)
    lines = []
    for day in ("2024-03-30", "2024-03-31", "2024-04-01", "2024-10-26", "2024-10-27"):
        base = dt.datetime.fromisoformat(day + "T00:00:00+00:00").timestamp()
        for _ in range(60):
            # -3 h .. +27 h around the UTC day: local midnights on both sides of each change
            millis = int((base + rng.uniform(-3 * 3600, 27 * 3600)) * 1000)
            event = {"id": f"e{rng.randrange(250)}", "t": millis, "u": f"u{rng.randrange(3)}"}
            event["amount"] = rng.randrange(100)
            lines.append(json.dumps(event).encode())
    # the instants either side of a DST day's local midnight, exactly
    for millis in (1711839600000 - 1, 1711839600000, 1711922400000 - 1, 1711922400000):
        lines.append(
            json.dumps({"id": f"m{millis}", "t": millis, "u": "edge", "amount": 1}).encode()
        )
    lines.append(b'{"id": "bad", "t": "noon"}')
    return lines


def _run_both(tmp_path, lines, window):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    record_p = TestPipeline(runner="FnApiRunner", blocking=True)
    record = record_p | ReadFromFiles(str(path), format="json")
    record = record.main | ComputeWindowedMetrics(**_options(window))
    assert_that(record.rows, partial(_collect, "record"), label="RecordRows")
    record_counts = Accounting.from_result(record_p.run())
    columnar_p = TestPipeline(runner="FnApiRunner", blocking=True)
    fast = columnar_p | ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format="json", **_options(window)
    )
    assert_that(fast.rows, partial(_collect, "columnar"), label="ColumnarRows")
    columnar_counts = Accounting.from_result(columnar_p.run())
    return record_counts, columnar_counts


def test_calendar_and_session_windows_run_on_the_columnar_path():
    """Calendar and session windows no longer fall back to the record path in batch; a
    session replay still does, and the parallel form refuses sessions, each with a reason."""
    common = _options("calendar:day@Europe/Berlin")
    del common["window"]
    for window in ("calendar:day@Europe/Berlin", "session:5m"):
        assert columnar_unsupported_reason(file_format="json", window=window, **common) is None
    assert "not fixed or calendar" in replay_unsupported_reason(
        file_format="json", window="session:5m", **common
    )
    with pytest.raises(ValueError, match=r"^window='session:5m': session windows merge per key"):
        ComputeWindowedMetricsParallel(
            pattern="x", file_format="json", window="session:5m", **common
        )


def test_calendar_days_over_dst_give_the_record_paths_rows_and_counters(tmp_path):
    """Local days in Berlin (23 h and 25 h DST days): same rows, window bounds and counters."""
    record, columnar = _run_both(tmp_path, _dst_lines(5), "calendar:day@Europe/Berlin")
    assert _SEEN["columnar"] == _SEEN["record"]
    ends = {(end - start) for start, end, *_ in _SEEN["record"]}
    assert dt.timedelta(hours=23) in ends
    assert dt.timedelta(hours=25) in ends
    assert {k: getattr(columnar, k) for k in _COUNTERS} == {
        k: getattr(record, k) for k in _COUNTERS
    }
    assert record.duplicate > 0
    assert record.dead_letter == 1


def test_calendar_weeks_and_months_give_the_record_paths_rows(tmp_path):
    """Weeks and months in a zone: the record path's rows (windows of unequal length)."""
    for window in ("calendar:week@America/New_York", "calendar:month@Europe/Berlin"):
        record, columnar = _run_both(tmp_path, _dst_lines(8), window)
        assert _SEEN["columnar"] == _SEEN["record"], window
        assert columnar.output == record.output


@pytest.mark.parametrize("output_format", ["parquet", "avro"])
def test_calendar_day_files_are_the_record_paths_bytes(tmp_path, output_format, engine_files):
    """Window files of Berlin days over DST: the record path's directories and bytes."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in _dst_lines(13)))
    window = "calendar:day@Europe/Berlin"
    files = engine_files(str(path), _options(window), output_format)
    assert len(files["record"]) >= 8
    assert files["columnar"] == files["record"]


_GAP_MS = 300_000  # session:5m


def _session_lines(seed, n=600):
    """Bursts per key with gaps around the session gap (exactly it, just under, far over), in
    disorder, with retried copies, a bad line and int and string keys."""
    rng = random.Random(seed)
    lines = []
    clock = {key: 1_717_200_000_000 + rng.randrange(10**6) for key in ("a", "b", 7, "7x")}
    for i in range(n):
        key = rng.choice(list(clock))
        step = rng.choice([1_000, 60_000, _GAP_MS - 1, _GAP_MS, _GAP_MS + 1, 4 * _GAP_MS])
        clock[key] += step
        ts = clock[key] - (rng.randrange(2 * _GAP_MS) if rng.random() < 0.2 else 0)
        event = {"id": f"e{rng.randrange(n // 2)}", "t": ts, "u": key, "amount": i % 17}
        lines.append(json.dumps(event).encode())
    lines.insert(n // 2, b'{"id": "bad", "t": 1, "u": "a", "amount": "ten"}')
    return lines


@pytest.mark.parametrize("block_bytes", [90, 2_000, 4 << 20])
def test_session_windows_give_the_record_paths_rows_and_counters(
    tmp_path, monkeypatch, block_bytes
):
    """Sessions merged per key (touching windows apart, disorder across blocks): the record
    path's rows, bounds and counters, wherever blocks are cut."""
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", block_bytes)  # 90: about one line per block
    record, columnar = _run_both(tmp_path, _session_lines(3), "session:5m")
    assert _SEEN["columnar"] == _SEEN["record"]
    lengths = {end - start for start, end, *_ in _SEEN["record"]}
    assert dt.timedelta(minutes=5) in lengths  # single-record sessions
    assert max(lengths) > dt.timedelta(minutes=10)  # merged ones
    assert {k: getattr(columnar, k) for k in _COUNTERS} == {
        k: getattr(record, k) for k in _COUNTERS
    }
    assert record.duplicate > 0
    assert record.dead_letter == 1


@pytest.mark.parametrize(("output_format", "shards"), [("parquet", 1), ("avro", 1), ("parquet", 3)])
def test_session_files_are_the_record_paths_bytes(tmp_path, output_format, shards, engine_files):
    """Session window files: the record path's window_start=/window_end= folders (one per
    exact session, keys that share it together) and bytes."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in _session_lines(11, 300)))
    files = engine_files(str(path), _options("session:5m"), output_format, shards)
    assert len(files["record"]) >= 20
    assert all("window_end=" in name for name in files["record"])
    assert files["columnar"] == files["record"]


def _straggling_days(seed, n):
    """Events over Berlin's autumn DST change, in disorder, with stragglers behind day ends."""
    rng = random.Random(seed)
    newest = 1_729_900_000_000  # 2024-10-26T00:26Z: the 25-hour day comes next
    lines = []
    for _ in range(n):
        newest += rng.randint(0, 600_000)
        behind = rng.randint(20, 90) * 60_000 if rng.random() < 0.08 else rng.randint(0, 60_000)
        event = {
            "event_id": f"e{rng.randrange(n // 3)}",
            "user_id": f"u{rng.randrange(4)}",
            "event_time": newest - behind,
            "amount": rng.randrange(1, 50),
        }
        lines.append(json.dumps(event).encode())
    return lines


@pytest.mark.parametrize(("seed", "every"), [(1, 1), (1, 4)])
def test_calendar_day_replay_gives_the_record_paths_rows_late_and_counters(tmp_path, seed, every):
    """A replayed stream of Berlin days over DST: on-time rows, late envelopes, counters equal."""
    from test_columnar_replay import _both
    from test_columnar_replay import _options as replay_options

    record, columnar = _both(
        tmp_path,
        _straggling_days(seed, 400),
        every=every,
        ooo="1m",
        **replay_options("calendar:day@Europe/Berlin", horizon="30m"),
    )
    assert record["late"], "the stream must produce late records"
    for part in ("rows", "late", "dead"):
        assert columnar[part] == record[part], part
    # The record path's counters on the streaming DirectRunner came back as records_in=1 in
    # this tree (fixed windows too): the columnar counters are checked against the outputs.
    counters = columnar["counters"]
    assert counters["records_in"] == 400
    assert counters["late"] == len(record["late"])
    assert counters["duplicate"] > 0
    assert counters["output"] + counters["duplicate"] + counters["late"] == 400
