"""``windowed_metrics``: per-key count/sum/min/max/mean per event-time window, every record counted.

source (files | files replayed as a stream | Kafka) -> decode -> event time -> dedup by id ->
window with late routing -> per-key metrics -> Parquet/Avro files per window; dead letters and
late records to their own folders. A backfill is the same pipeline over files in batch.

Output rows: ``window_start``, ``window_end`` (UTC timestamps), ``key``, one column per metric
(``count``, ``sum_amount``, ...), one row per key, window and pane. A record is a dead letter when
it is not valid JSON/Avro, lacks the event time, id or key, or has a non-numeric value in an
aggregated field.

>>> run(["--input=data/*.jsonl", "--output=out/", "--dead_letter=dlq/"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from headwater.columnar import (
    ComputeWindowedMetricsColumnar,
    ComputeWindowedMetricsParallel,
    ReplayWindowedMetricsColumnar,
    columnar_unsupported_reason,
    early,
    parallel_unsupported_reason,
    replay_unsupported_reason,
)
from headwater.core.forked import CAN_FORK
from headwater.pipelines import catalog
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.config import RunConfig, check_stream_shards, validate_source, value
from headwater.pipelines.options import check_required
from headwater.pipelines.running import run_file_pipeline
from headwater.pipelines.sinks import (
    DEAD_LETTER_SHARDS,
    dead_letter_files,
    late_folder,
    write_outcomes,
)
from headwater.pipelines.sources import all_dead_letters, open_source
from headwater.runners import in_this_process
from headwater.transforms.process import ComputeWindowedMetrics

__all__ = ["DESCRIPTION", "Options", "Outputs", "build", "run"]

_LOG = logging.getLogger("headwater.pipelines.windowed_metrics")

SPEC = catalog.spec("windowed_metrics")
DESCRIPTION = SPEC.description


class Options(HeadwaterOptions):
    """The flags of ``windowed_metrics`` (``headwater run windowed_metrics --help``)."""

    FLAG_NAMES = SPEC.flag_names
    REQUIRED = SPEC.required


class Outputs(NamedTuple):
    """What :func:`build` wired: the metric rows and the other outcomes."""

    rows: beam.PCollection
    late: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection
    engine: str = "record"  # or "columnar", "columnar-parallel", "columnar-replay" (summary)
    engine_reason: str | None = None  # why the record path ran (``None`` on a columnar engine)


def validate(values: Mapping[str, Any], *, source: Any = None, sink: Any = None) -> None:
    """Checks flags that depend on each other; ``ValueError`` names the flag."""
    check_required(values, Options.flags(), unless={"output": lambda _: sink is not None})
    validate_source(values, injected=source is not None)
    if value(values, "replay_engine") != "auto" and not values.get("replay_as_stream"):
        raise ValueError(f"--replay_engine={values['replay_engine']} needs --replay_as_stream")


def _columnar_args(config: RunConfig) -> dict[str, Any]:
    """The middle's arguments, for every engine (record path, columnar batch and replay)."""
    return {
        **config.windowed_args(),
        "key_field": config["key_field"],
        "metrics": config["metrics"],
    }


def _metrics(config: RunConfig) -> ComputeWindowedMetrics:
    return ComputeWindowedMetrics(**_columnar_args(config), shards=value(config, "stream_shards"))


def replays_columnar(config: RunConfig) -> bool:
    """Whether ``--replay_as_stream`` runs on the columnar replay (a batch run) here.

    ``--replay_engine=columnar`` raises ``ValueError`` with the reason when it cannot.
    """
    return config.get("source") == "files" and _replay_refusal(config) is None


def _replay_refusal(config: RunConfig) -> str | None:
    """Why a files replay runs on the TestStream record path, or ``None`` (columnar replay)."""
    engine = value(config, "replay_engine")
    if not config.get("replay_as_stream"):
        return "not a stream replay"
    if engine == "teststream":
        return "--replay_engine=teststream"
    fmt = value(config, "format")
    reason = replay_unsupported_reason(file_format=fmt, **_columnar_args(config))
    if reason is not None and engine == "columnar":
        raise ValueError(f"--replay_engine=columnar cannot replay this configuration: {reason}")
    return reason


#: Processes that decode a local one-step batch run's input and write its window files
#: (headwater.core.forked).
_LOCAL_PROCESSES = min(4, len(os.sched_getaffinity(0))) if CAN_FORK else 1

#: Runners whose workers are other machines: the columnar batch path runs in parallel there.
_REMOTE_RUNNERS = ("dataflow", "flink", "portable")


def _runs_parallel(config: RunConfig, options: PipelineOptions) -> bool:
    """Whether the columnar batch path runs in parallel (else on one worker, in one step).

    ``--columnar_shards=N`` asks for it; without it, it runs in parallel on a runner with
    remote workers (Dataflow, Flink, portable). Local runs keep the one-step path: with
    ``--direct_num_workers=2`` the parallel form measured slower on this kind of machine
    (``make bench``, ``scale_out``: every shuffled byte passes through the local runner's one
    Python process), so it is taken there only when asked for.
    """
    if config.get("columnar_shards") is not None:
        return True
    runner = str(options.view_as(StandardOptions).runner or "direct").lower()
    return runner.removesuffix("runner") in _REMOTE_RUNNERS


def _columnar(
    config: RunConfig, options: PipelineOptions, sink: beam.PTransform | None
) -> tuple[ComputeWindowedMetricsColumnar | None, str | None]:
    """The columnar fast path when it supports this configuration, else why not (summary).

    ``--columnar_shards`` is refused (``ValueError``) when the run does not take the columnar
    batch path.
    """
    chosen, reason = _columnar_engine(config, options, sink)
    if config.get("columnar_shards") is not None and not isinstance(
        chosen, ComputeWindowedMetricsParallel
    ):
        raise ValueError(
            f"--columnar_shards={config['columnar_shards']} applies to the columnar batch path "
            f"in parallel, which this run does not take: {reason or 'a stream replay'}"
        )
    return chosen, reason


def _columnar_engine(
    config: RunConfig, options: PipelineOptions, sink: beam.PTransform | None
) -> tuple[ComputeWindowedMetricsColumnar | None, str | None]:
    values = config
    if values.get("source") != "files":
        return None, "the source is Kafka; the columnar engines read files"
    args = _columnar_args(config)
    fmt = value(values, "format")
    outputs: dict[str, Any] = {
        "pattern": values["input"],
        "file_format": fmt,
        "max_out_of_orderness": value(values, "max_out_of_orderness"),
        "output": None if sink is not None else values["output"],
        "output_format": values["output_format"],
        "output_shards": values["output_shards"],
    }
    if values.get("replay_as_stream"):
        reason = _replay_refusal(config)
        if reason is not None:
            _LOG.info("windowed_metrics: stream replay on the TestStream record path (%s)", reason)
            return None, reason
        return ReplayWindowedMetricsColumnar(**outputs, **args), None
    streaming = bool(options.view_as(StandardOptions).streaming)
    reason = columnar_unsupported_reason(file_format=fmt, streaming=streaming, **args)
    if reason is not None:
        _LOG.info("windowed_metrics: record path (%s)", reason)
        return None, reason
    # the one-step batch path writes its dead letters itself (the sink's files, no element each),
    # and decodes its input and writes its window files on every core when this process runs it
    writing: dict[str, Any] = {}
    if sink is None and values.get("dead_letter"):
        writing = {
            "dead_letter_output": values["dead_letter"],
            "dead_letter_format": values["dead_letter_format"],
            "dead_letter_shards": DEAD_LETTER_SHARDS,
        }
    if in_this_process(options):
        writing["write_processes"] = writing["decode_processes"] = _LOCAL_PROCESSES
    if _runs_parallel(config, options):
        why_not = parallel_unsupported_reason(args["window"])
        if why_not is not None:
            _LOG.info("windowed_metrics: columnar batch path in one step (%s)", why_not)
            return ComputeWindowedMetricsColumnar(**outputs, **writing, **args), why_not
        shards = config.get("columnar_shards")
        sharding = {"shards": int(shards)} if shards is not None else {}
        return ComputeWindowedMetricsParallel(**sharding, **outputs, **args), None
    return ComputeWindowedMetricsColumnar(**outputs, **writing, **args), None


def build(
    p: beam.Pipeline,
    options: PipelineOptions,
    *,
    source: beam.PTransform | None = None,
    sink: beam.PTransform | None = None,
    config: RunConfig | None = None,
) -> Outputs:
    """Wires the pipeline into ``p``; ``source``/``sink`` replace the file/Kafka IO in tests.

    ``config``: the flags as :func:`run` checked them (else read from ``options`` here).
    """
    config = RunConfig.given_or_read(
        config, options, Options, lambda c: validate(c, source=source, sink=sink)
    )
    values = config
    columnar, reason = (
        _columnar(config, options, sink)
        if source is None
        else (None, "a source was given to build()")
    )
    if columnar is None or not columnar.decodes_in_processes:
        early.discard()  # an input parsed while Beam was imported serves those decoders only
    if columnar is not None:
        check_stream_shards(config, columnar)
        # Batch over files: the columnar path reads the files, counts every outcome and (with
        # no injected sink) writes the window files itself.
        result = p | "WindowedMetricsColumnar" >> columnar
        dead = result.dead_letter
        if sink is not None:
            _ = result.rows | "Sink" >> sink
        if not columnar.writes_dead_letters:  # the one-step path writes them itself
            _ = dead | "WriteDeadLetters" >> dead_letter_files(values["dead_letter"], values)
        if values.get("replay_as_stream"):
            _ = result.late | "WriteLate" >> dead_letter_files(late_folder(values), values)
        engine = "columnar-replay" if values.get("replay_as_stream") else "columnar"
        if isinstance(columnar, ComputeWindowedMetricsParallel):
            engine = "columnar-parallel"
        return Outputs(result.rows, result.late, result.duplicate, dead, engine)
    compute = _metrics(config)
    sourced = open_source(p, config, source)
    result = sourced.records | "WindowedMetrics" >> compute
    check_stream_shards(config, compute)
    dead = all_dead_letters(sourced, result.dead_letter)
    written = write_outcomes(
        result.rows,
        dead,
        result.late,
        values,
        sink=sink,
        label="WriteRows",
        report_written=sourced.reports_outcomes,
    )
    written.commit(sourced, on_time=result.records, duplicate=result.duplicate, config=config)
    return Outputs(result.rows, result.late, result.duplicate, dead, engine_reason=reason)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv``, validates, runs; returns the run summary (or the job id)."""
    return run_file_pipeline(
        "windowed_metrics",
        Options,
        validate,
        build,
        argv,
        streaming=lambda config: (
            bool(config.get("replay_as_stream")) and not replays_columnar(config)
        ),
    )
