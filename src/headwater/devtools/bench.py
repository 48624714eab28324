"""``make bench``: headwater's throughput and memory next to plain Python and plain Beam, one run.

Over 600 lines: a developer tool, not the product: the steps of one ``make bench`` run and its
report; the end-to-end and Prism measurements live in ``bench_e2e`` and ``bench_prism``.

Generates the reference workload with headwater's own generator
(:func:`headwater.devtools.workload.write_jsonl`: ~1,000 events per second of event time, 10%
re-deliveries, 1% late events), then measures, in this one process run (ratios are only
meaningful within a run; absolute figures move on shared machines):

``plain_python``         :func:`~headwater.devtools.reference.windowed_metrics_reference` (json +
                         dict dedup + dict per window), single thread -- the baseline;
``pyarrow``              a vectorized pyarrow program (json reader, compute, group_by);
``plain_beam``           the same logic written with Beam building blocks (GroupByKey dedup +
                         CombinePerKey) on the FnApiRunner, over a prefix (``--beam-events``);
``headwater_batch``      ``windowed_metrics`` in batch over the whole file on the columnar path,
                         writing its Parquet files; its rows are read back and compared with
                         plain Python (counts exactly, sums to 1e-9 relative);
``record_path_*``        the record-at-a-time path over a prefix (``--record-events``) on the
                         FnApiRunner in-process, with the embedded worker's state cache
                         disabled, and in multi-process mode with 2 workers
                         (``--max_cache_memory_usage_mb=0``);
``headwater_replay``     ``windowed_metrics --replay_as_stream`` over a prefix
                         (``--replay-events``);
``kafka``                bounded Kafka read into a pipeline vs raw confluent-kafka
                         (:func:`headwater.testing.broker.bench_kafka_read`, a local Tansu broker);
``scale_out``            the same batch run end to end (``headwater run``, a subprocess each) on
                         the parallel columnar path with 1 and 2 worker processes
                         (``--direct_num_workers=N --direct_running_mode=multi_processing``),
                         each worker single-threaded (``HEADWATER_PARSE_THREADS=0``), and
                         today's one-step path the same way; the speed-up 2 vs 1 workers,
                         next to a CPU-only control job's (what the runner and the load on
                         the machine allow in the same run);
``flink_scale_out``      the same batch run on Apache Flink (Beam's Flink job server with an
                         embedded cluster, ``make tools``) at parallelism 1 and 2, SDK workers
                         from a worker pool (one process per unit of parallelism);
``dedup_memory``         peak RSS of the columnar dedup (parse + dedup, no aggregation) over files
                         of N and 5*N generated events with the same horizon, each read in a
                         fresh subprocess, with the ids held in memory and moved to disk.

Prints a table (events/s, peak RSS, ratios vs plain Python and vs plain Beam) and writes
everything to ``<workdir>/bench.json``. ``--quick`` runs a small version (seconds, for CI).

>>> main(["--workdir", "bench-output", "--quick"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import FixedWindows, TimestampedValue

__all__ = ["main", "run_bench"]

_HORIZON_S = 600.0
_WINDOW_S = 60
_ARGV_COMMON = (
    "--event_time_field=event_time",
    "--event_time_unit=ms",
    "--id_field=event_id",
    "--dedup_horizon=10m",
    "--window=fixed:60s",
    "--key_field=user_id",
    "--metrics=count,sum:amount",
    "--allowed_lateness=0s",
)


def _peak_rss_mb() -> float:
    """This process's peak resident set, in MB.

    Linux's ``VmHWM`` starts afresh at ``exec``; ``ru_maxrss`` does not (a child started from a
    large parent reports the parent's size), so ``VmHWM`` is read where it exists.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def _timed(result: dict[str, Any], events: int) -> Iterator[None]:
    began = time.perf_counter()
    yield
    seconds = time.perf_counter() - began
    result.update(events=events, seconds=round(seconds, 3))
    result["events_per_s"] = round(events / seconds, 1) if seconds > 0 else None


def _prefix(source: Path, target: Path, lines: int) -> Path:
    with source.open("rb") as src, target.open("wb") as out:
        for number, line in enumerate(src):
            if number >= lines:
                break
            out.write(line)
    return target


# --------------------------------------------------------------------------------------------
# Baselines


def plain_python(path: Path) -> dict[str, Any]:
    """The reference computation over the file's lines."""
    from headwater.devtools.reference import windowed_metrics_reference

    with path.open("rb") as handle:
        return windowed_metrics_reference(
            (line.rstrip(b"\n") for line in handle), horizon_s=_HORIZON_S, window_s=_WINDOW_S
        )


def pyarrow_vectorized(path: Path) -> int:
    """json reader + compute + group_by; keep-first dedup by id. Returns the number of rows."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pa_json

    table = pa_json.read_json(str(path))
    ids = table.column("event_id").combine_chunks().dictionary_encode()
    _, first = np.unique(ids.indices.to_numpy(), return_index=True)
    table = table.take(pa.array(np.sort(first)))
    ts = table.column("event_time").combine_chunks()
    valid = pc.and_(pc.is_valid(ts), pc.is_valid(table.column("user_id")))
    table, ts = table.filter(valid), ts.filter(valid)
    values = ts.to_numpy()
    start = pa.array(values - values % (_WINDOW_S * 1000))
    grouped = (
        pa.table({"w": start, "k": table.column("user_id"), "a": table.column("amount")})
        .group_by(["w", "k"])
        .aggregate([("a", "count"), ("a", "sum")])
    )
    return grouped.num_rows


class _ParseFn(beam.DoFn):
    """Plain Beam: a line -> (event_id, (event_time_ms, user_id, amount)), or a dead letter.

    The checks are the plain script's (:mod:`headwater.devtools.plain_script`), so all three
    baselines reject the same lines.
    """

    def process(self, line: bytes) -> Iterator[Any]:
        from headwater.devtools.plain_script import check_line

        reason, record, millis, amount = check_line(line)
        if reason is not None:
            yield beam.pvalue.TaggedOutput("dead", line)
            return
        yield record["event_id"], (millis, record["user_id"], amount)


def _first_copy(item: tuple[str, Any]) -> Any:
    _, copies = item
    return next(iter(copies))


def _stamp(value: tuple[int, str, float]) -> Any:
    event_time, user, amount = value
    return TimestampedValue((user, amount), event_time / 1000.0)


def _count_and_sum(values: Any) -> tuple[int, float]:
    count, total = 0, 0.0
    for value in values:
        if isinstance(value, tuple):
            count += value[0]
            total += value[1]
        else:
            count += 1
            total += value
    return count, total


def plain_beam(path: Path, out: Path | None = None) -> None:
    """Plain Beam on the FnApiRunner: GroupByKey dedup + CombinePerKey per fixed window.

    With ``out``, the rows and the dead letters are written there as text files (what the
    end-to-end run times); without, the rows are only counted (the in-process breakdown).
    """
    with beam.Pipeline("FnApiRunner") as p:
        parsed = (
            p
            | beam.io.ReadFromText(str(path), coder=beam.coders.BytesCoder())
            | beam.ParDo(_ParseFn()).with_outputs("dead", main="records")
        )
        rows = (
            parsed.records
            | "DedupGroup" >> beam.GroupByKey()
            | "First" >> beam.Map(_first_copy)
            | beam.Map(_stamp)
            | beam.WindowInto(FixedWindows(_WINDOW_S))
            | beam.CombinePerKey(_CountAndSumFn())
        )
        if out is None:
            _ = rows | beam.combiners.Count.Globally().without_defaults()
            return
        _ = (
            rows
            | "WithWindow" >> beam.ParDo(_WithWindowFn())
            | "WriteRows" >> beam.io.WriteToText(str(out / "rows"), file_name_suffix=".jsonl")
        )
        _ = parsed.dead | "WriteDead" >> beam.io.WriteToText(
            str(out / "dead_letters"), file_name_suffix=".txt", coder=beam.coders.BytesCoder()
        )


class _WithWindowFn(beam.DoFn):
    """Plain Beam: ((user, (count, sum)) in a window) -> a JSON row with the window's start."""

    def process(self, item: Any, window: Any = beam.DoFn.WindowParam) -> Iterator[str]:
        user, (count, total) = item
        yield json.dumps(
            {"window_start": float(window.start), "key": user, "count": count, "sum": total}
        )


def _timestamped_lines(path: Path, every: int, delay_ms: int) -> Any:
    """A plain ``TestStream`` over the file: lines at their event times, watermark max - delay."""
    from apache_beam.testing.test_stream import TestStream

    stream = TestStream(coder=beam.coders.BytesCoder())
    newest, batch, emitted = None, [], None
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            millis = json.loads(line)["event_time"]
            newest = millis if newest is None else max(newest, millis)
            batch.append(TimestampedValue(line.rstrip(b"\n"), millis / 1000.0))
            if number % every == 0:
                stream.add_elements(batch)
                batch = []
                if emitted is None or newest - delay_ms > emitted:
                    emitted = newest - delay_ms
                    stream.advance_watermark_to(emitted / 1000.0)
    if batch:
        stream.add_elements(batch)
    return stream.advance_watermark_to_infinity()


def plain_beam_streaming(path: Path) -> None:
    """Plain Beam streaming: TestStream, ``DeduplicatePerKey``, fixed windows, CombinePerKey."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.transforms.deduplicate import DeduplicatePerKey

    options = PipelineOptions(streaming=True)
    with beam.Pipeline("BundleBasedDirectRunner", options=options) as p:
        parsed = (
            p
            | _timestamped_lines(path, every=1_000, delay_ms=5_000)
            | beam.ParDo(_ParseFn()).with_outputs("dead", main="records")
        )
        _ = (
            parsed.records
            | DeduplicatePerKey(event_time_duration=_HORIZON_S)
            | beam.Map(lambda kv: (kv[1][1], kv[1][2]))
            | beam.WindowInto(FixedWindows(_WINDOW_S))
            | beam.CombinePerKey(_CountAndSumFn())
            | beam.combiners.Count.Globally().without_defaults()
        )


class _CountAndSumFn(beam.CombineFn):
    """count and sum as a Beam CombineFn (plain Beam baseline)."""

    def create_accumulator(self) -> tuple[int, float]:
        return 0, 0.0

    def add_input(self, mutable_accumulator: tuple[int, float], element: float) -> Any:
        return mutable_accumulator[0] + 1, mutable_accumulator[1] + element

    def merge_accumulators(self, accumulators: Any) -> tuple[int, float]:
        return _count_and_sum(accumulators)

    def extract_output(self, accumulator: tuple[int, float]) -> tuple[int, float]:
        return accumulator


# --------------------------------------------------------------------------------------------
# headwater


def _argv(path: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--source=files",
        f"--input={path}",
        "--format=json",
        f"--output={out / 'rows'}",
        f"--dead_letter={out / 'dlq'}",
        *_ARGV_COMMON,
        *extra,
    ]


def pipeline_uses_columnar(path: Path, out: Path) -> bool:
    """Whether ``windowed_metrics.build`` picks the columnar path for this batch file run."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.pipelines import windowed_metrics

    p = beam.Pipeline("FnApiRunner")
    windowed_metrics.build(p, PipelineOptions(_argv(path, out)))
    names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
    return any("Columnar" in name for name in names)


def headwater_batch(path: Path, out: Path) -> dict[str, Any]:
    """``windowed_metrics`` in batch, as users run it; returns the run's accounting."""
    from headwater.pipelines import windowed_metrics

    shutil.rmtree(out, ignore_errors=True)
    summary = windowed_metrics.run([*_argv(path, out), "--runner=FnApiRunner"])
    return {"via": "windowed_metrics.run", **{k: summary[k] for k in _COUNTERS}}


_COUNTERS = ("records_in", "output", "duplicate", "dead_letter", "late")


SCALE_OUT_SHARDS = 8
SCALE_OUT_TARGET = 1.7  # issue 14: 2 workers at least 1.7x one worker


@contextlib.contextmanager
def _single_threaded_parse() -> Iterator[None]:
    """Runs started inside parse JSON on each worker's own DoFn thread, no parse threads
    (``HEADWATER_PARSE_THREADS=0``): single-threaded workers, as issue 14 measures scale-out."""
    before = os.environ.get("HEADWATER_PARSE_THREADS")
    os.environ["HEADWATER_PARSE_THREADS"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["HEADWATER_PARSE_THREADS"]
        else:
            os.environ["HEADWATER_PARSE_THREADS"] = before


def scale_out(path: Path, workdir: Path) -> dict[str, Any]:
    """The batch run end to end on 1 and 2 single-threaded workers, and on today's one step.

    Each run is ``headwater run windowed_metrics`` in its own process, timed from start to
    exit (``seconds``; ``pipeline_s`` is the run itself, without interpreter start-up and graph
    construction). The two parallel runs use the same shards, so they must write the same
    bytes (float sums included) and counters; the one-step run the same counters. Then the
    parallel runs again in this process (the runner here, the workers in subprocesses) for the
    wall-clock span of each stage over all workers (:func:`headwater.columnar.parallel.
    stage_spans`): the speed-up of the work itself, without start-up and shuffles.
    """
    from headwater.devtools import bench_e2e

    runs: dict[str, Any] = {}
    load_before = os.getloadavg()[0]  # other processes' demand for the cores, for the record
    parallel = ("--runner=FnApiRunner", f"--columnar_shards={SCALE_OUT_SHARDS}")
    with _single_threaded_parse():
        runs["one_step"] = bench_e2e.headwater_run(
            path, workdir / "scale-one-step", extra=("--runner=FnApiRunner",)
        )
        for workers in (1, 2):
            flags = (f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing")
            runs[f"workers_{workers}"] = bench_e2e.headwater_run(
                path, workdir / f"scale-workers-{workers}", extra=(*parallel, *flags)
            )
        for workers in (1, 2):
            runs[f"workers_{workers}"]["stage_s"] = _stage_spans(path, workdir, workers)
    control = control_speedup()
    one, two = runs["workers_1"], runs["workers_2"]
    result: dict[str, Any] = {
        "runs": runs,
        "shards": SCALE_OUT_SHARDS,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "control_cpu_only": control,
    }
    work = [sum(run["stage_s"].values()) for run in (one, two)]
    if work[1]:
        result["speedup_2_vs_1_workers_stages"] = round(work[0] / work[1], 3)
    result["speedup_2_vs_1_workers"] = round(one["seconds"] / two["seconds"], 3)
    if one.get("pipeline_s") and two.get("pipeline_s"):
        result["speedup_2_vs_1_workers_pipeline"] = round(one["pipeline_s"] / two["pipeline_s"], 3)
    result["x_one_step_2_workers"] = round(runs["one_step"]["seconds"] / two["seconds"], 3)
    result["target_met"] = result["speedup_2_vs_1_workers"] >= SCALE_OUT_TARGET
    same = [_file_bytes(workdir / f"scale-workers-{n}" / "rows") for n in (1, 2)]
    result["two_workers_same_bytes"] = bool(same[0]) and same[0] == same[1]
    result["same_counters"] = all(
        run[name] == one[name] for run in runs.values() for name in _COUNTERS
    )
    return result


def flink_scale_out(path: Path, workdir: Path, fnapi_rows: Path | None) -> dict[str, Any]:
    """The same batch run on Apache Flink at parallelism 1 and 2, end to end.

    Flink is Beam's Flink job server with an embedded cluster (``make tools``,
    :func:`headwater.testing.flink_server.start_flink`); the SDK workers are processes of a
    worker pool (``EXTERNAL``, ``--sdk_worker_parallelism`` = the parallelism), each parsing on
    one thread, so the ratio shows workers, not threads. Same shards as :func:`scale_out`: the
    two runs must write the same bytes and counters as each other, and as the FnApiRunner's
    parallel run of this bench (``fnapi_rows``, its files; ``None`` when it did not run).
    """
    from headwater.devtools import bench_e2e
    from headwater.testing.flink_server import start_flink, start_worker_pool

    runs: dict[str, Any] = {}
    with _single_threaded_parse(), start_flink() as flink, start_worker_pool() as pool:
        for parallelism in (1, 2):
            flags = (
                "--runner=FlinkRunner",
                f"--job_endpoint={flink.endpoint}",
                "--environment_type=EXTERNAL",
                f"--environment_config={pool.address}",
                f"--parallelism={parallelism}",
                f"--sdk_worker_parallelism={parallelism}",
                f"--columnar_shards={SCALE_OUT_SHARDS}",
            )
            runs[f"parallelism_{parallelism}"] = bench_e2e.headwater_run(
                path, workdir / f"flink-parallelism-{parallelism}", extra=flags
            )
    one, two = runs["parallelism_1"], runs["parallelism_2"]
    files = [_file_bytes(workdir / f"flink-parallelism-{n}" / "rows") for n in (1, 2)]
    fnapi = _file_bytes(fnapi_rows) if fnapi_rows is not None else {}
    within = (one.get("pipeline_s") or 0.0, two.get("pipeline_s") or 0.0)
    return {
        "runs": runs,
        "shards": SCALE_OUT_SHARDS,
        "speedup_2_vs_1": round(one["seconds"] / two["seconds"], 3),
        "speedup_2_vs_1_pipeline": round(within[0] / within[1], 3) if all(within) else None,
        "same_bytes": bool(files[0]) and files[0] == files[1],
        "same_bytes_as_fnapi": (files[0] == fnapi) if fnapi else None,
        "same_counters": all(two[name] == one[name] for name in _COUNTERS),
    }


def _burn_cpu(element: int) -> int:
    """Half a second of this process's CPU time (the control's element)."""
    began = time.process_time()
    while time.process_time() - began < 0.5:
        pass
    return element


def control_speedup(elements: int = 8) -> dict[str, Any]:
    """What the runner and the machine give a job that only burns CPU: 1 vs 2 workers.

    ``elements`` independent half-seconds of CPU after a ``Reshuffle``, on the FnApiRunner
    with 1 and 2 worker processes: on idle cores 2 workers take about half the work's time
    (plus the same start-up); this is the ceiling for the batch run's ratio in the same run.
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    seconds = {}
    for workers in (1, 2):
        argv = [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]
        began = time.perf_counter()
        with beam.Pipeline("FnApiRunner", options=PipelineOptions(argv)) as p:
            _ = p | beam.Create(list(range(elements))) | beam.Reshuffle() | beam.Map(_burn_cpu)
        seconds[f"workers_{workers}"] = round(time.perf_counter() - began, 3)
    seconds["speedup"] = round(seconds["workers_1"] / seconds["workers_2"], 3)
    return seconds


def _stage_spans(path: Path, workdir: Path, workers: int) -> dict[str, float]:
    """The parallel run's stage spans with ``workers`` worker processes (runner in-process)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.columnar.parallel import stage_spans
    from headwater.pipelines import windowed_metrics

    out = workdir / f"scale-spans-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    argv = [
        *_argv(path, out),
        f"--columnar_shards={SCALE_OUT_SHARDS}",
        f"--direct_num_workers={workers}",
        "--direct_running_mode=multi_processing",
    ]
    p = beam.Pipeline("FnApiRunner", options=PipelineOptions(argv))
    windowed_metrics.build(p, p.options)
    result = p.run()
    result.wait_until_finish()
    return stage_spans(result)


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.parquet"))}


def read_rows(folder: Path) -> dict[tuple[Any, Any], dict[str, Any]]:
    """The metric rows written under ``folder`` (Parquet), by (window_start, key)."""
    import pyarrow.parquet as pq

    rows: dict[tuple[Any, Any], dict[str, Any]] = {}
    for file in sorted(folder.rglob("*.parquet")):
        for row in pq.read_table(file).to_pylist():
            rows[(row["window_start"], row["key"])] = row
    return rows


def compare_rows(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> list[str]:
    """Differences between written rows and the reference rows (empty when equal)."""
    problems = []
    if got.keys() != want.keys():
        problems.append(
            f"{len(got.keys() - want.keys())} extra and {len(want.keys() - got.keys())} missing"
        )
    for group in got.keys() & want.keys():
        a, b = got[group], want[group]
        if a["count"] != b["count"] or not math.isclose(
            a["sum_amount"], b["sum_amount"], rel_tol=1e-9, abs_tol=1e-9
        ):
            problems.append(f"row {group}: {a} != {b}")
            if len(problems) > 5:
                break
    return problems


def record_path(path: Path, out: Path, mode: str) -> dict[str, Any]:
    """The record-at-a-time ComputeWindowedMetrics over ``path`` in one runner mode."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    from headwater.core.accounting import Accounting
    from headwater.io.fileio import ReadFromFiles, WriteWindowedFiles
    from headwater.io.formats import JsonFormat
    from headwater.transforms.dedup import DeduplicateById
    from headwater.transforms.process import ComputeWindowedMetrics
    from headwater.windowing.eventtime import EventTimeExtractor

    shutil.rmtree(out, ignore_errors=True)
    flags = ["--runner=FnApiRunner"]
    if mode.startswith("2_workers"):
        flags += ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    if mode.endswith("cache_0"):
        flags += ["--max_cache_memory_usage_mb=0"]
    saved = worker_handlers.STATE_CACHE_SIZE_MB
    # Beam's own default (100 MB) unless the mode measures the cache switched off -- headwater's
    # runs in this process have already set the constant to 0 (headwater._compat).
    worker_handlers.STATE_CACHE_SIZE_MB = 0 if mode == "in_process_state_cache_constant_0" else 100
    try:
        p = beam.Pipeline(options=PipelineOptions(flags))
        read = p | ReadFromFiles(str(path), format="json")
        result = read.main | ComputeWindowedMetrics(
            decode=JsonFormat(),
            event_time=EventTimeExtractor(field="event_time", unit="ms"),
            dedup=DeduplicateById(id_field="event_id", horizon="10m"),
            window="fixed:60s",
            allowed_lateness=0,
            key_field="user_id",
            metrics="count,sum:amount",
        )
        _ = result.rows | WriteWindowedFiles(str(out / "rows"), format="parquet")
        outcome = p.run()
        outcome.wait_until_finish()
        return Accounting.from_result(outcome).to_dict()
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = saved


def headwater_replay(path: Path, out: Path, engine: str) -> dict[str, Any]:
    """windowed_metrics --replay_as_stream over ``path`` on ``engine``; the summary's counters."""
    from headwater.pipelines import windowed_metrics

    shutil.rmtree(out, ignore_errors=True)
    with contextlib.redirect_stdout(sys.stderr):
        summary = windowed_metrics.run(
            [
                *_argv(path, out),
                "--replay_as_stream",
                f"--replay_engine={engine}",
                "--max_out_of_orderness=5s",
            ]
        )
    return {"runner": summary["runner"], **{k: summary[k] for k in _COUNTERS}}


_STAGES = (
    ("dedup", "ColumnarState", "deduplicate"),
    ("aggregate", "ColumnarState", "aggregate"),
    ("write", "ComputeColumnarFn", "_write_final"),  # the final merge and write, forked or not
    ("write", "ColumnarState", "final_table"),  # the final merge of the groups
    ("write", "WindowWriter", "_write_table"),
    ("write", "WindowWriter", "_write_columns"),
    ("write", "WindowWriter", "_write_rows"),
    ("columnar_fn", "ComputeColumnarFn", "process"),
)


@contextlib.contextmanager
def stage_timers() -> Iterator[dict[str, float]]:
    """Seconds spent in the columnar path's steps while the block runs (this process only:
    decoding in forked processes shows as ``parse_and_checks``, the time waited for them).

    Wraps the columnar DoFn's ``process`` and its dedup, aggregation and write steps (a
    generator is timed per ``next``, so time spent downstream of a yield is not counted; a step
    called inside itself is counted once). ``parse_and_checks`` is what ``process`` spent
    outside the other three: reading, parsing, checking, event times, dead letters.
    """
    import functools
    import inspect

    from headwater.columnar import batch, state, write

    owners = {
        "ColumnarState": state.ColumnarState,
        "WindowWriter": write.WindowWriter,
        "ComputeColumnarFn": batch.ComputeColumnarFn,
    }
    spent = dict.fromkeys(("columnar_fn", "dedup", "aggregate", "write"), 0.0)
    active: set[str] = set()

    def run(stage: str, call: Callable[[], Any]) -> Any:
        active.add(stage)
        began = time.perf_counter()
        try:
            return call()
        finally:
            spent[stage] += time.perf_counter() - began
            active.discard(stage)

    def timed_generator(stage: str, generator: Iterator[Any]) -> Iterator[Any]:
        while True:
            try:
                value = run(stage, lambda: next(generator))
            except StopIteration:
                return
            yield value

    def wrap(stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if stage in active:
                return method(*args, **kwargs)
            result = run(stage, lambda: method(*args, **kwargs))
            return timed_generator(stage, result) if inspect.isgenerator(result) else result

        return wrapper

    saved = []
    for stage, owner_name, name in _STAGES:
        owner = owners[owner_name]
        method = getattr(owner, name, None)
        if method is not None:
            saved.append((owner, name, method))
            setattr(owner, name, wrap(stage, method))
    try:
        yield spent
    finally:
        for owner, name, method in reversed(saved):
            setattr(owner, name, method)
        others = spent["dedup"] + spent["aggregate"] + spent["write"]
        spent["parse_and_checks"] = max(spent["columnar_fn"] - others, 0.0)
        for stage in spent:
            spent[stage] = round(spent[stage], 3)


# --------------------------------------------------------------------------------------------
# Dedup memory (runs in a subprocess)


def dedup_memory(path: str) -> dict[str, Any]:
    """Columnar parse + dedup (no aggregation) over the JSON-lines file ``path``, in blocks."""
    from headwater.columnar import ComputeWindowedMetricsColumnar
    from headwater.columnar.batch import ComputeColumnarFn as ColumnarFn
    from headwater.columnar.state import ColumnarState
    from headwater.io.formats import JsonFormat
    from headwater.transforms.dedup import DeduplicateById
    from headwater.windowing.eventtime import EventTimeExtractor

    transform = ComputeWindowedMetricsColumnar(
        pattern=path,
        file_format="json",
        decode=JsonFormat(),
        event_time=EventTimeExtractor(field="event_time", unit="ms"),
        dedup=DeduplicateById(id_field="event_id", horizon="10m"),
        window="fixed:60s",
        allowed_lateness=0,
        key_field="user_id",
        metrics="count,sum:amount",
    )
    fn = ColumnarFn(transform._options)
    state = ColumnarState(transform._options)
    state.aggregate = lambda rows, keep: None  # type: ignore[method-assign]
    began = time.perf_counter()
    held = 0
    for _ in fn._json_blocks(state, path):
        state.dead.clear()
        held = max(held, len(state.ids))
    return {
        "events": state.counts["records_in"],
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "max_ids_held": held,
        "ids_held_at_end": len(state.ids),
        "ids_on_disk": state.ids.on_disk,  # moved out of memory (columnar.spill)
        "duplicates": state.counts["duplicate"],
        "seconds": round(time.perf_counter() - began, 2),
    }


def _dedup_memory_subprocess(workdir: Path, events: int) -> dict[str, Any]:
    from headwater.devtools.workload import write_jsonl

    path = workdir / f"memory-{events}.jsonl"
    write_jsonl(path, events)  # generated here: the generator's own memory stays out
    done = subprocess.run(
        [sys.executable, "-m", "headwater.devtools.bench", "--dedup-memory", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    path.unlink()
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------
# The run


def _step(results: dict[str, Any], name: str, fn: Callable[[dict[str, Any]], None]) -> None:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    entry: dict[str, Any] = {}
    try:
        fn(entry)
    except Exception as exc:  # a failing step is reported, the others still run
        entry["error"] = f"{type(exc).__name__}: {exc}"
    entry["peak_rss_mb_so_far"] = round(_peak_rss_mb(), 1)
    results[name] = entry


_MALFORMED = (0.0, 0.005, 0.01)


def _median_runs(
    runs: dict[str, Callable[[], dict[str, Any]]], rounds: int
) -> dict[str, dict[str, Any]]:
    """Each run's median of ``rounds`` rounds (by seconds), its seconds in every round in
    ``rounds_s``. Rounds alternate the runs (a, b, a, b ...): a slow moment of a shared machine
    (or a file system slowing down as a run goes on) falls on each of them, not on one."""
    done: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            done[name].append(run())
    medians = {}
    for name, results in done.items():
        ordered = sorted(results, key=lambda result: result["seconds"])
        median = dict(ordered[len(ordered) // 2])
        median["rounds_s"] = [result["seconds"] for result in results]
        medians[name] = median
    return medians


def _e2e_rate(entry: dict[str, Any], events: int) -> None:
    entry["events_per_s"] = round(events / entry["seconds"], 1) if entry["seconds"] else None


def _end_to_end(
    results: dict[str, Any], args: argparse.Namespace, workdir: Path, files: dict[float, Path]
) -> None:
    """The subprocess runs: start-up, headwater vs the plain script (and plain Beam), windows."""
    from headwater.devtools import bench_e2e

    e2e = workdir / "e2e"
    e2e.mkdir(exist_ok=True)
    _step(results, "startup", lambda entry: entry.update(bench_e2e.startup(e2e)))
    for fraction, path in files.items():

        def step(entry: dict[str, Any], fraction: float = fraction, path: Path = path) -> None:
            tag = f"{fraction:g}"
            script, headwater = _median_runs(
                {
                    "script": lambda: bench_e2e.plain_script(path, e2e / f"script-{tag}"),
                    "headwater": lambda: bench_e2e.headwater_run(path, e2e / f"headwater-{tag}"),
                },
                args.e2e_rounds,
            ).values()
            for run in (script, headwater):
                _e2e_rate(run, args.events)
            entry.update(malformed_frac=fraction, plain_script=script, headwater=headwater)
            entry["x_plain_script"] = round(script["seconds"] / headwater["seconds"], 3)
            problems = compare_rows(
                read_rows(e2e / f"headwater-{tag}" / "rows"),
                bench_e2e.read_script_rows(e2e / f"script-{tag}" / "output" / "rows"),
            )
            same = all(script[k] == headwater[k] for k in bench_e2e.COUNTERS)
            entry["equal_to_plain_script"] = same and not problems
            if problems:
                entry["differences"] = problems
            if fraction == _MALFORMED[1] and not args.skip_plain_beam_e2e:
                events = min(args.beam_events, args.events)
                prefix = _prefix(path, e2e / "beam-e2e-prefix.jsonl", events)
                beam_run = bench_e2e.plain_beam(prefix, e2e / "plain-beam")
                _e2e_rate(beam_run, events)
                beam_run["events"] = events
                entry["plain_beam"] = beam_run
                entry["x_plain_beam_rate"] = round(
                    headwater["events_per_s"] / beam_run["events_per_s"], 2
                )

        _step(results, f"e2e_malformed_{fraction:g}", step)

    def windows(entry: dict[str, Any]) -> None:
        events = min(args.window_events, args.events)
        prefix = _prefix(files[_MALFORMED[1]], e2e / "windows-prefix.jsonl", events)
        entry["events"] = events

        # Each round writes into a folder of its own, and the folders go after the last round:
        # deleting a session run's 10,003 folders right before the next timed run slowed that
        # run's writes 2-8x on this VM's disk (docs/performance.md, "Sessions and the disk").
        folders = e2e / "windows"
        shutil.rmtree(folders, ignore_errors=True)
        rounds: dict[str, int] = {}

        def window_run(name: str, spec: str) -> Callable[[], dict[str, Any]]:
            def once() -> dict[str, Any]:
                rounds[name] = rounds.get(name, 0) + 1
                out = folders / f"{name}-{rounds[name]}"
                return bench_e2e.headwater_run(prefix, out, window=spec)

            return once

        runs = _median_runs(
            {name: window_run(name, spec) for name, spec in _WINDOWS}, args.e2e_rounds
        )
        for name, run in runs.items():
            _e2e_rate(run, events)
            rows = folders / f"{name}-{rounds[name]}" / "rows"  # every round writes the same
            run["window_files"] = sum(1 for _ in rows.rglob("*.parquet"))
            entry[name] = run
        shutil.rmtree(folders, ignore_errors=True)
        for name, _ in _WINDOWS[1:]:
            entry[f"{name}_x_fixed_time"] = round(
                entry[name]["seconds"] / entry["fixed"]["seconds"], 2
            )

    _step(results, "e2e_windows", windows)


def _prism_streaming(
    results: dict[str, Any], args: argparse.Namespace, workdir: Path, events: Path
) -> None:
    """Streaming on Prism against Apache Kafka: throughput, latency and a profile."""
    from headwater.devtools import bench_prism
    from headwater.testing.kafka_server import start_kafka

    def lines(count: int) -> list[bytes]:
        with events.open("rb") as handle:
            return [line.rstrip(b"\n") for _, line in zip(range(count), handle, strict=False)]

    prism = workdir / "prism"
    shutil.rmtree(prism, ignore_errors=True)
    with start_kafka() as broker:

        def step_throughput(entry: dict[str, Any]) -> None:
            backlog = lines(min(args.prism_events, args.events))
            entry.update(bench_prism.throughput(broker, backlog, prism / "throughput", topic="t"))

        def step_latency(entry: dict[str, Any]) -> None:
            entry.update(
                bench_prism.latency(
                    broker,
                    prism / "latency",
                    topic="l",
                    rate=args.latency_rate,
                    seconds=args.latency_seconds,
                )
            )

        def step_profile(entry: dict[str, Any]) -> None:
            backlog = lines(min(args.profile_events, args.events))
            entry.update(bench_prism.profile(broker, backlog, prism / "profile", topic="p"))

        _step(results, "prism_throughput", step_throughput)
        _step(results, "prism_latency", step_latency)
        if args.profile_events:
            _step(results, "prism_profile", step_profile)


_WINDOWS = (
    ("fixed", "fixed:60s"),
    ("session", "session:5m"),
    ("calendar", "calendar:day@Europe/Berlin"),
)


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs every measurement; returns the results dict written to ``bench.json``."""
    from headwater.devtools.workload import write_jsonl

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    events_file = workdir / "events.jsonl"
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {
            k: getattr(args, k)
            for k in (
                "events",
                "beam_events",
                "beam_stream_events",
                "record_events",
                "replay_events",
                "kafka_records",
                "window_events",
                "prism_events",
                "latency_rate",
                "latency_seconds",
                "profile_events",
            )
        },
    }
    began = time.perf_counter()
    stats = write_jsonl(events_file, args.events)
    results["workload"] = {**stats.to_dict(), "seconds": round(time.perf_counter() - began, 1)}
    files = {0.0: events_file}
    for fraction in _MALFORMED[1:]:
        files[fraction] = workdir / f"events-malformed-{fraction:g}.jsonl"
        dirty = write_jsonl(files[fraction], args.events, malformed_frac=fraction)
        results["workload"][f"malformed_{fraction:g}"] = dirty.malformed
    reference: dict[str, Any] = {}
    if not args.skip_end_to_end:
        _end_to_end(results, args, workdir, files)

    def step_plain_python(entry: dict[str, Any]) -> None:
        with _timed(entry, args.events):
            reference.update(plain_python(events_file))
        entry.update({k: reference[k] for k in _COUNTERS}, rows=len(reference["rows"]))

    def step_pyarrow(entry: dict[str, Any]) -> None:
        with _timed(entry, args.events):
            entry["rows"] = pyarrow_vectorized(events_file)

    def step_plain_beam(entry: dict[str, Any]) -> None:
        prefix = _prefix(events_file, workdir / "beam-prefix.jsonl", args.beam_events)
        with _timed(entry, min(args.beam_events, args.events)):
            plain_beam(prefix)

    def step_headwater_batch(entry: dict[str, Any]) -> None:
        out = workdir / "batch"
        # Checked before the timed run (building the graph twice is the bench's cost, not the
        # user's): the figure must be the columnar path's.
        if not pipeline_uses_columnar(events_file, out):
            raise RuntimeError("windowed_metrics did not pick the columnar path for the bench run")
        with stage_timers() as stages, _timed(entry, args.events):
            entry.update(headwater_batch(events_file, out))
        stages["beam_and_rest"] = round(max(entry["seconds"] - stages["columnar_fn"], 0.0), 3)
        entry["stages_s"] = stages
        problems = compare_rows(read_rows(out / "rows"), reference.get("rows", {}))
        counters_equal = all(entry.get(k) == reference.get(k) for k in _COUNTERS)
        entry["equal_to_plain_python"] = not problems and counters_equal
        if problems:
            entry["differences"] = problems

    def step_record(mode: str) -> Callable[[dict[str, Any]], None]:
        def step(entry: dict[str, Any]) -> None:
            prefix = _prefix(events_file, workdir / "record-prefix.jsonl", args.record_events)
            with _timed(entry, min(args.record_events, args.events)):
                entry.update(record_path(prefix, workdir / f"record-{mode}", mode))

        return step

    def step_plain_beam_streaming(entry: dict[str, Any]) -> None:
        prefix = _prefix(events_file, workdir / "stream-prefix.jsonl", args.beam_stream_events)
        with _timed(entry, min(args.beam_stream_events, args.events)):
            plain_beam_streaming(prefix)

    def step_replay(entry: dict[str, Any]) -> None:
        with _timed(entry, args.events):
            entry.update(headwater_replay(events_file, workdir / "replay", "columnar"))

    def step_replay_teststream(entry: dict[str, Any]) -> None:
        prefix = _prefix(events_file, workdir / "replay-prefix.jsonl", args.replay_events)
        out = workdir / "replay-teststream"
        with _timed(entry, min(args.replay_events, args.events)):
            entry.update(headwater_replay(prefix, out, "teststream"))
        # The same prefix on the columnar replay: the same counters and rows (float sums to
        # 1e-9 relative: the engines add a window's amounts in different orders).
        columnar = headwater_replay(prefix, workdir / "replay-prefix-columnar", "columnar")
        same_counters = all(columnar[k] == entry[k] for k in _COUNTERS)
        problems = compare_rows(
            read_rows(workdir / "replay-prefix-columnar" / "rows"), read_rows(out / "rows")
        )
        entry["columnar_replay_equal"] = same_counters and not problems
        if problems:
            entry["differences"] = problems

    def step_kafka(entry: dict[str, Any]) -> None:
        from headwater.testing.broker import bench_kafka_read

        entry.update(bench_kafka_read(records=args.kafka_records))

    def step_scale_out(entry: dict[str, Any]) -> None:
        entry.update(scale_out(events_file, workdir), events=args.events)

    def step_flink(entry: dict[str, Any]) -> None:
        scaled = "speedup_2_vs_1_workers" in results.get("scale_out", {})  # ran, this run
        fnapi_rows = workdir / "scale-workers-1" / "rows" if scaled else None
        entry.update(flink_scale_out(events_file, workdir, fnapi_rows), events=args.events)

    def step_memory(entry: dict[str, Any]) -> None:
        small, large = args.memory_events, 5 * args.memory_events
        entry["small"] = _dedup_memory_subprocess(workdir, small)
        entry["large"] = _dedup_memory_subprocess(workdir, large)
        entry["rss_ratio_large_vs_small"] = round(
            entry["large"]["peak_rss_mb"] / entry["small"]["peak_rss_mb"], 2
        )

    _step(results, "plain_python", step_plain_python)
    _step(results, "pyarrow", step_pyarrow)
    _step(results, "plain_beam", step_plain_beam)
    _step(results, "headwater_batch", step_headwater_batch)
    if not args.skip_scale_out:
        _step(results, "scale_out", step_scale_out)
    if not args.skip_flink:
        _step(results, "flink_scale_out", step_flink)
    if not args.skip_record_path:
        modes = ["in_process", "in_process_state_cache_constant_0"]
        if args.record_path_workers:  # ~1 min; the finding it measured is in the docs
            modes.append("2_workers_cache_0")
        for mode in modes:
            _step(results, f"record_path_{mode}", step_record(mode))
    _step(results, "plain_beam_streaming", step_plain_beam_streaming)
    _step(results, "headwater_replay", step_replay)
    _step(results, "headwater_replay_teststream", step_replay_teststream)
    if not args.skip_kafka:
        _step(results, "kafka", step_kafka)
    if not args.skip_memory:
        _step(results, "dedup_memory", step_memory)
    if not args.skip_prism:
        _prism_streaming(results, args, workdir, files[_MALFORMED[1]])
    _ratios(results)
    return results


def _ratios(results: dict[str, Any]) -> None:
    python = results.get("plain_python", {}).get("events_per_s")
    beam = results.get("plain_beam", {}).get("events_per_s")
    for entry in results.values():
        if isinstance(entry, dict) and entry.get("events_per_s"):
            if python:
                entry["x_plain_python"] = round(entry["events_per_s"] / python, 3)
            if beam:
                entry["x_plain_beam"] = round(entry["events_per_s"] / beam, 2)
    streaming = results.get("plain_beam_streaming", {}).get("events_per_s")
    for name in ("headwater_replay", "headwater_replay_teststream"):
        replay = results.get(name, {}).get("events_per_s")
        if replay and streaming:
            results[name]["x_plain_beam_streaming"] = round(replay / streaming, 1)
    batch = results.get("headwater_batch", {}).get("events_per_s")
    arrow = results.get("pyarrow", {}).get("events_per_s")
    if batch and arrow:
        results["headwater_batch"]["x_pyarrow"] = round(batch / arrow, 3)


def print_table(results: dict[str, Any], out: Any = None) -> None:
    """The human-readable summary of ``results``."""
    out = out or sys.stdout
    print(f"\n{'measurement':<44}{'events/s':>12}{'x python':>10}{'x beam':>9}", file=out)
    for name, entry in results.items():
        if not isinstance(entry, dict) or "events_per_s" not in entry:
            continue
        print(
            f"{name + ' (' + str(entry['events']) + ')':<44}{entry['events_per_s'] or 0:>12,.0f}"
            f"{entry.get('x_plain_python', ''):>10}{entry.get('x_plain_beam', ''):>9}",
            file=out,
        )
    batch = results.get("headwater_batch", {})
    if batch:
        print(
            f"headwater batch vs pyarrow: {batch.get('x_pyarrow')}x; output equal to plain "
            f"Python: {batch.get('equal_to_plain_python')}",
            file=out,
        )
    replay = results.get("headwater_replay", {})
    if replay.get("events_per_s"):
        teststream = results.get("headwater_replay_teststream", {})
        print(
            f"stream replay (columnar): {replay.get('x_plain_beam_streaming')}x plain Beam "
            f"streaming; same counters and rows as the TestStream replay on the prefix: "
            f"{teststream.get('columnar_replay_equal')}",
            file=out,
        )
    kafka = results.get("kafka", {})
    if "pipeline_msgs_per_s" in kafka:
        print(
            f"kafka bounded read: pipeline {kafka['pipeline_msgs_per_s']:,.0f} msg/s, raw "
            f"confluent-kafka {kafka['raw_msgs_per_s']:,.0f} msg/s",
            file=out,
        )
    memory = results.get("dedup_memory", {})
    if "small" in memory:
        print(
            f"dedup peak RSS: {memory['small']['events']:,} events {memory['small']['peak_rss_mb']}"
            f" MB, {memory['large']['events']:,} events {memory['large']['peak_rss_mb']} MB "
            f"(ids held at most {memory['small']['max_ids_held']:,} / "
            f"{memory['large']['max_ids_held']:,}; on disk {memory['small']['ids_on_disk']:,} / "
            f"{memory['large']['ids_on_disk']:,})",
            file=out,
        )
    scale = results.get("scale_out", {})
    if "speedup_2_vs_1_workers" in scale:
        runs = scale["runs"]
        print(
            f"scale-out, {scale['events']:,} events, parallel columnar path "
            f"({scale['shards']} shards, single-threaded workers): 2 workers "
            f"{scale['speedup_2_vs_1_workers']}x 1 worker end to end "
            f"({scale.get('speedup_2_vs_1_workers_pipeline')}x within the run, "
            f"{scale.get('speedup_2_vs_1_workers_stages')}x over the stages' spans; target "
            f"{SCALE_OUT_TARGET}x met: {scale['target_met']}); 2 workers vs today's one step: "
            f"{scale['x_one_step_2_workers']}x; seconds one step / 1 / 2 workers: "
            f"{runs['one_step']['seconds']} / {runs['workers_1']['seconds']} / "
            f"{runs['workers_2']['seconds']}; load average (1 min) before / after "
            f"{scale['load_avg_1m']} on {os.cpu_count()} cores; a CPU-only control job in the "
            f"same run: 2 workers {scale['control_cpu_only']['speedup']}x 1; same bytes on 1 "
            "and 2 workers: "
            f"{scale['two_workers_same_bytes']}, same counters: {scale['same_counters']}",
            file=out,
        )
    flink = results.get("flink_scale_out", {})
    if "speedup_2_vs_1" in flink:
        runs = flink["runs"]
        print(
            f"Apache Flink (embedded, Beam's job server, worker-pool SDK workers), "
            f"{flink['events']:,} events: parallelism 2 {flink['speedup_2_vs_1']}x parallelism 1 "
            f"end to end ({runs['parallelism_1']['seconds']} s / "
            f"{runs['parallelism_2']['seconds']} s; "
            f"{flink['speedup_2_vs_1_pipeline']}x within the run); same bytes at 1 and 2: "
            f"{flink['same_bytes']}, as the FnApiRunner's: {flink['same_bytes_as_fnapi']}, "
            f"same counters: {flink['same_counters']}",
            file=out,
        )
    _print_end_to_end(results, out)
    _print_prism(results, out)
    for name, entry in results.items():
        if isinstance(entry, dict) and "error" in entry:
            print(f"{name}: FAILED {entry['error']}", file=out)


def _print_end_to_end(results: dict[str, Any], out: Any) -> None:
    runs = [
        results[f"e2e_malformed_{f:g}"] for f in _MALFORMED if f"e2e_malformed_{f:g}" in results
    ]
    runs = [run for run in runs if "headwater" in run]
    if runs:
        events = runs[0]["headwater"]["records_in"]
        print(
            f"\nend to end (subprocess, start to exit), {events:,} events, each the median of "
            f"{len(runs[0]['headwater'].get('rounds_s', [0]))} alternating rounds:",
            file=out,
        )
        print(
            f"  {'malformed':<10}{'plain script':>14}{'headwater':>12}{'engine':>10}"
            f"{'x plain script':>16}{'same output':>13}",
            file=out,
        )
        for run in runs:
            print(
                f"  {run['malformed_frac']:<10.1%}{run['plain_script']['seconds']:>12.2f} s"
                f"{run['headwater']['seconds']:>10.2f} s{run['headwater']['engine'] or '':>10}"
                f"{run['x_plain_script']:>15}x{run['equal_to_plain_script']!s:>13}",
                file=out,
            )
        for run in runs:
            if "plain_beam" in run:
                beam_run = run["plain_beam"]
                print(
                    f"  plain Beam ({beam_run['events']:,}-event prefix, "
                    f"{run['malformed_frac']:.1%} malformed): {beam_run['events_per_s']:,.0f} "
                    f"events/s; headwater end to end: {run['x_plain_beam_rate']}x its rate",
                    file=out,
                )
        in_pipeline = [f"{r['headwater']['outside_pipeline_s']:.2f}" for r in runs]
        print(f"  headwater's time outside the pipeline (s): {', '.join(in_pipeline)}", file=out)
    startup = results.get("startup", {})
    if "help" in startup:
        print(
            f"start-up: headwater --help {startup['help']:.2f} s, pipelines "
            f"{startup['pipelines']:.2f} s, run windowed_metrics --help "
            f"{startup['run_help']:.2f} s",
            file=out,
        )
    windows = results.get("e2e_windows", {})
    if "fixed" in windows:
        parts = [
            f"{name} {windows[name]['seconds']:.2f} s ({windows[name]['engine']}, "
            f"{windows[name].get('window_files', '?')} files)"
            + (f", {windows[f'{name}_x_fixed_time']}x fixed" if name != "fixed" else "")
            for name, _ in _WINDOWS
        ]
        print(
            f"windows end to end ({windows['events']:,} events, medians of "
            f"{len(windows['fixed'].get('rounds_s', [0]))} "
            "alternating rounds): " + "; ".join(parts),
            file=out,
        )
    stages = results.get("headwater_batch", {}).get("stages_s")
    if stages:
        print(
            "in-process breakdown of headwater_batch (s): "
            + ", ".join(
                f"{name} {stages[name]}"
                for name in ("parse_and_checks", "dedup", "aggregate", "write", "beam_and_rest")
            ),
            file=out,
        )


def _print_prism(results: dict[str, Any], out: Any) -> None:
    throughput = results.get("prism_throughput", {})
    if "events_per_s" in throughput:
        print(
            f"\nPrism streaming, {throughput['events']:,}-event Kafka backlog: "
            f"{throughput['events_per_s']:,.0f} events/s (job start to last window file, "
            f"{throughput['seconds']:.1f} s; first window file "
            f"{throughput['first_window_file_s']} s, all read {throughput['all_read_s']} s); "
            f"CPU s: {throughput['cpu_s']}",
            file=out,
        )
    latency = results.get("prism_latency", {})
    if latency.get("p50_s") is not None:
        print(
            f"Prism latency at {latency['rate_per_s']:,} events/s "
            f"(achieved {latency['achieved_rate_per_s']:,.0f}): produce -> window file p50 "
            f"{latency['p50_s']} s, p95 {latency['p95_s']} s, max {latency['max_s']} s over "
            f"{latency['windows_measured']} windows of 1 s",
            file=out,
        )
    profiled = results.get("prism_profile", {})
    if "own_time_s_by_package" in profiled:
        print(
            f"Prism job profile ({profiled['events']:,} events, own CPU s by package): "
            f"{profiled['own_time_s_by_package']}",
            file=out,
        )
        for seconds, what in profiled["top_functions_own_s"][:8]:
            print(f"  {seconds:>8.2f} s  {what}", file=out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m headwater.devtools.bench", description=__doc__)
    parser.add_argument("--workdir", default="bench-output", help="folder for data and results")
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the workload")
    parser.add_argument("--beam-events", type=int, default=100_000, help="plain Beam prefix")
    parser.add_argument("--record-events", type=int, default=20_000, help="record-path prefix")
    parser.add_argument(
        "--replay-events", type=int, default=20_000, help="TestStream replay prefix"
    )
    parser.add_argument(
        "--beam-stream-events", type=int, default=10_000, help="plain Beam streaming prefix"
    )
    parser.add_argument("--kafka-records", type=int, default=1_000_000, help="Kafka records")
    parser.add_argument(
        "--memory-events", type=int, default=1_000_000, help="dedup memory: N vs 5*N"
    )
    parser.add_argument(
        "--window-events",
        type=int,
        default=1_000_000,
        help="events of the session/calendar vs fixed windows runs (a prefix when below --events)",
    )
    parser.add_argument(
        "--prism-events",
        type=int,
        default=100_000,
        help="Kafka backlog read on Prism: a prefix (Prism ran about 3,000 events/s here, so "
        "1M would take about six minutes; --prism-events 1000000 runs it)",
    )
    parser.add_argument(
        "--latency-rate",
        type=int,
        default=200,
        help="Prism latency run: events/s produced (below what the job sustains)",
    )
    parser.add_argument(
        "--latency-seconds",
        type=float,
        default=15.0,
        help="Prism latency run: seconds of paced input after the first window file",
    )
    parser.add_argument(
        "--profile-events",
        type=int,
        default=5_000,
        help="Prism run under cProfile, CPU time per thread (0: none)",
    )
    parser.add_argument("--skip-prism", action="store_true", help="no streaming on Prism")
    parser.add_argument("--skip-flink", action="store_true", help="no batch runs on Flink")
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    parser.add_argument(
        "--e2e-rounds",
        type=int,
        default=None,
        help="alternating rounds of each end-to-end run; its figure is the median (default 5, "
        "1 with --quick)",
    )
    parser.add_argument(
        "--skip-end-to-end", action="store_true", help="no subprocess (CLI) measurements"
    )
    parser.add_argument(
        "--skip-plain-beam-e2e", action="store_true", help="no plain Beam subprocess run"
    )
    parser.add_argument(
        "--plain-beam",
        default=None,
        metavar="EVENTS",
        help="internal: run plain Beam over EVENTS, writing to --workdir",
    )
    parser.add_argument("--skip-kafka", action="store_true", help="no broker measurement")
    parser.add_argument("--skip-memory", action="store_true", help="no dedup memory runs")
    parser.add_argument(
        "--skip-scale-out", action="store_true", help="no 1 vs 2 workers batch runs"
    )
    parser.add_argument("--skip-record-path", action="store_true", help="no record-path runs")
    parser.add_argument(
        "--record-path-workers",
        action="store_true",
        help="also the record path with 2 worker processes (about a minute more)",
    )
    parser.add_argument("--dedup-memory", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark (or, internally, one dedup-memory measurement)."""
    args = _parser().parse_args(argv)
    if args.dedup_memory is not None:
        result = dedup_memory(args.dedup_memory)
        print(json.dumps(result))
        return result
    if args.plain_beam is not None:
        plain_beam(Path(args.plain_beam), Path(args.workdir))
        return {}
    if args.e2e_rounds is None:  # a value given with --quick is kept
        args.e2e_rounds = 1 if args.quick else 5
    for name, value in (
        ("events", args.events),
        ("beam_events", args.beam_events),
        ("e2e_rounds", args.e2e_rounds),
    ):
        if value < 1:
            raise SystemExit(f"--{name.replace('_', '-')}={value} must be at least 1")
    if args.quick:
        args.events = min(args.events, 50_000)
        args.beam_events = min(args.beam_events, 10_000)
        args.record_events = min(args.record_events, 2_000)
        args.replay_events = min(args.replay_events, 2_000)
        args.beam_stream_events = min(args.beam_stream_events, 2_000)
        args.kafka_records = min(args.kafka_records, 20_000)
        args.memory_events = min(args.memory_events, 50_000)
        args.window_events = min(args.window_events, 5_000)
        args.prism_events = min(args.prism_events, 5_000)
        args.latency_seconds = min(args.latency_seconds, 3.0)
        args.latency_rate = min(args.latency_rate, 500)
        args.profile_events = 0
    results = run_bench(args)
    path = Path(args.workdir) / "bench.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    print_table(results)
    print(f"results -> {path}")
    return results


if __name__ == "__main__":
    main()
