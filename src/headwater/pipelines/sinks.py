"""Where a file-writing pipeline's outcomes go: rows per window, dead letters, late records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import apache_beam as beam

from headwater.io.deadletterio import WriteDeadLetters
from headwater.io.fileio import WriteWindowedFiles
from headwater.transforms.observe import RecordFreshness

__all__ = [
    "DEAD_LETTER_SHARDS",
    "Written",
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


def dead_letter_files(
    folder: str, values: Mapping[str, Any], *, report_written: bool = False
) -> WriteDeadLetters:
    """The sink of a pipeline's dead-letter (or late) envelopes: files in ``folder``."""
    return WriteDeadLetters(
        folder,
        format=values["dead_letter_format"],
        num_shards=DEAD_LETTER_SHARDS,
        report_written=report_written,
    )


class Written(NamedTuple):
    """What :func:`write_outcomes` wired, for the source's offset commit (``Sourced.commit``)."""

    sinks: list[beam.PCollection]  # every sink's output: what a bounded read's commit waits for
    reports: list[beam.PCollection]  # dead-letter and late writers' "done" reports
    trailing: list[beam.PCollection]  # the main sink's output: windows are written behind it

    def commit(
        self, sourced: Any, *, on_time: beam.PCollection, duplicate: beam.PCollection, config: Any
    ) -> None:
        """Commits a windowed pipeline's Kafka offsets (``Sourced.commit``) behind these sinks:
        ``on_time`` records once their windows are written, ``duplicate`` ones on arrival."""
        sourced.commit(
            self.sinks,
            reports=self.reports,
            final=[duplicate],
            on_time=on_time,
            allowed_lateness_s=config.allowed_lateness_s,
            trailing=self.trailing,
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
    report_written: bool = False,
) -> Written:
    """Main output to ``sink`` or files per window; dead letters and late records to theirs.

    ``report_written``: the dead-letter and late writers report the Kafka records they wrote
    (a streaming read's commit follows them).
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
    report = {"report_written": report_written}
    dead_written = dead | "WriteDeadLetters" >> dead_letter_files(
        values["dead_letter"], values, **report
    )
    late_written = late | "WriteLate" >> dead_letter_files(late_folder(values), values, **report)
    main = [written] if isinstance(written, beam.PCollection) else []
    letters = [dead_written, late_written]
    return Written(sinks=main + letters, reports=letters if report_written else [], trailing=main)
