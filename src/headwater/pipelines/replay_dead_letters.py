"""``replay_dead_letters``: push dead letters' original payloads back through a pipeline.

Reads dead-letter files (``--dead_letter_input``), keeps the stages named in
``--replay_stages`` (by default every stage but ``late``), and replays each payload, with its
origin, through ``windowed_metrics`` or ``stream_etl`` (``--target``, configured by that
pipeline's own flags) or onto ``--output_topic``. After the cause is fixed (a schema deployed, a
producer corrected) the records move into the output; those still broken become dead letters
again. The accounting of the replay run counts each replayed dead letter as one record in, so its
identity holds on its own; letters of other stages stay where they are and are counted as
``replay.skipped``.

The replay writes its dead letters to ``--dead_letter``, which must differ from the folder being
replayed (deterministic file names would otherwise overwrite the input).

>>> run(["--dead_letter_input=dlq/*.jsonl", "--target=windowed_metrics", "--output=out2/",
...      "--dead_letter=dlq2/"])  # doctest: +SKIP
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from headwater.core.records import SourceRecord
from headwater.io.deadletterio import ReadDeadLetters
from headwater.io.kafka import WriteToKafka
from headwater.pipelines import catalog, stream_etl, windowed_metrics
from headwater.pipelines.beam_options import HeadwaterOptions
from headwater.pipelines.config import RunConfig
from headwater.pipelines.options import check_required
from headwater.pipelines.running import run_pipeline
from headwater.pipelines.sinks import file_outputs
from headwater.transforms.accounting import CountAs

__all__ = ["DESCRIPTION", "Options", "ReplayPayloads", "build", "run"]

SPEC = catalog.spec("replay_dead_letters")
DESCRIPTION = SPEC.description


class Options(HeadwaterOptions):
    """The flags of ``replay_dead_letters``: its own, plus those of the target pipelines."""

    FLAG_NAMES = SPEC.flag_names
    REQUIRED = SPEC.required


class _SelectFn(beam.DoFn):
    def __init__(self, stages: frozenset[str]):
        self._stages = stages
        self._skipped = Metrics.counter("headwater", "replay.skipped")

    def process(self, letter):
        if letter.stage not in self._stages:
            self._skipped.inc()
            return
        yield SourceRecord(letter.payload, {**letter.origin, "replayed_from": letter.stage})


class ReplayPayloads(beam.PTransform):
    """Dead-letter files -> :class:`SourceRecord` payloads of the selected stages."""

    def __init__(self, pattern: str, *, stages: Sequence[str]):
        super().__init__()
        self._pattern = pattern
        self._stages = frozenset(s.strip() for s in stages if s.strip())
        if not self._stages:
            raise ValueError("--replay_stages names no stage")

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadDeadLetters" >> ReadDeadLetters(self._pattern)
            | "SelectStages" >> beam.ParDo(_SelectFn(self._stages))
        )


def _stages(values: Mapping[str, Any]) -> list[str]:
    return (values.get("replay_stages") or "").split(",")


def validate(values: Mapping[str, Any]) -> None:
    """Checks the replay's own flags and its target's; ``ValueError`` names the flag."""
    check_required(values, [f for f in Options.flags() if f.name == "dead_letter_input"])
    if values["target"] == "topic":
        if not values.get("output_topic") or not values.get("bootstrap_servers"):
            raise ValueError("--target=topic needs --output_topic and --bootstrap_servers")
        return
    target = windowed_metrics if values["target"] == "windowed_metrics" else stream_etl
    check_required(values, target.Options.flags())
    replayed = posixpath.dirname(values["dead_letter_input"].rstrip("/")) or "."
    if posixpath.normpath(values["dead_letter"]) == posixpath.normpath(replayed):
        raise ValueError(
            "--dead_letter must differ from the folder of --dead_letter_input "
            f"({replayed!r}): the replay would overwrite the letters it reads"
        )


def build(p: beam.Pipeline, options: PipelineOptions, *, config: RunConfig | None = None) -> Any:
    """Wires the replay into ``p``: the target pipeline with the dead letters as its source.

    ``config``: the flags as :func:`run` checked them (else read from ``options`` here).
    """
    config = RunConfig.given_or_read(config, options, Options, validate)
    values = config
    source = ReplayPayloads(values["dead_letter_input"], stages=_stages(values))
    if values["target"] == "topic":
        payloads = p | "Replay" >> source | "CountRecordsIn" >> CountAs("records_in")
        return (
            payloads
            | "CountOutput" >> CountAs("output")
            | "WriteTopic"
            >> WriteToKafka(
                bootstrap_servers=values["bootstrap_servers"],
                topic=values["output_topic"],
                config=config.kafka_config,
                value_fn=lambda r: r.payload,
            )
        )
    target = windowed_metrics if values["target"] == "windowed_metrics" else stream_etl
    return target.build(p, options, source=source)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parses ``argv``, validates, runs; returns the run summary."""
    options = PipelineOptions(argv)
    config = RunConfig.from_options(options, Options)
    validate(config)
    outputs = {} if config["target"] == "topic" else file_outputs(config)
    return run_pipeline(
        name="replay_dead_letters",
        options=options,
        values=config,
        build=lambda p, o: build(p, o, config=config),
        outputs=outputs,
        streaming=False,
    )
