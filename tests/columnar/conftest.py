"""Fixtures for the columnar tests: both engines' window files over the same input."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from headwater.columnar import ComputeWindowedMetricsColumnar
from headwater.io.deadletterio import WriteDeadLetters
from headwater.io.fileio import ReadFromFiles, WriteWindowedFiles
from headwater.transforms.process import ComputeWindowedMetrics

EngineFiles = dict[str, dict[str, bytes]]


def _engine_files(
    tmp_path: Path,
    pattern: str,
    options: Mapping[str, Any],
    output_format: str,
    shards: int = 1,
    **columnar: Any,
) -> EngineFiles:
    """Writes the window files of the record path and of the columnar path over ``pattern``,
    and their dead letters (the record path's through the sink, the columnar path's written by
    its DoFn; ``columnar``: more of the columnar transform's arguments).

    Returns ``{"record": {relative path: bytes}, "columnar": {...}, "record-dead": {...},
    "columnar-dead": {...}}``.
    """
    with TestPipeline(runner="FnApiRunner") as p:
        read = p | ReadFromFiles(pattern, format="json")
        record = read.main | ComputeWindowedMetrics(**options)
        _ = record.rows | WriteWindowedFiles(
            str(tmp_path / "record"), format=output_format, num_shards=shards
        )
        dead = (read.dead_letter, record.dead_letter) | "AllDead" >> beam.Flatten()
        _ = dead | WriteDeadLetters(str(tmp_path / "record-dead"), num_shards=_LETTER_SHARDS)
    with TestPipeline(runner="FnApiRunner") as p:
        _ = p | ComputeWindowedMetricsColumnar(
            pattern=pattern,
            file_format="json",
            output=str(tmp_path / "columnar"),
            output_format=output_format,
            output_shards=shards,
            dead_letter_output=str(tmp_path / "columnar-dead"),
            dead_letter_shards=_LETTER_SHARDS,
            **options,
            **columnar,
        )
    files: EngineFiles = {}
    for engine, extension in (
        ("record", output_format),
        ("columnar", output_format),
        ("record-dead", "jsonl"),
        ("columnar-dead", "jsonl"),
    ):
        root = tmp_path / engine
        files[engine] = {
            str(f.relative_to(root)): f.read_bytes() for f in root.rglob(f"*.{extension}")
        }
    return files


_LETTER_SHARDS = 3


@pytest.fixture
def engine_files(tmp_path: Path) -> Callable[..., EngineFiles]:
    """``engine_files(pattern, options, output_format, shards=1, **columnar)``: both engines'
    files."""
    return lambda pattern, options, output_format, shards=1, **columnar: _engine_files(
        tmp_path, pattern, options, output_format, shards, **columnar
    )
