"""Writing the merged rows: as windowed values, or column-wise into the output files.

With ``output=`` the rows are written as :class:`~headwater.io.fileio.WriteWindowedFiles` writes
them, byte for byte, but column-wise: each row's canonical JSON (which shards and orders the rows)
is assembled from its values' own JSON, and one Arrow table of every row, with the schema the
writer would infer, is put in file order once and sliced file by file (a run whose column holds
values of mixed kinds takes the writer's row-dict code). A run of many small windows (sessions:
one folder per session) pays per file only the Parquet encoding and the file system's calls.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from headwater.columnar.state import (
    ColumnarOptions,
)
from headwater.core.shards import stable_shard
from headwater.io.fileio import (
    canonical_json,
    encode_avro_rows,
    encode_parquet,
    file_name,
    join_path,
    parquet_bytes,
    window_directory,
    write_atomically,
)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode_string = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False


class WindowWriter:
    """Turns merged groups into rows (:meth:`_rows`) or window files (:meth:`_write`)."""

    _options: ColumnarOptions
    _files: Any  # counter: files written
    _rows_written: Any  # counter: rows written

    def _rows(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[Any]:
        """``(window start, key, count, sum, min, max, ...)`` groups as windowed metric rows."""
        fields = self._options.fields
        slot = {name: 3 + 3 * i for i, name in enumerate(fields)}
        columns = []
        for metric in self._options.metrics:
            if metric.field is None:
                columns.append((metric.column, 2, "count"))
            else:
                offset = {"sum": 0, "min": 1, "max": 2, "mean": 0}[metric.kind]
                columns.append((metric.column, slot[metric.field] + offset, metric.kind))
        sessions = self._options.session_gap is not None  # a session's end comes last
        windows: dict[tuple[int, int | None], tuple[Any, dt.datetime, dt.datetime, Timestamp]] = {}
        for group in groups:
            start = group[0]
            which = (start, group[-1] if sessions else None)
            bounds = windows.get(which)
            if bounds is None:
                window = self._options.window_of(*which)
                bounds = windows[which] = (
                    window,
                    _EPOCH + dt.timedelta(microseconds=start),
                    _EPOCH + dt.timedelta(microseconds=window.end.micros),
                    window.max_timestamp(),
                )
            row: dict[str, Any] = {
                "window_start": bounds[1],
                "window_end": bounds[2],
                "key": group[1],
            }
            for column, index, kind in columns:
                if kind == "count":
                    row[column] = group[2]
                elif kind == "mean":
                    row[column] = group[index] / group[2]
                else:
                    row[column] = float(group[index])
            yield WindowedValue(row, bounds[3], (bounds[0],))

    def _write(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[str]:
        """Writes each window's rows as :class:`WriteWindowedFiles` would, byte for byte.

        Parquet files are built column-wise: the canonical JSON that orders and shards the rows
        is assembled from each value's own JSON (exactly what ``canonical_json`` of the row dict
        gives), and the Arrow table gets the schema the writer would infer. A file whose values
        are not the usual kinds (a ``bool`` or mixed types in a column) takes the writer's
        row-dict code.
        """
        groups = groups if isinstance(groups, list) else list(groups)
        if not groups:
            return
        yield from self._write_columns([list(column) for column in zip(*groups, strict=True)])

    def _write_columns(self, columns: list[list[Any]]) -> Iterator[str]:
        """:meth:`_write` for groups given as columns (:meth:`ColumnarState.final_columns`)."""
        options = self._options
        layout = self._layout()
        if not columns[0]:
            return
        if options.output_format != "parquet" or layout is None:
            yield from self._write_rows(list(zip(*columns, strict=True)))
            return
        sessions = options.session_gap is not None  # a session's end comes last
        every = range(len(columns[0]))
        values = {name: self._column(columns, source, every) for name, source in layout.items()}
        whole = _arrow_table(layout, values, columns[0], self._group_ends(columns, sessions))
        if whole is None:  # a column of mixed kinds: the writer's row-dict code, per file
            yield from self._write_rows(list(zip(*columns, strict=True)))
            return
        # the files' rows in file order, taken at once, then sliced file by file
        plans = list(self._file_plans(columns, layout, values, sessions))
        ordered = whole.take(pa.array(np.concatenate([picked for _, picked in plans])))
        offset = 0
        for relative, picked in plans:
            data = parquet_bytes(ordered.slice(offset, len(picked)))
            offset += len(picked)
            yield self._write_file(relative, data, len(picked))

    def _file_plans(
        self,
        columns: list[list[Any]],
        layout: dict[str, Any],
        values: dict[str, list[Any] | None],
        sessions: bool,
    ) -> Iterator[tuple[str, np.ndarray]]:
        """``(relative path, groups)`` per file: the groups of each (window, shard),
        in the order of their canonical JSON, as ``WriteWindowedFiles`` shards and sorts them."""
        options = self._options
        encoded = {name: None if v is None else _json_texts(v) for name, v in values.items()}
        for start, end, idx in _windows_of(columns, sessions=sessions):
            window = options.window_of(start, end)
            bounds = (
                _EPOCH + dt.timedelta(microseconds=start),
                _EPOCH + dt.timedelta(microseconds=window.end.micros),
            )
            texts = _canonical_texts(layout, encoded, bounds, idx.tolist())
            shards: dict[int, list[int]] = {}
            if options.output_shards == 1:
                shards[0] = list(range(len(idx)))
            else:
                for position, text in enumerate(texts):
                    shards.setdefault(stable_shard(text, options.output_shards), []).append(
                        position
                    )
            for shard, positions in sorted(shards.items()):
                positions.sort(key=texts.__getitem__)
                relative = posixpath.join(
                    window_directory(window, merging=sessions),
                    file_name("part", shard, options.output_shards, 0, options.output_format),
                )
                yield relative, idx[positions]

    def _write_file(self, relative: str, data: bytes, rows: int) -> str:
        path = join_path(str(self._options.output), *relative.split("/"))
        write_atomically(path, data)
        self._files.inc()
        self._rows_written.inc(rows)
        return path

    def _group_ends(self, columns: list[list[Any]], sessions: bool) -> np.ndarray:
        """Each group's window end (micros): a session's own, else its start's window's."""
        if sessions:
            return np.array(columns[-1], dtype=np.int64)
        ends: dict[int, int] = {}
        for start in set(columns[0]):
            ends[start] = self._options.window_for(start).end.micros
        return np.array([ends[start] for start in columns[0]], dtype=np.int64)

    def _layout(self) -> dict[str, Any] | None:
        """Row column -> where its value comes from, in the row dict's order (None: collisions)."""
        fields = self._options.fields
        slot = {name: 3 + 3 * i for i, name in enumerate(fields)}
        layout: dict[str, Any] = {"window_start": "start", "window_end": "end", "key": 1}
        for metric in self._options.metrics:
            if metric.column in layout:
                return None
            if metric.field is None:
                layout[metric.column] = ("count", 2)
            else:
                offset = {"sum": 0, "min": 1, "max": 2, "mean": 0}[metric.kind]
                layout[metric.column] = (metric.kind, slot[metric.field] + offset)
        return layout

    @staticmethod
    def _column(columns: list[list[Any]], source: Any, rows: Sequence[int]) -> list[Any] | None:
        """One row column's values for the groups ``rows``, as :meth:`_rows` computes them."""
        if source in ("start", "end"):
            return None
        if source == 1:
            keys = columns[1]
            return [keys[i] for i in rows]
        kind, index = source
        data = columns[index]
        if kind == "count":
            return [data[i] for i in rows]
        if kind == "mean":
            counts = columns[2]
            return [data[i] / counts[i] for i in rows]
        return [float(data[i]) for i in rows]

    def _write_rows(self, groups: Iterable[tuple[Any, ...]]) -> Iterator[str]:
        """:meth:`_write` through row dicts (Avro output, colliding column names)."""
        options = self._options
        sessions = options.session_gap is not None
        per_window: dict[Any, list[dict[str, Any]]] = {}
        for rows in self._rows(groups):
            per_window.setdefault(rows.windows[0], []).append(rows.value)
        by_bounds = sorted(per_window.items(), key=lambda item: (item[0].start, item[0].end))
        for window, rows in by_bounds:
            shards: dict[int, list[tuple[str, dict[str, Any]]]] = {}
            for row in rows:
                text = canonical_json(row)
                shard = stable_shard(text, options.output_shards)
                shards.setdefault(shard, []).append((text, row))
            for shard, keyed in sorted(shards.items()):
                keyed.sort(key=lambda item: item[0])
                ordered = [row for _, row in keyed]
                relative = posixpath.join(
                    window_directory(window, merging=sessions),
                    file_name("part", shard, options.output_shards, 0, options.output_format),
                )
                if options.output_format == "parquet":
                    data = encode_parquet(ordered, None)  # type: ignore[arg-type]
                else:
                    data = encode_avro_rows(ordered, None, relative)  # type: ignore[arg-type]
                yield self._write_file(relative, data, len(ordered))


def _windows_of(
    columns: list[list[Any]], *, sessions: bool
) -> Iterator[tuple[int, int | None, np.ndarray]]:
    """``(start, end, group indexes)`` per window of the groups: by start, and for sessions by
    (start, end) (a session's end is the last column; other windows follow from their start)."""
    starts = np.array(columns[0], dtype=np.int64)
    if sessions:
        ends = np.array(columns[-1], dtype=np.int64)
        order = np.lexsort((ends, starts))
        changes = (np.diff(starts[order]) != 0) | (np.diff(ends[order]) != 0)
    else:
        order = np.argsort(starts, kind="stable")
        changes = np.diff(starts[order]) != 0
    for idx in np.split(order, np.flatnonzero(changes) + 1):
        yield int(starts[idx[0]]), int(ends[idx[0]]) if sessions else None, idx


def _json_texts(values: list[Any]) -> list[str]:
    """Each value's JSON as ``canonical_json`` writes it inside a row."""
    kinds = set(map(type, values))
    if kinds == {int}:
        return list(map(int.__repr__, values))
    if kinds == {str}:
        return list(map(_encode_string, values))
    if kinds == {float} and bool(np.isfinite(np.array(values, dtype=np.float64)).all()):
        return list(map(float.__repr__, values))
    return list(map(canonical_json, values))


def _canonical_texts(
    layout: dict[str, Any],
    encoded: dict[str, list[str] | None],
    bounds: tuple[dt.datetime, dt.datetime],
    rows: list[int],
) -> list[str]:
    """``canonical_json(row)`` of the groups ``rows`` of one window, from each value's own JSON.

    ``json.dumps(row, sort_keys=True, separators=(",", ":"))`` writes ``{``, then per key in
    sorted order the key's JSON, ``:`` and the value's JSON, joined by ``,``, then ``}``; every
    value is encoded on its own (``encoded``: per column, every group's value as
    :func:`_json_texts` writes it; None for the window bounds), so the concatenation equals the
    text of the whole row.
    """
    constant = {"window_start": canonical_json(bounds[0]), "window_end": canonical_json(bounds[1])}
    parts: list[str] = []
    picked: list[list[str]] = []
    for name in sorted(layout):
        head = _encode_string(name) + ":"
        column = encoded[name]
        if column is None:
            parts.append((head + constant[name]).replace("%", "%%"))
        else:
            parts.append(head.replace("%", "%%") + "%s")
            picked.append([column[i] for i in rows])
    template = "{" + ",".join(parts) + "}"
    if not picked:
        return [template.replace("%%", "%")] * len(rows)
    return [template % texts for texts in zip(*picked, strict=True)]


def _arrow_table(
    layout: dict[str, Any],
    values: dict[str, list[Any] | None],
    starts: Any,
    ends: np.ndarray,
) -> pa.Table | None:
    """Rows as the Arrow table ``WriteWindowedFiles`` would infer for them, or None if unusual.

    ``values``: per row column, its values (None for the window bounds, given as ``starts`` and
    ``ends`` in micros). The writer infers, in the row dict's column order: timezone-aware
    datetimes -> ``timestamp[us, UTC]``, ``int`` -> int64, ``float`` -> double, ``str`` ->
    string, nothing nullable (no value is ever ``None``). Other kinds (mixed keys, ``bool``)
    return None. Built over every group of a run, a file's table is its rows of it (``take``):
    one kind over all rows is one kind in each file.
    """
    timestamp = pa.timestamp("us", tz="UTC")
    bounds = {"window_start": np.array(starts, dtype=np.int64), "window_end": ends}
    fields, arrays = [], []
    for name in layout:
        column = values[name]
        if column is None:
            kind = timestamp
            array = pa.array(bounds[name]).view(timestamp)
        else:
            kind = _one_kind(column)
            if kind is None:
                return None
            array = pa.array(column, type=kind)
        fields.append(pa.field(name, kind, nullable=False))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _one_kind(values: list[Any]) -> pa.DataType | None:
    """The Arrow type the writer infers for a column of these values, or None (mixed kinds)."""
    kinds = set(map(type, values))
    if kinds == {str}:
        return pa.string()
    if kinds == {float}:
        return pa.float64()
    if kinds == {int} and all(-(2**63) <= v < 2**63 for v in values):
        return pa.int64()
    return None
