"""Writing the merged rows: as windowed values, or column-wise into the output files.

With ``output=`` the rows are written as :class:`~headwater.io.fileio.WriteWindowedFiles` writes
them, byte for byte, but column-wise: each row column's values are computed over every group at
once (from the merged groups table on the batch paths), each row's canonical JSON (which shards
and orders the rows) is assembled by Arrow from its values' own JSON, and one Arrow table of every
row, with the schema the writer would infer, is sorted into file order once and sliced file by
file (a run whose column holds values of mixed kinds takes the writer's row-dict code). A run of
many small windows (sessions: one folder per session) pays per file only the Parquet encoding and
the file system's calls, and, given ``write_processes`` (the in-memory local runner's process),
splits the files over that many processes forked for the writing (:mod:`headwater.core.forked`):
Arrow's Parquet encoder holds the GIL, so threads would not share the work.
"""

from __future__ import annotations

import datetime as dt
import json
import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from headwater.columnar.state import ColumnarOptions, exact_sum, group_columns
from headwater.core.forked import run_split
from headwater.core.shards import stable_shard
from headwater.io.fileio import (
    canonical_json,
    encode_avro_rows,
    encode_parquet,
    file_name,
    join_path,
    make_local_folders,
    parquet_bytes,
    window_directory,
    write_atomically,
)

#: A run writing this many local files or more splits them over ``write_processes`` (forked: a
#: fork of a large process costs ~10-30 ms, a file ~0.1-0.4 ms).
FORK_FILES = 256
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_encode_string = json.encoder.encode_basestring  # what json.dumps uses with ensure_ascii=False


class WindowWriter:
    """Turns merged groups into rows (:meth:`_rows`) or window files (:meth:`_write`)."""

    _options: ColumnarOptions
    _files: Any  # counter: files written
    _rows_written: Any  # counter: rows written
    _split_files = True  # False in a process that writes one part of a run's files already

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
        """:meth:`_write` for groups given as columns (:meth:`ColumnarState._groups`)."""
        layout = self._layout()
        if not columns[0]:
            return
        if self._options.output_format != "parquet" or layout is None:
            yield from self._write_rows(list(zip(*columns, strict=True)))
            return
        every = range(len(columns[0]))
        values: dict[str, pa.Array | None] = {}
        for name, source in layout.items():
            column = self._column(columns, source, every)
            kind = None if column is None else _one_kind(column)
            if column is not None and kind is None:  # mixed kinds: the writer's row-dict code
                yield from self._write_rows(list(zip(*columns, strict=True)))
                return
            values[name] = None if column is None else pa.array(column, type=kind)
        sessions = self._options.session_gap is not None  # a session's end comes last
        starts = np.array(columns[0], dtype=np.int64)
        ends = np.array(columns[-1], dtype=np.int64) if sessions else None
        yield from self._write_groups(layout, values, starts, ends)

    def _write_table(self, table: pa.Table | None) -> Iterator[str]:
        """:meth:`_write` for groups given as one table (:meth:`ColumnarState.merged`): each row
        column's values computed over the whole table, as :meth:`_column` computes them."""
        layout = self._layout()
        if table is None or table.num_rows == 0:
            return
        if self._options.output_format != "parquet" or layout is None:
            columns = group_columns(table, len(self._options.fields))
            yield from self._write_rows(list(zip(*columns, strict=True)))
            return
        values = {name: _table_values(table, source) for name, source in layout.items()}
        sessions = self._options.session_gap is not None
        starts = _numpy(table.column("w"))
        ends = _numpy(table.column("e")) if sessions else None
        yield from self._write_groups(layout, values, starts, ends)

    def _write_groups(
        self,
        layout: dict[str, Any],
        values: dict[str, pa.Array | None],
        starts: np.ndarray,
        session_ends: np.ndarray | None,
    ) -> Iterator[str]:
        """Writes the groups as ``WriteWindowedFiles`` would: per (window, shard) a file of its
        rows in the order of their canonical JSON.

        ``values``: per row column (the layout's), its Arrow values (None for the window bounds:
        ``starts`` and the sessions' ``session_ends``, in micros). The canonical JSON of every
        row is assembled column-wise from each value's own JSON (see :func:`_canonical_texts`);
        the rows are sorted once by (window, shard, text), taken once and sliced file by file.
        """
        options = self._options
        sessions = session_ends is not None
        windows, inverse = _window_ids(starts, session_ends)
        bounds = []
        for start, end in windows:
            window = options.window_of(start, end)
            bounds.append((window, start, window.end.micros))
        ends = np.array([b[2] for b in bounds], dtype=np.int64)[inverse]
        whole = _arrow_table(layout, values, starts, ends)
        shards: np.ndarray | None = None
        # the rows of a file are sorted by their text: a file's keys are all different, so the
        # text up to the key decides (a shard needs the whole text)
        texts = _canonical_texts(layout, values, bounds, inverse, whole=options.output_shards > 1)
        keys: dict[str, Any] = {"window": inverse}
        if options.output_shards > 1:
            count = options.output_shards
            shards = np.array([stable_shard(t, count) for t in texts.to_pylist()], dtype=np.int64)
            keys["shard"] = shards
        keys["text"] = texts
        order = pc.sort_indices(
            pa.table(keys), sort_keys=[(name, "ascending") for name in keys]
        ).to_numpy()
        # window ids follow (start, end), so the sorted rows come window by window, in order
        cut_by = inverse[order] if shards is None else inverse[order] * count + shards[order]
        cuts = np.flatnonzero(np.diff(cut_by)) + 1
        ordered = whole.take(pa.array(order))
        files = []
        for first, last in zip(
            np.concatenate(([0], cuts)), np.concatenate((cuts, [len(order)])), strict=True
        ):
            row = int(order[first])
            shard = 0 if shards is None else int(shards[row])
            relative = posixpath.join(
                window_directory(bounds[inverse[row]][0], merging=sessions),
                file_name("part", shard, options.output_shards, 0, options.output_format),
            )
            files.append((self._path(relative), int(first), int(last - first)))
        yield from self._write_files(
            [(path, rows) for path, _, rows in files],
            lambda i: parquet_bytes(ordered.slice(files[i][1], files[i][2])),
        )

    def _write_files(
        self, files: list[tuple[str, int]], data_of: Callable[[int], bytes]
    ) -> Iterator[str]:
        """Writes ``files`` (``(path, rows)``; file ``i`` holds ``data_of(i)``), then yields
        their paths, counted. A run of ``FORK_FILES`` local files or more is split over
        ``write_processes`` (:func:`headwater.core.forked.run_split`), each process making its
        part's folders and encoding and writing its files; the counters are counted here."""
        local = all(FileSystems.get_scheme(path) is None for path, _ in files)

        def write(start: int, stop: int) -> None:
            make_local_folders(path for path, _ in files[start:stop])  # a session has its own
            for i in range(start, stop):
                write_atomically(files[i][0], data_of(i))

        many = local and len(files) >= FORK_FILES and self._split_files
        run_split(len(files), write, processes=self._options.write_processes if many else 1)
        for path, rows in files:
            yield self._written(path, rows)

    def _path(self, relative: str) -> str:
        return join_path(str(self._options.output), *relative.split("/"))

    def _written(self, path: str, rows: int) -> str:
        self._files.inc()
        self._rows_written.inc(rows)
        return path

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
        files: list[tuple[str, list[dict[str, Any]]]] = []  # relative path, ordered rows
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
                files.append((relative, ordered))

        def data_of(i: int) -> bytes:
            relative, ordered = files[i]
            if options.output_format == "parquet":
                return encode_parquet(ordered, None)  # type: ignore[arg-type]
            return encode_avro_rows(ordered, None, relative)  # type: ignore[arg-type]

        yield from self._write_files(
            [(self._path(relative), len(ordered)) for relative, ordered in files], data_of
        )


def _window_ids(
    starts: np.ndarray, ends: np.ndarray | None
) -> tuple[list[tuple[int, int | None]], np.ndarray]:
    """The groups' windows, ordered by (start, end), and each group's index among them (a
    window follows from its start, a session from its start and end)."""
    if ends is None:
        unique, inverse = np.unique(starts, return_inverse=True)
        return [(int(start), None) for start in unique.tolist()], inverse.reshape(-1)
    pairs = np.stack([starts, ends], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return [(int(s), int(e)) for s, e in unique.tolist()], inverse.reshape(-1)


_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'  # what encode_basestring escapes (ensure_ascii=False)


def _json_texts(values: pa.Array) -> pa.Array:
    """Each value's JSON as ``canonical_json`` writes it inside a row (strings, ints, floats)."""
    if pa.types.is_integer(values.type):  # an int64's decimal text is its repr
        return pc.cast(values, pa.string())
    if pa.types.is_string(values.type):
        if not pc.any(pc.match_substring_regex(values, _NEEDS_ESCAPE)).as_py():
            return pc.binary_join_element_wise('"', values, '"', "")
        return pa.array(map(_encode_string, values.to_pylist()), type=pa.string())
    floats = values.to_pylist()
    if bool(pc.all(pc.is_finite(values)).as_py()):
        return pa.array(map(float.__repr__, floats), type=pa.string())
    return pa.array(map(canonical_json, floats), type=pa.string())


def _canonical_texts(
    layout: dict[str, Any],
    values: dict[str, pa.Array | None],
    windows: list[tuple[Any, int, int]],
    inverse: np.ndarray,
    *,
    whole: bool,
) -> pa.Array:
    """``canonical_json(row)`` of every group, assembled from each value's own JSON.

    ``json.dumps(row, sort_keys=True, separators=(",", ":"))`` writes ``{``, then per key in
    sorted order the key's JSON, ``:`` and the value's JSON, joined by ``,``, then ``}``; every
    value is encoded on its own, so the concatenation equals the text of the whole row.
    ``windows``: per window ``(window, start micros, end micros)``; ``inverse``: each group's.

    Without ``whole``, the text ends after the ``key`` column's value: among rows whose keys
    differ (the rows of one window), that prefix orders them as the whole text does. A JSON
    string cannot hold a bare ``"`` before its end, so no such prefix is a prefix of another,
    and the first byte where two texts differ lies in it.
    """
    window_texts = {
        "window_start": [canonical_json(_EPOCH + dt.timedelta(microseconds=w[1])) for w in windows],
        "window_end": [canonical_json(_EPOCH + dt.timedelta(microseconds=w[2])) for w in windows],
    }
    parts: list[Any] = []
    for number, name in enumerate(sorted(layout)):
        parts.append(("{" if number == 0 else ",") + _encode_string(name) + ":")
        column = values[name]
        if column is None:
            parts.append(pa.array(window_texts[name], type=pa.string()).take(pa.array(inverse)))
        else:
            parts.append(_json_texts(column))
        if name == "key" and not whole:
            return pc.binary_join_element_wise(*parts, "")
    parts.append("}")
    return pc.binary_join_element_wise(*parts, "")


def _arrow_table(
    layout: dict[str, Any],
    values: dict[str, pa.Array | None],
    starts: np.ndarray,
    ends: np.ndarray,
) -> pa.Table:
    """Rows as the Arrow table ``WriteWindowedFiles`` would infer for them.

    ``values``: per row column, its values (None for the window bounds, given as ``starts`` and
    ``ends`` in micros). The writer infers, in the row dict's column order: timezone-aware
    datetimes -> ``timestamp[us, UTC]``, ``int`` -> int64, ``float`` -> double, ``str`` ->
    string, nothing nullable (no value is ever ``None``). Built over every group of a run, a
    file's table is its rows of it (``take``): one kind over all rows is one kind in each file.
    """
    timestamp = pa.timestamp("us", tz="UTC")
    bounds = {"window_start": starts, "window_end": ends}
    fields, arrays = [], []
    for name in layout:
        array = values[name]
        if array is None:
            array = pa.array(bounds[name], type=pa.int64()).view(timestamp)
        fields.append(pa.field(name, array.type, nullable=False))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _numpy(column: Any) -> np.ndarray:
    return np.asarray(column.to_numpy())


def _table_values(table: pa.Table, source: Any) -> pa.Array | None:
    """One row column's values over a merged table, as :meth:`WindowWriter._column` computes
    them from the groups' columns: the count, the key, or a float (sum, min, max or mean).

    A sum is exact (:func:`exact_sum`) before its one conversion to float, and a mean is the
    exact sum divided by the count: rows whose sum has a high limb, or whose int sum is past
    2**53 (where ``float(sum) / count`` could round twice), take those Python steps.
    """
    if source in ("start", "end"):
        return None
    if source == 1:
        return table.column("k").combine_chunks().cast(pa.string())
    kind, index = source
    if kind == "count":
        return table.column("n").combine_chunks().cast(pa.int64())
    field = (index - 3) // 3
    if kind in ("min", "max"):
        column = table.column(f"{'m' if kind == 'min' else 'x'}{field}")
        return column.combine_chunks().cast(pa.float64())
    low_column = table.column(f"s{field}").combine_chunks()
    low, high = _numpy(low_column), _numpy(table.column(f"h{field}"))
    counts = _numpy(table.column("n"))
    plain = high == 0
    if kind == "mean" and pa.types.is_integer(low_column.type):
        plain &= np.abs(low) <= 1 << 53
    result = low.astype(np.float64)
    if kind == "mean":
        result = result / counts
    for row in np.flatnonzero(~plain).tolist():
        exact = exact_sum(low_column[row].as_py(), int(high[row]))
        result[row] = float(exact) if kind == "sum" else exact / int(counts[row])
    return pa.array(result, type=pa.float64())


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
