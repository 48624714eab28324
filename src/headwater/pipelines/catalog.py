"""The ready-made pipelines as plain data: name, description and flags of each.

What the command line lists (``headwater pipelines``), prints (``headwater run PIPELINE
--help``) and what template metadata is generated from, without importing Apache Beam. Each
pipeline module's ``Options`` class is built from its :class:`PipelineSpec` here, so the two
cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses

from headwater.pipelines.options import (
    FILE_OUTPUT_FLAGS,
    FILE_SOURCE_FLAGS,
    FLAGS,
    KAFKA_SOURCE_FLAGS,
    LOCAL_FLAGS,
    PIPELINE_SOURCE_FLAGS,
    RUN_FLAGS,
    Flag,
)

__all__ = ["SPECS", "PipelineSpec", "spec"]


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
    """One pipeline: its name, a one-line description and the names of its flags."""

    name: str
    description: str
    flag_names: tuple[str, ...]
    required: tuple[str, ...] = ()  # flags this pipeline needs that are optional elsewhere

    def __post_init__(self) -> None:
        unknown = [n for n in self.flag_names if n not in FLAGS]
        if unknown:
            raise ValueError(f"pipeline {self.name!r} declares unknown flags {unknown}")
        # Every pipeline takes the flags of every run.
        names = (*self.flag_names, *(f for f in RUN_FLAGS if f not in self.flag_names))
        object.__setattr__(self, "flag_names", tuple(dict.fromkeys(names)))

    def flags(self) -> list[Flag]:
        """The flags, with ``required`` as this pipeline needs it."""
        return [
            dataclasses.replace(FLAGS[n], required=FLAGS[n].required or n in self.required)
            for n in self.flag_names
        ]

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Registers the flags with ``parser`` (as the pipeline's ``Options`` does with Beam's)."""
        for name in self.flag_names:
            FLAGS[name].add_to(parser)


_WINDOWED_METRICS = PipelineSpec(
    "windowed_metrics",
    "Per-key count/sum/min/max/mean per event-time window, deduplicated, late-aware.",
    (
        *PIPELINE_SOURCE_FLAGS,
        "key_field",
        "metrics",
        *FILE_OUTPUT_FLAGS,
        *LOCAL_FLAGS,
        "columnar_shards",
    ),
)
_STREAM_ETL = PipelineSpec(
    "stream_etl",
    "Decode, validate, dedup and window records; write them as Parquet/Avro per window.",
    (*PIPELINE_SOURCE_FLAGS, *FILE_OUTPUT_FLAGS, *LOCAL_FLAGS),
)
_UNWINDOWED = ("window", "trigger", "allowed_lateness")
_KAFKA_TO_KAFKA = PipelineSpec(
    "kafka_to_kafka",
    "Deduplicate records and route them to an output topic; dead letters to a DLQ topic.",
    (
        *(f for f in PIPELINE_SOURCE_FLAGS if f not in _UNWINDOWED),
        "key_field",
        "output_topic",
        "dlq_topic",
        "max_out_of_orderness",
        "summary_json",
    ),
    required=("bootstrap_servers",),
)
#: The flags of replay_dead_letters' targets; it reads dead-letter files, so no source flag.
REPLAY_TARGET_FLAGS = tuple(
    f
    for f in dict.fromkeys((*_WINDOWED_METRICS.flag_names, *_STREAM_ETL.flag_names))
    if f
    not in ("source", "columnar_shards", "stream_shards", *FILE_SOURCE_FLAGS, *KAFKA_SOURCE_FLAGS)
)
_REPLAY_DEAD_LETTERS = PipelineSpec(
    "replay_dead_letters",
    "Replay dead letters' original payloads through a pipeline or onto a topic.",
    ("dead_letter_input", "replay_stages", "target", *REPLAY_TARGET_FLAGS, "output_topic"),
)

#: Every pipeline by name, in the order ``headwater pipelines`` lists them.
SPECS: dict[str, PipelineSpec] = {
    s.name: s for s in (_WINDOWED_METRICS, _STREAM_ETL, _KAFKA_TO_KAFKA, _REPLAY_DEAD_LETTERS)
}


def spec(name: str) -> PipelineSpec:
    """The spec of pipeline ``name``; ``ValueError`` names the unknown pipeline."""
    if name not in SPECS:
        raise ValueError(f"unknown pipeline {name!r}; choose from {', '.join(SPECS)}")
    return SPECS[name]
