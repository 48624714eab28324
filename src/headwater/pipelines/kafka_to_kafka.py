"""``kafka_to_kafka``: deduplicate records from Kafka (or files) and route them to a topic.

source -> decode -> event time -> dedup by id -> ``--output_topic`` (keyed by ``--key_field``
when the record has it); every record that cannot be processed goes to ``--dlq_topic`` as a
dead-letter envelope (JSON, keyed by stage) with its original bytes and coordinates. Nothing is
windowed, so nothing is late. Delivery: the sink's idempotent producer fails the bundle on any
delivery error, so the runner retries; with dedup in front, a retried bundle adds no duplicate
*ids* within the horizon (at-least-once delivery of each kept record to the topic).

Records are re-encoded in the input format for ``json`` and ``avro`` (with ``--avro_schema``);
``confluent-avro`` input is written as JSON.

>>> run(["--source=kafka", "--bootstrap_servers=localhost:9092", "--topic=in",
...      "--output_topic=out", "--dlq_topic=dlq", "--stop_at_end"])  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.io.formats import AvroFormat, Format, JsonFormat
from headwater.io.kafka import WriteToKafka
from headwater.pipelines import catalog
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.config import RunConfig, check_stream_shards, validate_source
from headwater.pipelines.options import check_required
from headwater.pipelines.running import run_pipeline
from headwater.pipelines.sources import all_dead_letters, open_source
from headwater.transforms.keys import key_text
from headwater.transforms.process import ProcessEvents

__all__ = ["DESCRIPTION", "Options", "Outputs", "build", "run"]

SPEC = catalog.spec("kafka_to_kafka")
DESCRIPTION = SPEC.description


class Options(HeadwaterOptions):
    """The flags of ``kafka_to_kafka`` (``headwater run kafka_to_kafka --help``)."""

    FLAG_NAMES = SPEC.flag_names
    REQUIRED = SPEC.required


class Outputs(NamedTuple):
    """What :func:`build` wired."""

    records: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection


class _KeyOf:
    def __init__(self, field: str | None):
        self._parts = tuple(field.split(".")) if field else ()

    def __call__(self, record: Mapping[str, Any]) -> bytes | None:
        value: Any = record
        for part in self._parts:
            if not isinstance(value, Mapping) or part not in value:
                return None
            value = value[part]
        if value is None or not self._parts:
            return None
        try:
            return key_text(value).encode()  # spelt as grouping keys and ids are
        except ValueError:  # no usable key (bool, NaN, empty ...): the producer picks a partition
            return None


def _dead_letter_key(letter: Any) -> bytes:
    return str(letter.stage).encode()


def _dead_letter_value(letter: Any) -> bytes:
    return letter.to_json().encode()


def output_format(values: Mapping[str, Any]) -> Format:
    """How records are encoded on the output topic."""
    if values.get("format") == "avro" and values.get("avro_schema"):
        return AvroFormat(schema_path=values["avro_schema"])
    return JsonFormat()


def validate(values: Mapping[str, Any], *, source: Any = None, sink: Any = None) -> None:
    """Checks flags that depend on each other; ``ValueError`` names the flag."""
    check_required(
        values,
        Options.flags(),
        unless={
            "output_topic": lambda _: sink is not None,
            "bootstrap_servers": lambda _: sink is not None and source is not None,
        },
    )
    validate_source(values, injected=source is not None, kafka_sink=True)


def build(
    p: beam.Pipeline,
    options: PipelineOptions,
    *,
    source: beam.PTransform | None = None,
    sink: beam.PTransform | None = None,
    config: RunConfig | None = None,
) -> Outputs:
    """Wires the pipeline into ``p``; ``source``/``sink`` replace the Kafka IO in tests.

    ``config``: the flags as :func:`run` checked them (else read from ``options`` here).
    """
    config = RunConfig.given_or_read(
        config, options, Options, lambda c: validate(c, source=source, sink=sink)
    )
    values = config
    process = ProcessEvents(
        decode=config.decoder,
        event_time=config.event_time,
        dedup=config.dedup,
        window=None,
        allowed_lateness=0,
        max_record_bytes=values.get("max_record_bytes"),
    )
    sourced = open_source(p, config, source)
    result = sourced.records | "ProcessEvents" >> process
    check_stream_shards(config, process)
    dead = all_dead_letters(sourced, result.dead_letter)
    # A streaming read commits as the records are delivered: the writers report them.
    report = sourced.reports_outcomes
    final = [result.duplicate]  # nothing is written for a duplicate
    if sink is not None:
        written = result.main | "Sink" >> sink
        final.append(result.main)  # (an injected sink's writes are not awaited)
    else:
        written = result.main | "WriteOutputTopic" >> WriteToKafka(
            bootstrap_servers=values["bootstrap_servers"],
            topic=values["output_topic"],
            config=config.kafka_config,
            key_fn=_KeyOf(values.get("key_field")),
            format=output_format(values),
            report_written=report,
        )
    letters = []
    if values.get("dlq_topic") and values.get("bootstrap_servers"):
        letters.append(
            dead
            | "WriteDlqTopic"
            >> WriteToKafka(
                bootstrap_servers=values["bootstrap_servers"],
                topic=values["dlq_topic"],
                config=config.kafka_config,
                key_fn=_dead_letter_key,
                value_fn=_dead_letter_value,
                report_written=report,
            )
        )
    else:
        final.append(dead)  # counted, written nowhere
    outputs = [s for s in (written, *letters) if isinstance(s, beam.PCollection)]
    reports = ([] if sink is not None else [written]) + letters
    sourced.commit(outputs, reports=reports, final=final)
    return Outputs(result.main, result.duplicate, dead)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv``, validates, runs; returns the run summary (or the job id)."""
    options = PipelineOptions(argv)
    config = RunConfig.from_options(options, Options)
    validate(config)
    return run_pipeline(
        name="kafka_to_kafka",
        options=options,
        values=config,
        build=lambda p, o: build(p, o, config=config),
        outputs={},
        streaming=False,
    )
