"""The columnar replay computes what the record path's TestStream replay computes, exactly.

Each test replays the same lines both ways -- the record path through ``replay_stream`` and
:class:`ComputeWindowedMetrics` on the streaming ``BundleBasedDirectRunner``, the columnar replay
on the FnApiRunner -- and compares rows (per window), late envelopes, dead letters and counters.
"""

from __future__ import annotations

import json
import random
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from headwater.columnar import (
    ReplayWindowedMetricsColumnar,
    replay_supported,
    replay_unsupported_reason,
)
from headwater.core.accounting import Accounting
from headwater.core.records import SourceRecord
from headwater.devtools.workload import generate
from headwater.io.formats import JsonFormat
from headwater.io.streamreplay import RecordEventTime, replay_stream
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

_SEEN: dict[str, list[Any]] = {}


class _Collect(beam.DoFn):
    """Appends what it sees to ``_SEEN[name]`` (in-process runners only)."""

    def __init__(self, name: str):
        self._name = name

    def process(self, element, window=beam.DoFn.WindowParam):
        _SEEN.setdefault(self._name, []).append((element, window))


def _options(window: str, horizon: str, **extra: Any) -> dict[str, Any]:
    return {
        "decode": JsonFormat(),
        "event_time": EventTimeExtractor(field="event_time", unit="ms"),
        "dedup": DeduplicateById(id_field="event_id", horizon=horizon),
        "window": window,
        "allowed_lateness": 0,
        "key_field": "user_id",
        "metrics": "count,sum:amount,max:amount",
        **extra,
    }


def _row(row: dict[str, Any], window: Any) -> tuple[Any, ...]:
    return (
        window.start.micros,
        window.end.micros,
        row["window_start"],
        row["window_end"],
        row["key"],
        row["count"],
        round(row["sum_amount"], 6),
        row["max_amount"],
    )


def _late(letter: Any) -> tuple[Any, ...]:
    return (
        letter.origin.get("line"),
        letter.payload,
        letter.lateness_ms,
        letter.window,
        letter.error_type,
        letter.error_message,
        letter.event_time,
    )


def _dead(letter: Any) -> tuple[Any, ...]:
    return (letter.origin.get("line"), letter.stage, letter.error_type, letter.error_message)


def _outcome(prefix: str, result: Any) -> dict[str, Any]:
    got = {
        "rows": sorted(_row(r, w) for r, w in _SEEN.pop(f"{prefix}rows", [])),
        "late": sorted(_late(d) for d, _ in _SEEN.pop(f"{prefix}late", [])),
        "dead": sorted(_dead(d) for d, _ in _SEEN.pop(f"{prefix}dead", [])),
    }
    accounting = Accounting.from_result(result)
    got["counters"] = {
        name: getattr(accounting, name)
        for name in ("records_in", "output", "duplicate", "dead_letter", "late")
    }
    # the record path's ParseFn counters (a late record is parsed once, like any other)
    got["parse"] = {
        name: sum(
            c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"]
        )
        for name in ("parse.ok", "parse.dead_letter")
    }
    return got


def _record_path(path: str, lines: list[bytes], every: int, ooo: str, **options: Any):
    records = [
        SourceRecord(line, {"file": path, "line": i})
        for i, line in enumerate(lines, 1)
        if line.strip()
    ]
    stream = replay_stream(
        records,
        event_time=RecordEventTime(JsonFormat(), options["event_time"]),
        max_out_of_orderness=ooo,
        watermark_every=every,
    )
    p = TestPipeline(
        runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True), blocking=False
    )
    out = p | stream | ComputeWindowedMetrics(**options)
    _ = out.rows | "Rows" >> beam.ParDo(_Collect("record.rows"))
    _ = out.late | "Late" >> beam.ParDo(_Collect("record.late"))
    _ = out.dead_letter | "Dead" >> beam.ParDo(_Collect("record.dead"))
    result = p.run()
    result.wait_until_finish()
    return _outcome("record.", result)


def _columnar(path: str, every: int, ooo: str, **options: Any):
    p = TestPipeline(runner="FnApiRunner", blocking=False)
    out = p | ReplayWindowedMetricsColumnar(
        pattern=path,
        file_format="json",
        watermark_every=every,
        max_out_of_orderness=ooo,
        **options,
    )
    _ = out.rows | "Rows" >> beam.ParDo(_Collect("columnar.rows"))
    _ = out.late | "Late" >> beam.ParDo(_Collect("columnar.late"))
    _ = out.dead_letter | "Dead" >> beam.ParDo(_Collect("columnar.dead"))
    result = p.run()
    result.wait_until_finish()
    return _outcome("columnar.", result)


def _both(tmp_path, lines: list[bytes], *, every: int, ooo: str, **options: Any):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    record = _record_path(str(path), lines, every, ooo, **options)
    columnar = _columnar(str(path), every, ooo, **options)
    return record, columnar


def _adversarial(seed: int, n: int) -> list[bytes]:
    """Few ids (many copies), disorder, stragglers, re-deliveries past the horizon, bad lines."""
    rng = random.Random(seed)
    lines: list[bytes] = []
    newest = 1_700_000_000_000
    for i in range(n):
        newest += rng.randint(0, 400)
        roll = rng.random()
        if roll < 0.04:
            t = newest - rng.randint(15_000, 90_000)  # a straggler, often behind the watermark
        else:
            t = newest - rng.randint(0, 6_000)
        record: dict[str, Any] = {
            "event_id": f"e{rng.randint(0, n // 4)}",
            "user_id": f"u{rng.randint(0, 6)}",
            "event_time": t,
            "amount": rng.randint(1, 100),
        }
        if roll > 0.985:
            del record["user_id"]  # a dead letter that still has an event time
        line = json.dumps(record).encode()
        if 0.97 < roll <= 0.975:
            line = line[:-3]  # malformed JSON
        if i % 97 == 5:
            lines.append(b"")  # blank lines are not records
        lines.append(line)
    return lines


@pytest.mark.slow
def test_generated_workload_replays_identically(tmp_path):
    """Generated workload, small watermark steps: rows, late, dead letters and counters equal."""
    events = list(generate(2_500, seed=3, malformed_frac=0.02, late_frac=0.03))
    lines = [e.line for e in events]
    record, columnar = _both(
        tmp_path, lines, every=100, ooo="5s", **_options("fixed:10s", horizon="10m")
    )
    assert record["late"], "the workload must produce late records"
    assert record["counters"]["duplicate"] > 0
    assert columnar == record


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "every", "horizon", "n"),
    # a watermark step per record costs the TestStream replay ~80 ms a record: fewer records
    [(1, 1, "5s", 500), (2, 7, "20s", 1_200), (3, 50, "2s", 1_200)],
)
def test_adversarial_streams_replay_identically(tmp_path, seed, every, horizon, n):
    """Ids expiring by the watermark, late duplicates, stragglers, bad lines: both paths agree."""
    lines = _adversarial(seed, n)
    record, columnar = _both(
        tmp_path, lines, every=every, ooo="3s", **_options("fixed:10s", horizon=horizon)
    )
    assert record["late"]
    assert record["counters"]["duplicate"]
    assert record["dead"]
    assert columnar == record


def test_configurations_needing_the_record_path_are_named():
    """Sliding windows and allowed lateness are refused with the reason."""
    assert replay_supported(file_format="json", **_options("fixed:60s", horizon="10m"))
    reason = replay_unsupported_reason(
        file_format="json", **_options("sliding:60s/10s", horizon="10m")
    )
    assert reason is not None
    assert "not fixed" in reason
    with pytest.raises(ValueError, match="allowed lateness 30s"):
        ReplayWindowedMetricsColumnar(
            pattern="x.jsonl",
            file_format="json",
            **{**_options("fixed:60s", horizon="10m"), "allowed_lateness": "30s"},
        )
    with pytest.raises(ValueError, match="watermark_every=0"):
        ReplayWindowedMetricsColumnar(
            pattern="x.jsonl",
            file_format="json",
            watermark_every=0,
            **_options("fixed:60s", horizon="10m"),
        )


def test_a_record_whose_window_ends_exactly_at_the_watermark_is_late(tmp_path):
    """Window end == watermark means closed (the timer at the end has fired), on both paths."""
    lines = [
        json.dumps({"event_id": e, "user_id": "u", "event_time": t, "amount": 1}).encode()
        for e, t in [("a", 10_000), ("b", 9_999), ("c", 19_999), ("d", 10_000)]
    ]
    record, columnar = _both(tmp_path, lines, every=1, ooo="0s", **_options("fixed:10s", "1m"))
    assert [json.loads(late[1])["event_id"] for late in columnar["late"]] == ["b"]
    assert columnar["late"][0][2] == 1  # lateness_ms: 10,000 - 9,999
    assert columnar == record


def _rows_written(folder) -> dict[str, list[dict[str, Any]]]:
    """Rows per file; float sums rounded (the engines add a window's amounts in other orders)."""
    import pyarrow.parquet as pq

    files = {}
    for path in sorted(folder.rglob("*.parquet")):
        rows = pq.read_table(path).to_pylist()
        for row in rows:
            row["sum_amount"] = round(row["sum_amount"], 6)
        files[str(path.relative_to(folder))] = rows
    return files


def _letters(folder) -> list[dict[str, Any]]:
    letters = [
        json.loads(line)
        for p in sorted(folder.rglob("*.jsonl"))
        for line in p.read_text().splitlines()
    ]
    for letter in letters:
        letter.pop("failed_at", None)
    return sorted(letters, key=lambda d: json.dumps(d, sort_keys=True))


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["json", "parquet", "avro"])
def test_windowed_metrics_replay_engines_write_the_same_files(tmp_path, file_format):
    """`windowed_metrics --replay_as_stream`: both engines write the same rows and late letters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from headwater.pipelines import windowed_metrics

    malformed = 0.02 if file_format == "json" else 0.0
    events = list(generate(2_000, seed=5, malformed_frac=malformed, late_frac=0.03))
    if file_format == "json":
        source = tmp_path / "events.jsonl"
        source.write_bytes(b"".join(e.line + b"\n" for e in events))
    elif file_format == "parquet":
        source = tmp_path / "events.parquet"
        pq.write_table(pa.Table.from_pylist([json.loads(e.line) for e in events]), source)
    else:
        import fastavro

        source = tmp_path / "events.avro"
        fields = [("event_id", "string"), ("user_id", "string"), ("event_time", "long")]
        fields += [("amount", "double"), ("kind", "string")]
        schema = {
            "type": "record",
            "name": "Event",
            "fields": [{"name": name, "type": kind} for name, kind in fields],
        }
        with open(source, "wb") as out:
            fastavro.writer(out, schema, [json.loads(e.line) for e in events])
    summaries = {}
    for engine in ("columnar", "teststream"):
        out = tmp_path / engine
        summaries[engine] = windowed_metrics.run(
            [
                "--source=files",
                f"--input={source}",
                f"--format={file_format}",
                f"--output={out / 'rows'}",
                f"--dead_letter={out / 'dlq'}",
                "--event_time_field=event_time",
                "--id_field=event_id",
                "--window=fixed:60s",
                "--key_field=user_id",
                "--metrics=count,sum:amount,min:amount",
                "--allowed_lateness=0s",
                "--replay_as_stream",
                f"--replay_engine={engine}",
                "--max_out_of_orderness=5s",
            ]
        )
    columnar, teststream = summaries["columnar"], summaries["teststream"]
    assert (columnar["runner"], teststream["runner"]) == ("FnApiRunner", "BundleBasedDirectRunner")
    counters = ("records_in", "output", "duplicate", "dead_letter", "late")
    assert teststream["late"] > 0
    assert [columnar[c] for c in counters] == [teststream[c] for c in counters]
    rows = _rows_written(tmp_path / "columnar" / "rows")
    assert rows
    assert rows == _rows_written(tmp_path / "teststream" / "rows")
    letters = _letters(tmp_path / "columnar" / "dlq")
    assert sum(letter["stage"] == "late" for letter in letters) == teststream["late"]
    assert letters == _letters(tmp_path / "teststream" / "dlq")


def _replay_argv(tmp_path, *extra: str) -> list[str]:
    source = tmp_path / "events.jsonl"
    source.write_bytes(b"".join(e.line + b"\n" for e in generate(300, seed=2)))
    return [
        "--source=files",
        f"--input={source}",
        f"--output={tmp_path / 'rows'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        "--event_time_field=event_time",
        "--id_field=event_id",
        "--key_field=user_id",
        "--metrics=count",
        "--allowed_lateness=0s",
        *extra,
    ]


def test_replay_engine_columnar_names_why_it_cannot_run(tmp_path):
    """--replay_engine=columnar with sliding windows fails with the reason, naming the flag."""
    from headwater.pipelines import windowed_metrics

    argv = _replay_argv(
        tmp_path, "--window=sliding:60s/10s", "--replay_as_stream", "--replay_engine=columnar"
    )
    with pytest.raises(ValueError, match=r"--replay_engine=columnar .*not fixed"):
        windowed_metrics.run(argv)


def test_replay_engine_needs_replay_as_stream(tmp_path):
    """--replay_engine without --replay_as_stream is refused, naming both flags."""
    from headwater.pipelines import windowed_metrics

    argv = _replay_argv(tmp_path, "--window=fixed:60s", "--replay_engine=teststream")
    with pytest.raises(ValueError, match="--replay_engine=teststream needs --replay_as_stream"):
        windowed_metrics.run(argv)


def test_auto_replays_sliding_windows_on_the_teststream_engine(tmp_path):
    """auto takes the TestStream replay when the columnar replay cannot run the configuration."""
    from headwater.pipelines import windowed_metrics

    summary = windowed_metrics.run(
        _replay_argv(tmp_path, "--window=sliding:60s/30s", "--replay_as_stream")
    )
    assert summary["runner"] == "BundleBasedDirectRunner"
    assert summary["records_in"] == 300


def test_hostile_values_replay_identically_and_a_lone_surrogate_is_one_dead_letter(tmp_path):
    """Streamed, a lone surrogate is one dead letter (no poison pill); sums exact, keys text.

    Both replay engines: the TestStream record path on the streaming runner and the columnar
    replay give the same rows, dead letters and counters.
    """
    big = 6 * 10**18
    records = [
        *(
            {"event_id": f"b{i}", "user_id": "big", "event_time": i, "amount": big}
            for i in (1, 2, 3)
        ),
        {"event_id": 7, "user_id": 1, "event_time": 4, "amount": 1},
        {"event_id": "7", "user_id": 1.0, "event_time": 5, "amount": 50},  # id 7 again
        {"event_id": 8, "user_id": "1", "event_time": 6, "amount": 2},
        {"event_id": 9, "user_id": 2.5, "event_time": 7, "amount": 3},
    ]
    lines = [json.dumps(r).encode() for r in records]
    lines.insert(2, b'{"event_id":"s","user_id":"\\ud800","event_time":8,"amount":1}')
    lines.insert(5, b'{"event_id":"\\udfffx","user_id":"big","event_time":9,"amount":1}')
    lines.append(
        json.dumps({"event_id": "z", "user_id": "big", "event_time": 20_000, "amount": 1}).encode()
    )
    record, columnar = _both(tmp_path, lines, every=2, ooo="1s", **_options("fixed:10s", "1m"))
    assert columnar == record
    assert [row[4:] for row in record["rows"] if row[0] == 0] == [
        ("1", 2, 3.0, 2),
        ("2.5", 1, 3.0, 3),
        ("big", 3, 1.8e19, big),
    ]
    assert record["dead"] == [
        (3, "decode", "InvalidTextError", record["dead"][0][3]),
        (6, "decode", "InvalidTextError", record["dead"][1][3]),
    ]
    assert "field 'user_id' holds a lone surrogate '\\ud800'" in record["dead"][0][3]
    assert "field 'event_id' holds a lone surrogate '\\udfff'" in record["dead"][1][3]
    assert record["counters"] == {
        "records_in": 10,
        "output": 7,
        "duplicate": 1,
        "dead_letter": 2,
        "late": 0,
    }
