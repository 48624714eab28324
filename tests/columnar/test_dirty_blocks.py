"""Bad lines anywhere in a JSON block: the columnar path gives the record path's rows, counters,
dead letters (reason text, file and line) and window files, byte for byte (issue 15)."""

from __future__ import annotations

import json
import threading
from functools import partial

import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that

from headwater.columnar import ComputeWindowedMetricsColumnar, early, jsonblocks, reader
from headwater.columnar.state import ColumnarState
from headwater.core.accounting import Accounting
from headwater.core.forked import CAN_FORK
from headwater.devtools.workload import generate
from headwater.io.fileio import ReadFromFiles
from headwater.io.formats import JsonFormat
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

_WIDTH = 160  # every line but the long one is this many bytes, so blocks hold 10 lines
_BLOCK_LINES = 10
_T0 = 1_700_000_000_000


def _record(i: int, **change) -> dict:
    record = {
        "event_id": f"e{i - 1 if i % 13 == 0 else i}",  # every 13th line re-delivers the one before
        "user_id": f"u{i % 4}",
        "event_time": _T0 + 1_000 * i,
        "amount": i % 7 + 0.5,
    }
    for name, value in change.items():
        if value is _MISSING:
            del record[name]
        else:
            record[name] = value
    return record


_MISSING = object()


def _padded(text: bytes) -> bytes:
    """``text`` (ending in ``}`` if an object) widened to ``_WIDTH`` with spaces inside it."""
    assert len(text) <= _WIDTH, text
    if text.endswith(b"}"):
        return text[:-1] + b" " * (_WIDTH - len(text)) + b"}"
    return text + b" " * (_WIDTH - len(text))


def _json(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


# Every malformed kind: the workload's (truncated JSON, invalid UTF-8, missing or non-numeric
# event time, missing user id, non-numeric amount) and more, each a line for event ``i``.
_KINDS = {
    "truncated_json": lambda i: _json(_record(i))[:40],
    "invalid_utf8": lambda i: _json(_record(i))[:-2] + b'\xff\xfe"}',
    "missing_event_time": lambda i: _json(_record(i, event_time=_MISSING)),
    "non_numeric_event_time": lambda i: _json(_record(i, event_time="yesterday")),
    "missing_user_id": lambda i: _json(_record(i, user_id=_MISSING)),
    "non_numeric_amount": lambda i: _json(_record(i, amount="12.5 EUR")),
    "boolean_amount": lambda i: _json(_record(i, amount=True)),
    "object_amount": lambda i: _json(_record(i, amount={"value": 1})),
    "array_amount": lambda i: _json(_record(i, amount=[1])),
    "null_amount": lambda i: _json(_record(i, amount=None)),
    "huge_amount": lambda i: _json(_record(i, amount=0)).replace(b":0}", b":1e400}"),
    "int_user_id": lambda i: _json(_record(i, user_id=7)),  # accepted: the key text "7"
    "object_user_id": lambda i: _json(_record(i, user_id={"u": 1})),
    "object_event_id": lambda i: _json(_record(i, event_id={"e": 1})),
    "float_event_time": lambda i: _json(_record(i, event_time=_T0 + 1_000 * i + 0.5)),
    "negative_event_time": lambda i: _json(_record(i, event_time=-5)),
    "syntax_error": lambda i: _json(_record(i))[:-1] + b",}",
    "not_an_object": lambda i: b"[1, 2, 3]",
    "two_objects": lambda i: _json(_record(i)) + _json(_record(i + 1000)),
    "lone_surrogate": lambda i: _json(_record(i, user_id="\ud800")).replace(b"\\\\", b"\\"),
    "whitespace": lambda i: b"   \t ",
}


def _lines() -> list[bytes]:
    """120 lines in 12 blocks of 10: bad lines at a block's start, middle and end, blocks full of
    bad lines, every kind; then a bad line longer than a block."""
    kinds = list(_KINDS)
    bad: dict[int, str] = {
        10: "non_numeric_amount",
        25: "non_numeric_event_time",
        39: "two_objects",
    }
    bad.update({40 + k: kinds[k] for k in range(10)})  # a block of bad lines only
    bad.update({50 + k: kinds[10 + k] for k in range(7)})  # 7 of 10 bad
    for k, kind in enumerate(kinds):  # each kind once more, spread over the later blocks
        bad[62 + 2 * k] = kind
    lines = []
    for i in range(120):
        line = _KINDS[bad[i]](i) if i in bad else _json(_record(i))
        lines.append(_padded(line))
    lines.append(_json(_record(120, amount="x" * 4 * _WIDTH * _BLOCK_LINES)))  # spans blocks
    lines += [_padded(_json(_record(i))) for i in range(121, 130)]
    assert len(bad) + 1 == _BAD_LINES
    return lines


_BAD_LINES = 42  # the long line included


def _options():
    return {
        "decode": JsonFormat(),
        "event_time": EventTimeExtractor(field="event_time", unit="ms"),
        "dedup": DeduplicateById(id_field="event_id", horizon="10m"),
        "window": "fixed:60s",
        "allowed_lateness": 0,
        "key_field": "user_id",
        "metrics": "count,sum:amount,min:amount,max:amount",
    }


_SEEN: dict[str, list] = {}


def _collect(name, actual):
    _SEEN[name] = list(actual)


def _letter(letter):
    return (letter.stage, letter.error_type, letter.error_message, letter.payload, letter.origin)


@pytest.fixture
def dirty_file(tmp_path, monkeypatch):
    """The dirty file, read in blocks of 10 lines, from chunks that cut lines in two."""
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", (_WIDTH + 1) * _BLOCK_LINES)
    monkeypatch.setattr(jsonblocks, "READ_CHUNK", 7 * _WIDTH + 13)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in _lines()))
    return path


def _compare_engines(path, **columnar) -> tuple[dict, int]:
    """Runs both engines over ``path``; checks rows, counters and dead letters are the same.

    Returns the counters and the rows the columnar path sent through the record path's code.
    ``columnar``: more of the columnar transform's arguments.
    """
    record_p = TestPipeline(runner="FnApiRunner", blocking=True)
    record = (record_p | ReadFromFiles(str(path), format="json")).main | ComputeWindowedMetrics(
        **_options()
    )
    assert_that(record.rows, partial(_collect, "record_rows"), label="RecordRows")
    assert_that(record.dead_letter, partial(_collect, "record_dead"), label="RecordDead")
    record_result = record_p.run()
    record_counts = Accounting.from_result(record_result).to_dict()

    columnar_p = TestPipeline(runner="FnApiRunner", blocking=True)
    fast = columnar_p | ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format="json", **_options(), **columnar
    )
    assert_that(fast.rows, partial(_collect, "columnar_rows"), label="ColumnarRows")
    assert_that(fast.dead_letter, partial(_collect, "columnar_dead"), label="ColumnarDead")
    columnar_result = columnar_p.run()

    assert Accounting.from_result(columnar_result).to_dict() == record_counts

    def row_key(row):
        return (row["window_start"], row["key"])

    assert sorted(_SEEN["columnar_rows"], key=row_key) == sorted(_SEEN["record_rows"], key=row_key)
    assert sorted(map(_letter, _SEEN["columnar_dead"]), key=repr) == sorted(
        map(_letter, _SEEN["record_dead"]), key=repr
    )
    # the record path's parse counters, though the columnar path's parse threads ran its code
    # for the lines set aside and its vectorized checks accepted the rest
    for name in ("parse.dead_letter", "parse.ok"):
        counted = [_counter(result, name) for result in (record_result, columnar_result)]
        assert counted[0] == counted[1] > 0, name
    return record_counts, _counter(columnar_result, "columnar.slow_rows")


def _counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed for c in found)


@pytest.mark.parametrize("parse_lines", [None, 3])
def test_bad_lines_anywhere_in_a_block_give_the_record_paths_results(
    dirty_file, monkeypatch, parse_lines
):
    """Rows, all five counters and every dead letter (reason, file, line) equal the record path's.

    With ``parse_lines`` a block is parsed in pieces of three lines, side by side.
    """
    if parse_lines is not None:
        monkeypatch.setattr(jsonblocks, "PARSE_BYTES", (_WIDTH + 1) * parse_lines)
    counts, slow = _compare_engines(dirty_file)
    assert counts["dead_letter"] >= 30  # most bad lines are dead letters, not dropped
    assert counts["duplicate"] > 0
    # what the bad lines cost: themselves on the record path, plus at most the ten-line block of
    # each line holding two objects (bisected), never every line of the blocks they sit in
    assert slow <= _BAD_LINES + 2 * _BLOCK_LINES


def test_the_record_paths_code_runs_on_the_parse_threads(dirty_file, monkeypatch):
    """Every line set aside takes the record path's parse/check code on the thread that scanned
    or parsed its block, not on the DoFn's: the DoFn only applies the results in line order."""
    threads = []
    slow_result = ColumnarState.slow_result

    def recorded(self, element):
        threads.append(threading.current_thread().name)
        return slow_result(self, element)

    monkeypatch.setattr(ColumnarState, "slow_result", recorded)
    _, slow = _compare_engines(dirty_file)
    assert len(threads) == slow > 0
    assert {name.split("_")[0] for name in threads} == {"headwater-json"}


def test_parsing_on_the_dofns_own_thread_gives_the_same_results(dirty_file, monkeypatch):
    """``HEADWATER_PARSE_THREADS=0`` (the bench's single-threaded workers) parses each block's
    pieces on the reading thread, one after the other: the record path's results as with
    threads, bad lines included."""
    monkeypatch.setenv("HEADWATER_PARSE_THREADS", "0")
    monkeypatch.setattr(reader, "_POOL", None)
    monkeypatch.setattr(jsonblocks, "PARSE_BYTES", (_WIDTH + 1) * 3)
    counts, _ = _compare_engines(dirty_file)
    assert isinstance(reader._parse_pool(), reader._OnThisThread)
    assert counts["dead_letter"] >= 30


@pytest.fixture
def forked_decoding(monkeypatch):
    """Files of any size decoded in forked processes, given decode_processes: the process
    counts of the forked decodings, as the reader asked for them."""
    monkeypatch.setattr(jsonblocks, "FORK_DECODE_BYTES", 0)
    asked = []
    forked_stream = reader.forked_stream

    def recorded(produce, *, processes, **more):
        asked.append(processes)
        yield from forked_stream(produce, processes=processes, **more)

    monkeypatch.setattr(reader, "forked_stream", recorded)
    return asked


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
@pytest.mark.parametrize("processes", [2, 3])
def test_decoding_in_forked_processes_gives_the_record_paths_results(
    dirty_file, forked_decoding, processes
):
    """Blocks decoded in 2 or 3 forked processes (the long line carried over reads, blocks of
    bad lines only among them): the record path's rows, counters, parse counters and dead
    letters (reason, file and line), as in one process."""
    counts, slow = _compare_engines(dirty_file, decode_processes=processes)
    assert forked_decoding == [processes]
    assert counts["dead_letter"] >= 30
    assert counts["duplicate"] > 0
    assert 0 < slow <= _BAD_LINES + 2 * _BLOCK_LINES  # counted in the processes, added here


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
def test_decoding_in_forked_processes_writes_the_record_paths_files(
    dirty_file, forked_decoding, engine_files
):
    """The window files and the dead-letter files (the letters encoded in the processes that
    made them, written here) are the record path's bytes."""
    files = engine_files(str(dirty_file), _options(), "parquet", decode_processes=2)
    assert forked_decoding == [2]
    assert len(files["record"]) > 1
    assert files["columnar"] == files["record"]
    assert len(files["record-dead"]) > 1
    assert files["columnar-dead"] == files["record-dead"]


def _written(path, tmp_path, **columnar) -> tuple[dict, dict]:
    """The columnar path's window files below ``tmp_path`` (relative path -> bytes) and its
    files_written / rows_written counters."""
    pipeline = TestPipeline(runner="FnApiRunner", blocking=True)
    _ = pipeline | ComputeWindowedMetricsColumnar(
        pattern=str(path), file_format="json", output=str(tmp_path), **{**_options(), **columnar}
    )
    result = pipeline.run()
    files = {str(f.relative_to(tmp_path)): f.read_bytes() for f in tmp_path.rglob("*.parquet")}
    return files, {name: _counter(result, name) for name in ("files_written", "rows_written")}


@pytest.fixture
def forked_streams(monkeypatch) -> list[int]:
    """The processes of each final merge and write run in forked processes, as they come."""
    from headwater.columnar import batch

    asked: list[int] = []
    forked_stream = batch.forked_stream

    def recorded(produce, *, processes):
        asked.append(processes)
        yield from forked_stream(produce, processes=processes)

    monkeypatch.setattr(batch, "forked_stream", recorded)
    return asked


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
def test_windows_merged_and_written_in_forked_processes_are_one_processs_files(
    dirty_file, tmp_path, monkeypatch, forked_streams
):
    """With write_processes, the windows are cut into ranges merged and written each in a
    forked process: the same files and counters as one process."""
    from headwater.columnar import batch

    monkeypatch.setattr(batch, "_FORK_ROWS", 0)
    asked = forked_streams
    one = _written(dirty_file, tmp_path / "one")
    assert asked == []
    assert len(one[0]) == 3  # three windows
    assert one[1] == {"files_written": 3, "rows_written": 13}  # keys u0-u3, and "7"
    assert _written(dirty_file, tmp_path / "three", write_processes=3) == one
    assert asked == [3]


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
def test_sessions_merged_here_and_written_in_forked_processes_are_one_processs_files(
    dirty_file, tmp_path, monkeypatch, forked_streams
):
    """Sessions are merged in the DoFn's process (a key's session takes in pieces from any
    range), then cut into ranges of session starts, each written in a forked process: the same
    files and counters as one process, whether or not a range's files are split again."""
    from headwater.columnar import batch, write

    monkeypatch.setattr(batch, "FORK_FILES", 0)
    asked = forked_streams
    window = {"window": "session:5s"}  # a key's events 4 s apart: merged, but for the bad lines
    one = _written(dirty_file, tmp_path / "one", **window)
    assert asked == []
    assert len(one[0]) > 6
    assert len({name.split("/")[0] for name in one[0]}) > 3  # sessions of several starts
    assert one[1]["files_written"] == len(one[0])
    assert _written(dirty_file, tmp_path / "three", write_processes=3, **window) == one
    assert asked == [3]
    monkeypatch.setattr(write, "FORK_FILES", 0)
    assert _written(dirty_file, tmp_path / "again", write_processes=2, **window) == one
    assert asked == [3, 2]


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
def test_a_run_that_cannot_fork_decodes_merges_and_writes_everything_here(
    dirty_file, tmp_path, monkeypatch, caplog
):
    """No process to be had (a process limit, memory): the decoding and the final merge run in
    this process, with a warning, and give one process's files and counters (no window lost,
    no counter left behind)."""
    import os

    from headwater.columnar import batch

    monkeypatch.setattr(jsonblocks, "FORK_DECODE_BYTES", 0)
    monkeypatch.setattr(batch, "_FORK_ROWS", 0)
    one = _written(dirty_file, tmp_path / "one")

    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", refused)
    with caplog.at_level("WARNING", logger="headwater.core.forked"):
        here = _written(dirty_file, tmp_path / "here", decode_processes=2, write_processes=3)
    assert here == one
    assert caplog.text.count("no process forked") == 2  # the decoding, the merge


def test_emitted_duplicates_are_decoded_here(dirty_file, forked_decoding):
    """A duplicate's record is read from its block: with emit_duplicates the blocks are decoded
    in this process, whatever decode_processes says."""
    counts, _ = _compare_engines(dirty_file, decode_processes=2, emit_duplicates=True)
    assert forked_decoding == []
    assert counts["duplicate"] > 0


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_each_process_reads_its_own_pieces_with_the_files_line_numbers(dirty_file, processes):
    """``wanted``: each process's pieces are exactly every ``processes``-th piece of the
    whole file, with the same bytes and first line numbers."""
    every = list(reader._json_pieces(str(dirty_file)))
    assert len(every) > 6
    for index in range(processes):
        ours = list(
            reader._json_pieces(str(dirty_file), wanted=lambda n, i=index: n % processes == i)
        )
        assert ours == every[index::processes]


def test_a_small_file_is_decoded_here(dirty_file, monkeypatch):
    """Under the size a fork pays for, the blocks are decoded in this process."""
    asked = []
    monkeypatch.setattr(reader, "forked_stream", lambda *a, **k: asked.append(k) or iter(()))
    counts, _ = _compare_engines(dirty_file, decode_processes=2)
    assert asked == []
    assert counts["records_in"] > 0


def test_a_decode_process_count_that_is_not_a_count_is_an_error_naming_it(dirty_file):
    with pytest.raises(ValueError, match="decode_processes=0"):
        ComputeWindowedMetricsColumnar(
            pattern=str(dirty_file), file_format="json", **_options(), decode_processes=0
        )


@pytest.mark.parametrize("given", ["x", "-1", "1.5"])
def test_a_parse_thread_count_that_is_not_a_count_is_an_error_naming_it(monkeypatch, given):
    monkeypatch.setenv("HEADWATER_PARSE_THREADS", given)
    monkeypatch.setattr(reader, "_POOL", None)
    with pytest.raises(ValueError, match=f"HEADWATER_PARSE_THREADS='{given}'.*integer >= 0"):
        reader._parse_pool()


def test_bad_lines_anywhere_in_a_block_write_the_record_paths_files(dirty_file, engine_files):
    """The dirty file's window files and dead-letter files are the record path's bytes."""
    files = engine_files(str(dirty_file), _options(), "parquet")
    assert len(files["record"]) > 1
    assert files["columnar"] == files["record"]
    # the dead letters the columnar DoFn writes itself are the sink's files, byte for byte
    assert len(files["record-dead"]) > 1
    assert files["columnar-dead"] == files["record-dead"]


def test_bad_lines_in_a_large_block_cost_only_themselves(tmp_path):
    """3,000 events in one block, 3% malformed of every workload kind and 1% event times with a
    fraction: exactly those lines take the record path, with the record path's results."""
    events = list(generate(3_000, seed=17, malformed_frac=0.03))
    lines = [event.line for event in events]
    bad = {i for i, event in enumerate(events) if event.tag.startswith("malformed")}
    for i in range(5, len(lines), 100):
        if i not in bad:
            record = json.loads(lines[i])
            lines[i] = _json({**record, "event_time": record["event_time"] + 0.25})
            bad.add(i)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    counts, slow = _compare_engines(path)
    assert counts["dead_letter"] > 0
    assert slow == len(bad)


# --- the early parse (headwater.columnar.early) ---------------------------------------------


@pytest.fixture
def parsed_early(dirty_file, tmp_path, monkeypatch):
    """The dirty file as the early process leaves it (its own code, run here): a folder of
    laid-out, parsed blocks; the reader's claim gets it (the paths it claimed are listed)."""
    import os

    folder = tmp_path / "early"
    folder.mkdir()
    early._parse_ahead(str(dirty_file), str(folder), os.getppid())
    claimed: list[str] = []

    def claim(path):
        claimed.append(path)
        return early.Spool(str(folder))

    monkeypatch.setattr(early, "claim", claim)
    return folder, claimed


@pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")
def test_blocks_parsed_early_give_the_record_paths_results(
    dirty_file, forked_decoding, parsed_early
):
    """Decoders that take the early process's blocks (every block of the dirty file: bad lines
    of every kind, a line longer than a block, a float event time): the record path's rows,
    counters and dead letters; the early folder is removed once the decoding is over."""
    folder, claimed = parsed_early
    assert len(early.Spool(str(folder)).first_lines) > 6
    _compare_engines(dirty_file, decode_processes=2)
    assert claimed == [str(dirty_file)]
    assert forked_decoding == [2]
    assert not folder.exists()


def test_an_early_block_is_only_checked_unless_the_options_change_its_layout(
    dirty_file, parsed_early, monkeypatch
):
    """A block the early process parsed is not parsed again: the same accepted rows, counters
    and dead letters as one parsed here; a block whose layout the options change (a float
    event time: the checks take the column only as integers) is parsed anew."""
    from headwater.columnar.batch import ComputeColumnarFn

    folder, _ = parsed_early
    spool = early.Spool(str(folder))
    options = ComputeWindowedMetricsColumnar(
        pattern=str(dirty_file), file_format="json", **_options()
    )._options
    fn = ComputeColumnarFn(options)
    parses: list[int] = []
    parse_run = reader.parse_run

    def counted(*args):
        parses.append(1)
        return parse_run(*args)

    monkeypatch.setattr(reader, "parse_run", counted)
    whole = ("event_time", "user_id", "event_id")
    checked = anew = 0
    for first_line, block in reader._json_pieces(str(dirty_file)):
        results = []
        for given in (None, spool):
            state = ColumnarState(options)
            parses.clear()
            pending = fn._start_json_block(state, str(dirty_file), first_line, block, set(), given)
            decoded = fn._decode_json_block(state, pending)
            rows = decoded.rows
            results.append(
                (
                    decoded.records.tolist(),
                    None if rows is None else (rows.ts.tolist(), rows.ids.to_pylist()),
                    None if rows is None else (rows.keys.to_pylist(), rows.values.tolist()),
                    # columnar.slow_rows depends on the odd kinds known (which lines are set
                    # aside before the parse): the outcomes do not
                    {k: v for k, v in state.counts.items() if k != "columnar.slow_rows"},
                    [_letter(letter) for letter in state.dead],
                    len(parses),
                )
            )
        assert results[0][:5] == results[1][:5]
        done = spool.take(first_line)
        if done.fits(len(block), None, whole):
            assert results[1][5] == 0  # only checked
            checked += 1
        else:
            assert results[1][5] == results[0][5] > 0  # parsed anew
            anew += 1
    assert checked > 6
    assert anew >= 1  # the float event time's block


def test_an_early_block_fits_only_the_bytes_and_options_it_was_parsed_for(dirty_file, parsed_early):
    folder, _ = parsed_early
    spool = early.Spool(str(folder))
    done = spool.take(1)
    assert done is not None
    assert spool.take(2) is None  # no block starts at line 2
    longest = done.layout.longest_parsed()
    assert done.fits(done.size, None, ("user_id",))
    assert done.fits(done.size, longest, ("user_id",))
    assert not done.fits(done.size + 1, None, ())  # other bytes
    assert not done.fits(done.size, longest - 1, ())  # a parsed line over --max_record_bytes
    assert not done.fits(done.size, None, ("amount",))  # read as floats
