"""Files in and out: JSON lines, Avro and Parquet from glob patterns; Parquet/Avro per window.

Over 600 lines: reading, encoding and writing share the file-name, canonical-JSON and write-once
rules defined here, which every engine (record path, columnar, dead letters) calls; the sections
below are marked.

**Reading** -- :class:`ReadFromFiles` expands a glob (local paths and every scheme Beam's
``FileSystems`` knows, e.g. ``gs://``) and reads each matched file whole, in one DoFn call, after a
reshuffle (parallelism: one file per worker thread; a file is never split). The output is bounded,
in the global window, without event timestamps (assign event time downstream):

* ``json`` -- JSON lines: each non-blank line becomes
  ``SourceRecord(line_bytes, {"file": path, "line": n})`` (``n`` 1-based, counting blank lines;
  ``\\n`` and ``\\r\\n`` endings removed, a leading UTF-8 BOM dropped; ``.gz``/``.bz2``... are
  decompressed by extension). The bytes are not decoded here, so a bad line becomes a dead letter
  at the decode stage with its exact bytes.
* ``avro`` (fastavro) and ``parquet`` (pyarrow, read in record batches) -- every record becomes
  ``DecodedRecord(dict, {"file": path, "record": i})`` (``i`` 0-based).

A file that cannot be decoded (not Avro/Parquet, truncated, corrupt block) yields one
:class:`~headwater.core.deadletter.DeadLetter` (stage ``read``, empty payload, origin
``{"file": path, "record": i}`` with ``i`` the first record not read) on the ``dead_letter``
output; records decoded before the damage are still emitted. Errors of the storage itself
(missing file, permission, network) are raised so the runner retries the bundle. A pattern that
matches no file is an error naming the pattern: :class:`NoFilesMatchedError`, raised when the
transform is applied for local patterns and when the pipeline runs for remote ones. Writers'
temporary files (``.tmp-*``) are never matched.

**Writing** -- :class:`WriteWindowedFiles` writes a windowed ``PCollection`` of dict rows as one
file per (window, shard, pane), batch or streaming, with any window fn and trigger. Rows are
sharded by a stable hash of their canonical JSON (sorted keys), grouped per (window, shard) with
the input's windowing (trigger, allowed lateness), and sorted by canonical JSON, so the same
input always gives byte-identical files under the same names::

    {output}/window_start=2023-11-14T22:13:00Z/part-00000-of-00002.parquet          pane 0
    {output}/window_start=2023-11-14T22:13:00Z/part-00000-of-00002-pane-001.parquet pane 1
    {output}/window_start=2023-11-14T22:13:00Z/window_end=2023-11-14T22:20:00Z/...  merging
    {output}/window=global/part-00000-of-00001.avro                                global window

Window bounds are RFC 3339 UTC (``Z``; fractional seconds only when not whole). Merging windows
(sessions) add a ``window_end=`` level because two sessions may start at the same instant: each
folder holds the rows of one exact session (start and end), of every key that has it. Late
data (panes after the on-time one) gets its own pane files; nothing is dropped beyond what the
input's allowed lateness already drops. The writer always groups in *discarding* mode (an
accumulating input is re-windowed, windows unchanged): the files of one window hold each row
received exactly once, and for accumulating aggregates each pane file holds that pane's
restatement. Each file is written under ``.tmp-<name>-<unique>`` in its directory and moved onto
its final name, so a final name never shows a partial file. A pane with no rows writes no file.
The output is the ``PCollection`` of final paths.

**Written once** -- a (window, shard, pane) file, once written, is never replaced
(:func:`write_once`): the same bytes again (a retried bundle; a restarted job that re-read all
of a window's records) are a no-op, other bytes are *kept out*: the earlier file stays, the new
pane is not written (logged as a warning, counted as ``headwater.io/window_files_kept``). That is
what a streaming job restarted from committed offsets needs: it re-reads records after the last
committed offset, and those of a window an earlier job already wrote form a pane 0 holding only
the re-read part (a subset of what the earlier file holds, or records that job routed to its
late output); replacing the file, or adding a second file beside it, would lose or double-count
rows. Names carry no content hash for the same reason: a hash would let the partial pane in as a
second file. So names and bytes depend only on the window, the shard, the pane index and the
rows, and a folder written by a job that was killed and restarted holds each (window, shard,
pane) once -- for the default on-time trigger (one pane per window) the files of an
uninterrupted run (``tests/reliability/test_restart_writes_once.py``, docs/reliability.md).
Panes past the first restart their index in a restarted job, so with early or late panes a
restart may keep an earlier job's pane where the new job's pane of that index differs.

**Output folders of a run** -- a run starts with empty folders: :func:`prepare_output_folders`
refuses a folder that holds any file (:class:`OutputFolderNotEmptyError`), or with
``overwrite=True`` deletes its contents first, so no file of an earlier run (another shard count,
other windows) survives next to the new ones. (``headwater run`` skips the check for a streaming
job resumed from its consumer group's offsets: it writes on into the folders of the job it
resumes, and its window files are written once.) A run that completes writes
:func:`write_success_marker` -- ``_SUCCESS``, a small JSON of the run's files and counts -- into
each folder last: a folder without it is half-written or still being written.

Schema: a ``pyarrow.Schema`` (Parquet) or an Avro schema dict (Avro), or inferred per file from
its rows: fields in order of first appearance; ``bool`` -> boolean, ``int`` -> int64/long,
``float`` or a mix of ``int`` and ``float`` -> double, ``str`` -> string, ``bytes`` ->
binary/bytes, timezone-aware ``datetime`` -> ``timestamp[us, UTC]`` / Avro ``timestamp-micros``,
``date`` -> ``date32`` / Avro ``date``; anything else (lists, dicts, mixed types) -> a string
holding each value's canonical JSON. A field that is ``None`` or missing in some row is nullable
(Avro: ``["null", T]`` with default ``null``); a field that is always ``None`` is a nullable
string. Naive datetimes are refused. Pass ``schema=`` when every file must share one schema.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import io
import itertools
import json
import logging
import os
import posixpath
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as beam_trigger
from apache_beam.transforms import window as beam_window

from headwater.core.checks import check_count
from headwater.core.deadletter import DeadLetter, Routed, dead_letter_for
from headwater.core.records import DecodedRecord, SourceRecord
from headwater.core.shards import stable_shard

__all__ = [
    "ReadFromFiles",
    "WriteWindowedFiles",
    "NoFilesMatchedError",
    "OutputFolderNotEmptyError",
    "READ_FORMATS",
    "SUCCESS_MARKER",
    "STORAGE_ERRORS",
    "WRITE_FORMATS",
    "canonical_json",
    "content_digest",
    "encode_avro",
    "encode_avro_rows",
    "encode_parquet",
    "file_size",
    "file_name",
    "folder_prefix",
    "join_path",
    "list_output_files",
    "match_files",
    "parquet_bytes",
    "prepare_output_folders",
    "read_files_here",
    "unreadable_file_letter",
    "window_directory",
    "write_atomically",
    "write_once",
    "write_success_marker",
]

_LOG = logging.getLogger(__name__)

#: Formats :class:`ReadFromFiles` reads.
READ_FORMATS = ("json", "avro", "parquet")
#: Formats :class:`WriteWindowedFiles` writes.
WRITE_FORMATS = ("parquet", "avro")

_TEMP_PREFIX = ".tmp-"
#: The completion marker a finished run writes into each of its output folders, last.
SUCCESS_MARKER = "_SUCCESS"
_PARQUET_BATCH_ROWS = 10_000
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=-]*$")
_AVRO_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Storage errors are retried by the runner, never turned into dead letters.
#: Errors of the storage itself (retried or failed by the runner), not of a file's content.
STORAGE_ERRORS = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)


def unreadable_file_letter(file_format: str, path: str, index: int, exc: Exception) -> DeadLetter:
    """The ``read`` dead letter of a corrupt Avro/Parquet file, unreadable from record ``index``.

    The file counts as one record in (and this one dead letter); the records before ``index``
    were read as usual.
    """
    letter = dead_letter_for(
        SourceRecord(b"", {"file": path, "record": index}), stage="read", error=exc
    )
    message = f"cannot read {file_format} file {path} at record {index}: "
    return dataclasses.replace(letter, error_message=message + letter.error_message)


_METRICS_NAMESPACE = "headwater.io"


class NoFilesMatchedError(FileNotFoundError):
    """A read pattern that matches no file; the message names the pattern."""


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by headwater.io.deadletterio)


def canonical_json(row: Any) -> str:
    """Canonical JSON of ``row``: sorted keys, no spaces, non-JSON values as ``str``.

    >>> canonical_json({"b": 1, "a": [1.5, None]})
    '{"a":[1.5,null],"b":1}'
    """
    return json.dumps(row, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _is_local(pattern: str) -> bool:
    return FileSystems.get_scheme(pattern) in (None, "file")


def join_path(base: str, *parts: str) -> str:
    """``FileSystems.join(base, *parts)``; a local path without a scheme is joined by ``os``
    (Beam's FileSystems looks the scheme up on every call, and sessions write thousands of
    small files)."""
    if FileSystems.get_scheme(base) is None:
        return os.path.join(base, *parts)
    return FileSystems.join(base, *parts)


def _is_temp(path: str) -> bool:
    """Whether ``path`` is a writer's temporary file (or folder): ``.tmp-<name>-<unique>``."""
    return posixpath.basename(path.rstrip("/")).startswith(_TEMP_PREFIX)


def match_files(pattern: str) -> list[str]:
    """The files ``pattern`` matches, sorted, without writers' ``.tmp-*`` files or folders.

    Raises :class:`NoFilesMatchedError` naming the pattern when nothing matches.
    """
    try:
        [result] = FileSystems.match([pattern])
        metadata = result.metadata_list
    except Exception as exc:  # Beam wraps "nothing there" in BeamIOError on some filesystems
        if "no files found" in str(exc).lower() or "not found" in str(exc).lower():
            metadata = []
        else:
            raise
    paths = sorted(
        m.path
        for m in metadata
        if not _is_temp(m.path)
        and posixpath.basename(m.path) != SUCCESS_MARKER
        and not m.path.endswith("/")
        and not (_is_local(m.path) and os.path.isdir(m.path))
    )
    if not paths:
        raise NoFilesMatchedError(f"no file matches pattern {pattern!r}")
    return paths


def file_size(path: str) -> int:
    """The size in bytes of the file at ``path``; 0 when the file system cannot tell."""
    try:
        [result] = FileSystems.match([path])
        return int(result.metadata_list[0].size_in_bytes)
    except (BeamIOError, OSError, IndexError, ValueError):
        return 0


def write_atomically(path: str, data: bytes, *, mime_type: str = "application/octet-stream"):
    """Writes ``data`` to ``path`` via a temp file in the same folder and a rename.

    Readers never see a partial file under ``path``; an existing file is replaced. The temp
    file (``.tmp-<name>-<unique>``, see :func:`_temp_suffix`) is removed when the write fails.
    A missing local folder is made (when the write finds it missing: a folder that is there
    costs no call).
    """
    _write_via_temp(path, data, mime_type, replace=True)


def make_local_folders(paths: Iterable[str]) -> bool:
    """Makes the folders of the local ``paths`` (each once, parents first); False, making
    nothing, when a path is not a local one without a scheme (object stores have no folders).

    A run that writes a folder per window (sessions: thousands) then writes each file into a
    folder that is there, instead of each write finding its folder and the folder's parent
    missing first.
    """
    paths = list(paths)
    if not all(FileSystems.get_scheme(path) is None for path in paths):
        return False
    folders = {os.path.dirname(path) or "." for path in paths}
    folders |= {os.path.dirname(folder) or "." for folder in folders}  # and their parents
    for folder in sorted(folders):  # a parent sorts before its folders
        _make_folder(folder)
    return True


def write_once(path: str, data: bytes, *, mime_type: str = "application/octet-stream") -> bool:
    """Writes ``data`` to ``path`` unless a file is already there; True when written.

    As :func:`write_atomically` (a temp file renamed into place), but an existing file is never
    replaced: holding the same bytes the write is a no-op (a retried bundle, a restarted job
    writing what an earlier one wrote), holding other bytes it is kept and False is returned
    (the caller says so). Local files are linked into place (``os.link`` fails when the name
    exists, so two writers racing for one name cannot clobber each other); other filesystems,
    and local ones without hard links, check the name, then rename (Beam's ``FileSystems`` has
    no no-clobber rename).
    """
    if FileSystems.exists(path):
        return _same_bytes(path, data)
    return _write_via_temp(path, data, mime_type, replace=False) or _same_bytes(path, data)


def _same_bytes(path: str, data: bytes) -> bool:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read() == data


def _make_folder(directory: str) -> None:
    """``os.makedirs(directory, exist_ok=True)`` in one call when the parent exists (a session
    run makes thousands of window folders, each in a new folder of its start: ``makedirs``
    checks each parent before making it, then checks the folder again when it exists)."""
    try:
        os.mkdir(directory)
    except FileExistsError:
        pass  # a file of that name fails the write that follows, naming it
    except FileNotFoundError:
        parent = os.path.dirname(directory)
        if not parent or parent == directory:
            raise
        _make_folder(parent)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another writer
            os.mkdir(directory)


def _write_local(path: str, data: bytes, directory: str) -> None:
    """``data`` into the new local file ``path`` in ``directory``, made if missing (tried first:
    most writes go to a folder that is there)."""
    try:
        handle = open(path, "wb")  # noqa: SIM115 (the with below closes it)
    except FileNotFoundError:
        _make_folder(directory or ".")
        handle = open(path, "wb")  # noqa: SIM115
    with handle:
        handle.write(data)


_TEMP_COUNTER = itertools.count()
_TEMP_TOKEN = (0, "")  # (process id, a random token of that process)


def _temp_suffix() -> str:
    """A temp file name's unique part: a random token of this process and a counter (a
    ``uuid4`` per file cost ~10 us: 0.1 s of a run writing 10,000 session files)."""
    global _TEMP_TOKEN
    pid = os.getpid()
    if _TEMP_TOKEN[0] != pid:  # a new process (a forked worker too) draws its own token
        _TEMP_TOKEN = (pid, uuid.uuid4().hex[:16])
    return f"{_TEMP_TOKEN[1]}-{next(_TEMP_COUNTER)}"


def _write_via_temp(path: str, data: bytes, mime_type: str, *, replace: bool) -> bool:
    """Temp file + rename (``replace``) or + link (not ``replace``); False if the name was taken."""
    plain = FileSystems.get_scheme(path) is None  # a local path without file://
    directory, name = posixpath.split(path) if not _is_local(path) else os.path.split(path)
    temp = join_path(directory, f"{_TEMP_PREFIX}{name}-{_temp_suffix()}")
    try:
        if plain:  # OS calls: Beam's FileSystems resolves the scheme on each one (sessions
            # write thousands of small files)
            _write_local(temp, data, directory)
            if replace:
                os.replace(temp, path)
                return True
        else:
            with FileSystems.create(temp, mime_type, CompressionTypes.UNCOMPRESSED) as handle:
                handle.write(data)
            FileSystems.rename([temp], [path])
            return True
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: check the name, then rename
            if os.path.exists(path):
                return False
            os.rename(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)
        return True
    except BaseException:
        try:
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
        except Exception:  # the original failure is the one worth raising
            _LOG.info("could not remove temp file %s", temp)
        raise


class OutputFolderNotEmptyError(ValueError):
    """An output folder already holds files and the run was not asked to replace them."""


def folder_prefix(path: str) -> str:
    """The prefix of every path :func:`list_output_files` gives under the folder ``path``: its
    absolute form and a separator for a local folder, else ``path`` ending in one ``/``.

    >>> folder_prefix("gs://bucket/out//")
    'gs://bucket/out/'
    """
    return path.rstrip("/") + "/" if not _is_local(path) else os.path.abspath(path) + os.sep


def list_output_files(
    folder: str | None, *, markers: bool = False, temps: bool = True
) -> list[str]:
    """Every file under ``folder`` (recursively, any ``FileSystems`` scheme), sorted.

    Writers' temporary files (``.tmp-*``) count (a crashed run leaves them) unless
    ``temps=False``; the completion marker only with ``markers=True``. A missing folder has no
    files.
    """
    if not folder:
        return []
    if _is_local(folder):
        found = _local_files(os.path.abspath(folder))
    else:
        try:
            [result] = FileSystems.match([folder.rstrip("/") + "/**"])
            found = [m.path for m in result.metadata_list if not m.path.endswith("/")]
        except Exception:  # nothing there (Beam raises on some filesystems)
            found = []
    return sorted(
        f
        for f in found
        if (markers or posixpath.basename(f) != SUCCESS_MARKER) and (temps or not _is_temp(f))
    )


def _local_files(root: str) -> list[str]:
    """The files under the local folder ``root`` (as ``os.walk`` finds them: a link to a folder
    is neither listed nor followed; a folder it cannot read has no files), unsorted.

    One ``scandir`` per folder and nothing else: a session run's output has two folders per
    file (20,000 for 10,000 sessions), and ``os.walk``'s own work per folder took a third of
    the listing's time.
    """
    found: list[str] = []
    folders = [root]
    while folders:
        try:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    if not entry.is_dir():
                        found.append(entry.path)
                    elif not entry.is_symlink():
                        folders.append(entry.path)
        except OSError:
            continue
    return found


def prepare_output_folders(
    folders: Iterable[str | None], *, overwrite: bool, keep: Iterable[str] = ()
) -> None:
    """Makes sure a run starts with empty output ``folders`` (local or remote).

    A folder holding any file (a completion marker, a temporary file) raises
    :class:`OutputFolderNotEmptyError` naming it, unless ``overwrite``: then its whole contents
    are deleted first. ``overwrite`` refuses a folder that holds the current directory, or any of
    ``keep`` (the run's input files): deleting it would delete what the run reads.
    """
    names = list(dict.fromkeys(f for f in folders if f))
    for folder in names:
        files = list_output_files(folder, markers=True)
        if not files:
            continue
        if not overwrite:
            raise OutputFolderNotEmptyError(
                f"output folder {folder!r} is not empty ({len(files)} file(s), e.g. "
                f"{files[0]!r}): a run into it would mix its files with the earlier ones. Give "
                "an empty or new folder, or --overwrite to delete its contents first"
            )
        root = folder_prefix(folder)
        inside = [k for k in keep if folder_prefix(k).startswith(root) or k.startswith(root)]
        if _is_local(folder) and folder_prefix(os.getcwd()).startswith(root):
            inside.append(os.getcwd())
        if inside:
            raise OutputFolderNotEmptyError(
                f"--overwrite would delete {folder!r}, which holds {inside[0]!r} (an input of "
                "this run or the current directory): choose another output folder"
            )
        _LOG.info("--overwrite: deleting %d file(s) under %s", len(files), folder)
        if _is_local(folder):
            for entry in os.scandir(root):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.remove(entry.path)
        else:
            FileSystems.delete(files)


def write_success_marker(folder: str, summary: Mapping[str, Any], files: Sequence[str]) -> str:
    """Writes ``_SUCCESS`` into ``folder``: ``summary`` plus ``files`` (relative), as JSON.

    Written atomically and last, so a folder without it did not finish. Returns its path.
    """
    root = folder_prefix(folder)
    full = [folder_prefix(f)[:-1] for f in files]
    relative = sorted(f[len(root) :] if f.startswith(root) else f for f in full)
    body = {**summary, "files": relative}
    data = (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")
    path = FileSystems.join(folder.rstrip("/") or folder, SUCCESS_MARKER)
    write_atomically(path, data, mime_type="application/json")
    return path


def _window_bound(timestamp: Any) -> str:
    return timestamp.to_rfc3339()


def window_directory(window: Any, *, merging: bool = False) -> str:
    """The folder name (relative) holding one window's files.

    >>> from apache_beam.transforms.window import GlobalWindow, IntervalWindow
    >>> window_directory(IntervalWindow(1700000000, 1700000060))
    'window_start=2023-11-14T22:13:20Z'
    >>> window_directory(IntervalWindow(0, 90), merging=True)
    'window_start=1970-01-01T00:00:00Z/window_end=1970-01-01T00:01:30Z'
    >>> window_directory(GlobalWindow())
    'window=global'
    """
    if isinstance(window, beam_window.GlobalWindow):
        return "window=global"
    start, end = getattr(window, "start", None), getattr(window, "end", None)
    if start is None or end is None:
        return f"window_max={_window_bound(window.max_timestamp())}"
    folder = f"window_start={_window_bound(start)}"
    return f"{folder}/window_end={_window_bound(end)}" if merging else folder


# --------------------------------------------------------------------------------------------
# Reading


class _ExpandPatternFn(beam.DoFn):
    """A pattern -> the paths it matches (raises NoFilesMatchedError when none)."""

    def process(self, pattern: str) -> Iterator[str]:
        yield from match_files(pattern)


class _ReadFileFn(beam.DoFn):
    """One path -> its records (main) or, for an undecodable file, one dead letter."""

    def __init__(self, file_format: str):
        self._format = file_format
        self._files = Metrics.counter(_METRICS_NAMESPACE, "files_read")
        self._records = Metrics.counter(_METRICS_NAMESPACE, "records_read")
        self._corrupt = Metrics.counter(_METRICS_NAMESPACE, "corrupt_files")

    def process(self, path: str) -> Iterator[Any]:
        self._files.inc()
        if self._format == "json":
            yield from self._read_json_lines(path)
            return
        read = self._read_avro if self._format == "avro" else self._read_parquet
        index = 0
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            try:
                for record in read(handle):
                    yield DecodedRecord(record, {"file": path, "record": index})
                    index += 1
            except STORAGE_ERRORS:
                raise
            except Exception as exc:  # any decoding failure: the file is corrupt
                self._corrupt.inc()
                _LOG.info("%s file %s is unreadable after %d records", self._format, path, index)
                yield beam.pvalue.TaggedOutput(
                    "dead_letter", unreadable_file_letter(self._format, path, index, exc)
                )
        self._records.inc(index)

    def _read_json_lines(self, path: str) -> Iterator[SourceRecord]:
        count = 0
        with FileSystems.open(path) as handle:  # compression detected from the extension
            for number, raw in enumerate(iter(handle.readline, b""), start=1):
                line = raw[:-1] if raw.endswith(b"\n") else raw
                if line.endswith(b"\r"):
                    line = line[:-1]
                if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                    line = line[3:]
                if not line.strip():
                    continue
                count += 1
                yield SourceRecord(line, {"file": path, "line": number})
        self._records.inc(count)

    @staticmethod
    def _read_avro(handle: Any) -> Iterator[dict[str, Any]]:
        for record in fastavro.reader(handle):
            yield record if isinstance(record, dict) else {"value": record}

    @staticmethod
    def _read_parquet(handle: Any) -> Iterator[dict[str, Any]]:
        parquet = pq.ParquetFile(handle)
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()


def read_files_here(pattern: str, file_format: str) -> tuple[list[Any], list[Any]]:
    """Reads the files matching ``pattern`` in this process, as :class:`ReadFromFiles` reads
    them on workers: (records in file order, dead letters of unreadable files or lines). What a
    stream replay (``--replay_as_stream``) feeds its TestStream from, in the driver."""
    reader = _ReadFileFn(file_format)
    records: list[Any] = []
    dead: list[Any] = []
    for path in sorted(match_files(pattern)):
        for item in reader.process(path):
            if isinstance(item, beam.pvalue.TaggedOutput):
                dead.append(item.value)
            else:
                records.append(item)
    return records, dead


class ReadFromFiles(beam.PTransform):
    """Reads every file matching a glob as JSON lines, Avro or Parquet records.

    Returns :class:`~headwater.core.deadletter.Routed`: ``main`` holds
    :class:`~headwater.core.records.SourceRecord` (json) or
    :class:`~headwater.core.records.DecodedRecord`
    (avro, parquet) values, ``dead_letter`` one envelope per undecodable file. See the module
    docstring for origins, ordering and errors.

    Args:
      pattern: a path or glob (``data/*.jsonl``, ``gs://bucket/in/**.parquet``).
      format: ``"json"`` (JSON lines), ``"avro"`` or ``"parquet"``.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_bytes(b'{"x": 1}\\r\\n\\n{"x": 2}\\n')
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     read = p | ReadFromFiles(str(folder / "*.jsonl"), format="json")
    ...     _ = read.main | beam.Map(lambda r: print(r.payload, r.origin["line"]))
    b'{"x": 1}' 1
    b'{"x": 2}' 3
    """

    def __init__(self, pattern: str, *, format: str):
        super().__init__()
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError(f"pattern={pattern!r} must be a non-empty path or glob")
        if format not in READ_FORMATS:
            raise ValueError(f"format={format!r} is not one of {', '.join(READ_FORMATS)}")
        self._pattern = pattern
        self._format = format

    def expand(self, pbegin):
        if _is_local(self._pattern):
            match_files(self._pattern)  # fail at construction: cheap for local paths
        results = (
            pbegin
            | "Pattern" >> beam.Create([self._pattern])
            | "Match" >> beam.ParDo(_ExpandPatternFn())
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(_ReadFileFn(self._format)).with_outputs("dead_letter", main="main")
        )
        return Routed(results.main, results.dead_letter)


# --------------------------------------------------------------------------------------------
# Schema inference and encoding


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    kind: str  # bool, long, double, string, bytes, timestamp, date, json
    nullable: bool


def _kind_of(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes"
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"field {name!r} holds a naive datetime {value.isoformat()}; "
                "use timezone-aware datetimes"
            )
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    return "json"


def _infer_columns(rows: Sequence[Mapping[str, Any]]) -> list[_Column]:
    order: dict[str, set[str]] = {}
    nullable: set[str] = set()
    for row in rows:
        for name, value in row.items():
            kinds = order.setdefault(name, set())
            if value is None:
                nullable.add(name)
            else:
                kinds.add(_kind_of(name, value))
    columns = []
    for name, kinds in order.items():
        if not kinds:
            kind, is_nullable = "string", True
        elif len(kinds) == 1:
            kind, is_nullable = next(iter(kinds)), name in nullable
        elif kinds == {"long", "double"}:
            kind, is_nullable = "double", name in nullable
        else:
            kind, is_nullable = "json", name in nullable
        if any(name not in row for row in rows):
            is_nullable = True
        columns.append(_Column(name, kind, is_nullable))
    return columns


def _convert(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "double":
        return float(value)
    if kind == "json":
        return canonical_json(value)
    if kind == "bytes":
        return bytes(value)
    if kind == "timestamp":
        return value.astimezone(dt.timezone.utc)
    return value


_ARROW_TYPES = {
    "bool": pa.bool_(),
    "long": pa.int64(),
    "double": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
    "json": pa.string(),
}

_AVRO_TYPES: dict[str, Any] = {
    "bool": "boolean",
    "long": "long",
    "double": "double",
    "string": "string",
    "bytes": "bytes",
    "timestamp": {"type": "long", "logicalType": "timestamp-micros"},
    "date": {"type": "int", "logicalType": "date"},
    "json": "string",
}


def _as_row(element: Any) -> Mapping[str, Any]:
    if isinstance(element, Mapping):
        return element
    if isinstance(element, DecodedRecord):
        return element.record
    as_dict = getattr(element, "_asdict", None)
    if callable(as_dict):
        return as_dict()
    raise TypeError(f"WriteWindowedFiles writes dict rows, got {type(element).__name__}")


def encode_parquet(rows: list[Mapping[str, Any]], schema: pa.Schema | None) -> bytes:
    """Row dicts as :class:`WriteWindowedFiles` writes them to Parquet (schema inferred if None)."""
    if schema is not None:
        table = pa.Table.from_pylist(
            [{k: _convert_given(v) for k, v in row.items()} for row in rows], schema=schema
        )
    else:
        columns = _infer_columns(rows)
        arrow_schema = pa.schema(
            [pa.field(c.name, _ARROW_TYPES[c.kind], nullable=c.nullable) for c in columns]
        )
        arrays = [
            pa.array([_convert(c.kind, row.get(c.name)) for row in rows], type=_ARROW_TYPES[c.kind])
            for c in columns
        ]
        table = pa.Table.from_arrays(arrays, schema=arrow_schema)
    return parquet_bytes(table)


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as one Parquet file's bytes, with :class:`WriteWindowedFiles`' write options.

    The columnar path (:mod:`headwater.columnar.write`) builds its tables column-wise and
    encodes them here, so that its files equal the writer's byte for byte. Written to an
    Arrow buffer, not a Python file object (a session run encodes thousands of small files).
    """
    buffer = pa.BufferOutputStream()
    pq.write_table(
        table,
        buffer,
        version="2.6",
        compression="snappy",
        use_dictionary=True,
        write_statistics=True,
        data_page_version="1.0",
        coerce_timestamps="us",
        allow_truncated_timestamps=False,
    )
    return buffer.getvalue().to_pybytes()


def _convert_given(value: Any) -> Any:
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc)
    return value


def _avro_schema_for(columns: list[_Column]) -> dict[str, Any]:
    fields = []
    for column in columns:
        if not _AVRO_NAME_RE.match(column.name):
            raise ValueError(
                f"field {column.name!r} is not a valid Avro name ([A-Za-z_][A-Za-z0-9_]*); "
                "rename it or write Parquet"
            )
        avro_type = _AVRO_TYPES[column.kind]
        if column.nullable:
            fields.append({"name": column.name, "type": ["null", avro_type], "default": None})
        else:
            fields.append({"name": column.name, "type": avro_type})
    return {"type": "record", "name": "Row", "namespace": "headwater", "fields": fields}


def encode_avro(
    records: Iterable[Mapping[str, Any]], schema: Mapping[str, Any], *, sync_seed: str
) -> bytes:
    """An Avro container (deflate) with a sync marker derived from ``sync_seed``.

    The same records, schema and seed always give the same bytes.
    """
    sync_marker = hashlib.blake2b(sync_seed.encode("utf-8"), digest_size=16).digest()
    buffer = io.BytesIO()
    fastavro.writer(
        buffer,
        fastavro.parse_schema(dict(schema)),
        records,
        codec="deflate",
        sync_marker=sync_marker,
    )
    return buffer.getvalue()


def encode_avro_rows(
    rows: list[Mapping[str, Any]], schema: Mapping[str, Any] | None, sync_seed: str
) -> bytes:
    """Row dicts as :class:`WriteWindowedFiles` writes them to Avro (schema inferred if None)."""
    if schema is not None:
        return encode_avro(rows, schema, sync_seed=sync_seed)
    columns = _infer_columns(rows)
    records = [{c.name: _convert(c.kind, row.get(c.name)) for c in columns} for row in rows]
    return encode_avro(records, _avro_schema_for(columns), sync_seed=sync_seed)


# --------------------------------------------------------------------------------------------
# Writing


class _KeepWindows(beam_window.WindowFn):
    """Keeps each element's window (re-windowing only to change trigger/accumulation)."""

    def __init__(self, inner: beam_window.WindowFn):
        self._inner = inner

    def assign(self, assign_context):
        return [assign_context.window]

    def merge(self, merge_context):
        if self._inner.is_merging():
            self._inner.merge(merge_context)

    def is_merging(self) -> bool:
        return self._inner.is_merging()

    def get_window_coder(self):
        return self._inner.get_window_coder()

    def get_transformed_output_time(self, window, input_timestamp):
        return self._inner.get_transformed_output_time(window, input_timestamp)


class _KeyByShardFn(beam.DoFn):
    """Keys a row by (shard, its window's bounds): every window is its own key, so the writes
    of many windows spread over workers (runners route by key, not by window).

    Session rows too: all windows under one key are then equal, so the GroupByKey's merge
    leaves each session its own group. (Keyed by shard alone, overlapping sessions of different
    keys would merge into one file named by their union -- in a stream, one that grows while
    any key stays active, its file held back all that time.)
    """

    def __init__(self, num_shards: int):
        self._num_shards = num_shards

    def process(
        self, element: Any, window=beam.DoFn.WindowParam
    ) -> Iterator[tuple[tuple[int, int, int], Mapping[str, Any]]]:
        row = _as_row(element)
        shard = stable_shard(canonical_json(row), self._num_shards)
        if not isinstance(window, beam_window.IntervalWindow):
            yield (shard, 0, 0), row
        else:
            yield (shard, window.start.micros, window.end.micros), row


def file_name(
    prefix: str,
    shard: int,
    num_shards: int,
    pane_index: int,
    extension: str,
    *,
    digest: str | None = None,
) -> str:
    """An output file's name: ``prefix-SSSSS-of-NNNNN``, the pane index when past 0, the
    content ``digest`` when given, the extension.

    Window files (:class:`WriteWindowedFiles`, the columnar writer) have no digest: a window's
    (window, shard, pane) is written once and kept (see the module docstring). Streaming
    dead-letter and late files (:mod:`headwater.io.deadletterio`) carry one, since their panes
    have no window to name them.

    >>> file_name("part", 1, 2, 0, "parquet")
    'part-00001-of-00002.parquet'
    >>> file_name("dead_letters", 0, 1, 3, "jsonl", digest="0a1b2c3d")
    'dead_letters-00000-of-00001-pane-003-0a1b2c3d.jsonl'
    """
    name = f"{prefix}-{shard:05d}-of-{num_shards:05d}"
    if pane_index > 0:
        name += f"-pane-{pane_index:03d}"
    if digest is not None:
        name += f"-{digest}"
    return f"{name}.{extension}"


def content_digest(text: str) -> str:
    """16 hex digits of a stable hash of ``text`` (the same in every process and run)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


class _WriteGroupFn(beam.DoFn):
    """((shard, window bounds), rows) of one window pane -> one file, renamed into place."""

    def __init__(self, output, file_format, num_shards, schema, prefix, merging):
        self._output = output
        self._format = file_format
        self._num_shards = num_shards
        self._schema = schema
        self._prefix = prefix
        self._merging = merging
        self._files = Metrics.counter(_METRICS_NAMESPACE, "files_written")
        self._rows = Metrics.counter(_METRICS_NAMESPACE, "rows_written")
        self._kept = Metrics.counter(_METRICS_NAMESPACE, "window_files_kept")

    def process(
        self,
        element: tuple[tuple[int, int, int], Iterable[Mapping[str, Any]]],
        window=beam.DoFn.WindowParam,
        pane=beam.DoFn.PaneInfoParam,
    ) -> Iterator[str]:
        (shard, _, _), rows = element
        keyed = sorted(((canonical_json(row), row) for row in rows), key=lambda item: item[0])
        if keyed:  # an empty pane writes no file
            yield self._write(shard, [row for _, row in keyed], window, pane)

    def _write(self, shard: int, ordered: list[Any], window: Any, pane: Any) -> str:
        pane_index = pane.index if pane is not None else 0
        relative = posixpath.join(
            window_directory(window, merging=self._merging),
            file_name(self._prefix, shard, self._num_shards, pane_index, self._format),
        )
        if self._format == "parquet":
            data = encode_parquet(ordered, self._schema)
        else:
            data = encode_avro_rows(ordered, self._schema, relative)
        path = FileSystems.join(self._output, *relative.split("/"))
        if write_once(path, data):
            self._files.inc()
            self._rows.inc(len(ordered))
        else:  # an earlier job (a restart re-read part of this window) wrote this pane
            self._kept.inc()
            _LOG.warning(  # rows counted as output that this folder does not hold: say so
                "kept %s, written earlier with other rows (%d rows of this pane not written)",
                path,
                len(ordered),
            )
        return path


class WriteWindowedFiles(beam.PTransform):
    """Writes a windowed PCollection of dict rows as Parquet or Avro, one file per window pane.

    Deterministic names and bytes, atomic finalization, one file per (window, shard, pane); see
    the module docstring for the layout, the schema inference and late panes. Returns the
    ``PCollection`` of the final paths written (in the rows' windows).

    Args:
      output: the base folder (local or any ``FileSystems`` scheme, e.g. ``gs://bucket/out``).
      format: ``"parquet"`` or ``"avro"``.
      num_shards: files per window pane (rows spread by a stable hash of their content).
      schema: a ``pyarrow.Schema`` (parquet) or an Avro record schema dict (avro); ``None``
        infers one per file.
      prefix: the file-name prefix (letters, digits, ``_ . = -``).

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> with beam.Pipeline("FnApiRunner") as p:
    ...     rows = p | beam.Create([{"k": "a", "n": 1}, {"k": "b", "n": 2}])
    ...     rows = rows | beam.Map(lambda r: beam.window.TimestampedValue(r, 90))
    ...     rows = rows | beam.WindowInto(beam.window.FixedWindows(60))
    ...     paths = rows | WriteWindowedFiles(out, format="parquet")
    ...     _ = paths | beam.Map(lambda path: print(path[len(out):]))
    /window_start=1970-01-01T00:01:00Z/part-00000-of-00001.parquet
    """

    def __init__(
        self,
        output: str,
        *,
        format: str = "parquet",
        num_shards: int = 1,
        schema: pa.Schema | Mapping[str, Any] | None = None,
        prefix: str = "part",
    ):
        super().__init__()
        if not isinstance(output, str) or not output.strip():
            raise ValueError(f"output={output!r} must be a non-empty folder path")
        if format not in WRITE_FORMATS:
            raise ValueError(f"format={format!r} is not one of {', '.join(WRITE_FORMATS)}")
        check_count("num_shards", num_shards)
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise ValueError(
                f"prefix={prefix!r} must start with a letter, digit or '_' and use only "
                "letters, digits and _ . = -"
            )
        if schema is not None:
            if format == "parquet" and not isinstance(schema, pa.Schema):
                raise ValueError(f"schema={schema!r} must be a pyarrow.Schema for parquet")
            if format == "avro":
                if not isinstance(schema, Mapping):
                    raise ValueError(f"schema={schema!r} must be an Avro schema dict for avro")
                try:
                    fastavro.parse_schema(dict(schema))
                except Exception as exc:
                    raise ValueError(
                        f"schema={schema!r} is not a valid Avro schema: {exc}"
                    ) from None
                schema = dict(schema)
        self._output = output
        self._format = format
        self._num_shards = num_shards
        self._schema = schema
        self._prefix = prefix

    def expand(self, pcoll):
        windowing = pcoll.windowing
        if windowing.accumulation_mode == beam_trigger.AccumulationMode.ACCUMULATING:
            pcoll = pcoll | "Discarding" >> beam.WindowInto(
                _KeepWindows(windowing.windowfn),
                trigger=windowing.triggerfn,
                accumulation_mode=beam_trigger.AccumulationMode.DISCARDING,
                timestamp_combiner=windowing.timestamp_combiner,
                allowed_lateness=windowing.allowed_lateness,
            )
        return (
            pcoll
            | "KeyByShard" >> beam.ParDo(_KeyByShardFn(self._num_shards))
            | "GroupPerWindowShard" >> beam.GroupByKey()
            | "WriteFiles"
            >> beam.ParDo(
                _WriteGroupFn(
                    self._output,
                    self._format,
                    self._num_shards,
                    self._schema,
                    self._prefix,
                    windowing.windowfn.is_merging(),
                )
            )
        )
