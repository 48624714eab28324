"""Tests for headwater.report: the offline HTML picture of a run."""

from __future__ import annotations

import base64
import builtins
import datetime as dt
import html
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.transforms import window as beam_window

from headwater.core.deadletter import dead_letter_for
from headwater.io.deadletterio import DEAD_LETTER_AVRO_SCHEMA, WriteDeadLetters
from headwater.io.fileio import WriteWindowedFiles
from headwater.report import MissingReportDependencyError, write_report

pytest.importorskip("plotly")

SECRET = "alice@example.com-SECRET-PAYLOAD"
UTC = dt.timezone.utc
W1, W2, W3 = "2023-11-14T22:13:00Z", "2023-11-14T22:14:00Z", "2023-11-14T22:15:00Z"


def _ts(iso: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _summary(**overrides):
    summary = {
        "pipeline": "windowed_metrics",
        "runner": "FnApiRunner",
        "records_in": 1234,
        "output": 1111,
        "duplicate": 77,
        "dead_letter": 39,
        "late": 7,
        "identity_holds": True,
        "wall_s": 3.5,
        "outputs": {"rows": "out/"},  # an extra key the report ignores
    }
    summary.update(overrides)
    return summary


def _metric_rows(start: str, counts: list[int]) -> list[dict]:
    end = (_ts(start) + dt.timedelta(seconds=60)).isoformat().replace("+00:00", "Z")
    return [
        {
            "window_start": _ts(start),
            "window_end": _ts(end),
            "key": f"user-{i}",
            "count": c,
            "sum_amount": 1.5 * c,
        }
        for i, c in enumerate(counts)
    ]


def _write_parquet_windows(rows_dir: Path) -> None:
    """Metric rows, WriteWindowedFiles layout: W1 = 600+300, W2 = 111 on time + 100 later."""
    for start, name, counts in (
        (W1, "part-00000-of-00002.parquet", [600]),
        (W1, "part-00001-of-00002.parquet", [300]),
        (W2, "part-00000-of-00002.parquet", [111]),
        (W2, "part-00000-of-00002-pane-001.parquet", [60, 40]),
    ):
        folder = rows_dir / f"window_start={start}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(_metric_rows(start, counts)), folder / name)
    # A writer's temp file and folder must be ignored.
    pq.write_table(pa.Table.from_pylist(_metric_rows(W3, [99_999])), rows_dir / ".tmp-x.parquet")
    (rows_dir / f".tmp-window_start={W3}").mkdir()


def _write_avro_records(rows_dir: Path) -> None:
    """Raw records (no count column), Avro: W1 holds 3 rows, W3 holds 2."""
    schema = {
        "type": "record",
        "name": "Event",
        "fields": [{"name": "event_id", "type": "string"}, {"name": "amount", "type": "double"}],
    }
    for start, n in ((W1, 3), (W3, 2)):
        folder = rows_dir / f"window_start={start}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = [{"event_id": f"e{start}{i}", "amount": 1.0} for i in range(n)]
        with open(folder / "part-00000-of-00001.avro", "wb") as handle:
            fastavro.writer(handle, schema, rows)


def _letter(stage, error, *, payload=SECRET.encode(), line=1, lateness_ms=None):
    letter = dead_letter_for(b"", stage=stage, error=error, lateness_ms=lateness_ms)
    row = letter.to_dict()
    row["payload_b64"] = base64.b64encode(payload).decode()
    row["origin"] = {"file": "data/events.jsonl", "line": line}
    return row


def _write_dead_letters_jsonl(folder: Path) -> None:
    """39 dead letters: 30 decode/JSONDecodeError, 8 event_time/KeyError, 1 with <script>."""
    rows = [_letter("decode", ValueError("Expecting value"), line=i) for i in range(30)]
    for row in rows:
        row["error_type"] = "JSONDecodeError"
    rows += [_letter("event_time", KeyError("event_time"), line=100 + i) for i in range(8)]
    rows.append(_letter("validate", "<script>alert('x')</script> bad amount", line=999))
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / "dead_letters-00000-of-00001.jsonl").write_text(text)
    (folder / ".tmp-dead_letters-00000-of-00001.jsonl-abc").write_text(text)


def _write_late_avro(folder: Path, lateness: list[int]) -> None:
    records = []
    for i, ms in enumerate(lateness):
        row = _letter("late", "late", line=i, lateness_ms=ms)
        row["payload"] = SECRET.encode()
        del row["payload_b64"]
        row["window"] = f"{W1}/{W2}"
        records.append(row)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "dead_letters-00000-of-00001.avro", "wb") as handle:
        fastavro.writer(handle, DEAD_LETTER_AVRO_SCHEMA, records)


#: 7 late records: 2 under a second, 3 in 10s-30s, 1 in 1m-5m, 1 over a day.
LATENESS = [250, 900, 12_000, 15_000, 29_999, 120_000, 90_000_000]


@pytest.fixture
def run_dirs(tmp_path):
    rows, dlq, late = tmp_path / "out", tmp_path / "dlq", tmp_path / "late"
    _write_parquet_windows(rows)
    _write_dead_letters_jsonl(dlq)
    _write_late_avro(late, LATENESS)
    return rows, dlq, late


def _report(tmp_path, rows_dir, dlq_dir, late_dir, **summary_overrides) -> str:
    path = write_report(
        str(tmp_path / "report" / "run.html"),
        summary=_summary(**summary_overrides),
        rows_dir=None if rows_dir is None else str(rows_dir),
        dead_letter_dir=None if dlq_dir is None else str(dlq_dir),
        late_dir=None if late_dir is None else str(late_dir),
        title="demo <run>",
    )
    return Path(path).read_text(encoding="utf-8")


def _figure_data(page: str, div_id: str) -> list[dict]:
    """The traces plotted into ``div_id``."""
    start = page.index(f'Plotly.newPlot(                        "{div_id}",')
    start = page.index("[", start)
    data, _end = json.JSONDecoder().raw_decode(page[start:])
    return data


def _without_plotly_library(page: str) -> str:
    """The page with the inlined plotly.js library (one script block) removed."""
    blocks = re.findall(r"<script[^>]*>.*?</script>", page, flags=re.S)
    library = max(blocks, key=len)
    assert len(library) > 1_000_000, "plotly.js is inlined"
    return page.replace(library, "")


def test_report_is_one_offline_file_with_plotly_inlined_once(tmp_path, run_dirs):
    """The page exists, inlines plotly.js exactly once and references nothing external."""
    page = _report(tmp_path, *run_dirs)
    assert (tmp_path / "report" / "run.html").is_file()
    assert not [p for p in (tmp_path / "report").iterdir() if p.name.startswith(".tmp-")]
    assert page.count("Plotly.newPlot") == 4
    assert len([b for b in re.findall(r"<script[^>]*>.*?</script>", page, re.S) if len(b) > 1e6])
    assert page.count("window.PlotlyConfig") == 1
    lower = page.lower()
    assert "<script src=" not in lower
    assert 'src="http' not in lower
    assert "src='http" not in lower
    assert "@import" not in lower
    assert "cdn.plot.ly/plotly" not in lower
    rest = _without_plotly_library(page).lower()
    assert "http://" not in rest
    assert "https://" not in rest
    assert "<link" not in rest


def test_header_shows_accounting_and_identity_holds(tmp_path, run_dirs):
    """The accounting numbers appear and a balanced summary is marked as holding."""
    page = _report(tmp_path, *run_dirs)
    for number in ("1,234", "1,111", "77", "39"):
        assert f"<td>{number}</td>" in page
    assert 'class="identity ok"' in page
    assert "the identity holds" in page
    assert "windowed_metrics" in page
    assert "FnApiRunner" in page
    assert "<title>demo &lt;run&gt;</title>" in page


def test_header_marks_an_unbalanced_summary_red(tmp_path, run_dirs):
    """records_in that does not add up renders the identity as not holding."""
    page = _report(tmp_path, *run_dirs, records_in=1300)
    assert 'class="identity bad"' in page
    assert "1,300" in page
    assert "does NOT hold" in page


def test_header_with_missing_counter_says_identity_cannot_be_checked(tmp_path):
    """A summary without `late` cannot be checked, and the page says which key is missing."""
    summary = _summary()
    del summary["late"]
    path = write_report(
        str(tmp_path / "r.html"),
        summary=summary,
        rows_dir=None,
        dead_letter_dir=None,
        late_dir=None,
    )
    page = Path(path).read_text(encoding="utf-8")
    assert 'class="identity unknown"' in page
    assert "no integer late in the summary" in page


def test_outcomes_chart_holds_the_four_outcome_counts(tmp_path, run_dirs):
    """The donut's values are the summary's four outcomes, in order."""
    page = _report(tmp_path, *run_dirs)
    [donut] = _figure_data(page, "hw-outcomes")
    assert donut["labels"] == ["output", "duplicate", "dead_letter", "late"]
    assert donut["values"] == [1111, 77, 39, 7]
    assert donut["text"][3] == "late<br>7 (0.567%)"


def test_empty_outcomes_get_no_slice_label(tmp_path):
    """An outcome of 0 has no label on the donut; missing folders leave found-in-files blank."""
    page = _report(tmp_path, tmp_path / "missing", None, None, records_in=1227, late=0)
    [donut] = _figure_data(page, "hw-outcomes")
    assert donut["text"] == [
        "output<br>1,111 (90.5%)",
        "duplicate<br>77 (6.28%)",
        "dead_letter<br>39 (3.18%)",
        "",
    ]
    assert "<td><code>output</code></td><td>1,111</td><td></td>" in page


def test_windows_are_counted_from_the_count_column_per_window(tmp_path, run_dirs):
    """Parquet metric rows add their count per window; later panes are stacked separately."""
    page = _report(tmp_path, *run_dirs)
    assert "2 windows, 4 files, 5 rows, 1,111 output records" in page
    assert f"<td><code>{W1}</code></td><td>2</td><td>2</td><td>900</td><td>0</td>" in page
    assert f"<td><code>{W2}</code></td><td>2</td><td>3</td><td>111</td><td>100</td>" in page
    assert W3 not in page  # only in the ignored .tmp- file and folder
    on_time, later = _figure_data(page, "hw-windows")
    assert on_time["x"] == ["2023-11-14 22:13:00", "2023-11-14 22:14:00"]
    assert on_time["y"] == [900, 111]
    assert (later["name"], later["y"]) == ("later panes", [0, 100])


def test_windows_without_count_column_count_rows_from_avro(tmp_path):
    """Avro raw records (no count column) count one per row."""
    rows = tmp_path / "out"
    _write_avro_records(rows)
    page = _report(tmp_path, rows, None, None, records_in=5, output=5, duplicate=0)
    assert "2 windows, 2 files, 5 rows, 5 output records" in page
    assert f"<td><code>{W3}</code></td><td>1</td><td>2</td><td>2</td><td>0</td>" in page


def test_found_in_files_column_cross_checks_the_summary(tmp_path, run_dirs):
    """The accounting table shows what the files hold next to the summary's counters."""
    page = _report(tmp_path, *run_dirs)
    assert "<td><code>output</code></td><td>1,111</td><td>1,111</td>" in page
    assert "<td><code>dead_letter</code></td><td>39</td><td>39</td>" in page
    assert "<td><code>late</code></td><td>7</td><td>7</td>" in page


def test_lateness_is_bucketed(tmp_path, run_dirs):
    """Late envelopes' lateness_ms lands in the fixed buckets, empty ones in range included."""
    page = _report(tmp_path, *run_dirs)
    buckets = re.search(r'class="buckets">(.*?)</table>', page, re.S)
    assert buckets
    cells = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", buckets.group(1))
    assert cells == [
        ("&lt; 1s", "2"),
        ("1s-5s", "0"),
        ("5s-10s", "0"),
        ("10s-30s", "3"),
        ("30s-1m", "0"),
        ("1m-5m", "1"),
        ("5m-15m", "0"),
        ("15m-1h", "0"),
        ("1h-6h", "0"),
        ("6h-1d", "0"),
        ("&gt;= 1d", "1"),
    ]
    assert "7 late records: min 250 ms, median 15.0 s, max 25.0 h" in page


def test_late_envelopes_in_the_dead_letter_folder_count_as_late(tmp_path):
    """With one shared folder, envelopes with lateness_ms are late, the others dead letters."""
    shared = tmp_path / "dlq"
    _write_dead_letters_jsonl(shared)
    _write_late_avro(shared, [2_000, 3_000])
    page = _report(tmp_path, None, shared, shared)
    assert "2 late records" in page
    assert "39 dead letters, 3 reasons" in page


def test_late_folder_inside_the_dead_letter_folder_is_counted_once(tmp_path):
    """The default late folder (<dead_letter>/late) adds its envelopes once, not twice."""
    dlq = tmp_path / "dlq"
    _write_dead_letters_jsonl(dlq)
    _write_late_avro(dlq / "late", [2_000, 3_000, 4_000])
    page = _report(tmp_path, None, dlq, dlq / "late")
    assert "3 late records" in page
    assert "39 dead letters, 3 reasons" in page
    assert "<td><code>late</code></td><td>7</td><td>3</td>" in page


def test_header_shows_the_engine_and_the_run_configuration(tmp_path):
    """The summary's engine and config (window, key, horizon, source) are on the page, escaped."""
    config = {
        "source": "files",
        "input": "in/<x>*.jsonl",
        "window": "fixed:60s",
        "key_field": "user_id",
        "dedup_horizon": "10m",
    }
    page = _report(tmp_path, None, None, None, engine="columnar", config=config)
    assert "<b>engine</b> columnar" in page
    assert "<h2>Configuration</h2>" in page
    for flag, value in config.items():
        assert f"<td><code>--{flag}</code></td><td>{html.escape(value)}</td>" in page


def test_a_real_run_reports_its_engine_and_configuration(tmp_path):
    """windowed_metrics --report: the summary and the page name the engine (why) and window."""
    from headwater.pipelines import windowed_metrics

    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 3}", "event_time": 1_700_000_000_000 + i * 1000}
        for i in range(50)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    base = [
        "--source=files",
        f"--input={tmp_path / 'in.jsonl'}",
        "--event_time_field=event_time",
        "--id_field=event_id",
        "--key_field=user_id",
        "--window=fixed:60s",
        "--metrics=count",
    ]
    for engine, extra in (("columnar", []), ("record", ["--dedup_keep=last"])):
        run = tmp_path / engine
        summary = windowed_metrics.run(
            [
                *base,
                *extra,
                f"--output={run / 'out'}",
                f"--dead_letter={run / 'dlq'}",
                f"--report={run / 'report.html'}",
            ]
        )
        assert summary["engine"] == engine
        assert summary["config"]["window"] == "fixed:60s"
        assert "kafka_config" not in summary["config"]
        page = (run / "report.html").read_text(encoding="utf-8")
        assert f"<b>engine</b> {engine}" in page
        assert ("<b>record path because</b> dedup is not keep=" in page) == (engine == "record")
        assert "<td><code>--key_field</code></td><td>user_id</td>" in page


def test_dead_letter_reasons_and_examples_are_shown(tmp_path, run_dirs):
    """Reasons are counted by stage and error type; examples list stage, type, message, origin."""
    page = _report(tmp_path, *run_dirs)
    assert "39 dead letters, 3 reasons" in page
    assert "<td>decode</td><td>JSONDecodeError</td><td>30</td>" in page
    assert "<td>event_time</td><td>KeyError</td><td>8</td>" in page
    assert "<td>validate</td><td>Rejected</td><td>1</td>" in page
    [bars] = _figure_data(page, "hw-dead-letters")
    assert bars["y"][-1] == "decode / JSONDecodeError"
    assert bars["x"][-1] == 30
    examples = re.search(r'class="examples">(.*?)</table>', page, re.S)
    assert examples
    assert examples.group(1).count("<tr>") == 1 + 20
    assert "file=data/events.jsonl, line=0" in examples.group(1)


def test_examples_cover_every_reason_before_repeating_one(tmp_path, run_dirs):
    """The rare reason (39th line) is among the 20 examples, taken round-robin by frequency."""
    page = _report(tmp_path, *run_dirs)
    examples = re.search(r'class="examples">(.*?)</table>', page, re.S)
    assert examples
    stages = re.findall(r"<tr><td>([a-z_]+)</td>", examples.group(1))
    assert stages[:6] == ["decode", "event_time", "validate", "decode", "event_time", "decode"]
    assert stages.count("event_time") == 8
    assert stages.count("decode") == 11
    assert "line=999" in examples.group(1)


def test_payloads_never_appear_in_the_page(tmp_path, run_dirs):
    """Neither the planted payload string nor its base64 form is in the page."""
    page = _report(tmp_path, *run_dirs)
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert SECRET not in page
    assert encoded not in page
    assert "payload_b64" not in page


def test_markup_in_error_messages_is_escaped(tmp_path):
    """A <script> in an error message is shown as text, never as markup."""
    dlq = tmp_path / "dlq"
    rows = [_letter("validate", "<script>alert('x')</script> bad amount")]
    dlq.mkdir()
    (dlq / "dl.jsonl").write_text(json.dumps(rows[0]) + "\n")
    page = _without_plotly_library(_report(tmp_path, None, dlq, None))
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; bad amount" in page
    assert "<script>alert" not in page


def test_long_error_messages_are_truncated(tmp_path):
    """Messages longer than 160 characters are cut with an ellipsis."""
    dlq = tmp_path / "dlq"
    dlq.mkdir()
    (dlq / "dl.jsonl").write_text(json.dumps(_letter("decode", "x" * 500 + "TAIL")) + "\n")
    page = _report(tmp_path, None, dlq, None)
    assert "x" * 160 + "..." in page
    assert "TAIL" not in page


def test_empty_and_missing_inputs_render_none_notes(tmp_path):
    """No folders, missing folders and empty folders give short notes, not errors."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for rows, dlq, late in ((None, None, None), (tmp_path / "nope", tmp_path / "no", empty)):
        page = _report(tmp_path, rows, dlq, late, records_in=0, output=0, duplicate=0)
        page = page.replace("dead_letter=0", "")
        assert page.count('class="none"') == 3
        assert "None: no late records" in page
        assert "None: no dead letters" in page


def test_all_zero_summary_renders_without_charts(tmp_path):
    """An empty run draws no chart and so inlines no plotly.js."""
    zero = dict.fromkeys(("records_in", "output", "duplicate", "dead_letter", "late"), 0)
    path = write_report(
        str(tmp_path / "r.html"), summary=zero, rows_dir=None, dead_letter_dir=None, late_dir=None
    )
    page = Path(path).read_text(encoding="utf-8")
    assert "<script" not in page
    assert "No outcomes to show" in page
    assert 'class="identity ok"' in page


def test_unreadable_files_are_listed_not_fatal(tmp_path):
    """A corrupt Parquet file and a non-JSON dead-letter line are listed under Files not read."""
    rows = tmp_path / "out" / f"window_start={W1}"
    rows.mkdir(parents=True)
    (rows / "part-00000-of-00001.parquet").write_bytes(b"not parquet")
    dlq = tmp_path / "dlq"
    dlq.mkdir()
    (dlq / "dl.jsonl").write_text("{not json\n")
    page = _report(tmp_path, tmp_path / "out", dlq, None)
    assert "Files not read" in page
    assert "part-00000-of-00001.parquet" in page
    assert "dl.jsonl: JSONDecodeError" in page


def test_report_is_deterministic(tmp_path, run_dirs):
    """Writing the same report twice gives the same bytes."""
    first = _report(tmp_path, *run_dirs)
    second = _report(tmp_path, *run_dirs)
    assert first == second


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"path": ""}, "path=''"),
        ({"summary": [1, 2]}, "summary=[1, 2]"),
        ({"rows_dir": ""}, "rows_dir=''"),
        ({"dead_letter_dir": 3}, "dead_letter_dir=3"),
        ({"late_dir": " "}, "late_dir=' '"),
    ],
)
def test_bad_arguments_are_rejected_naming_the_value(tmp_path, kwargs, named):
    """Every validation error names the bad argument and value."""
    arguments = {
        "path": str(tmp_path / "r.html"),
        "summary": _summary(),
        "rows_dir": None,
        "dead_letter_dir": None,
        "late_dir": None,
    }
    arguments.update(kwargs)
    path = arguments.pop("path")
    with pytest.raises(ValueError, match=re.escape(named)):
        write_report(path, **arguments)


def test_missing_plotly_raises_naming_package_and_extra(tmp_path, monkeypatch):
    """Without plotly, the error names the package and the `report` extra."""
    real_import = builtins.__import__

    def no_plotly(name, *args, **kwargs):
        if name.startswith("plotly"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_plotly)
    with pytest.raises(MissingReportDependencyError, match=r"'plotly'.*headwater\[report\]"):
        write_report(
            str(tmp_path / "r.html"),
            summary=_summary(),
            rows_dir=None,
            dead_letter_dir=None,
            late_dir=None,
        )


@pytest.mark.slow
def test_report_reads_files_written_by_the_real_writers(tmp_path):
    """Files from WriteWindowedFiles and WriteDeadLetters are read back into the page."""
    rows, dlq = tmp_path / "out", tmp_path / "dlq"
    base = _ts(W1).timestamp()
    metric_rows = [
        ({"key": "a", "count": 4}, base + 5),
        ({"key": "b", "count": 6}, base + 10),
        ({"key": "a", "count": 5}, base + 65),
    ]
    letters = [dead_letter_for(SECRET.encode(), stage="decode", error=ValueError("bad json"))]
    letters.append(
        dead_letter_for(b"late", stage="late", error="late", window="x/y", lateness_ms=45_000)
    )
    with beam.Pipeline("FnApiRunner") as p:
        _ = (
            p
            | "Rows" >> beam.Create(metric_rows)
            | "Stamp" >> beam.Map(lambda kv: beam_window.TimestampedValue(kv[0], kv[1]))
            | "Fixed" >> beam.WindowInto(beam_window.FixedWindows(60))
            | "Write" >> WriteWindowedFiles(str(rows), format="avro")
        )
        _ = p | "Letters" >> beam.Create(letters) | "DLQ" >> WriteDeadLetters(str(dlq))
    page = _report(
        tmp_path, rows, dlq, None, records_in=17, output=15, duplicate=0, dead_letter=1, late=1
    )
    assert "2 windows, 2 files, 3 rows, 15 output records" in page
    assert f"<td><code>{W1}</code></td><td>1</td><td>2</td><td>10</td><td>0</td>" in page
    assert "<td>decode</td><td>ValueError</td><td>1</td>" in page
    assert "1 late records: min 45.0 s" in page
    assert 'class="identity ok"' in page
    assert SECRET not in page


# --------------------------------------------------------------------------------------------
# Rendering in a real browser


class _RecordingProxy(http.server.BaseHTTPRequestHandler):
    """An HTTP proxy that answers 502 to everything and records what was asked."""

    requests: list[str] = []

    def _refuse(self):
        self.requests.append(f"{self.command} {self.path}")
        self.send_error(502)

    do_GET = do_POST = do_HEAD = do_CONNECT = _refuse  # noqa: N815 - http.server's names

    def log_message(self, format, *args):
        pass


_CHROMIUM_OWN = re.compile(
    r"^\S+ (https?://)?[a-z0-9.-]*\.(google\.com|googleapis\.com|gvt1\.com)[:/]"
)


def _chromium() -> str:
    """Chromium's path; on CI (``CI=true``) a missing browser fails the test, elsewhere skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"  # where make tools installs it (Debian's package)
    if found is None:
        message = "chromium is not installed: `make tools` installs it (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message + "; CI must run the browser test, not skip it")
        pytest.skip(message)
    return found


def test_missing_chromium_fails_under_ci_and_skips_elsewhere(monkeypatch):
    """Without a browser the render test fails when CI=true (never a silent skip on CI)."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    monkeypatch.setattr(os, "access", lambda *_args: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser test"):
        _chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="make tools"):
        _chromium()


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_network(tmp_path, run_dirs):
    """Headless Chromium renders the page to a non-blank screenshot and requests nothing."""
    chromium = _chromium()
    page = write_report(
        str(tmp_path / "run.html"),
        summary=_summary(),
        rows_dir=str(run_dirs[0]),
        dead_letter_dir=str(run_dirs[1]),
        late_dir=str(run_dirs[2]),
    )
    screenshot = tmp_path / "report.png"
    _RecordingProxy.requests = []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingProxy)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--proxy-server=http://127.0.0.1:{proxy.server_address[1]}",
                "--proxy-bypass-list=<-loopback>",
                f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}",
                "--virtual-time-budget=5000",
                f"--screenshot={screenshot}",
                "--window-size=1200,2400",
                f"file://{os.path.abspath(page)}",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert screenshot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    # Chromium's own housekeeping (clock sync, update checks) goes to Google; the page must
    # not ask for anything else.
    page_requests = [r for r in _RecordingProxy.requests if not _CHROMIUM_OWN.search(r)]
    assert page_requests == []
    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(png) > 50_000  # charts drawn; a blank 1200x2400 page compresses to a few kB
