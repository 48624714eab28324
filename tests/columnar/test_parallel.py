"""The parallel columnar batch path: the single-worker path's files, counters and dead letters."""

from __future__ import annotations

import json
import random
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.columnar import (
    ComputeWindowedMetricsColumnar,
    ComputeWindowedMetricsParallel,
    batchids,
    idtable,
    jsonblocks,
    parallel,
)
from headwater.columnar.parallel import plan_splits
from headwater.core.accounting import Accounting
from headwater.devtools.workload import generate
from headwater.io.deadletterio import WriteDeadLetters
from headwater.io.fileio import ReadFromFiles, WriteWindowedFiles
from headwater.io.formats import JsonFormat
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.process import ComputeWindowedMetrics
from headwater.windowing.eventtime import EventTimeExtractor

_MULTI = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
_THREADS = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
_COUNTERS = ("records_in", "output", "duplicate", "dead_letter", "late")


def _options(**overrides):
    options = {
        "decode": JsonFormat(),
        "event_time": EventTimeExtractor(field="event_time", unit="ms"),
        "dedup": DeduplicateById(id_field="event_id", horizon="10m"),
        "window": "fixed:60s",
        "allowed_lateness": 0,
        "key_field": "user_id",
        "metrics": "count,sum:amount,min:amount,max:amount,mean:amount",
    }
    options.update(overrides)
    return options


def _workload(folder: Path, n: int, *, integer_amounts: bool) -> str:
    """Two JSON-lines files: generated events with malformed lines, and late retries.

    A retry repeats an earlier event (same id, same event time) hundreds of lines later, far
    behind the stream; with ``integer_amounts`` every amount is an integer (cents).
    """
    rng = random.Random(7)
    events = generate(
        n, seed=5, malformed_frac=0.04, ms_per_event=200, amounts_in_cents=integer_amounts
    )
    lines = [event.line for event in events]
    for _ in range(n // 50):  # late retries
        at = rng.randrange(len(lines) // 2, len(lines))
        lines.insert(at, lines[rng.randrange(0, at // 2)])
    half = len(lines) // 2
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jsonl").write_bytes(b"".join(line + b"\n" for line in lines[:half]))
    (folder / "b.jsonl").write_bytes(b"".join(line + b"\n" for line in lines[half:]))
    return str(folder / "*.jsonl")


def _files(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.parquet"))}


def _letters(root: Path) -> list[tuple]:
    found = []
    for path in root.rglob("*.json*"):
        for line in path.read_text().splitlines():
            letter = json.loads(line)
            found.append((letter["stage"], letter["error_message"], json.dumps(letter["origin"])))
    return sorted(found)


def _run(transform, out: Path, argv=()) -> dict[str, int]:
    """Runs ``transform`` (output= ``out / "rows"``), its dead letters to ``out / "dead"``."""
    with beam.Pipeline("FnApiRunner", options=PipelineOptions(list(argv))) as p:
        result = p | transform
        _ = result.dead_letter | WriteDeadLetters(str(out / "dead"), format="json")
    accounting = Accounting.from_result(p.result)
    assert accounting.holds
    return {name: getattr(accounting, name) for name in _COUNTERS}


def _sequential(pattern: str, out: Path, **overrides) -> dict[str, int]:
    return _run(
        ComputeWindowedMetricsColumnar(
            pattern=pattern, file_format="json", output=str(out / "rows"), **_options(**overrides)
        ),
        out,
    )


def _parallel(pattern: str, out: Path, argv=(), window="fixed:60s", **parallel) -> dict[str, int]:
    return _run(
        ComputeWindowedMetricsParallel(
            pattern=pattern,
            file_format="json",
            output=str(out / "rows"),
            **_options(window=window),
            **parallel,
        ),
        out,
        argv,
    )


def _record_path(pattern: str, out: Path, **overrides) -> None:
    """The record path's window files of ``pattern`` in ``out``."""
    with beam.Pipeline("FnApiRunner") as p:
        record = p | ReadFromFiles(pattern, format="json")
        rows = record.main | ComputeWindowedMetrics(**_options(**overrides))
        _ = rows.rows | WriteWindowedFiles(str(out), format="parquet")


@pytest.fixture(scope="module")
def integer_run(tmp_path_factory):
    """The integer workload, its sequential columnar files and the record path's files."""
    root = tmp_path_factory.mktemp("integer")
    pattern = _workload(root / "in", 6_000, integer_amounts=True)
    counters = _sequential(pattern, root / "sequential")
    _record_path(pattern, root / "record")
    return pattern, root, counters


@pytest.mark.parametrize(
    ("block_bytes", "shards", "split_bytes"),
    [(None, 1, 1 << 30), (20_000, 3, 60_000), (7_000, 8, 25_000)],
)
def test_parallel_files_equal_sequential_and_record_path_for_any_cut(
    integer_run, tmp_path, monkeypatch, block_bytes, shards, split_bytes
):
    """Byte-identical window files, exact counters and the same dead letters, however cut."""
    pattern, root, counters = integer_run
    if block_bytes is not None:
        monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", block_bytes)
    got = _parallel(pattern, tmp_path, shards=shards, split_bytes=split_bytes)
    assert got == counters
    assert counters["duplicate"] > 0
    assert counters["dead_letter"] > 0
    sequential = _files(root / "sequential" / "rows")
    assert len(sequential) > 5
    assert _files(tmp_path / "rows") == sequential
    assert _files(root / "record") == sequential
    assert _letters(tmp_path / "dead") == _letters(root / "sequential" / "dead")


@pytest.mark.parametrize(
    "window", ["sliding:3m/1m", "calendar:day@Pacific/Chatham", "calendar:week@America/New_York"]
)
def test_parallel_files_of_every_window_kind_it_runs_equal_the_record_paths(tmp_path, window):
    """Sliding and calendar windows on the parallel path (sessions take the one-step path:
    below): the record path's bytes, counters and dead letters, the sequential path's too."""
    pattern = _workload(tmp_path / "in", 3_000, integer_amounts=True)
    sequential = _sequential(pattern, tmp_path / "sequential", window=window)
    got = _parallel(pattern, tmp_path / "parallel", window=window, shards=3, split_bytes=50_000)
    _record_path(pattern, tmp_path / "record", window=window)
    assert got == sequential
    files = _files(tmp_path / "parallel" / "rows")
    assert files
    assert files == _files(tmp_path / "record") == _files(tmp_path / "sequential" / "rows")
    assert _letters(tmp_path / "parallel" / "dead") == _letters(tmp_path / "sequential" / "dead")


@pytest.mark.parametrize("argv", [_MULTI, _THREADS], ids=["multi_processing", "threads"])
def test_parallel_files_on_two_workers_equal_sequential(integer_run, tmp_path, argv):
    """Two workers (processes or threads): the sequential path's files, counters, dead letters."""
    pattern, root, counters = integer_run
    got = _parallel(pattern, tmp_path, argv, shards=4, split_bytes=40_000)
    assert got == counters
    assert _files(tmp_path / "rows") == _files(root / "sequential" / "rows")
    assert _letters(tmp_path / "dead") == _letters(root / "sequential" / "dead")


def test_float_sums_repeat_exactly_for_one_shard_count(tmp_path, monkeypatch):
    """Float amounts: the same bytes for any block size, split size and worker count."""
    pattern = _workload(tmp_path / "in", 4_000, integer_amounts=False)
    first = _parallel(pattern, tmp_path / "one", shards=4, split_bytes=1 << 30)
    second = _parallel(pattern, tmp_path / "two", _MULTI, shards=4, split_bytes=30_000)
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", 9_000)  # reaches in-process workers only
    third = _parallel(pattern, tmp_path / "three", shards=4, split_bytes=50_000)
    assert first == second == third
    files = _files(tmp_path / "one" / "rows")
    assert files
    assert files == _files(tmp_path / "two" / "rows")
    assert files == _files(tmp_path / "three" / "rows")
    assert _sequential(pattern, tmp_path / "sequential") == first


def test_splits_cut_after_newlines_and_know_their_first_line(tmp_path):
    """Every line lands in exactly one split, which knows the line's number."""
    lines = [b"{}" * random.Random(i).randrange(1, 40) for i in range(500)]
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    splits = plan_splits(3, str(path), "json", 700)
    assert len(splits) > 5
    data = path.read_bytes()
    seen = []
    for index, name, start, end, first_line in splits:
        assert (index, name) == (3, str(path))
        assert start == 0 or data[start - 1 : start] == b"\n"
        piece = data[start:end].splitlines()
        assert piece[0] == lines[first_line - 1]
        seen += piece
    assert seen == lines
    assert plan_splits(0, str(path), "parquet", 700) == [(0, str(path), 0, None, 1)]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"shards": 0}, "shards=0 must be an integer >= 1"),
        ({"split_bytes": "big"}, "split_bytes='big' must be an integer >= 1"),
        ({"emit_duplicates": True}, "emit_duplicates=True"),
    ],
)
def test_bad_options_are_refused_naming_the_value(tmp_path, option, message):
    """Shards, split size and emit_duplicates are checked at construction."""
    (tmp_path / "a.jsonl").write_bytes(b"{}\n")
    with pytest.raises(ValueError, match=message):
        ComputeWindowedMetricsParallel(
            pattern=str(tmp_path / "a.jsonl"), file_format="json", **_options(), **option
        )


def _run_argv(tmp_path, pattern: str, *extra: str) -> list[str]:
    return [
        f"--input={pattern}",
        f"--output={tmp_path / 'rows'}",
        f"--dead_letter={tmp_path / 'dead'}",
        "--event_time_field=event_time",
        "--id_field=event_id",
        "--dedup_horizon=10m",
        "--key_field=user_id",
        "--metrics=count,sum:amount,min:amount,max:amount,mean:amount",
        "--window=fixed:60s",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "engine"),
    [
        ((), "columnar"),
        (_MULTI, "columnar"),  # locally the one-step path is faster (make bench, scale_out)
        ((*_MULTI, "--columnar_shards=2"), "columnar-parallel"),
        (("--columnar_shards=3",), "columnar-parallel"),
    ],
)
def test_run_takes_the_parallel_path_when_asked_for(integer_run, tmp_path, extra, engine):
    """``headwater run windowed_metrics``: --columnar_shards runs it in parallel, locally on
    any number of workers; without it a local run keeps the one-step path."""
    from headwater.pipelines import windowed_metrics

    pattern, root, counters = integer_run
    summary = windowed_metrics.run(_run_argv(tmp_path, pattern, *extra))
    assert summary["engine"] == engine
    assert {name: summary[name] for name in _COUNTERS} == counters
    assert _files(tmp_path / "rows") == _files(root / "sequential" / "rows")


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (("--replay_as_stream",), "a stream replay"),
        (("--window=session:1m",), "session windows merge per key across the id shards"),
        (("--dedup_keep=last",), "dedup is not keep='first'"),
    ],
    ids=["replay", "sessions", "record-path"],
)
def test_columnar_shards_is_refused_where_the_parallel_path_does_not_run(tmp_path, extra, why):
    """--columnar_shards on a stream replay, a session run (the one-step columnar path) or a
    record-path run is a ValueError naming the flag and why."""
    from headwater.pipelines import windowed_metrics

    (tmp_path / "a.jsonl").write_bytes(b'{"event_id":"a","user_id":"u","event_time":1}\n')
    argv = _run_argv(tmp_path, str(tmp_path / "a.jsonl"), "--columnar_shards=2", *extra)
    with pytest.raises(
        ValueError, match="--columnar_shards=2 applies to the columnar batch path"
    ) as err:
        windowed_metrics.run(argv)
    assert why in str(err.value)


def test_bench_scale_out_runs_one_and_two_workers_to_the_same_bytes(tmp_path):
    """The bench's scale-out step: 1 and 2 workers write the same bytes; spans of every stage."""
    from headwater.devtools import bench

    pattern = _workload(tmp_path / "in", 2_000, integer_amounts=False)
    result = bench.scale_out(Path(pattern.replace("*", "a")), tmp_path / "bench")
    assert result["two_workers_same_bytes"] is True
    assert result["same_counters"] is True
    assert result["runs"]["workers_2"]["engine"] == "columnar-parallel"
    assert result["runs"]["one_step"]["engine"] == "columnar"
    for workers in ("workers_1", "workers_2"):
        assert set(result["runs"][workers]["stage_s"]) == {"plan", "decode", "dedup", "merge"}
    assert result["speedup_2_vs_1_workers"] > 0
    assert result["control_cpu_only"]["speedup"] > 0


@pytest.mark.parametrize("file_format", ["parquet", "avro"])
def test_decoded_files_are_split_by_file_and_give_the_sequential_files(tmp_path, file_format):
    """Parquet and Avro files (one split each): the one-step path's files, counters, letters."""
    import fastavro
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "event_id": f"e{i % 700}",  # re-deliveries, across files
            "user_id": None if i % 97 == 0 else f"u{i % 13}",
            "event_time": 1_700_000_000_000 + 250 * i,
            "amount": i % 50,
        }
        for i in range(2_400)
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "E",
            "fields": [
                {"name": "event_id", "type": "string"},
                {"name": "user_id", "type": ["null", "string"]},
                {"name": "event_time", "type": "long"},
                {"name": "amount", "type": "long"},
            ],
        }
    )
    for part in range(3):
        chunk = rows[part * 800 : (part + 1) * 800]
        path = folder / f"part-{part}.{file_format}"
        if file_format == "parquet":
            pq.write_table(pa.Table.from_pylist(chunk), path)
        else:
            with open(path, "wb") as out:
                fastavro.writer(out, schema, chunk)
    pattern = str(folder / f"*.{file_format}")
    options = {"pattern": pattern, "file_format": file_format, **_options()}
    sequential = _run(
        ComputeWindowedMetricsColumnar(output=str(tmp_path / "one" / "rows"), **options),
        tmp_path / "one",
    )
    parallel = _run(
        ComputeWindowedMetricsParallel(output=str(tmp_path / "two" / "rows"), shards=3, **options),
        tmp_path / "two",
        _MULTI,
    )
    assert parallel == sequential
    assert sequential["duplicate"] > 0
    assert sequential["dead_letter"] > 0
    assert _files(tmp_path / "two" / "rows") == _files(tmp_path / "one" / "rows")
    assert _letters(tmp_path / "two" / "dead") == _letters(tmp_path / "one" / "dead")


@pytest.mark.parametrize(
    ("runner", "engine"),
    [
        ("DataflowRunner", "columnar-parallel"),
        ("FlinkRunner", "columnar-parallel"),
        ("PortableRunner", "columnar-parallel"),
        ("PrismRunner", "columnar"),
        ("FnApiRunner", "columnar"),
    ],
)
def test_runners_with_remote_workers_build_the_parallel_path(tmp_path, runner, engine):
    """Dataflow, Flink and portable runners get the parallel path; local one-worker runs do not."""
    from headwater.pipelines import windowed_metrics

    (tmp_path / "a.jsonl").write_bytes(b'{"event_id":"a","user_id":"u","event_time":1}\n')
    argv = _run_argv(tmp_path, str(tmp_path / "a.jsonl"), f"--runner={runner}")
    built = windowed_metrics.build(beam.Pipeline("FnApiRunner"), PipelineOptions(argv))
    assert built.engine == engine


def test_sessions_on_a_runner_with_remote_workers_take_the_one_step_columnar_path(tmp_path):
    """Session windows cannot merge per window start across shards: a Dataflow run of them
    builds the one-step columnar path, not the parallel one (and not the record path)."""
    from headwater.pipelines import windowed_metrics

    (tmp_path / "a.jsonl").write_bytes(b'{"event_id":"a","user_id":"u","event_time":1}\n')
    argv = _run_argv(
        tmp_path, str(tmp_path / "a.jsonl"), "--runner=DataflowRunner", "--window=session:5m"
    )
    built = windowed_metrics.build(beam.Pipeline("FnApiRunner"), PipelineOptions(argv))
    assert built.engine == "columnar"


@pytest.mark.parametrize("extra", [(), ("--columnar_shards=2",)], ids=["one-step", "parallel"])
def test_a_run_that_moved_ids_to_disk_says_so(tmp_path, monkeypatch, capsys, extra):
    """The run summary counts the ids the dedup held on disk (one step and parallel)."""
    from headwater.pipelines import windowed_metrics

    monkeypatch.setattr(idtable, "_ID_SLOTS", 16)
    monkeypatch.setattr(batchids, "_SIZED_IDS", 4)
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", 80)
    monkeypatch.setattr(parallel, "_CHUNK_ROWS", 1)
    events = [(f"a{i}", i * 60_000) for i in range(30)]  # half an hour, one a minute
    events.append(("a0", 1_000))  # a retry of the first, 29 minutes behind
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(
            json.dumps({"event_id": e, "user_id": "u", "event_time": t, "amount": 1}) + "\n"
            for e, t in events
        )
    )
    summary = windowed_metrics.run(_run_argv(tmp_path, str(path), *extra))
    assert (summary["output"], summary["duplicate"]) == (30, 1)
    assert summary["dedup_ids_on_disk"] > 0
    assert "ids past the horizon held on local disk" in capsys.readouterr().out


def test_headwater_run_on_two_worker_processes_gives_the_one_step_files(integer_run, tmp_path):
    """``headwater run`` as a user starts it (a subprocess): two SDK worker processes, which
    start as headwater._local_worker (see headwater._compat.lighter_local_workers), give the
    one-step path's counters and files."""
    import subprocess

    from headwater.devtools.bench_e2e import cli_command

    pattern, root, counters = integer_run
    summary_path = tmp_path / "summary.json"
    argv = _run_argv(
        tmp_path, pattern, "--columnar_shards=2", *_MULTI, f"--summary_json={summary_path}"
    )
    done = subprocess.run(
        [*cli_command(), "run", "windowed_metrics", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["engine"] == "columnar-parallel"
    assert {name: summary[name] for name in _COUNTERS} == counters
    assert _files(tmp_path / "rows") == _files(root / "sequential" / "rows")
    assert "bson" not in done.stderr + done.stdout


def test_batches_between_stages_are_compressed_and_come_back_exactly():
    """What the stages send each other through the runner's shuffle is compressed Arrow IPC
    (its cost follows the bytes); it reads back to the same table, types and values."""
    import numpy as np
    import pyarrow as pa

    from headwater.columnar.parallel import _from_ipc, _to_ipc

    rows = 20_000
    table = pa.table(
        {
            "a": np.arange(rows, dtype=np.int64) + (3 << 40),
            "t": np.arange(rows, dtype=np.int64) * 1_000,
            "k": pa.array([f"u{i % 500:05d}" for i in range(rows)]),
            "i": pa.array([f"{i * 2654435761 % (1 << 32):08x}-event" for i in range(rows)]),
            "v0": np.round(np.arange(rows) * 0.37 % 400, 2),
        }
    )
    data = _to_ipc(table)
    assert _from_ipc(data).equals(table)
    assert len(data) < 0.6 * table.nbytes


def test_a_shards_batches_are_put_in_arrival_order():
    """Batches of disjoint runs come out in arrival order whatever order the shuffle gave them
    (no row moved); batches whose runs overlap are sorted row by row."""
    import pyarrow as pa

    from headwater.columnar.parallel import _in_arrival_order

    def batch(*arrivals):
        return pa.table(
            {"a": pa.array(arrivals, type=pa.int64()), "k": [f"r{a}" for a in arrivals]}
        )

    runs = [batch(10, 12, 15), batch(1, 3), batch(20, 21), batch(5, 7, 9)]
    for shuffled in (runs, runs[::-1], [runs[2], runs[0], runs[3], runs[1]]):
        table = _in_arrival_order(list(shuffled))
        assert table.column("a").to_pylist() == [1, 3, 5, 7, 9, 10, 12, 15, 20, 21]
        assert table.column("k").to_pylist() == [f"r{a}" for a in table.column("a").to_pylist()]
    overlapping = _in_arrival_order([batch(4, 8), batch(2, 6, 9)])
    assert overlapping.column("a").to_pylist() == [2, 4, 6, 8, 9]


@pytest.mark.parametrize(
    ("extra", "forks"),
    [
        ((), True),
        (("--runner=FnApiRunner",), True),
        (("--runner=direct",), True),
        (("--direct_running_mode=multi_processing", "--direct_num_workers=2"), False),
        (("--direct_running_mode=multi_threading",), False),
        (("--runner=PrismRunner",), False),
        (("--runner=DataflowRunner", "--window=session:5m"), False),
    ],
)
def test_only_the_in_memory_local_runner_decodes_and_writes_in_forked_processes(
    tmp_path, monkeypatch, extra, forks
):
    """The one-step path forks its decoders and file writers only where its DoFn runs on this
    process's own threads (no worker process, no gRPC channel): Beam's in-memory local runner."""
    from headwater.pipelines import windowed_metrics

    built = []

    class Recording(windowed_metrics.ComputeWindowedMetricsColumnar):
        def __init__(self, **kwargs):
            built.append((kwargs.get("decode_processes", 1), kwargs.get("write_processes", 1)))
            super().__init__(**kwargs)

    monkeypatch.setattr(windowed_metrics, "ComputeWindowedMetricsColumnar", Recording)
    (tmp_path / "a.jsonl").write_bytes(b'{"event_id":"a","user_id":"u","event_time":1}\n')
    argv = _run_argv(tmp_path, str(tmp_path / "a.jsonl"), *extra)
    windowed_metrics.build(beam.Pipeline("FnApiRunner"), PipelineOptions(argv))
    processes = windowed_metrics._LOCAL_PROCESSES if forks else 1
    assert built == [(processes, processes)]
