"""Where a file-writing pipeline's outcomes go: rows per window, dead letters, late records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apache_beam as beam

from headwater.io.deadletterio import WriteDeadLetters
from headwater.io.fileio import WriteWindowedFiles
from headwater.transforms.observe import RecordFreshness

__all__ = [
    "DEAD_LETTER_SHARDS",
    "dead_letter_files",
    "file_outputs",
    "late_folder",
    "write_outcomes",
]

# Dead-letter and late files per pane: envelopes spread over this many keys (a stable hash of
# their content), so a flood of bad records is written by several workers, not one.
DEAD_LETTER_SHARDS = 4


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


def dead_letter_files(folder: str, values: Mapping[str, Any]) -> WriteDeadLetters:
    """The sink of a pipeline's dead-letter (or late) envelopes: files in ``folder``."""
    return WriteDeadLetters(
        folder, format=values["dead_letter_format"], num_shards=DEAD_LETTER_SHARDS
    )


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
    dead_written = dead | "WriteDeadLetters" >> dead_letter_files(values["dead_letter"], values)
    late_written = late | "WriteLate" >> dead_letter_files(late_folder(values), values)
    return [w for w in (written, dead_written, late_written) if isinstance(w, beam.PCollection)]
