"""Pipeline flags, declared once: argparse, ``--help``, validation and template metadata.

Over 600 lines: it is the one table of every flag (name, type, default, help, template
metadata); a default is written here and nowhere else, so the table is not split.

Every ready-made pipeline lists the :class:`Flag` names it uses
(:mod:`headwater.pipelines.catalog`, from the groups declared here); the declaration carries the
help text, type, choices, default, the regex a Flex Template parameter must match, and whether
the pipeline cannot run without it. A pipeline's ``Options`` (a Beam ``PipelineOptions``,
:mod:`headwater.pipelines.beam_options`) registers them with Beam's parser,
:func:`check_required` enforces them before a graph is built, and :mod:`headwater.templates`
turns the same declarations into ``metadata.json`` -- so the CLI and the template can never
disagree. A flag's default is written once, here; code that may lack a flag's value reads it
with :func:`value`.

This module is plain data: it does not import Apache Beam (``headwater --help``, ``headwater
pipelines`` and ``headwater run PIPELINE --help`` read it without paying Beam's import).
``HeadwaterOptions`` is still importable from here; it is loaded on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from headwater.core.shards import DEFAULT_SHARDS, shard_count_problem
from headwater.io.kafka import mask_setting
from headwater.pipelines.step_names import check_mapping_is_json

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.pipelines.beam_options import HeadwaterOptions

__all__ = [
    "FILE_OUTPUT_FLAGS",
    "FILE_SOURCE_FLAGS",
    "FLAGS",
    "Flag",
    "HeadwaterOptions",
    "KAFKA_CONNECTION_FLAGS",
    "KAFKA_SOURCE_FLAGS",
    "LOCAL_FLAGS",
    "MetricsAddress",
    "PIPELINE_SOURCE_FLAGS",
    "RUN_FLAGS",
    "check_argv",
    "check_required",
    "flag_values",
    "given_flags",
    "value",
]

_DURATION_RE = r"^\d+(\.\d+)?(us|ms|s|m|h|d)$"
_POSITIVE_INT_RE = r"^[1-9]\d*$"


def _duration(text: str) -> str:
    from headwater.windowing.durations import parse_duration  # imports Beam: only on a run

    parse_duration(text, name="duration")  # raises ValueError naming the bad text
    return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text!r} must be a positive integer")
    return value


def _stream_shards(text: str) -> int:
    value = int(text) if str(text).isdigit() else text
    problem = shard_count_problem(value)
    if problem is not None:
        raise ValueError(f"{text!r} {problem}")
    return int(value)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text!r} must be a fraction between 0 and 1, e.g. 0.01")
    return value


class MetricsAddress(NamedTuple):
    """Where ``--metrics_port`` serves: ``HOST:PORT`` (``N`` alone is ``127.0.0.1:N``)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _metrics_address(text: str) -> MetricsAddress:
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535 or not host or " " in host:
        raise ValueError(
            "expected a port number N from 1 to 65535 (served on 127.0.0.1:N) or HOST:N "
            "(e.g. 0.0.0.0:9464 to serve on every interface)"
        )
    return MetricsAddress(host, int(port))


def _bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One pipeline flag: ``--name`` on the command line, ``name`` in a template."""

    name: str
    label: str
    help: str
    type: Callable[[str], Any] = str
    default: Any = None
    choices: tuple[str, ...] | None = None
    regex: str | None = None
    required: bool = False
    repeated: bool = False
    boolean: bool = False
    local_only: bool = False  # a local-run convenience, never a Flex Template parameter

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Registers the flag (once) with an argparse parser.

        Values are parsed as strings and converted by :meth:`convert` (through
        :func:`flag_values`), so a bad value gives one line naming the flag instead of
        argparse's usage dump.
        """
        option = f"--{self.name}"
        if option in getattr(parser, "_option_string_actions", {}):
            return
        text = self.help
        if self.choices:
            text += f" One of: {', '.join(self.choices)}."
        if self.required:
            text += " (required)"
        if self.default not in (None, False, ()):
            text += f" (default: {self.default})"
        if self.boolean:
            parser.add_argument(
                option,
                dest=self.name,
                nargs="?",
                const="true",
                default="true" if self.default else "false",
                help=text,
            )
        elif self.repeated:
            parser.add_argument(
                option, dest=self.name, action="append", default=None, help=text + " (repeatable)"
            )
        else:
            default = None if self.default is None else str(self.default)
            parser.add_argument(option, dest=self.name, default=default, help=text)

    def convert(self, raw: Any) -> Any:
        """The typed value of ``raw``; ``ValueError`` starting with ``--name``."""
        if raw is None:
            return None
        try:
            if self.boolean:
                return _bool(raw)
            if self.repeated:
                return [self.type(item) for item in raw]
            value = self.type(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"--{self.name}={raw!r}: {exc}") from None
        if self.choices and value not in self.choices:
            raise ValueError(f"--{self.name}={raw!r} is not one of {', '.join(self.choices)}")
        return value


_SOURCE = "Source"
FLAGS: dict[str, Flag] = {
    flag.name: flag
    for flag in [
        # --- source -------------------------------------------------------------------------
        Flag(
            "source",
            "Source kind",
            "Where records come from: files (glob of JSON lines, Avro or "
            "Parquet) or kafka (a bounded or unbounded read of a topic).",
            default="files",
            choices=("files", "kafka"),
        ),
        Flag(
            "input",
            "Input files",
            "Glob of input files for --source=files, e.g. 'data/*.jsonl' "
            "or gs://bucket/events/*.avro.",
        ),
        Flag(
            "format",
            "Record format",
            "How records are encoded: json, avro (binary with "
            "--avro_schema; Avro container files for --source=files), parquet (files only) or "
            "confluent-avro (Schema Registry wire format).",
            default="json",
            choices=("json", "avro", "parquet", "confluent-avro"),
        ),
        Flag(
            "avro_schema",
            "Avro schema file",
            "Path of the Avro schema (.avsc) for "
            "--format=avro on Kafka, and for validating records in stream_etl.",
        ),
        Flag(
            "schema_registry_url",
            "Schema Registry URL",
            "Schema Registry for --format=confluent-avro, e.g. https://registry:8081.",
        ),
        Flag(
            "bootstrap_servers",
            "Kafka bootstrap servers",
            "Kafka brokers as HOST:PORT[,HOST:PORT] for --source=kafka.",
            regex=r"^[^\s,]+:\d+(,[^\s,]+:\d+)*$",
        ),
        Flag(
            "topic",
            "Kafka topic",
            "Topic to read for --source=kafka (comma-separated for several).",
        ),
        Flag(
            "start",
            "Kafka start position",
            "Where a Kafka read starts: earliest, latest, "
            "committed (the consumer group's offsets) or an ISO-8601 instant with zone.",
            default="earliest",
            regex=r"^(earliest|latest|committed|\d{4}-\d\d-\d\dT.+)$",
        ),
        Flag(
            "stop_at_end",
            "Stop at end",
            "Bounded Kafka read: stop at the partition ends seen at start (a batch job).",
            boolean=True,
        ),
        Flag(
            "max_records",
            "Max records",
            "Bounded Kafka read: stop after this many records in total, across all partitions "
            "(spread round-robin over them).",
            type=_positive_int,
            regex=_POSITIVE_INT_RE,
        ),
        Flag(
            "group_id",
            "Kafka consumer group",
            "Consumer group for --start=committed and for committing offsets.",
        ),
        Flag(
            "commit_offsets",
            "Commit offsets",
            "Commit read offsets to the consumer group when a "
            "bundle is finalized (after its output is durable).",
            boolean=True,
        ),
        Flag(
            "max_duration",
            "Max duration",
            "Kafka read: stop claiming records this long after the job starts, e.g. 10m. In "
            "a streaming run the job then drains: open windows close and are written, and the "
            "run ends with its summary.",
            type=_duration,
            regex=_DURATION_RE,
        ),
        Flag(
            "idle_timeout",
            "Idle timeout",
            "Kafka read: a partition with no new record for this long stops holding the "
            "watermark back (it advances with the clock), e.g. 30s. Default: never idle.",
            type=_duration,
            regex=_DURATION_RE,
        ),
        Flag(
            "kafka_config",
            "librdkafka setting",
            "A librdkafka setting as KEY=VALUE passed "
            "through to the client (e.g. security.protocol=SASL_SSL). Secret values are never "
            "logged.",
            repeated=True,
            regex=r"^[a-z0-9._]+=.*$",
        ),
        Flag(
            "max_record_bytes",
            "Max record size",
            "Records larger than this many bytes become dead letters instead of being decoded.",
            type=_positive_int,
            default=8 * 1024 * 1024,
            regex=_POSITIVE_INT_RE,
        ),
        # --- event time ---------------------------------------------------------------------
        Flag(
            "event_time_field",
            "Event-time field",
            "Field (dotted path) holding the event time; empty to use the Kafka record timestamp.",
            default="event_time",
        ),
        Flag(
            "event_time_unit",
            "Event-time unit",
            "What the event-time field holds: epoch s, ms, us or an ISO-8601 string with zone.",
            default="ms",
            choices=("s", "ms", "us", "iso"),
        ),
        # --- dedup --------------------------------------------------------------------------
        Flag(
            "id_field",
            "Id field",
            "Field (dotted path) identifying a record for deduplication; "
            "empty to skip deduplication.",
            default="event_id",
        ),
        Flag(
            "dedup_horizon",
            "Dedup horizon",
            "How long a record id is remembered after its newest copy (e.g. 10m).",
            type=_duration,
            default="10m",
            regex=_DURATION_RE,
        ),
        Flag(
            "dedup_keep",
            "Keep copy",
            "Which copy of a duplicated record is kept.",
            default="first",
            choices=("first", "last"),
        ),
        Flag(
            "dedup_time_domain",
            "Dedup time domain",
            "Whether the dedup horizon is measured in event time or processing time.",
            default="event",
            choices=("event", "processing"),
        ),
        Flag(
            "stream_shards",
            "Stream shards",
            "Keys a stream's stateful steps (event-time dedup keeping the first copy, late "
            "routing) are spread over: each runs on at most this many workers at once. Their "
            "state is kept per shard, so a running job changes it only by a drain and a restart. "
            "Refused when the run has no such step (a batch run, a columnar engine).",
            type=_stream_shards,
            default=DEFAULT_SHARDS,
            regex=_POSITIVE_INT_RE,
        ),
        # --- windowing ----------------------------------------------------------------------
        Flag(
            "window",
            "Window",
            "Window spec: fixed:60s, sliding:10m/1m, session:5m or "
            "calendar:day@Europe/Berlin (day, week or month in an IANA zone).",
            default="fixed:60s",
            regex=r"^(fixed|sliding|session|calendar):.+$",
        ),
        Flag(
            "trigger",
            "Trigger",
            "When panes are emitted: on_time, early:10s (early panes every "
            "10 s), with ,accumulating or ,discarding; late panes are always emitted for records "
            "inside the allowed lateness.",
            default="on_time",
            regex=r"^(on_time|early:[^,]+|late|accumulating|discarding)(,(on_time|early:[^,]+|"
            r"late|accumulating|discarding))*$",
        ),
        Flag(
            "allowed_lateness",
            "Allowed lateness",
            "How long after a window's end records are "
            "still added in late panes; later records go to the late output.",
            type=_duration,
            default="0s",
            regex=_DURATION_RE,
        ),
        # --- metrics ------------------------------------------------------------------------
        Flag(
            "key_field",
            "Key field",
            "Field (dotted path) whose value groups the metrics.",
            default="user_id",
        ),
        Flag(
            "metrics",
            "Metrics",
            "Metrics per key and window: count, sum:F, min:F, max:F, mean:F, comma-separated.",
            default="count,sum:amount",
            regex=r"^(count|(sum|min|max|mean):[\w.-]+)(,(count|(sum|min|max|mean):[\w.-]+))*$",
        ),
        # --- outputs ------------------------------------------------------------------------
        Flag(
            "output",
            "Output folder",
            "Folder (local or gs://) for the output files, one folder per window.",
            required=True,
        ),
        Flag(
            "output_format",
            "Output format",
            "File format of the output.",
            default="parquet",
            choices=("parquet", "avro"),
        ),
        Flag(
            "output_shards",
            "Output shards",
            "Files per window and pane.",
            type=_positive_int,
            default=1,
            regex=_POSITIVE_INT_RE,
        ),
        Flag(
            "columnar_shards",
            "Columnar shards",
            "Run the columnar batch path (files in batch) in parallel, its dedup spread over N "
            "id-hash shards. It runs in parallel with 8 shards by default on runners with remote "
            "workers (Dataflow, Flink, a portable runner); local runs keep the one-step path "
            "unless this flag asks for it (it also sets the shards). Refused when the run does "
            "not take the columnar batch path.",
            type=_positive_int,
            regex=_POSITIVE_INT_RE,
        ),
        Flag(
            "dead_letter",
            "Dead-letter folder",
            "Folder for dead letters (records that could not "
            "be processed, with the reason and the original bytes).",
            required=True,
        ),
        Flag(
            "dead_letter_format",
            "Dead-letter format",
            "File format of dead letters.",
            default="json",
            choices=("json", "avro"),
        ),
        Flag(
            "late_output",
            "Late-data folder",
            "Folder for late records (with window and "
            "lateness_ms); defaults to <dead_letter>/late.",
        ),
        Flag(
            "overwrite",
            "Overwrite outputs",
            "Delete the contents of the output, dead-letter and late folders at start. Without "
            "it a run into a folder that holds any file is refused, so files of an earlier run "
            "never mix with this one's.",
            boolean=True,
        ),
        # --- local runs ---------------------------------------------------------------------
        Flag(
            "replay_as_stream",
            "Replay as stream",
            "Run a file source as a stream on the local "
            "runner (TestStream): file order, watermark = max event time - max_out_of_orderness.",
            boolean=True,
            local_only=True,
        ),
        Flag(
            "replay_engine",
            "Replay engine",
            "How --replay_as_stream runs: columnar (Arrow blocks in one step on the batch runner, "
            "same rows, late records and counters as the streaming runner), teststream (Beam's "
            "streaming DirectRunner, record by record), or auto (columnar when the configuration "
            "allows it: JSON, Parquet or Avro files, fixed windows, on-time trigger, no allowed "
            "lateness, keep-first dedup by a top-level field).",
            choices=("auto", "columnar", "teststream"),
            default="auto",
            local_only=True,
        ),
        Flag(
            "max_out_of_orderness",
            "Max out-of-orderness",
            "Watermark delay for stream replay and Kafka reads.",
            type=_duration,
            default="5s",
            regex=_DURATION_RE,
        ),
        Flag(
            "summary_json",
            "Summary JSON",
            "Write the run's accounting summary to this file.",
            local_only=True,
        ),
        Flag(
            "report",
            "HTML report",
            "Write a self-contained HTML report of the run to this file.",
            local_only=True,
        ),
        # --- every run ----------------------------------------------------------------------
        Flag(
            "max_dead_letter_rate",
            "Max dead-letter rate",
            "Fail the run (exit status 3) when more than this fraction of the records in became "
            "dead letters, e.g. 0.01. Checked when the run waits for its result (local runs, "
            "batch jobs on Flink or the portable runner). Default: no limit; a run with records "
            "in and no output fails whatever this says.",
            type=_fraction,
            regex=r"^(0(\.\d+)?|1(\.0+)?)$",
        ),
        Flag(
            "metrics_port",
            "Metrics port",
            "Serve the run's metrics (the accounting counters, freshness, watermark lag, "
            "consumer lag, throughput: docs/operations.md) in the Prometheus text format on "
            "http://127.0.0.1:N/metrics while the run runs; HOST:N serves on HOST instead. The "
            "command then stays attached to the job until it ends. For runs that report metrics "
            "while they run (Prism, Flink, the portable runner, the streaming DirectRunner); a "
            "Dataflow job keeps them as Beam metrics (Cloud Monitoring).",
            type=_metrics_address,
            regex=r"^([^\s:]+:|\[[0-9a-fA-F:]+\]:)?\d{1,5}$",
            local_only=True,
        ),
        # --- kafka sink ---------------------------------------------------------------------
        Flag("output_topic", "Output topic", "Kafka topic for the output records.", required=True),
        Flag(
            "dlq_topic",
            "Dead-letter topic",
            "Kafka topic for dead letters and late records.",
            required=True,
        ),
        # --- dead-letter replay -------------------------------------------------------------
        Flag(
            "dead_letter_input",
            "Dead letters to replay",
            "Glob of dead-letter files to replay.",
            required=True,
        ),
        Flag(
            "target",
            "Replay target",
            "Where replayed payloads go: through windowed_metrics or stream_etl (configured by "
            "their own flags), or onto --output_topic.",
            default="windowed_metrics",
            choices=("windowed_metrics", "stream_etl", "topic"),
        ),
        Flag(
            "replay_stages",
            "Stages to replay",
            "Comma-separated dead-letter stages to replay (default: all but late).",
            default="decode,event_time,validate,dedup,aggregate",
        ),
    ]
}


#: Flags every pipeline takes (checks of the run as a whole).
RUN_FLAGS = ("max_dead_letter_rate", "metrics_port")


def __getattr__(name: str) -> Any:
    """``HeadwaterOptions`` (a Beam class) is imported on first use, not with this module."""
    if name == "HeadwaterOptions":
        from headwater.pipelines.beam_options import HeadwaterOptions

        return HeadwaterOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flag_values(options: PipelineOptions, cls: type[HeadwaterOptions]) -> dict[str, Any]:
    """The typed values of ``cls``'s flags in ``options``; ``ValueError`` names a bad flag."""
    view = options.view_as(cls)
    return {flag.name: flag.convert(getattr(view, flag.name, None)) for flag in cls.flags()}


def check_required(
    values: Mapping[str, Any],
    flags: Iterable[Flag],
    *,
    unless: Mapping[str, Callable[[Mapping[str, Any]], bool]] = {},
) -> None:
    """Raises ``ValueError`` naming the first required flag that has no value.

    ``unless`` maps a flag name to a predicate that makes it optional (e.g. ``--output`` when a
    sink is injected).
    """
    for flag in flags:
        if not flag.required or values.get(flag.name) not in (None, "", []):
            continue
        predicate = unless.get(flag.name)
        if predicate is not None and predicate(values):
            continue
        raise ValueError(f"--{flag.name} is required: {flag.help}")


#: Flags that mean something only for one kind of source (refused with the other one).
FILE_SOURCE_FLAGS = ("input", "replay_as_stream", "replay_engine")
KAFKA_SOURCE_FLAGS = (
    "topic",
    "start",
    "stop_at_end",
    "max_records",
    "max_duration",
    "idle_timeout",
    "group_id",
    "commit_offsets",
)
#: Kafka connection flags: for a Kafka source or a Kafka sink.
KAFKA_CONNECTION_FLAGS = ("bootstrap_servers", "kafka_config")

#: The flag groups the pipelines are made of (:mod:`headwater.pipelines.catalog`).
#: Source, decoding, event time, dedup and windowing of a pipeline that reads files or Kafka.
PIPELINE_SOURCE_FLAGS = (
    "source",
    "input",
    "format",
    "avro_schema",
    "schema_registry_url",
    "bootstrap_servers",
    *KAFKA_SOURCE_FLAGS,
    "kafka_config",
    "max_record_bytes",
    "event_time_field",
    "event_time_unit",
    "id_field",
    "dedup_horizon",
    "dedup_keep",
    "dedup_time_domain",
    "stream_shards",
    "window",
    "trigger",
    "allowed_lateness",
)
#: Where a file-writing pipeline puts its outcomes.
FILE_OUTPUT_FLAGS = (
    "output",
    "output_format",
    "output_shards",
    "dead_letter",
    "dead_letter_format",
    "late_output",
    "overwrite",
)
#: Local-run conveniences of a file-writing pipeline.
LOCAL_FLAGS = (
    "replay_as_stream",
    "replay_engine",
    "max_out_of_orderness",
    "summary_json",
    "report",
)


def value(values: Mapping[str, Any], name: str) -> Any:
    """The typed value of flag ``name`` in ``values``: as given, else its declared default."""
    given = values.get(name)
    if given is not None:
        return given
    return FLAGS[name].convert(FLAGS[name].default)


def given_flags(values: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """Those of ``names`` whose value in ``values`` is set and differs from the flag's default."""
    given = []
    for name in names:
        value = values.get(name)
        if value in (None, "", [], False):
            continue
        flag = FLAGS.get(name)
        if flag is not None and flag.default is not None and value == flag.convert(flag.default):
            continue
        given.append(name)
    return given


def _beam_parser() -> argparse.ArgumentParser:
    """A parser that knows every flag any ``PipelineOptions`` class registers, as Beam's has."""
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    class _StrictParser(_BeamArgumentParser):
        def error(self, message: str) -> NoReturn:  # argparse would print usage and exit
            raise ValueError(message)

    parser = _StrictParser(allow_abbrev=False)
    classes: dict[str, type[PipelineOptions]] = {}
    for cls in PipelineOptions.__subclasses__():  # Beam's own registry of option classes
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


# The options of the headwater command itself (cli._parser), given before ``run``.
_HEADWATER_OPTIONS = ("-q", "--quiet", "-v", "--verbose", "--progress")


def check_argv(argv: Sequence[str], cls: type[HeadwaterOptions], *, pipeline: str) -> None:
    """Refuses what Beam's parser would silently drop from a pipeline's command line.

    ``ValueError`` names the first offending argument: an unknown flag (with the closest known
    one), a stray word (an unquoted glob the shell expanded after ``--input``), or a headwater
    flag that ``pipeline`` does not take. Flag values are never echoed (they may be secrets).
    Every flag of a Beam ``PipelineOptions`` class passes.
    """
    argv = list(argv)
    check_mapping_is_json(argv)  # Beam's own message would be "invalid loads value"
    parser = _beam_parser()
    known = sorted({o for action in parser._actions for o in action.option_strings})
    own = [f"--{name}" for name in cls.FLAG_NAMES]
    _, unknown = parser.parse_known_args(argv)
    for arg in unknown:
        if arg == "--":
            break
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, own, n=1) or difflib.get_close_matches(
                name, known, n=1
            )
            hint = f"; did you mean {close[0]}?" if close else ""
            if name in _HEADWATER_OPTIONS:
                spelt = f"{name}=SECONDS" if name == "--progress" else name
                hint = (
                    f"; {name} is an option of headwater itself: put it before the command "
                    f"(headwater {spelt} run {pipeline} ...)"
                )
            raise ValueError(
                f"unknown flag {name} for {pipeline}{hint} (headwater run {pipeline} --help "
                "lists its flags)"
            )
        raise ValueError(_stray(arg, argv))
    for arg in argv:
        if arg == "--":
            break
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if name in FLAGS and name not in cls.FLAG_NAMES:
            raise ValueError(
                f"--{name} does not apply to {pipeline} (headwater run {pipeline} --help lists "
                "its flags)"
            )


def _stray(arg: str, argv: list[str]) -> str:
    """The message for a word that is no flag and no flag's value."""
    index = argv.index(arg)
    flag = next((a for a in reversed(argv[:index]) if a.startswith("--")), "")
    name = flag.split("=", 1)[0]
    if name in ("--input", "--dead_letter_input"):
        return (
            f"unexpected argument {arg!r} after {name}: did the shell expand an unquoted glob? "
            f"Quote it so the pipeline reads every file, e.g. {name}='data/*.jsonl'"
        )
    shown = mask_setting(arg) if name == "--kafka_config" else repr(arg)
    return f"unexpected argument {shown}: flags are given as --name=value"
