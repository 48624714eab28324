"""The columnar fast path: the record path's rows, counters and dead letters, and plain Python's."""

from __future__ import annotations

import datetime as dt
import json
import math
from functools import partial

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from headwater.columnar import (
    ComputeWindowedMetricsColumnar,
    ReplayWindowedMetricsColumnar,
    batchids,
    columnar_supported,
    columnar_unsupported_reason,
    idtable,
    jsonblocks,
    reader,
)
from headwater.columnar.spill import SpilledAnchors
from headwater.core.accounting import Accounting
from headwater.devtools.reference import windowed_metrics_reference
from headwater.devtools.workload import generate
from headwater.io.fileio import ReadFromFiles, WriteWindowedFiles
from headwater.io.formats import JsonFormat
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


@pytest.mark.parametrize("parse_bytes", [None, 1_500])
def test_columnar_and_record_path_equal_plain_python_on_malformed_workload(
    tmp_path, monkeypatch, parse_bytes
):
    """Both paths give plain Python's rows and counters, and identical dead letters.

    With ``parse_bytes`` each block is parsed as many small pieces, side by side.
    """
    if parse_bytes is not None:
        monkeypatch.setattr(jsonblocks, "PARSE_BYTES", parse_bytes)
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


def _write_decoded(path, rows, file_format):
    """Writes dict rows as Parquet, or as Avro with nullable fields (event_id, user_id, ...)."""
    if file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    import fastavro

    schema = {
        "type": "record",
        "name": "Event",
        "fields": [
            {"name": "event_id", "type": "string"},
            {"name": "user_id", "type": ["null", "string"]},
            {"name": "event_time", "type": ["null", "long"]},
            {"name": "amount", "type": ["null", "double", "string"]},
        ],
    }
    with open(path, "wb") as out:
        fastavro.writer(out, fastavro.parse_schema(schema), rows)


def _slow_rows(result) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_name("columnar.slow_rows"))["counters"]
    return sum(c.committed for c in counters)


@pytest.mark.parametrize(
    ("file_format", "mixed"), [("parquet", False), ("avro", False), ("avro", True)]
)
def test_decoded_input_gives_the_record_path_rows_and_dead_letters(tmp_path, file_format, mixed):
    """Parquet/Avro rows with a null key or event time become the record path's dead letters."""
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
    if mixed:  # a string amount among doubles: the whole batch goes the record path's way
        rows[20]["amount"] = "12 EUR"
    path = tmp_path / f"events.{file_format}"
    _write_decoded(path, rows, file_format)
    record_p, record, columnar_p, fast = _run_both(path, file_format=file_format)
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
    odd = sum(1 for r in rows if r["user_id"] is None or r["event_time"] is None)
    assert _slow_rows(columnar_result) == (len(rows) if mixed else odd)


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


@pytest.mark.parametrize("block_bytes", [80, 200, 1 << 20])
def test_batch_dedup_gives_the_record_paths_answer_whatever_the_block_size(
    tmp_path, monkeypatch, block_bytes
):
    """A retry far behind the stream (same event time) is a duplicate on both engines."""
    path = tmp_path / "events.jsonl"
    # a@0, then b moves the stream 20 min on, then a retry of a (1 s after its anchor)
    path.write_bytes(_line("a", 0) + _line("b", 1_200_000) + _line("a", 1_000))
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", block_bytes)  # 80: one line per block

    def counts(pipeline):
        accounting = Accounting.from_result(pipeline.run())
        return accounting.output, accounting.duplicate

    record_p, _, columnar_p, _ = _run_both(path)
    assert counts(columnar_p) == counts(record_p) == (2, 1)


def test_ids_moved_to_disk_still_make_late_retries_duplicates(tmp_path, monkeypatch):
    """A table of 16 slots fills after a few ids: the settled ones go to disk (columnar.spill)
    and a retry far behind the stream is judged against them, as the record path judges it."""
    monkeypatch.setattr(idtable, "_ID_SLOTS", 16)
    monkeypatch.setattr(batchids, "_SIZED_IDS", 4)
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", 80)  # one line per block
    lines = [_line("a", 0), _line("c", 60_000)]
    lines += [_line(f"b{i}", 1_200_000 + i) for i in range(40)]  # 20 min on: a and c settle
    lines += [_line("a", 1_000), _line("c", 661_000), _line("a", 600_001), _line("b3", 3)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(lines))
    moved = []
    spill_put = SpilledAnchors.put
    monkeypatch.setattr(
        SpilledAnchors,
        "put",
        lambda self, ids, *rest: moved.extend(ids.to_pylist()) or spill_put(self, ids, *rest),
    )

    def counts(pipeline):
        accounting = Accounting.from_result(pipeline.run())
        return accounting.output, accounting.duplicate

    record_p, _, columnar_p, _ = _run_both(path)
    # a@1s: 1 s after its anchor (on disk); c@661s: 601 s after its anchor, past the 10 min
    # horizon; a@600.001s: within 10 min of a's anchor, 1 s now (the retry raised it); b3@3ms:
    # older than its anchor (in memory)
    assert counts(columnar_p) == counts(record_p) == (43, 3)
    assert {"a", "c"} <= set(moved)


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
        ({"file_format": "csv"}, "format 'csv'"),
        ({"streaming": True}, "streaming"),
        ({"window": beam.window.GlobalWindows()}, "not fixed, sliding, calendar or session"),
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
    assert columnar_unsupported_reason(**options) is not None
    assert reason in columnar_unsupported_reason(**options)
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


def test_files_do_not_depend_on_how_blocks_are_cut_into_parse_pieces(tmp_path, monkeypatch):
    """Parsing a block as one piece or as many small pieces writes the same files, byte for byte."""
    events = list(generate(3_000, seed=13, malformed_frac=0.02))
    lines = [e.line for e in events]
    for i in range(len(lines)):  # runs of whole-number amounts: int columns in some pieces
        try:
            record = json.loads(lines[i]) if i % 97 < 12 else None
        except ValueError:  # a malformed line stays as it is
            record = None
        if isinstance(record, dict) and isinstance(record.get("amount"), float):
            lines[i] = json.dumps({**record, "amount": int(record["amount"])}).encode()
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    written = {}
    for name, size in (("whole", 1 << 20), ("pieces", 700)):
        monkeypatch.setattr(jsonblocks, "PARSE_BYTES", size)
        with TestPipeline(runner="FnApiRunner") as p:
            _ = p | ComputeWindowedMetricsColumnar(
                pattern=str(path), file_format="json", output=str(tmp_path / name), **_options()
            )
        root = tmp_path / name
        written[name] = {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*.parquet")}
    assert len(written["whole"]) > 2
    assert written["pieces"] == written["whole"]


# --- hostile values: sums beyond int64, keys of every JSON type, lone surrogates (issue 11) --

_BIG = 6 * 10**18  # three of them overflow int64
_HUGE = (2**63 + 1, -(2**63) - 4, 9)  # ints past int64 whose exact sum (6) floats would lose


def _hostile_files(folder, lone_surrogates=True):
    """Two JSON-lines files: big sums, keys and ids of mixed JSON types, lone surrogates.

    ``b.jsonl`` has only int keys (a window whose keys all arrive as ints). Lines 17-19 of
    ``a.jsonl`` hold a lone surrogate (unless ``lone_surrogates=False``), line 20 an escaped pair.
    """
    records = [
        *(
            {"event_id": f"b{i}", "user_id": "big", "event_time": i, "amount": _BIG}
            for i in (1, 2, 3)
        ),
        *(
            {"event_id": f"n{i}", "user_id": "neg", "event_time": i, "amount": -_BIG}
            for i in (4, 5, 6)
        ),
        {"event_id": "n7", "user_id": "neg", "event_time": 7, "amount": 7},
        # past int64 (JSON allows it): pyarrow reads doubles, the sum is still exact
        *({"event_id": f"h{v}", "user_id": "huge", "event_time": 8, "amount": v} for v in _HUGE),
        {"event_id": 7, "user_id": 1, "event_time": 61, "amount": 1},
        {"event_id": "7", "user_id": "1", "event_time": 62, "amount": 100},  # id 7 again: duplicate
        {"event_id": 8, "user_id": "1", "event_time": 63, "amount": 2},
        {"event_id": 9, "user_id": 1.0, "event_time": 64, "amount": 3},
        {"event_id": 10, "user_id": 2.5, "event_time": 65, "amount": 4},
        {"event_id": 11, "user_id": "x", "event_time": 66, "amount": 5},
    ]
    lines = [json.dumps(r).encode() for r in records]
    if lone_surrogates:
        lines += [
            b'{"event_id":"s1","user_id":"\\ud800","event_time":8,"amount":1}',
            b'{"event_id":"x\\udc00","user_id":"big","event_time":9,"amount":1}',
            b'{"event_id":"s3","user_id":"big","event_time":10,"amount":1,"note":{"n":"\\udfff"}}',
        ]
    lines.append(
        b'{"event_id":"s4","user_id":"big","event_time":11,"amount":1,"e":"\\ud83d\\ude00"}'
    )
    ints = [{"event_id": f"i{k}", "user_id": k, "event_time": 121, "amount": k} for k in (5, 6)]
    (folder / "a.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    (folder / "b.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in ints))
    return str(folder / "*.jsonl")


def _hostile_options():
    return _options(
        event_time=EventTimeExtractor(field="event_time", unit="s"),
        metrics="count,sum:amount,min:amount,max:amount,mean:amount",
    )


def _at(seconds):
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=seconds)


_HOSTILE_ROWS = [  # (window start, key, count, sum, min, max, mean): int sums exact, then float
    (_at(0), "big", 4, float(3 * _BIG + 1), 1.0, float(_BIG), (3 * _BIG + 1) / 4),
    (_at(0), "neg", 4, float(-3 * _BIG + 7), float(-_BIG), 7.0, (-3 * _BIG + 7) / 4),
    (_at(0), "huge", 3, 6.0, float(-(2**63) - 4), float(2**63 + 1), 2.0),
    (_at(60), "1", 3, 6.0, 1.0, 3.0, 2.0),
    (_at(60), "2.5", 1, 4.0, 4.0, 4.0, 4.0),
    (_at(60), "x", 1, 5.0, 5.0, 5.0, 5.0),
    (_at(120), "5", 1, 5.0, 5.0, 5.0, 5.0),
    (_at(120), "6", 1, 6.0, 6.0, 6.0, 6.0),
]


def _hostile_row():
    columns = ("window_start", "key", "count", "sum_amount", "min_amount", "max_amount")
    return beam.Map(lambda r: (*(r[c] for c in columns), r["mean_amount"]))


@pytest.mark.parametrize(("parse_bytes", "lone"), [(None, False), (None, True), (64, True)])
def test_hostile_values_give_the_same_exact_rows_and_dead_letters_on_both_engines(
    tmp_path, monkeypatch, parse_bytes, lone
):
    """Int sums past int64 are exact, keys are text (1, "1", 1.0 one key), surrogates dead letters.

    The record path and the columnar path give exactly these rows; each line holding a lone
    surrogate (in the key, the id or any other field) is one ``decode`` dead letter naming it.
    With ``parse_bytes`` every line is a piece of its own, so int key columns take the fast path.
    """
    if parse_bytes is not None:
        monkeypatch.setattr(jsonblocks, "PARSE_BYTES", parse_bytes)
    pattern = _hostile_files(tmp_path, lone_surrogates=lone)
    record_p = TestPipeline(runner="FnApiRunner", blocking=True)
    read = record_p | ReadFromFiles(pattern, format="json")
    record = read.main | ComputeWindowedMetrics(**_hostile_options())
    assert_that(record.rows | _hostile_row(), equal_to(_HOSTILE_ROWS), label="RecordRows")
    assert_that(record.dead_letter, partial(_collect, "hostile_record"), label="RecordDead")
    record_result = record_p.run()
    columnar_p = TestPipeline(runner="FnApiRunner", blocking=True)
    fast = columnar_p | ComputeWindowedMetricsColumnar(
        pattern=pattern, file_format="json", **_hostile_options()
    )
    assert_that(fast.rows | _hostile_row(), equal_to(_HOSTILE_ROWS), label="ColumnarRows")
    assert_that(fast.dead_letter, partial(_collect, "hostile_columnar"), label="ColumnarDead")
    columnar_result = columnar_p.run()

    letters = sorted(map(_letter_key, _SEEN["hostile_columnar"]))
    assert letters == sorted(map(_letter_key, _SEEN["hostile_record"]))
    letters.sort(key=lambda letter: letter[4]["line"])
    assert [(stage, kind, origin["line"]) for stage, kind, _, _, origin in letters] == [
        ("decode", "InvalidTextError", line) for line in ((17, 18, 19) if lone else ())
    ]
    assert [message.split(" at ")[0] for _, _, message, _, _ in letters] == [
        "field 'user_id' holds a lone surrogate '\\ud800'",
        "field 'event_id' holds a lone surrogate '\\udc00'",
        "field 'note.n' holds a lone surrogate '\\udfff'",
    ][: 3 if lone else 0]
    counts = Accounting.from_result(columnar_result).to_dict()
    assert counts == Accounting.from_result(record_result).to_dict()
    dead = 3 if lone else 0
    assert (counts["records_in"], counts["duplicate"], counts["dead_letter"]) == (
        19 + dead,
        1,
        dead,
    )


@pytest.mark.parametrize("output_format", ["parquet", "avro"])
def test_hostile_values_write_the_record_paths_bytes_and_a_string_key_column(
    tmp_path, output_format, engine_files
):
    """Window files of exact big sums and text keys: the record path's bytes; keys are strings."""
    pattern = _hostile_files(tmp_path)
    files = engine_files(pattern, _hostile_options(), output_format)
    assert len(files["record"]) == 3
    assert files["columnar"] == files["record"]
    for name in files["record"]:
        path = tmp_path / "record" / name
        if output_format == "parquet":
            table = pq.read_table(path)
            assert table.schema.field("key").type == pa.string()
            assert table.schema.field("sum_amount").type == pa.float64()
            rows = table.to_pylist()
        else:
            import fastavro

            with open(path, "rb") as handle:
                reader = fastavro.reader(handle)
                types = {f["name"]: f["type"] for f in reader.writer_schema["fields"]}
                rows = list(reader)
            assert (types["key"], types["sum_amount"]) == ("string", "double")
        assert all(isinstance(row["key"], str) for row in rows)
        if name.startswith("window_start=1970-01-01T00:00:00Z"):
            assert {row["key"]: row["sum_amount"] for row in rows} == {
                "big": float(3 * _BIG + 1),
                "neg": float(-3 * _BIG + 7),
                "huge": 6.0,
            }


@pytest.mark.parametrize("engine", [ComputeWindowedMetricsColumnar, ReplayWindowedMetricsColumnar])
def test_int_sums_past_int64_do_not_wrap_around(tmp_path, engine):
    """Three amounts of 6e18 for one key and window sum to 1.8e19 (int64 would wrap negative)."""
    path = tmp_path / "big.jsonl"
    lines = [
        {"event_id": f"e{i}", "user_id": "u", "event_time": i, "amount": _BIG} for i in (1, 2, 3)
    ]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in lines))
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | engine(pattern=str(path), file_format="json", **_hostile_options())
        assert_that(
            out.rows | beam.Map(lambda r: (r["count"], r["sum_amount"], r["mean_amount"])),
            equal_to([(3, 1.8e19, 6e18)]),
            label="ExactSum",
        )


def test_int_sums_stay_exact_when_merged_across_many_blocks(tmp_path, monkeypatch):
    """Extreme int64 amounts, one block per line: every partial merge keeps the sum exact."""
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", 1)  # each line is a block (and a partial)
    top, bottom = 2**63 - 1, -(2**63)
    amounts = [top] * 40 + [bottom] * 13 + [12345]
    path = tmp_path / "extreme.jsonl"
    path.write_bytes(
        b"".join(
            json.dumps({"event_id": f"e{i}", "user_id": "u", "event_time": 1, "amount": a}).encode()
            + b"\n"
            for i, a in enumerate(amounts)
        )
    )
    with TestPipeline(runner="FnApiRunner") as p:
        out = p | ComputeWindowedMetricsColumnar(
            pattern=str(path), file_format="json", **_hostile_options()
        )
        assert_that(
            out.rows | beam.Map(lambda r: (r["count"], r["sum_amount"], r["mean_amount"])),
            equal_to([(len(amounts), float(sum(amounts)), sum(amounts) / len(amounts))]),
            label="ExactAcrossBlocks",
        )


def test_only_a_dofn_that_deduplicates_whole_files_asks_their_size(tmp_path, monkeypatch):
    """The one-step DoFn sizes its id table from each file's size (one metadata request per
    file); the parallel path's decode and the stream replay never deduplicate with it, so they
    do not ask."""
    from headwater.columnar.batch import ComputeColumnarFn
    from headwater.columnar.parallel import _DecodeSplitFn
    from headwater.columnar.replay import ReplayColumnarFn, ReplayState
    from headwater.columnar.state import ColumnarState

    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(_line(f"e{i}", i) for i in range(50)))
    asked = []
    monkeypatch.setattr(reader, "file_size", lambda p: asked.append(p) or 1_000_000)
    options = ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format="json", **_options()
    )._options
    for fn, state, want in (
        (ComputeColumnarFn(options), ColumnarState(options), [str(path)]),
        (_DecodeSplitFn(options, 2), ColumnarState(options), []),
        (ReplayColumnarFn(options, 1_000), ReplayState(options, 1_000), []),
    ):
        asked.clear()
        for _ in fn._json_blocks(state, str(path)):
            pass
        assert asked == want, type(fn).__name__
        assert state.counts["records_in"] == 50


def test_dead_letters_written_by_the_dofn_leave_its_dead_letter_output_empty(tmp_path):
    """``dead_letter_output``: the batch DoFn writes the letters into the folder when its input
    ends (with empty ``failed_at``) and emits none; the counters still count them."""
    good = [
        {"event_id": f"e{i}", "user_id": "u", "event_time": 1_000 * i, "amount": 1}
        for i in range(3)
    ]
    lines = [json.dumps(good[0]), "{oops", json.dumps(good[1]), "[1]", json.dumps(good[2])]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    p = TestPipeline(runner="FnApiRunner")
    out = p | ComputeWindowedMetricsColumnar(
        pattern=str(path),
        file_format="json",
        dead_letter_output=str(tmp_path / "dead"),
        dead_letter_shards=2,
        **_options(),
    )
    assert_that(out.dead_letter, equal_to([]), label="none emitted")
    counts = Accounting.from_result(p.run()).to_dict()
    assert counts["dead_letter"] == 2
    assert counts["output"] == 3
    written = [
        json.loads(line)
        for file in sorted((tmp_path / "dead").glob("dead_letters-*-of-00002.jsonl"))
        for line in file.read_text().splitlines()
    ]
    assert sorted((row["origin"]["line"], row["stage"], row["failed_at"]) for row in written) == [
        (2, "decode", ""),
        (4, "decode", ""),
    ]


@pytest.mark.parametrize("engine", ["parallel", "replay"])
def test_engines_that_emit_their_dead_letters_refuse_to_write_them(tmp_path, engine):
    """Only the one-step batch DoFn writes dead letters itself: the others name the argument."""
    from headwater.columnar import ComputeWindowedMetricsParallel

    cls = ComputeWindowedMetricsParallel if engine == "parallel" else ReplayWindowedMetricsColumnar
    with pytest.raises(ValueError, match=r"dead_letter_output: .* emits its dead letters"):
        cls(
            pattern=str(tmp_path / "*.jsonl"),
            file_format="json",
            dead_letter_output=str(tmp_path / "dead"),
            **_options(),
        )


def test_window_parts_cut_the_held_windows_into_ranges_of_about_as_many_rows():
    """``window_parts``: contiguous ranges of window starts, every held window in one, of about
    as many partial rows each; never more ranges than windows."""
    from headwater.columnar.state import ColumnarState

    state = ColumnarState(
        ComputeWindowedMetricsColumnar(pattern="x.jsonl", file_format="json", **_options())._options
    )
    rows = {0: 5, 60: 1, 120: 1, 180: 3, 240: 2}  # window start -> partial rows held
    for start, count in rows.items():
        state._partials.append(pa.table({"w": pa.array([start] * count, type=pa.int64())}))
    assert state.held_rows == 12
    assert state.window_parts(1) == [(0, 240)]
    assert state.window_parts(2) == [(0, 60), (120, 240)]  # 6 rows and 6 rows
    parts = state.window_parts(3)
    assert parts == [(0, 0), (60, 180), (240, 240)]
    assert len(state.window_parts(9)) == 5  # one window per range at most
    every = state.window_parts(9)
    assert [start for first, last in every for start in rows if first <= start <= last] == [*rows]
