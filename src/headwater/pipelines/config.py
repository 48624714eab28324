"""A run's configuration, built once from its flags: typed values, checks, what they make.

:class:`RunConfig` holds the typed flag values of one run (converted once, by
:func:`headwater.pipelines.options.flag_values`) and builds, once each, what the sources and the
middle of a pipeline need: the decoder, the event-time extractor, the dedup transform, the Kafka
client settings. The checks here (:func:`validate_source`, :func:`check_specs`,
:func:`check_streaming`, :func:`check_batch`) refuse a bad combination with one line naming
the flag. A flag's default is the one declared in :mod:`headwater.pipelines.options`
(:func:`value`), never written again here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from headwater.io.formats import Format, JsonFormat, make_format
from headwater.io.kafka import mask_setting
from headwater.pipelines.options import (
    FILE_SOURCE_FLAGS,
    KAFKA_CONNECTION_FLAGS,
    KAFKA_SOURCE_FLAGS,
    flag_values,
    given_flags,
    value,
)
from headwater.transforms.dedup import DeduplicateById
from headwater.windowing.durations import parse_duration
from headwater.windowing.eventtime import EventTimeExtractor

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

    from headwater.pipelines.beam_options import HeadwaterOptions

__all__ = [
    "RunConfig",
    "check_batch",
    "check_specs",
    "check_streaming",
    "decoder",
    "dedup_transform",
    "event_time_extractor",
    "kafka_config",
    "kafka_start",
    "validate_source",
    "value",
]


@dataclasses.dataclass(frozen=True)
class RunConfig(Mapping[str, Any]):
    """One run's typed flag values (a read-only mapping), and what they make, built once.

    Made by :meth:`from_options` (the flags converted and validated once per run) and passed
    along to ``build``, the sources and the sinks, so the decoder, the event-time extractor and
    the dedup transform are each built once however many steps ask for them.
    """

    settings: Mapping[str, Any]  # the typed value of each of the pipeline's flags

    @classmethod
    def from_options(
        cls, options: PipelineOptions, options_cls: type[HeadwaterOptions]
    ) -> RunConfig:
        """The typed values of ``options_cls``'s flags in ``options``; ``ValueError`` names one."""
        return cls(flag_values(options, options_cls))

    def __getitem__(self, name: str) -> Any:
        return self.settings[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.settings)

    def __len__(self) -> int:
        return len(self.settings)

    @classmethod
    def given_or_read(
        cls,
        config: RunConfig | None,
        options: PipelineOptions,
        options_cls: type[HeadwaterOptions],
        validate: Callable[[RunConfig], None],
    ) -> RunConfig:
        """``config`` as ``run()`` made it, else read from ``options`` and ``validate``-d."""
        if config is not None:
            return config
        config = cls.from_options(options, options_cls)
        validate(config)
        return config

    @functools.cached_property
    def decoder(self) -> Format:
        """The value format records are decoded with (:func:`decoder`)."""
        return decoder(self.settings)

    @functools.cached_property
    def event_time(self) -> EventTimeExtractor | None:
        """The event-time extractor, or ``None`` for the Kafka record timestamp."""
        return event_time_extractor(self.settings)

    @functools.cached_property
    def dedup(self) -> DeduplicateById | None:
        """Deduplication by ``--id_field``, or ``None``."""
        return dedup_transform(self.settings)

    def windowed_args(self) -> dict[str, Any]:
        """Keyword arguments of the windowed middle (``ProcessEvents``, the metrics engines)."""
        return {
            "decode": self.decoder,
            "event_time": self.event_time,
            "dedup": self.dedup,
            "window": self["window"],
            "trigger": self.get("trigger"),
            "allowed_lateness": value(self, "allowed_lateness"),
            "max_record_bytes": self.get("max_record_bytes"),
        }

    @property
    def allowed_lateness_s(self) -> float:
        """``--allowed_lateness`` in seconds."""
        return parse_duration(value(self, "allowed_lateness"), name="allowed_lateness")

    @functools.cached_property
    def kafka_config(self) -> dict[str, str]:
        """``--kafka_config`` as a librdkafka dict."""
        return kafka_config(self.settings)


def _flag_error(flag: str, exc: Exception) -> ValueError:
    return ValueError(f"--{flag}: {exc}")


def kafka_config(values: Mapping[str, Any]) -> dict[str, str]:
    """``--kafka_config KEY=VALUE`` (repeated) as a librdkafka dict."""
    if isinstance(values, RunConfig):
        return values.kafka_config
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
    if isinstance(values, RunConfig):
        return values.decoder
    name = value(values, "format")
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
    if isinstance(values, RunConfig):
        return values.event_time
    field = values.get("event_time_field")
    if not field:
        return None
    try:
        return EventTimeExtractor(field=field, unit=value(values, "event_time_unit"))
    except ValueError as exc:
        raise _flag_error("event_time_field", exc) from None


def dedup_transform(values: Mapping[str, Any]) -> DeduplicateById | None:
    """Deduplication by ``--id_field``, or ``None`` when the flag is empty."""
    if isinstance(values, RunConfig):
        return values.dedup
    if not values.get("id_field"):
        return None
    try:
        return DeduplicateById(
            id_field=values["id_field"],
            horizon=value(values, "dedup_horizon"),
            keep=value(values, "dedup_keep"),
            time_domain=value(values, "dedup_time_domain"),
            shards=value(values, "stream_shards"),
        )
    except ValueError as exc:
        raise _flag_error("id_field", exc) from None


def check_stream_shards(values: Mapping[str, Any], *built: Any) -> None:
    """Refuses ``--stream_shards`` (set, to other than its default) when none of the
    ``built`` transforms (applied already: ``ProcessEvents``, ``ComputeWindowedMetrics`` or a
    columnar engine) spread a step over shards: the run is a batch run, takes a columnar
    engine, or streams without event-time dedup keeping the first copy and without windows."""
    if not given_flags(values, ["stream_shards"]) or any(
        getattr(t, "sharded", False) for t in built
    ):
        return
    shards = values["stream_shards"]
    raise ValueError(
        f"--stream_shards={shards} applies to the stateful steps of a stream (event-time dedup "
        "keeping the first copy, late routing), and this run has none: it is a batch run, "
        "takes a columnar engine, or streams without such dedup and without windows"
    )


def validate_source(values: Mapping[str, Any], *, injected: bool, kafka_sink: bool = False) -> None:
    """Cross-field checks of the source flags; ``ValueError`` names the flag.

    A flag of the other kind of source (``--topic`` with ``--source=files``, ``--input`` with
    ``--source=kafka``) is refused rather than ignored; so are the Kafka connection flags with
    files unless the pipeline writes to Kafka (``kafka_sink``). The spec-valued flags are
    checked too (:func:`check_specs`), with an injected source as well.
    """
    if injected:
        check_specs(values)
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
        kafka_start(value(values, "start"))
    if fmt == "confluent-avro" and not values.get("schema_registry_url"):
        raise ValueError("--schema_registry_url is required with --format=confluent-avro")
    kafka_config(values)  # KEY=VALUE syntax
    check_specs(values)


def check_specs(values: Mapping[str, Any]) -> None:
    """Parses the spec-valued flags that are set; ``ValueError`` starts with the flag name."""
    from headwater.transforms.aggregate import parse_metrics
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
        horizon = parse_duration(value(values, "dedup_horizon"))
        lateness = parse_duration(value(values, "allowed_lateness"))
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


def kafka_start(text: str) -> Any:
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
