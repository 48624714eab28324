"""``stream_etl``: clean records and write them as Parquet/Avro files per event-time window.

source (files | files replayed as a stream | Kafka) -> decode -> validate against an Avro schema
(optional) -> event time -> dedup by id -> window with late routing -> records written per
window and pane; dead letters and late records to their own folders.

A record that does not match the schema is a dead letter whose reason names the field
(``data.amount is 'x' of type <class 'str'> expected double``), so schema drift in a producer
shows up in the dead letters instead of in the output. Compatible evolution (an added field with
a default or a union with null) passes.

>>> run(["--input=data/*.jsonl", "--output=out/", "--dead_letter=dlq/"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import fastavro
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from fastavro.validation import validate as avro_validate

from headwater.pipelines import catalog
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.config import RunConfig, check_stream_shards, validate_source, value
from headwater.pipelines.options import check_required
from headwater.pipelines.running import run_file_pipeline
from headwater.pipelines.sinks import write_outcomes
from headwater.pipelines.sources import all_dead_letters, open_source
from headwater.transforms.process import ProcessEvents

__all__ = ["DESCRIPTION", "AvroSchemaCheck", "Options", "Outputs", "build", "run"]

SPEC = catalog.spec("stream_etl")
DESCRIPTION = SPEC.description


class Options(HeadwaterOptions):
    """The flags of ``stream_etl`` (``headwater run stream_etl --help``)."""

    FLAG_NAMES = SPEC.flag_names
    REQUIRED = SPEC.required


class Outputs(NamedTuple):
    """What :func:`build` wired: windowed records and the other outcomes."""

    records: beam.PCollection
    late: beam.PCollection
    duplicate: beam.PCollection
    dead_letter: beam.PCollection


def load_avro_schema(path: str) -> dict[str, Any]:
    """Reads an ``.avsc`` file (local or any FileSystems path); ValueError names the path."""
    try:
        with FileSystems.open(path) as handle:
            schema = json.loads(handle.read())
        fastavro.parse_schema(schema)
    except Exception as exc:
        raise ValueError(f"--avro_schema={path!r} is not a readable Avro schema: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError(f"--avro_schema={path!r} must be an Avro record schema")
    return schema


class AvroSchemaCheck:
    """A parse-time check: the record matches the Avro schema; the error names the field."""

    def __init__(self, schema: Mapping[str, Any]):
        self._schema = dict(schema)
        self._parsed: Any = None

    def __call__(self, record: Mapping[str, Any]) -> None:
        if self._parsed is None:
            self._parsed = fastavro.parse_schema(self._schema)
        try:
            avro_validate(record, self._parsed, raise_errors=True)
        except fastavro.validation.ValidationError as exc:
            reasons = "; ".join(str(e) for e in exc.errors) if exc.errors else str(exc)
            raise ValueError(
                f"does not match schema {self._schema.get('name')!r}: {reasons}"
            ) from None


def validate(values: Mapping[str, Any], *, source: Any = None, sink: Any = None) -> None:
    """Checks flags that depend on each other; ``ValueError`` names the flag."""
    check_required(values, Options.flags(), unless={"output": lambda _: sink is not None})
    validate_source(values, injected=source is not None)
    if values.get("avro_schema"):
        load_avro_schema(values["avro_schema"])


def _process(config: RunConfig) -> tuple[ProcessEvents, dict[str, Any] | None]:
    schema = load_avro_schema(config["avro_schema"]) if config.get("avro_schema") else None
    checks = [AvroSchemaCheck(schema)] if schema else []
    process = ProcessEvents(
        **config.windowed_args(), checks=checks, shards=value(config, "stream_shards")
    )
    return process, schema


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
    process, schema = _process(config)
    sourced = open_source(p, config, source)
    result = sourced.records | "ProcessEvents" >> process
    check_stream_shards(config, process)
    dead = all_dead_letters(sourced, result.dead_letter)
    avro_schema = schema if values["output_format"] == "avro" else None
    written = write_outcomes(
        result.main,
        dead,
        result.late,
        values,
        sink=sink,
        label="WriteRecords",
        schema=avro_schema,
        report_written=sourced.reports_outcomes,
    )
    written.commit(sourced, on_time=result.main, duplicate=result.duplicate, config=config)
    return Outputs(result.main, result.late, result.duplicate, dead)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv``, validates, runs; returns the run summary (or the job id)."""
    return run_file_pipeline("stream_etl", Options, validate, build, argv)
