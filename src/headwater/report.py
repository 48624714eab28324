"""A picture of a run: one self-contained HTML page from the run summary and the files it wrote.

Over 600 lines: about 150 of them are the page's own CSS and markup, kept beside the code that
fills them so the page is one self-contained file written by one function.

Inputs, all read after the run has finished (plain Python, no Beam pipeline):

* ``summary`` -- the run summary dict the pipelines produce (``pipeline``, ``runner``,
  ``engine`` and ``engine_reason`` when the record path ran, ``records_in``, ``output``,
  ``duplicate``, ``dead_letter``, ``late``, ``wall_s``,
  and ``config``: the flags that shape the result -- source, window, key, dedup horizon ...).
  Unknown keys are ignored; missing ones are shown as "-".
* ``rows_dir`` -- the output folder of
  :class:`~headwater.io.fileio.WriteWindowedFiles`: Parquet (``*.parquet``) or Avro (``*.avro``)
  files under ``window_start=<RFC 3339>/`` (plus ``window_end=...`` for merging windows, or
  ``window=global``). A row contributes its ``count`` column when the files have one (metric rows
  of ``windowed_metrics``), else 1 (raw records of ``stream_etl``).
* ``dead_letter_dir`` and ``late_dir`` -- folders of
  :class:`~headwater.io.deadletterio.WriteDeadLetters`: JSON lines (``*.jsonl``, one
  :meth:`DeadLetter.to_dict() <headwater.core.deadletter.DeadLetter.to_dict>` per line) or
  Avro (``*.avro``). Every envelope in ``late_dir``, and every envelope anywhere with
  ``lateness_ms`` set, counts as late; the others are dead letters. The two may be one folder,
  and the late folder may lie inside the dead-letter folder (the pipelines' default,
  ``<dead_letter>/late``): each file is read once.

Writers' temporary files and folders (``.tmp-*``) are skipped everywhere. A folder that is
``None``, missing or empty renders a short "none" note; a file that cannot be read is listed
under "Files not read" instead of failing the report (the report runs after the data is safe).

Output: one HTML file, written atomically (temp file + rename) and deterministic for the same
inputs, that needs no network: plotly.js is inlined once, there are no external fonts, images,
stylesheets or links. It shows (1) the accounting table and whether ``records_in == output +
duplicate + dead_letter + late`` holds, (2) the four outcomes as a donut, (3) per-window output
over event time (on-time pane and later panes stacked), (4) the lateness distribution in fixed
buckets (1 s ... 1 d), (5) dead letters by stage and error type and :data:`MAX_EXAMPLES`
examples (the first ones of each reason, taken in turn, so a rare reason is not hidden).
Payloads never reach the page (they may hold personal data); every string taken from the files
is HTML-escaped.

Needs plotly (the ``report`` extra: ``pip install 'headwater[report]'``).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import os
import re
import statistics
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "write_report",
    "MissingReportDependencyError",
    "LATENESS_BUCKETS",
    "MAX_EXAMPLES",
]

#: How many dead-letter examples the page lists.
MAX_EXAMPLES = 20

#: Upper bounds (milliseconds, exclusive) and labels of the lateness histogram's buckets; the
#: last bucket is open-ended.
LATENESS_BUCKETS: tuple[tuple[float, str], ...] = (
    (1_000, "< 1s"),
    (5_000, "1s-5s"),
    (10_000, "5s-10s"),
    (30_000, "10s-30s"),
    (60_000, "30s-1m"),
    (300_000, "1m-5m"),
    (900_000, "5m-15m"),
    (3_600_000, "15m-1h"),
    (21_600_000, "1h-6h"),
    (86_400_000, "6h-1d"),
    (math.inf, ">= 1d"),
)

_OUTCOMES = ("output", "duplicate", "dead_letter", "late")
_COLORS = {
    "output": "#2e7d32",
    "duplicate": "#757575",
    "dead_letter": "#c62828",
    "late": "#ef6c00",
}
_TEMP_PREFIX = ".tmp-"
_MESSAGE_CHARS = 160
_WINDOW_TABLE_ROWS = 200
_PANE = re.compile(r"-pane-(\d+)")
_CONFIG = {"displaylogo": False, "responsive": True}


class MissingReportDependencyError(ImportError):
    """plotly is not installed; the message says which extra to install."""


# --------------------------------------------------------------------------------------------
# Reading the run's files


@dataclasses.dataclass
class _Window:
    label: str  # "2023-11-14T22:13:00Z", "2023-11-14T22:13:00Z .. 2023-11-14T22:20:00Z", "global"
    start: str | None  # RFC 3339, None for the global window
    files: int = 0
    rows: int = 0
    on_time: int = 0  # counted records in pane-0 files
    later: int = 0  # ... in later panes' files


@dataclasses.dataclass
class _Letters:
    """What the report keeps of the dead-letter files (never payloads)."""

    reasons: Counter = dataclasses.field(default_factory=Counter)  # (stage, error_type) -> n
    # (stage, error_type) -> its first MAX_EXAMPLES examples, in file order
    examples: dict[tuple[str, str], list[dict[str, str]]] = dataclasses.field(default_factory=dict)
    lateness_ms: list[int] = dataclasses.field(default_factory=list)
    late: int = 0
    late_unknown: int = 0  # late envelopes without lateness_ms
    dead: int = 0
    files: int = 0


def _walk(folder: str, suffixes: tuple[str, ...], skip: tuple[str, ...] = ()) -> Iterator[str]:
    """Files under ``folder`` ending in ``suffixes``, sorted, skipping ``.tmp-*`` entries and the
    folders in ``skip`` (real paths)."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(_TEMP_PREFIX)
            and os.path.realpath(os.path.join(root, d)) not in skip
        )
        for name in sorted(names):
            if not name.startswith(_TEMP_PREFIX) and name.lower().endswith(suffixes):
                yield os.path.join(root, name)


def _window_of(relative_dir: str) -> tuple[str, str | None]:
    parts = dict(
        part.split("=", 1) for part in relative_dir.replace(os.sep, "/").split("/") if "=" in part
    )
    if "window_start" in parts:
        start = parts["window_start"]
        end = parts.get("window_end")
        return (f"{start} .. {end}" if end else start), start
    if parts.get("window") == "global":
        return "global", None
    if "window_max" in parts:
        return f"max {parts['window_max']}", None
    return relative_dir.replace(os.sep, "/") or ".", None


def _count_parquet(path: str) -> tuple[int, int]:
    import pyarrow.parquet as pq

    handle = pq.ParquetFile(path)
    rows = handle.metadata.num_rows
    if "count" not in handle.schema_arrow.names:
        return rows, rows
    column = handle.read(columns=["count"]).column("count")
    total = sum(int(v) for v in column.to_pylist() if isinstance(v, (int, float)))
    return rows, total


def _count_avro(path: str) -> tuple[int, int]:
    import fastavro

    rows = total = 0
    with open(path, "rb") as handle:
        reader = fastavro.reader(handle)
        schema: Any = reader.writer_schema
        fields = schema.get("fields", []) if isinstance(schema, Mapping) else []
        has_count = any(field.get("name") == "count" for field in fields)
        for record in reader:
            rows += 1
            if not has_count:
                total += 1
            elif isinstance(record, Mapping) and isinstance(record.get("count"), (int, float)):
                total += int(record["count"])
    return rows, total


def _read_windows(rows_dir: str, problems: list[str]) -> list[_Window]:
    windows: dict[str, _Window] = {}
    for path in _walk(rows_dir, (".parquet", ".avro")):
        label, start = _window_of(os.path.relpath(os.path.dirname(path), rows_dir))
        try:
            rows, counted = (_count_parquet if path.endswith(".parquet") else _count_avro)(path)
        except Exception as exc:  # a damaged file is reported, not fatal
            problems.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        window = windows.setdefault(label, _Window(label, start))
        window.files += 1
        window.rows += rows
        pane = _PANE.search(os.path.basename(path))
        if pane and int(pane.group(1)) > 0:
            window.later += counted
        else:
            window.on_time += counted
    return sorted(windows.values(), key=lambda w: (w.start is None, w.start or "", w.label))


def _read_letter_rows(path: str) -> Iterator[Mapping[str, Any]]:
    if path.lower().endswith(".avro"):
        import fastavro

        with open(path, "rb") as handle:
            for record in fastavro.reader(handle):
                if isinstance(record, Mapping):
                    yield record
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                row = json.loads(raw)
                if not isinstance(row, Mapping):
                    raise ValueError(f"line {number} is not a JSON object")
                yield row


def _origin_text(origin: Any) -> str:
    if not isinstance(origin, Mapping):
        return ""
    return ", ".join(f"{key}={value}" for key, value in sorted(origin.items(), key=str))


def _read_letters(folders: list[tuple[str, bool]], problems: list[str]) -> _Letters:
    letters = _Letters()
    real = [os.path.realpath(folder) for folder, _ in folders]
    for folder, all_late in folders:
        # A folder nested in another (the default late folder, <dead_letter>/late) is read
        # as itself only.
        others = tuple(r for r in real if r != os.path.realpath(folder))
        for path in _walk(folder, (".jsonl", ".json", ".avro"), skip=others):
            try:
                for row in _read_letter_rows(path):
                    lateness = row.get("lateness_ms")
                    if all_late or lateness is not None:
                        letters.late += 1
                        if isinstance(lateness, (int, float)) and not isinstance(lateness, bool):
                            letters.lateness_ms.append(int(lateness))
                        else:
                            letters.late_unknown += 1
                        continue
                    letters.dead += 1
                    stage = str(row.get("stage", "?"))
                    error_type = str(row.get("error_type", "?"))
                    letters.reasons[(stage, error_type)] += 1
                    kept = letters.examples.setdefault((stage, error_type), [])
                    if len(kept) < MAX_EXAMPLES:
                        message = str(row.get("error_message", ""))
                        if len(message) > _MESSAGE_CHARS:
                            message = message[:_MESSAGE_CHARS] + "..."
                        kept.append(
                            {
                                "stage": stage,
                                "error_type": error_type,
                                "error_message": message,
                                "origin": _origin_text(row.get("origin")),
                            }
                        )
                letters.files += 1
            except Exception as exc:  # a damaged file is reported, not fatal
                problems.append(f"{path}: {type(exc).__name__}: {exc}")
    return letters


def _pick_examples(letters: _Letters, order: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Up to MAX_EXAMPLES examples, taken round-robin over the reasons (most frequent first),
    so a rare reason is not hidden behind twenty copies of a common one."""
    picked: list[dict[str, str]] = []
    for depth in range(MAX_EXAMPLES):
        for reason in order:
            kept = letters.examples.get(reason, [])
            if depth < len(kept) and len(picked) < MAX_EXAMPLES:
                picked.append(kept[depth])
    return picked


def _bucket(lateness_ms: int) -> int:
    for index, (upper, _label) in enumerate(LATENESS_BUCKETS):
        if lateness_ms < upper:
            return index
    return len(LATENESS_BUCKETS) - 1  # pragma: no cover - the last bound is infinite


# --------------------------------------------------------------------------------------------
# Rendering


def _plotly() -> tuple[Any, Any]:
    try:
        import plotly.graph_objects as go
        import plotly.io as pio
    except ImportError as exc:
        raise MissingReportDependencyError(
            "the HTML report needs the 'plotly' package: pip install 'headwater[report]' "
            "(or pip install 'plotly>=5')"
        ) from exc
    return go, pio


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else _esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return _esc(value)


def _ms_text(ms: float) -> str:
    if ms < 1_000:
        return f"{ms:,.0f} ms"
    if ms < 120_000:
        return f"{ms / 1_000:,.1f} s"
    if ms < 7_200_000:
        return f"{ms / 60_000:,.1f} min"
    return f"{ms / 3_600_000:,.1f} h"


def _none(text: str) -> str:
    return f'<p class="none">{_esc(text)}</p>'


def _table(headers: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css}"' if css else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Figures:
    """Renders plotly figures as divs; plotly.js goes into the first one only."""

    def __init__(self, go: Any, pio: Any):
        self.go = go
        self._pio = pio
        self._included = False

    def div(self, figure: Any, div_id: str, height: int) -> str:
        figure.update_layout(
            height=height,
            margin={"l": 60, "r": 20, "t": 30, "b": 50},
            template="plotly_white",
            font={"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"},
        )
        include = not self._included
        self._included = True
        return self._pio.to_html(
            figure,
            full_html=False,
            include_plotlyjs=include,
            include_mathjax=False,
            div_id=div_id,
            config=_CONFIG,
        )


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _integer_axis(figure: Any, axis: str, largest: int) -> None:
    """Counts are whole: no 0.5 ticks on small axes, thousands separators on large ones."""
    settings: dict[str, Any] = {"tickformat": ",d", "rangemode": "tozero"}
    if largest <= 10:
        settings["dtick"] = 1
    (figure.update_yaxes if axis == "y" else figure.update_xaxes)(**settings)


def _header(summary: Mapping[str, Any], title: str, found: Mapping[str, int | None]) -> str:
    counts = {name: _as_int(summary.get(name)) for name in ("records_in", *_OUTCOMES)}
    if all(value is not None for value in counts.values()):
        total = sum(counts[name] or 0 for name in _OUTCOMES)
        holds = counts["records_in"] == total
        verdict = (
            f'<p class="identity {"ok" if holds else "bad"}" id="identity">'
            f"records_in ({counts['records_in']:,}) {'==' if holds else '!='} output + duplicate"
            f" + dead_letter + late ({total:,}): the identity "
            f"{'holds' if holds else 'does NOT hold'}</p>"
        )
    else:
        missing = ", ".join(name for name, value in counts.items() if value is None)
        verdict = (
            f'<p class="identity unknown" id="identity">The identity cannot be checked: '
            f"no integer {_esc(missing)} in the summary</p>"
        )
    rows = [
        [
            f"<code>{name}</code>",
            _number(summary.get(name)),
            "" if found.get(name) is None else _number(found[name]),
        ]
        for name in ("records_in", *_OUTCOMES)
    ]
    facts = []
    for key, label in (
        ("pipeline", "pipeline"),
        ("runner", "runner"),
        ("engine", "engine"),
        ("engine_reason", "record path because"),
        ("wall_s", "wall time"),
    ):
        if summary.get(key) is not None:
            value = summary[key]
            text = f"{value:,.1f} s" if key == "wall_s" and _is_number(value) else _esc(value)
            facts.append(f"<span><b>{label}</b> {text}</span>")
    return (
        f"<header><h1>{_esc(title)}</h1><p class='facts'>{' '.join(facts)}</p>{verdict}"
        + _table(["counter", "run summary", "found in files"], rows, "accounting")
        + "<p class='hint'>&ldquo;found in files&rdquo; is what this page read back: output "
        "records (the <code>count</code> column of metric rows, else rows), dead-letter and "
        "late envelopes (blank: no such folder). Pane restatements of accumulating aggregates "
        "are counted again.</p>" + _config(summary.get("config")) + "</header>"
    )


def _config(config: Any) -> str:
    """The run's configuration (the summary's ``config``): what shaped these numbers."""
    if not isinstance(config, Mapping) or not config:
        return ""
    rows = [[f"<code>--{_esc(key)}</code>", _esc(value)] for key, value in config.items()]
    return "<h2>Configuration</h2>" + _table(["flag", "value"], rows, "config")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _outcomes(summary: Mapping[str, Any], figures: _Figures) -> str:
    values = [_as_int(summary.get(name)) or 0 for name in _OUTCOMES]
    if sum(values) <= 0:
        return _none("No outcomes to show: the summary counts no records.")
    go = figures.go
    total = sum(values)
    # Labels written here so an empty outcome gets none (plotly would stack "0 / 0%" labels).
    texts = [
        f"{name}<br>{value:,} ({100 * value / total:.3g}%)" if value else ""
        for name, value in zip(_OUTCOMES, values, strict=True)
    ]
    figure = go.Figure(
        go.Pie(
            labels=list(_OUTCOMES),
            values=values,
            hole=0.5,
            sort=False,
            direction="clockwise",
            marker={"colors": [_COLORS[name] for name in _OUTCOMES]},
            text=texts,
            textinfo="text",
            hovertemplate="%{label}: %{value:,} (%{percent})<extra></extra>",
        )
    )
    figure.update_layout(showlegend=True)
    return figures.div(figure, "hw-outcomes", 360)


def _windows_section(rows_dir: str | None, windows: list[_Window], figures: _Figures) -> str:
    if rows_dir is None:
        return _none("No output folder was given.")
    if not windows:
        return _none(f"None: no Parquet or Avro output files under {rows_dir}.")
    go = figures.go
    timed = all(w.start is not None and "window_end" not in w.label for w in windows)
    # plotly.js reads "YYYY-MM-DD HH:MM:SS" as a date; the page says the axis is UTC.
    xs = [w.start.replace("T", " ").rstrip("Z") if timed and w.start else w.label for w in windows]
    labels = [w.label for w in windows]
    figure = go.Figure()
    figure.add_bar(
        x=xs,
        y=[w.on_time for w in windows],
        name="on-time pane",
        marker_color=_COLORS["output"],
        customdata=labels,
        hovertemplate="%{customdata}<br>on-time: %{y:,}<extra></extra>",
    )
    if any(w.later for w in windows):
        figure.add_bar(
            x=xs,
            y=[w.later for w in windows],
            name="later panes",
            marker_color=_COLORS["late"],
            customdata=labels,
            hovertemplate="%{customdata}<br>later panes: %{y:,}<extra></extra>",
        )
    figure.update_layout(
        barmode="stack",
        xaxis_title="window start (event time, UTC)" if timed else "window",
        yaxis_title="output records",
        legend={"orientation": "h", "y": 1.08, "traceorder": "normal"},
    )
    _integer_axis(figure, "y", max(w.on_time + w.later for w in windows))
    if not timed:
        figure.update_xaxes(type="category")
    total = sum(w.on_time + w.later for w in windows)
    intro = (
        f"<p>{len(windows):,} windows, {sum(w.files for w in windows):,} files, "
        f"{sum(w.rows for w in windows):,} rows, {total:,} output records "
        f"(from <code>{_esc(rows_dir)}</code>).</p>"
    )
    shown = windows[:_WINDOW_TABLE_ROWS]
    table = _table(
        ["window", "files", "rows", "records (on-time)", "records (later panes)"],
        [
            [
                f"<code>{_esc(w.label)}</code>",
                *map(_number, (w.files, w.rows, w.on_time, w.later)),
            ]
            for w in shown
        ],
        "windows",
    )
    more = (
        f"<p class='hint'>The first {len(shown):,} of {len(windows):,} windows.</p>"
        if len(windows) > len(shown)
        else ""
    )
    return (
        intro
        + figures.div(figure, "hw-windows", 380)
        + f"<details><summary>Windows table</summary>{table}{more}</details>"
    )


def _lateness_section(late_dir: str | None, letters: _Letters, figures: _Figures) -> str:
    values = letters.lateness_ms
    unknown = (
        f"<p class='hint'>{letters.late_unknown:,} late envelopes carry no lateness_ms.</p>"
        if letters.late_unknown
        else ""
    )
    if not values:
        where = f"under {late_dir}" if late_dir else "(no late-data folder was given)"
        return _none(f"None: no late records {where}.") + unknown
    counts = Counter(_bucket(value) for value in values)
    first, last = min(counts), max(counts)
    labels = [LATENESS_BUCKETS[i][1] for i in range(first, last + 1)]
    ys = [counts.get(i, 0) for i in range(first, last + 1)]
    go = figures.go
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=ys,
            marker_color=_COLORS["late"],
            text=[f"{y:,}" if y else "" for y in ys],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{x}: %{y:,} late records<extra></extra>",
        )
    )
    _integer_axis(figure, "y", max(ys))
    figure.update_layout(xaxis_title="lateness (watermark past window end)", yaxis_title="records")
    figure.update_xaxes(type="category")
    stats = (
        f"<p>{len(values):,} late records: min {_ms_text(min(values))}, median "
        f"{_ms_text(statistics.median(values))}, max {_ms_text(max(values))}.</p>"
    )
    table = _table(
        ["lateness", "records"],
        [[_esc(label), _number(y)] for label, y in zip(labels, ys, strict=True)],
        "buckets",
    )
    return (
        stats
        + figures.div(figure, "hw-lateness", 340)
        + unknown
        + f"<details><summary>Buckets</summary>{table}</details>"
    )


def _dead_letter_section(dead_letter_dir: str | None, letters: _Letters, figures: _Figures) -> str:
    if not letters.reasons:
        where = f"under {dead_letter_dir}" if dead_letter_dir else "(no dead-letter folder given)"
        return _none(f"None: no dead letters {where}.")
    go = figures.go
    reasons = sorted(letters.reasons.items(), key=lambda item: (-item[1], item[0]))
    labels = [f"{stage} / {error_type}" for (stage, error_type), _n in reasons]
    counts = [n for _reason, n in reasons]
    figure = go.Figure(
        go.Bar(
            x=counts[::-1],
            y=labels[::-1],
            orientation="h",
            marker_color=_COLORS["dead_letter"],
            text=[f"{n:,}" for n in counts[::-1]],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:,}<extra></extra>",
        )
    )
    _integer_axis(figure, "x", max(counts))
    figure.update_layout(xaxis_title="dead letters", yaxis={"automargin": True})
    height = max(220, 60 + 28 * len(labels))
    reasons_table = _table(
        ["stage", "error type", "dead letters"],
        [[_esc(stage), _esc(error_type), _number(n)] for (stage, error_type), n in reasons],
        "reasons",
    )
    chosen = _pick_examples(letters, [reason for reason, _n in reasons])
    examples = _table(
        ["stage", "error type", "error message", "origin"],
        [
            [
                _esc(example["stage"]),
                _esc(example["error_type"]),
                _esc(example["error_message"]),
                f"<code>{_esc(example['origin'])}</code>",
            ]
            for example in chosen
        ],
        "examples",
    )
    return (
        f"<p>{letters.dead:,} dead letters, {len(reasons):,} reasons.</p>"
        + figures.div(figure, "hw-dead-letters", height)
        + reasons_table
        + f"<h3>{len(chosen)} examples</h3>"
        + "<p class='hint'>The first examples of each reason, taken in turn (most frequent "
        "reason first), in file order.</p>"
        + "<p class='hint'>Payloads are not shown: they may hold personal data. Read them with "
        "<code>headwater.io.deadletterio.ReadDeadLetters</code>.</p>" + examples
    )


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#212121;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px 0;font-size:26px}h2{margin:28px 0 8px 0;font-size:20px;
border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:16px;margin:18px 0 6px 0}
.facts span{margin-right:18px;color:#555}
.identity{padding:10px 14px;border-radius:6px;font-weight:600}
.identity.ok{background:#e8f5e9;color:#1b5e20;border:1px solid #66bb6a}
.identity.bad{background:#ffebee;color:#b71c1c;border:1px solid #ef5350}
.identity.unknown{background:#eceff1;color:#37474f;border:1px solid #90a4ae}
table{border-collapse:collapse;margin:8px 0;background:#fff;font-size:14px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
table.accounting td:nth-child(n+2),table.windows td:nth-child(n+2),table.reasons td:last-child,
table.buckets td:last-child{text-align:right;font-variant-numeric:tabular-nums}
table.examples td{max-width:520px;word-break:break-word}
.none{color:#616161;font-style:italic}.hint{color:#757575;font-size:13px}
code{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:13px}
details{margin:6px 0}summary{cursor:pointer;color:#37474f}
.problems{color:#b71c1c}
"""


def write_report(
    path: str,
    *,
    summary: Mapping[str, Any],
    rows_dir: str | None,
    dead_letter_dir: str | None,
    late_dir: str | None,
    title: str = "headwater run",
) -> str:
    """Writes the run's report to ``path`` (one offline HTML file) and returns ``path``.

    Args:
      path: the HTML file to write (its folder is created); replaced atomically.
      summary: the run summary dict (see the module docstring).
      rows_dir: the output folder of ``WriteWindowedFiles``, or ``None``.
      dead_letter_dir: the dead-letter folder, or ``None``.
      late_dir: the late-data folder (dead-letter envelopes with ``lateness_ms``), or ``None``.
      title: the page's title.

    Raises:
      MissingReportDependencyError: plotly is not installed.
      ValueError: ``path`` is empty or ``summary`` is not a mapping.

    >>> import tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> summary = {"records_in": 3, "output": 2, "duplicate": 1, "dead_letter": 0, "late": 0}
    >>> page = write_report(os.path.join(folder, "run.html"), summary=summary,
    ...                     rows_dir=None, dead_letter_dir=None, late_dir=None)
    >>> "the identity holds" in open(page, encoding="utf-8").read()
    True
    """
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"path={path!r} must be a non-empty file path")
    if not isinstance(summary, Mapping):
        raise ValueError(f"summary={summary!r} must be a mapping (the run summary dict)")
    for name, value in (
        ("rows_dir", rows_dir),
        ("dead_letter_dir", dead_letter_dir),
        ("late_dir", late_dir),
    ):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{name}={value!r} must be a folder path or None")
    go, pio = _plotly()

    problems: list[str] = []
    windows = _read_windows(rows_dir, problems) if rows_dir and os.path.isdir(rows_dir) else []
    folders: list[tuple[str, bool]] = []
    if dead_letter_dir and os.path.isdir(dead_letter_dir):
        folders.append((dead_letter_dir, False))
    if late_dir and os.path.isdir(late_dir):
        same = dead_letter_dir is not None and os.path.realpath(late_dir) == os.path.realpath(
            dead_letter_dir
        )
        if not same:
            folders.append((late_dir, True))
    letters = _read_letters(folders, problems)

    has_rows = bool(rows_dir) and os.path.isdir(rows_dir or "")
    has_dead = bool(dead_letter_dir) and os.path.isdir(dead_letter_dir or "")
    has_late = has_dead or (bool(late_dir) and os.path.isdir(late_dir or ""))
    found: dict[str, int | None] = {
        "output": sum(w.on_time + w.later for w in windows) if has_rows else None,
        "dead_letter": letters.dead if has_dead else None,
        "late": letters.late if has_late else None,
    }
    figures = _Figures(go, pio)
    sections = [
        _header(summary, title, found),
        "<section><h2>Outcomes</h2>" + _outcomes(summary, figures) + "</section>",
        "<section><h2>Output per window</h2>"
        + _windows_section(rows_dir, windows, figures)
        + "</section>",
        "<section><h2>Lateness</h2>" + _lateness_section(late_dir, letters, figures) + "</section>",
        "<section><h2>Dead letters</h2>"
        + _dead_letter_section(dead_letter_dir, letters, figures)
        + "</section>",
    ]
    if problems:
        items = "".join(f"<li>{_esc(problem)}</li>" for problem in problems)
        sections.append(f"<section class='problems'><h2>Files not read</h2><ul>{items}</ul>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{''.join(sections)}</main></body></html>\n"
    )
    _write_atomically(path, page.encode("utf-8"))
    return path


def _write_atomically(path: str, data: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = base64.urlsafe_b64encode(os.urandom(6)).decode("ascii")
    temp = os.path.join(folder, f"{_TEMP_PREFIX}{os.path.basename(path)}-{suffix}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
