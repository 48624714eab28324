"""The columnar fast path: the record path's rows, counters and dead letters, and plain Python's."""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from headwater.io.fileio import ReadFromFiles, WriteWindowedFiles
from headwater.io.formats import JsonFormat
from headwater.testing.reference import windowed_metrics_reference
from headwater.testing.workload import generate
from headwater.transforms import columnar
from headwater.transforms.accounting import Accounting
from headwater.transforms.columnar import ComputeWindowedMetricsColumnar, columnar_supported
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor


def _options(**overrides):
    options = {
        "decode": JsonFormat(),
        "event_time": EventTimeExtractor(field="event_time", unit="ms"),
        "dedup": DeduplicateById(id_field="event_id", horizon="10m"),
        "window": "fixed:60s",
        "allowed_lateness": 0,
        "key_field": "user_id",
        "metrics": "count,sum:amount",
    }
    options.update(overrides)
    return options


def _rows_close_to(expected):
    """A matcher: the same (window, key) rows, counts equal, floats within 1e-9 relative."""

    def match(actual):
        got = {(r["window_start"], r["key"]): r for r in actual}
        want = {(r["window_start"], r["key"]): r for r in expected}
        if got.keys() != want.keys():
            raise BeamAssertException(f"groups differ: {len(got)} rows vs {len(want)} expected")
        for group, row in want.items():
            for name, value in row.items():
                other = got[group][name]
                if isinstance(value, float):
                    ok = other is not None and math.isclose(other, value, rel_tol=1e-9)
                else:
                    ok = other == value
                if not ok:
                    raise BeamAssertException(f"{group} {name}: {other!r} != {value!r}")

    return match


_SEEN: dict[str, list] = {}


def _collect(name, actual):
    """A matcher that keeps what it saw (in-process FnApiRunner) for a later comparison."""
    _SEEN[name] = list(actual)


def _letter_key(letter):
    return (letter.stage, letter.error_type, letter.error_message, letter.payload, letter.origin)


def _run_both(path, file_format="json", **overrides):
    """Runs the record path and the columnar path over ``path``; returns both accountings."""
    record_p = TestPipeline(runner="FnApiRunner", blocking=True)
    read = record_p | ReadFromFiles(str(path), format=file_format)
    record = read.main | ComputeWindowedMetrics(**_options(**overrides))
    columnar_p = TestPipeline(runner="FnApiRunner", blocking=True)
    fast = columnar_p | ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format=file_format, **_options(**overrides)
    )
    return record_p, record, columnar_p, fast


def _reference_rows(reference):
    return [dict(r) for r in reference["rows"].values()]


def test_columnar_and_record_path_equal_plain_python_on_malformed_workload(tmp_path):
    """Both paths give plain Python's rows and counters, and identical dead letters."""
    events = list(generate(2_000, seed=11, malformed_frac=0.03))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(e.line + b"\n" for e in events))
    reference = windowed_metrics_reference([e.line for e in events], window_s=60)
    assert reference["dead_letter"] > 0
    assert reference["duplicate"] > 0
    expected = _reference_rows(reference)

    record_p, record, columnar_p, fast = _run_both(path)
    assert_that(record.rows, _rows_close_to(expected), label="RecordRowsEqualReference")
    assert_that(record.dead_letter, partial(_collect, "record"), label="RecordDeadLetters")
    record_result = record_p.run()

    assert_that(fast.rows, _rows_close_to(expected), label="ColumnarRowsEqualReference")
    assert_that(fast.dead_letter, partial(_collect, "columnar"), label="ColumnarDeadLetters")
    assert_that(fast.late, equal_to([]), label="ColumnarNothingLate")
    columnar_result = columnar_p.run()

    counters = {k: reference[k] for k in ("records_in", "output", "duplicate", "dead_letter")}
    for result in (record_result, columnar_result):
        accounting = Accounting.from_result(result)
        assert {k: getattr(accounting, k) for k in counters} == counters
        assert accounting.late == 0
        assert accounting.holds

    columnar_letters = sorted(map(_letter_key, _SEEN["columnar"]))
    assert columnar_letters == sorted(map(_letter_key, _SEEN["record"]))
    assert len(columnar_letters) == reference["dead_letter"]


def test_sliding_windows_give_the_record_path_rows(tmp_path):
    """Sliding windows put each record in every window that covers it, like the record path."""
    events = list(generate(1_500, seed=3))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(e.line + b"\n" for e in events))
    record_p, record, columnar_p, fast = _run_both(
        path, window="sliding:2m/1m", metrics="count,sum:amount,min:amount,mean:amount"
    )
    assert_that(record.rows, partial(_collect, "sliding"), label="RecordRows")
    record_p.run()
    assert_that(fast.rows, _rows_close_to(_SEEN["sliding"]), label="ColumnarRowsEqualRecordRows")
    columnar_p.run()
    assert len({r["window_start"] for r in _SEEN["sliding"]}) > 1


def test_parquet_input_gives_the_record_path_rows_and_dead_letters(tmp_path):
    """Parquet rows with a null key or event time become the record path's dead letters."""
    rows = [
        {
            "event_id": f"e{i}",
            "user_id": None if i % 7 == 0 else f"u{i % 3}",
            "event_time": None if i % 11 == 0 else 1_700_000_000_000 + 1_000 * i,
            "amount": float(i),
        }
        for i in range(200)
    ]
    rows += [dict(rows[5]), dict(rows[6])]  # two re-deliveries
    path = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    record_p, record, columnar_p, fast = _run_both(path, file_format="parquet")
    assert_that(record.rows, partial(_collect, "parquet_rows"), label="RecordRows")
    assert_that(record.dead_letter, partial(_collect, "parquet_dead"), label="RecordDeadLetters")
    record_result = record_p.run()
    assert_that(fast.rows, _rows_close_to(_SEEN["parquet_rows"]), label="ColumnarRowsEqualRecord")
    assert_that(fast.dead_letter, partial(_collect, "parquet_fast"), label="ColumnarDeadLetters")
    columnar_result = columnar_p.run()
    assert sorted(map(_letter_key, _SEEN["parquet_fast"])) == sorted(
        map(_letter_key, _SEEN["parquet_dead"])
    )
    assert _SEEN["parquet_dead"]
    assert (
        Accounting.from_result(columnar_result).to_dict()
        == Accounting.from_result(record_result).to_dict()
    )
    assert Accounting.from_result(columnar_result).duplicate == 2


def test_blank_lines_bom_and_crlf_keep_line_numbers(tmp_path):
    """Blank lines are skipped but counted in line numbers; a BOM and CRLF endings are removed."""
    good = {"event_id": "a", "user_id": "u", "event_time": 60_000, "amount": 2}
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + json.dumps(good).encode()
        + b"\r\n\n   \n{broken\r\n"
        + json.dumps({**good, "event_id": "b", "amount": 3.5}).encode()
    )
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    out = p | ComputeWindowedMetricsColumnar(pattern=str(path), file_format="json", **_options())
    letters = out.dead_letter | "Shape" >> _shape()
    assert_that(letters, equal_to([("decode", b"{broken", 4)]), label="DeadLetterLine")
    start = dt.datetime(1970, 1, 1, 0, 1, tzinfo=dt.timezone.utc)
    assert_that(
        out.rows | "Row" >> _row_tuple(),
        equal_to([(start, "u", 2, 5.5)]),
        label="OneRowFromTwoRecords",
    )
    p.run()


def _shape():
    import apache_beam as beam

    return beam.Map(lambda d: (d.stage, d.payload, d.origin["line"]))


def _row_tuple():
    import apache_beam as beam

    return beam.Map(lambda r: (r["window_start"], r["key"], r["count"], r["sum_amount"]))


def test_output_writes_the_same_bytes_as_write_windowed_files(tmp_path):
    """With ``output=`` the window files are byte-identical to WriteWindowedFiles' files."""
    events = list(generate(2_000, seed=5))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(e.line + b"\n" for e in events))
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | ComputeWindowedMetricsColumnar(
            pattern=str(path), file_format="json", **_options()
        )
        _ = out.rows | WriteWindowedFiles(str(tmp_path / "sink"), format="parquet", num_shards=2)
    with TestPipeline(runner="FnApiRunner") as p:
        direct = p | ComputeWindowedMetricsColumnar(
            pattern=str(path),
            file_format="json",
            output=str(tmp_path / "direct"),
            output_shards=2,
            **_options(),
        )
        assert_that(direct.rows, equal_to([]), label="RowsAreWrittenNotEmitted")
    sink = sorted(f.relative_to(tmp_path / "sink") for f in (tmp_path / "sink").rglob("*.parquet"))
    written = sorted(
        f.relative_to(tmp_path / "direct") for f in (tmp_path / "direct").rglob("*.parquet")
    )
    assert sink == written
    assert len(sink) > 2
    for name in sink:
        assert (tmp_path / "sink" / name).read_bytes() == (tmp_path / "direct" / name).read_bytes()


def _line(event_id, millis):
    record = {"event_id": event_id, "user_id": "u", "event_time": millis, "amount": 1}
    return json.dumps(record).encode() + b"\n"


def test_dedup_forgets_an_id_once_the_watermark_passes_its_horizon(tmp_path, monkeypatch):
    """A copy arriving after max event time - out-of-orderness passed anchor + horizon is new."""
    path = tmp_path / "events.jsonl"
    # a@0, then b moves the stream 20 min on, then a copy of a (1 s after its anchor)
    path.write_bytes(_line("a", 0) + _line("b", 1_200_000) + _line("a", 1_000))
    monkeypatch.setattr(columnar, "_BLOCK_BYTES", 80)  # one line per block

    def counts(result):
        accounting = Accounting.from_result(result)
        return accounting.output, accounting.duplicate

    p = TestPipeline(runner="FnApiRunner", blocking=True)
    _ = p | ComputeWindowedMetricsColumnar(pattern=str(path), file_format="json", **_options())
    assert counts(p.run()) == (3, 0)

    longer = _options(dedup=DeduplicateById(id_field="event_id", horizon="30m"))
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    _ = p | ComputeWindowedMetricsColumnar(pattern=str(path), file_format="json", **longer)
    assert counts(p.run()) == (2, 1)


def test_emit_duplicates_outputs_the_decoded_copies(tmp_path):
    """``emit_duplicates=True`` puts every duplicate, decoded, on ``duplicate``."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(_line("a", 0) + _line("a", 5) + _line("b", 7))
    p = TestPipeline(runner="FnApiRunner", blocking=True)
    out = p | ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format="json", emit_duplicates=True, **_options()
    )
    assert_that(
        out.duplicate,
        equal_to([{"event_id": "a", "user_id": "u", "event_time": 5, "amount": 1}]),
        label="TheSecondCopy",
    )
    p.run()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"file_format": "avro"}, "format 'avro'"),
        ({"streaming": True}, "streaming"),
        ({"window": "session:5m"}, "not fixed or sliding"),
        ({"trigger": "early:10s"}, "early panes"),
        ({"checks": [lambda r: None]}, "checks"),
        ({"key_field": "user.id"}, "key_field='user.id'"),
        ({"event_time": EventTimeExtractor(field="t", unit="iso")}, "event_time="),
        ({"dedup": DeduplicateById(id_field="event_id", horizon="1m", keep="last")}, "keep"),
        ({"dedup": DeduplicateById(content_hash=True, horizon="1m")}, "id_field"),
    ],
)
def test_unsupported_configurations_fall_back_with_a_reason(change, reason):
    """columnar_supported is False, and the transform's ValueError names the reason."""
    options = {"file_format": "json", **_options(), **change}
    assert not columnar_supported(**options)
    assert columnar.columnar_unsupported_reason(**options) is not None
    assert reason in columnar.columnar_unsupported_reason(**options)
    if options.pop("streaming", False):
        return  # the transform has no streaming mode: the pipeline decides
    with pytest.raises(ValueError, match="columnar path cannot run"):
        ComputeWindowedMetricsColumnar(pattern="x.jsonl", **options)


def test_supported_configuration_is_recognised():
    """The reference workload's configuration (JSON, fixed windows, dedup by id) qualifies."""
    assert columnar_supported(file_format="json", **_options())
    assert columnar_supported(file_format="parquet", **_options(window="sliding:10m/1m"))


@pytest.mark.parametrize(
    ("change", "bad"),
    [
        ({"pattern": ""}, "pattern=''"),
        ({"output": ""}, "output=''"),
        ({"output_format": "csv"}, "output_format='csv'"),
        ({"output_shards": 0}, "output_shards=0"),
        ({"emit_duplicates": "yes"}, "emit_duplicates='yes'"),
        ({"max_out_of_orderness": "soon"}, "max_out_of_orderness"),
        ({"max_record_bytes": 0}, "max_record_bytes=0"),
        ({"allowed_lateness": "x"}, "allowed_lateness"),
    ],
)
def test_invalid_options_name_the_bad_value(change, bad):
    """Every validation error names the option and its value."""
    options = {"pattern": "x.jsonl", "file_format": "json", **_options(), **change}
    with pytest.raises(ValueError, match=bad.replace("(", r"\(")):
        ComputeWindowedMetricsColumnar(**options)
