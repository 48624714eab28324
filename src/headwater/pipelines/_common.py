"""What every ready-made pipeline shares: sources, decoding, dedup, sinks, running, summary.

A pipeline module declares its ``Options`` (flag names), wires its own middle in ``build`` and
calls :func:`run_pipeline` from ``run``. Everything here works from the flag values
(:func:`headwater.pipelines.options.flag_values`), so tests can build graphs from argv.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from headwater import runners
from headwater.io.deadletterio import WriteDeadLetters
from headwater.io.fileio import (
    SUCCESS_MARKER,
    ReadFromFiles,
    WriteWindowedFiles,
    _ReadFileFn,
    match_files,
    prepare_output_folders,
    write_success_marker,
)
from headwater.io.formats import Format, JsonFormat, make_format
from headwater.io.kafkaconfig import mask_setting
from headwater.io.kafkaio import ReadFromKafka, reset_drain
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.checks import check_data, check_output_paths, dead_letter_stages
from headwater.pipelines.options import (
    FILE_SOURCE_FLAGS,
    KAFKA_CONNECTION_FLAGS,
    KAFKA_SOURCE_FLAGS,
    flag_values,
    given_flags,
)
from headwater.testing.replay import RecordEventTime, replay_stream
from headwater.transforms.accounting import Accounting, CountAs
from headwater.transforms.dedup import DeduplicateById
from headwater.transforms.observe import RecordFreshness, ShowProgress
from headwater.transforms.progress import ProgressLines, progress_period
from headwater.windowing.eventtime import EventTimeExtractor
from headwater.windowing.watermark import BoundedOutOfOrderness

__all__ = [
    "Sourced",
    "all_dead_letters",
    "decoder",
    "dedup_transform",
    "event_time_extractor",
    "file_outputs",
    "kafka_config",
    "late_folder",
    "open_source",
    "read_source",
    "check_specs",
    "run_file_pipeline",
    "run_pipeline",
    "validate_source",
    "write_outcomes",
]

_LOG = logging.getLogger("headwater.pipelines")


class Sourced(NamedTuple):
    """Raw records from a source, and dead letters of the read itself (corrupt files)."""

    records: beam.PCollection
    dead_letter: beam.PCollection
    kafka: ReadFromKafka | None = None  # commits its offsets once the sinks are written

    def commit_after(self, *sinks: beam.PCollection) -> None:
        """Commits a bounded Kafka read's offsets after ``sinks`` are complete (if asked)."""
        if self.kafka is not None:
            self.kafka.commit_after(self.records.pipeline, *sinks)


def _flag_error(flag: str, exc: Exception) -> ValueError:
    return ValueError(f"--{flag}: {exc}")


def kafka_config(values: Mapping[str, Any]) -> dict[str, str]:
    """``--kafka_config KEY=VALUE`` (repeated) as a librdkafka dict."""
    config: dict[str, str] = {}
    for item in values.get("kafka_config") or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Never the value: a typo such as sasl.password:VALUE must not print the password.
            raise ValueError(
                f"--kafka_config={mask_setting(item)!r} is not KEY=VALUE "
                "(e.g. --kafka_config=security.protocol=SASL_SSL)"
            )
        config[key.strip()] = value
    return config


def decoder(values: Mapping[str, Any]) -> Format:
    """The value format records are decoded with (files in Avro/Parquet arrive decoded)."""
    name = values.get("format") or "json"
    if name in ("json", "parquet") or (name == "avro" and values.get("source") == "files"):
        return JsonFormat()
    try:
        return make_format(
            name,
            schema_path=values.get("avro_schema"),
            registry_url=values.get("schema_registry_url"),
        )
    except ValueError as exc:
        raise _flag_error("format", exc) from None


def event_time_extractor(values: Mapping[str, Any]) -> EventTimeExtractor | None:
    """The event-time extractor, or ``None`` to use the Kafka record timestamp."""
    field = values.get("event_time_field")
    if not field:
        return None
    try:
        return EventTimeExtractor(field=field, unit=values.get("event_time_unit") or "ms")
    except ValueError as exc:
        raise _flag_error("event_time_field", exc) from None


def dedup_transform(values: Mapping[str, Any]) -> DeduplicateById | None:
    """Deduplication by ``--id_field``, or ``None`` when the flag is empty."""
    if not values.get("id_field"):
        return None
    try:
        return DeduplicateById(
            id_field=values["id_field"],
            horizon=values.get("dedup_horizon") or "10m",
            keep=values.get("dedup_keep") or "first",
            time_domain=values.get("dedup_time_domain") or "event",
        )
    except ValueError as exc:
        raise _flag_error("id_field", exc) from None


def validate_source(values: Mapping[str, Any], *, injected: bool, kafka_sink: bool = False) -> None:
    """Cross-field checks of the source flags; ``ValueError`` names the flag.

    A flag of the other kind of source (``--topic`` with ``--source=files``, ``--input`` with
    ``--source=kafka``) is refused rather than ignored; so are the Kafka connection flags with
    files unless the pipeline writes to Kafka (``kafka_sink``).
    """
    if injected:
        return
    source, fmt = values.get("source"), values.get("format")
    other = FILE_SOURCE_FLAGS if source == "kafka" else KAFKA_SOURCE_FLAGS
    if source == "files" and not kafka_sink:
        other = (*other, *KAFKA_CONNECTION_FLAGS)
    stray = given_flags(values, other)
    if stray:
        raise ValueError(
            f"--{stray[0]} does not apply to --source={source}: remove it, or read from "
            f"{'Kafka with --source=kafka' if source == 'files' else 'files with --source=files'}"
        )
    if source == "files":
        if not values.get("input"):
            raise ValueError("--input is required with --source=files (a glob of input files)")
        if fmt == "confluent-avro":
            raise ValueError("--format=confluent-avro is for Kafka; files take json, avro, parquet")
    elif source == "kafka":
        if not values.get("bootstrap_servers"):
            raise ValueError("--bootstrap_servers is required with --source=kafka")
        if not values.get("topic"):
            raise ValueError("--topic is required with --source=kafka")
        if fmt == "parquet":
            raise ValueError(
                "--format=parquet is for files; Kafka takes json, avro, confluent-avro"
            )
        if fmt == "avro" and not values.get("avro_schema"):
            raise ValueError("--avro_schema is required with --source=kafka --format=avro")
        if values.get("replay_as_stream"):
            raise ValueError("--replay_as_stream replays files; it needs --source=files")
        if values.get("start") == "committed" and not values.get("group_id"):
            raise ValueError("--group_id is required with --start=committed")
        _kafka_start(values.get("start") or "earliest")
    if fmt == "confluent-avro" and not values.get("schema_registry_url"):
        raise ValueError("--schema_registry_url is required with --format=confluent-avro")
    kafka_config(values)  # KEY=VALUE syntax
    check_specs(values)


def check_specs(values: Mapping[str, Any]) -> None:
    """Parses the spec-valued flags that are set; ``ValueError`` starts with the flag name."""
    from headwater.transforms.aggregate import parse_metrics
    from headwater.windowing.durations import parse_duration
    from headwater.windowing.triggers import parse_trigger_spec
    from headwater.windowing.windows import parse_window_spec

    parsers: dict[str, Callable[[Any], Any]] = {
        "window": parse_window_spec,
        "trigger": parse_trigger_spec,
        "metrics": parse_metrics,
        "allowed_lateness": lambda v: parse_duration(v, name="allowed_lateness"),
        "dedup_horizon": lambda v: parse_duration(v, name="dedup_horizon", allow_zero=False),
        "max_out_of_orderness": lambda v: parse_duration(v, name="max_out_of_orderness"),
    }
    for flag, parse in parsers.items():
        if values.get(flag) not in (None, ""):
            try:
                parse(values[flag])
            except ValueError as exc:
                raise ValueError(f"--{flag}: {exc}") from None


def check_streaming(values: Mapping[str, Any]) -> None:
    """Refuses flag combinations that would route most records late in a streaming run."""
    from headwater.windowing.durations import parse_duration

    if values.get("id_field") and values.get("dedup_keep") == "last" and values.get("window"):
        horizon = parse_duration(values.get("dedup_horizon") or "10m")
        lateness = parse_duration(values.get("allowed_lateness") or "0s")
        if lateness < horizon:
            raise ValueError(
                "--dedup_keep=last holds each record for --dedup_horizon before emitting it; in "
                "a streaming run set --allowed_lateness to at least the horizon "
                f"({values.get('dedup_horizon')}), or those records arrive late"
            )


def check_batch(values: Mapping[str, Any]) -> None:
    """Refuses flags that have no meaning in a batch run: ``--trigger`` with early panes."""
    from headwater.transforms.process import batch_trigger_problem

    problem = batch_trigger_problem(values["trigger"]) if values.get("trigger") else None
    if problem is not None:
        raise ValueError(f"--trigger={values['trigger']} in a batch run: {problem}")


def _kafka_start(text: str) -> Any:
    if text in ("earliest", "latest", "committed"):
        return text
    try:
        instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--start={text!r} is not earliest, latest, committed or an ISO-8601 instant"
        ) from None
    if instant.tzinfo is None:
        raise ValueError(f"--start={text!r} has no time zone (add Z or +HH:MM)")
    return instant


def _local_records(pattern: str, fmt: str) -> tuple[list[Any], list[Any]]:
    """Reads files in the driver for stream replay: (records in file order, dead letters)."""
    reader = _ReadFileFn("json" if fmt == "json" else fmt)
    records: list[Any] = []
    dead: list[Any] = []
    for path in sorted(match_files(pattern)):
        for item in reader.process(path):
            (dead if isinstance(item, beam.pvalue.TaggedOutput) else records).append(
                item.value if isinstance(item, beam.pvalue.TaggedOutput) else item
            )
    return records, dead


def read_source(p: beam.Pipeline, values: Mapping[str, Any]) -> Sourced:
    """Raw records from ``--source`` (files, files replayed as a stream, or Kafka)."""
    source = values.get("source")
    fmt = values.get("format") or "json"
    if source == "files" and values.get("replay_as_stream"):
        records, dead = _local_records(values["input"], fmt)
        stream = replay_stream(
            records,
            event_time=RecordEventTime(decoder(values), event_time_extractor(values)),
            max_out_of_orderness=values.get("max_out_of_orderness") or "5s",
        )
        return Sourced(
            p | "ReplayAsStream" >> stream | "Progress" >> ShowProgress(),
            p | "ReadDeadLetters" >> beam.Create(dead),
        )
    if source == "files":
        read = p | "ReadFiles" >> ReadFromFiles(
            values["input"], format="json" if fmt == "json" else fmt
        )
        return Sourced(read.main | "Progress" >> ShowProgress(), read.dead_letter)
    extractor = event_time_extractor(values)
    # Every bounded read (--stop_at_end, --max_records, --max_duration) commits only once every
    # sink is written.
    bounded = any(values.get(f) for f in ("stop_at_end", "max_records", "max_duration"))
    # The source's event times only drive its watermark. A batch run (a read that ends by
    # itself, not --streaming) has no use for them: the parse step stamps every record with
    # its event time anyway, so the source does not decode each value a second time.
    batch = bounded and not p.options.view_as(StandardOptions).streaming
    source_time = None if batch else extractor
    read = ReadFromKafka(
        bootstrap_servers=values["bootstrap_servers"],
        topics=[t.strip() for t in values["topic"].split(",") if t.strip()],
        config=kafka_config(values),
        start=_kafka_start(values.get("start") or "earliest"),
        stop_at_end=bool(values.get("stop_at_end")),
        max_records=values.get("max_records"),
        max_duration=values.get("max_duration"),
        event_time=source_time,
        value_format=decoder(values) if source_time is not None else None,
        watermark=BoundedOutOfOrderness(
            max_delay=values.get("max_out_of_orderness") or "5s",
            idle_timeout=values.get("idle_timeout"),
        ),
        commit_on_finalize=bool(values.get("commit_offsets")) and not bounded,
        commit_after_sinks=bool(values.get("commit_offsets")) and bounded,
        group_id=values.get("group_id"),
    )
    records = p | "ReadKafka" >> read | "Progress" >> ShowProgress()
    return Sourced(records, p | "NoReadDeadLetters" >> beam.Create([]), read)


def open_source(
    p: beam.Pipeline, values: Mapping[str, Any], source: beam.PTransform | None
) -> Sourced:
    """An injected ``source`` (tests, replays), else the one ``--source`` names."""
    if source is not None:
        return Sourced(p | "Source" >> source, p | "NoReadErrors" >> beam.Create([]))
    return read_source(p, values)


def all_dead_letters(sourced: Sourced, *more: beam.PCollection) -> beam.PCollection:
    """Every dead letter of a run in one collection.

    Read-stage dead letters (a corrupt file) count as one record in and one dead letter here;
    the others were counted by the steps that made them.
    """
    read = (
        sourced.dead_letter
        | "CountReadRecordsIn" >> CountAs("records_in")
        | "CountReadDeadLetters" >> CountAs("dead_letter")
    )
    return (read, *more) | "AllDeadLetters" >> beam.Flatten()


def late_folder(values: Mapping[str, Any]) -> str:
    """Where late records go: ``--late_output`` or ``<dead_letter>/late``."""
    if values.get("late_output"):
        return str(values["late_output"])
    return str(values.get("dead_letter") or ".").rstrip("/") + "/late"


def file_outputs(values: Mapping[str, Any]) -> dict[str, str | None]:
    """The folders a file-writing pipeline fills, for the run summary."""
    return {
        "output": values.get("output"),
        "dead_letter": values.get("dead_letter"),
        "late": late_folder(values),
    }


def write_outcomes(
    emitted: beam.PCollection,
    dead: beam.PCollection,
    late: beam.PCollection,
    values: Mapping[str, Any],
    *,
    sink: beam.PTransform | None,
    label: str,
    schema: Any = None,
) -> list[beam.PCollection]:
    """Main output to ``sink`` or files per window; dead letters and late records to theirs.

    Returns the sinks' outputs (what a Kafka offset commit waits for).
    """
    emitted = emitted | "Freshness" >> RecordFreshness()
    if sink is not None:
        written = emitted | "Sink" >> sink
    else:
        written = emitted | label >> WriteWindowedFiles(
            values["output"],
            format=values["output_format"],
            num_shards=values["output_shards"],
            schema=schema,
        )
    fmt = values["dead_letter_format"]
    dead_written = dead | "WriteDeadLetters" >> WriteDeadLetters(values["dead_letter"], format=fmt)
    late_written = late | "WriteLate" >> WriteDeadLetters(late_folder(values), format=fmt)
    return [w for w in (written, dead_written, late_written) if isinstance(w, beam.PCollection)]


# ------------------------------------------------------------------------------------------
# Running


def _list_files(folder: str | None) -> list[str]:
    if not folder:
        return []
    try:
        matches = FileSystems.match([folder.rstrip("/") + "/**"])[0].metadata_list
    except Exception:  # nothing written there
        return []
    names = sorted(m.path for m in matches)
    return [n for n in names if "/.tmp-" not in n and not n.endswith("/" + SUCCESS_MARKER)]


def _output_files(outputs: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Each output folder's files, without those of another output folder nested in it."""
    folders = {name: folder.rstrip("/") + "/" for name, folder in outputs.items() if folder}
    listed = {}
    for name, folder in folders.items():
        nested = [f for other, f in folders.items() if other != name and f.startswith(folder)]
        listed[name] = [f for f in _list_files(folder) if not any(f.startswith(n) for n in nested)]
    return listed


def summarize(
    pipeline: str,
    runner: str,
    accounting: Accounting,
    wall_s: float,
    outputs: Mapping[str, str | None],
) -> dict[str, Any]:
    """The run summary: the accounting, rates, throughput and where outputs went."""
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
    listed = _output_files(outputs)
    for name, folder in outputs.items():
        summary["outputs"][name] = {"path": folder, "files": len(listed.get(name, []))}
    return summary


def _write_markers(outputs: Mapping[str, str | None], summary: Mapping[str, Any]) -> None:
    """``_SUCCESS`` (the run's counts and that folder's files) into each output folder, last."""
    counts = ("pipeline", "runner", "records_in", "output", "duplicate", "dead_letter", "late")
    for name, files in _output_files(outputs).items():
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
    runner = runners.prepare(options, streaming=streaming)
    local = runners.is_local(runner)
    waits = runners.waits_for_result(runner, options)
    if options.view_as(StandardOptions).streaming:
        check_streaming(values)
    else:
        check_batch(values)
    if local and runners.unbounded_source(options):
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
    # Once, before anything is written (a streaming run then writes windows over time); a
    # Dataflow --update replaces a running job that goes on writing into the same folders.
    if not options.view_as(GoogleCloudOptions).update:
        prepare_output_folders(
            outputs.values(),
            overwrite=bool(values.get("overwrite")),
            keep=[str(values[k]) for k in ("input", "dead_letter_input") if values.get(k)],
        )
    reset_drain()  # a drain asked for in an earlier run of this process does not stop this one
    # A run whose workers are this process shows progress lines while it runs (not with -q).
    in_process = local or runner == runners.PRISM_RUNNER
    with ProgressLines(period=progress_period() if in_process else None):
        result = p.run()
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
    summary = summarize(
        name, runner, Accounting.from_result(result), time.monotonic() - started, outputs
    )
    summary["state"] = state
    summary["engine"] = getattr(built, "engine", "record")
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
    _write_markers(outputs, summary)
    return summary


def run_file_pipeline(
    name: str,
    options_cls: type[HeadwaterOptions],
    validate: Callable[[dict[str, Any]], None],
    build: Callable[[beam.Pipeline, PipelineOptions], Any],
    argv: Sequence[str] | None,
    *,
    streaming: Callable[[dict[str, Any]], bool] | None = None,
) -> dict[str, Any]:
    """``run()`` of a pipeline that writes files: parse, validate, run, summarize.

    ``streaming(values)`` says whether the run streams (default: ``--replay_as_stream``).
    """
    options = PipelineOptions(argv)
    values = flag_values(options, options_cls)
    validate(values)
    streams = streaming(values) if streaming else bool(values.get("replay_as_stream"))
    return run_pipeline(
        name=name,
        options=options,
        values=values,
        build=build,
        outputs=file_outputs(values),
        streaming=streams,
    )
