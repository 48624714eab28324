"""Running a pipeline: checks around the run, progress lines, waiting, the summary and markers.

:func:`run_file_pipeline` is ``run()`` of a pipeline that writes files: the flags converted and
validated once into a :class:`~headwater.pipelines.config.RunConfig`, which ``build`` then uses.
:func:`run_pipeline` prepares the runner, builds the graph, prepares the output folders, runs
(with progress lines on a local run), waits where the runner allows, and reports.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from headwater import runners
from headwater.core.accounting import IDS_ON_DISK, Accounting, counter_total, shard_counts
from headwater.io.fileio import (
    folder_prefix,
    list_output_files,
    prepare_output_folders,
    write_success_marker,
)
from headwater.io.kafka import reset_drain
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.checks import check_data, check_output_paths, dead_letter_stages
from headwater.pipelines.config import RunConfig, check_batch, check_streaming
from headwater.pipelines.options import FLAGS
from headwater.pipelines.sinks import file_outputs
from headwater.pipelines.slis import MetricsEndpoint, check_metrics_port
from headwater.pipelines.step_names import check_update
from headwater.transforms.progress import ProgressLines, progress_period

__all__ = [
    "CONFIG_FLAGS",
    "print_summary",
    "run_config",
    "run_file_pipeline",
    "run_pipeline",
    "summarize",
]


def _output_files(outputs: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Each output folder's files, without those of another output folder nested in it, and
    without writers' temporary files (:func:`~headwater.io.fileio.list_output_files`)."""
    folders = {name: folder_prefix(folder) for name, folder in outputs.items() if folder}
    listed = {}
    for name, folder in folders.items():
        nested = [f for other, f in folders.items() if other != name and f.startswith(folder)]
        listed[name] = [
            f
            for f in list_output_files(outputs[name], temps=False)
            if not any(f.startswith(n) for n in nested)
        ]
    return listed


def summarize(
    pipeline: str,
    runner: str,
    accounting: Accounting,
    wall_s: float,
    outputs: Mapping[str, str | None],
    listed: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The run summary: the accounting, rates, throughput and where outputs went.

    ``listed``: the output folders' files (:func:`_output_files`), when the caller has them.
    """
    counts = accounting.to_dict()
    records_in = max(accounting.records_in, 1)
    summary: dict[str, Any] = {
        "pipeline": pipeline,
        "runner": runner,
        **counts,
        "wall_s": round(wall_s, 3),
        "throughput_per_s": round(accounting.records_in / wall_s, 1) if wall_s > 0 else None,
        "rates": {
            name: round(getattr(accounting, name) / records_in, 6)
            for name in ("duplicate", "dead_letter", "late")
        },
        "outputs": {},
    }
    listed = _output_files(outputs) if listed is None else listed
    for name, folder in outputs.items():
        summary["outputs"][name] = {"path": folder, "files": len(listed.get(name, []))}
    return summary


def _write_markers(
    outputs: Mapping[str, str | None],
    summary: Mapping[str, Any],
    listed: Mapping[str, list[str]],
) -> None:
    """``_SUCCESS`` (the run's counts and that folder's files) into each output folder, last."""
    counts = ("pipeline", "runner", "records_in", "output", "duplicate", "dead_letter", "late")
    for name, files in listed.items():
        folder = str(outputs[name])
        body = {"folder": name, **{k: summary.get(k) for k in counts}}
        write_success_marker(folder, body, files)


#: The flags that shape a run's result, as the summary's ``config`` shows them (never secrets:
#: no --kafka_config, no connection settings).
CONFIG_FLAGS = (
    "source",
    "input",
    "topic",
    "format",
    "event_time_field",
    "event_time_unit",
    "id_field",
    "dedup_horizon",
    "dedup_keep",
    "window",
    "trigger",
    "allowed_lateness",
    "key_field",
    "metrics",
    "replay_as_stream",
    "max_out_of_orderness",
)


def run_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """The set ones of :data:`CONFIG_FLAGS`, as given (text), for the summary and report."""
    config = {}
    for name in CONFIG_FLAGS:
        value = values.get(name)
        if value in (None, "", [], False):
            continue
        config[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return config


def print_summary(summary: Mapping[str, Any], out: Any = None) -> None:
    """The human-readable run summary (stdout by default)."""
    out = out or sys.stdout
    ok = "holds" if summary["identity_holds"] else "BROKEN"
    print(
        f"\nheadwater {summary['pipeline']} on {summary['runner']}: "
        f"{summary['records_in']} records in {summary['wall_s']} s",
        file=out,
    )
    for name in ("output", "duplicate", "dead_letter", "late"):
        print(f"  {name:<12} {summary[name]:>10}", file=out)
    print(f"  records_in == output + duplicate + dead_letter + late: {ok}", file=out)
    if summary.get("late_unverified"):
        print(
            f"  WARNING: {summary['late_unverified']} records went to their windows without a "
            "verified late-data clock and may be missing from them (records older than the "
            "stream's first windows by more than the late router's 10-minute clock horizon, "
            "before its clock first ticked: see headwater.windowing.late)",
            file=out,
        )
    if summary.get("kafka_offsets_deleted"):
        print(
            f"  WARNING: {summary['kafka_offsets_deleted']} Kafka offsets were deleted by the "
            "broker (retention, or deleted records) before the read reached them: their records "
            "are not in this run (the log names the partitions and offsets)",
            file=out,
        )
    if summary.get("dedup_ids_on_disk"):
        print(
            f"  dedup        {summary['dedup_ids_on_disk']:,} ids past the horizon held on local "
            "disk (TMPDIR) instead of memory",
            file=out,
        )
    if summary.get("engine"):
        why = f" ({summary['engine_reason']})" if summary.get("engine_reason") else ""
        print(f"  engine       {summary['engine']}{why}", file=out)
    for name, where in summary.get("outputs", {}).items():
        if where["path"]:
            print(f"  {name:<12} -> {where['path']} ({where['files']} files)", file=out)


def run_pipeline(
    *,
    name: str,
    options: PipelineOptions,
    values: Mapping[str, Any],
    build: Callable[[beam.Pipeline, PipelineOptions], Any],
    outputs: Mapping[str, str | None],
    streaming: bool,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Builds and runs a pipeline; waits and reports the accounting where the runner allows.

    Returns the summary dict (local runs, batch jobs on Flink or the portable runner) or
    ``{"job_id": ...}`` for jobs that go on running remotely (Dataflow, streaming portable).
    """
    runner = runners.prepare(options, streaming=streaming, unbounded=unbounded_source(options))
    local = runners.is_local(runner)
    # --metrics_port serves the job's metrics from this process: it stays attached to the job.
    check_metrics_port(values.get("metrics_port"), runner)
    waits = runners.waits_for_result(runner, options) or bool(values.get("metrics_port"))
    if options.view_as(StandardOptions).streaming:
        check_streaming(values)
    else:
        check_batch(values)
    if local and unbounded_source(options):
        raise ValueError(
            "--source=kafka without --stop_at_end or --max_records is an unbounded "
            f"read, which {runner} cannot run: use --runner=PrismRunner (or add --stop_at_end)"
        )
    check_output_paths(
        {"late_output" if k == "late" else k: v for k, v in outputs.items()},
        {"summary_json": values.get("summary_json"), "report": values.get("report")},
    )
    started = time.monotonic()
    p = beam.Pipeline(options=options)
    built = build(p, options)
    check_update(p, name, options)  # --transform_name_mapping: keys are steps, or refused
    # Once, before anything is written (a streaming run then writes windows over time); a
    # Dataflow --update replaces a running job that goes on writing into the same folders, and
    # an unbounded read resumed from the group's offsets (--start=committed) writes on into the
    # folders of the job it resumes (window files are written once: fileio.write_once).
    resumes = unbounded_source(options) and values.get("start") == "committed"
    if not options.view_as(GoogleCloudOptions).update and (values.get("overwrite") or not resumes):
        prepare_output_folders(
            outputs.values(),
            overwrite=bool(values.get("overwrite")),
            keep=[str(values[k]) for k in ("input", "dead_letter_input") if values.get(k)],
        )
    reset_drain()  # a drain asked for in an earlier run of this process does not stop this one
    # A run whose workers are this process shows progress lines while it runs (not with -q).
    in_process = runners.runs_here(runner, options)
    with (
        ProgressLines(period=progress_period() if in_process else None),
        MetricsEndpoint(values.get("metrics_port"), labels={"pipeline": name}) as endpoint,
    ):
        result = p.run()
        endpoint.follow(result)
        if not waits:
            job_id = getattr(result, "job_id", lambda: None)()
            print(json.dumps({"pipeline": name, "runner": runner, "job_id": job_id}))
            return {"job_id": job_id}
        state = runners.wait_for(result, runner, options)
    if (runners.is_portable(runner) or runner == runners.PRISM_RUNNER) and state not in (
        "DONE",
        "CANCELLED",
    ):
        raise RuntimeError(f"{runner} job ended in state {state}")
    wall_s = time.monotonic() - started
    listed = _output_files(outputs)  # once: a session run writes thousands of files
    summary = summarize(name, runner, Accounting.from_result(result), wall_s, outputs, listed)
    summary["state"] = state
    summary["engine"] = getattr(built, "engine", "record")
    if summary["engine"] == "record":  # why the fast path did not run, in the summary and report
        summary["engine_reason"] = getattr(built, "engine_reason", None) or (
            f"{name} has no columnar engine"
        )
    spread = shard_counts(result)
    if spread:  # records per shard of the late router: how a stream spread over the workers
        summary["late_routing_shards"] = spread
    unverified = counter_total(result, "late_routing.unverified")
    if unverified:  # judged without a running clock: the windowing step may have dropped them
        summary["late_unverified"] = unverified
    on_disk = counter_total(result, IDS_ON_DISK)
    if on_disk:  # a batch dedup held the ids past its horizon on local disk (docs/operations.md)
        summary["dedup_ids_on_disk"] = on_disk
    deleted = counter_total(result, "kafka.offsets_deleted_before_read")
    if deleted:  # gone from the broker before the read got to them: not in records_in
        summary["kafka_offsets_deleted"] = deleted
    summary["config"] = run_config(values)
    print_summary(summary)
    summary["data_check"] = check_data(  # no output, or too many dead letters: exit status 3
        summary,
        values,
        dead_letter_folder=outputs.get("dead_letter"),
        stage_counts=dead_letter_stages(result),
    )
    if values.get("summary_json"):
        with open(values["summary_json"], "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True)
            handle.write("\n")
    if values.get("report"):
        from headwater.report import write_report

        write_report(
            values["report"],
            summary=summary,
            rows_dir=outputs.get("output"),
            dead_letter_dir=outputs.get("dead_letter"),
            late_dir=outputs.get("late"),
        )
        print(f"  report       -> {values['report']}")
    _write_markers(outputs, summary, listed)
    return summary


def run_file_pipeline(
    name: str,
    options_cls: type[HeadwaterOptions],
    validate: Callable[[RunConfig], None],
    build: Callable[..., Any],
    argv: Sequence[str] | None,
    *,
    streaming: Callable[[RunConfig], bool] | None = None,
) -> dict[str, Any]:
    """``run()`` of a pipeline that writes files: parse, validate, run, summarize.

    The flags are converted and validated once, into a :class:`RunConfig` that
    ``build(p, options, config=config)`` uses as it is. ``streaming(config)`` says whether the
    run streams (default: ``--replay_as_stream``).
    """
    options = PipelineOptions(argv)
    config = RunConfig.from_options(options, options_cls)
    validate(config)
    streams = streaming(config) if streaming else bool(config.get("replay_as_stream"))
    return run_pipeline(
        name=name,
        options=options,
        values=config,
        build=lambda p, o: build(p, o, config=config),
        outputs=file_outputs(config),
        streaming=streams,
    )


def _raw_flag(options: PipelineOptions, name: str) -> Any:
    return options.get_all_options(retain_unknown_options=True).get(name)


def unbounded_source(options: PipelineOptions) -> bool:
    """Whether the pipeline's flags read Kafka with no end (no --stop_at_end/--max_records)."""
    if _raw_flag(options, "source") != "kafka":
        return False
    stop = FLAGS["stop_at_end"].convert(_raw_flag(options, "stop_at_end"))
    return not (stop or _raw_flag(options, "max_records"))
