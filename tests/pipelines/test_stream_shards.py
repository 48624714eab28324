"""--stream_shards: how many keys a stream's stateful steps (event-time dedup keeping the first
copy, late routing) are spread over. The graphs are built, never run: the count reaches both
steps' DoFns, and a run with no such step refuses the flag, naming it."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from headwater import pipelines
from headwater.transforms.dedup import _KeyByIdFn
from headwater.windowing.late import _SpreadFn

KAFKA = ["--source=kafka", "--bootstrap_servers=broker:9092", "--topic=events"]
FILES_OUT = ["--output=gs://hw-bucket/out", "--dead_letter=gs://hw-bucket/dlq"]
STREAM = [*KAFKA, *FILES_OUT, "--streaming"]
TOPICS = ["--output_topic=clean", "--dlq_topic=dlq"]


class _Fns(PipelineVisitor):
    def __init__(self) -> None:
        self.fns: list[object] = []

    def visit_transform(self, applied) -> None:
        fn = getattr(applied.transform, "fn", None)
        if fn is not None:
            self.fns.append(fn)


def _shard_counts(name: str, argv: list[str]) -> dict[str, list[int]]:
    """The shard counts of the built graph's dedup feeder and router spreader."""
    p = beam.Pipeline(options=PipelineOptions(argv))
    pipelines.load(name).build(p, p.options)
    visitor = _Fns()
    p.visit(visitor)
    return {
        "dedup": [fn._shards for fn in visitor.fns if isinstance(fn, _KeyByIdFn) and fn._shards],
        "router": [fn._shards for fn in visitor.fns if isinstance(fn, _SpreadFn)],
    }


@pytest.mark.parametrize(
    ("name", "argv", "expected"),
    [
        ("windowed_metrics", STREAM, {"dedup": [40], "router": [40]}),
        ("stream_etl", STREAM, {"dedup": [40], "router": [40]}),
        ("kafka_to_kafka", [*KAFKA, *TOPICS, "--streaming"], {"dedup": [40], "router": []}),
        ("stream_etl", [*STREAM, "--id_field="], {"dedup": [], "router": [40]}),
    ],
)
def test_the_count_reaches_every_sharded_step_of_a_stream(name, argv, expected):
    assert _shard_counts(name, [*argv, "--stream_shards=40"]) == expected


def test_without_the_flag_a_stream_has_sixteen_shards_per_step():
    assert _shard_counts("windowed_metrics", STREAM) == {"dedup": [16], "router": [16]}


@pytest.mark.parametrize(
    ("name", "argv", "why"),
    [
        ("windowed_metrics", ["--input=gs://hw-bucket/in/*.jsonl", *FILES_OUT], "batch"),
        ("stream_etl", [*KAFKA, "--stop_at_end", *FILES_OUT], "batch"),
        ("kafka_to_kafka", [*KAFKA, *TOPICS, "--streaming", "--dedup_keep=last"], "no step"),
        ("kafka_to_kafka", [*KAFKA, *TOPICS, "--streaming", "--id_field="], "no step"),
    ],
)
def test_a_run_without_a_sharded_step_refuses_the_flag_naming_it(name, argv, why):
    with pytest.raises(ValueError, match=r"--stream_shards=8 applies to the stateful steps"):
        _shard_counts(name, [*argv, "--stream_shards=8"])


@pytest.mark.parametrize("bad", ["0", "4097", "x"])
def test_a_count_out_of_range_is_refused_naming_the_value(bad, capsys):
    from headwater.cli import main

    assert main(["run", "windowed_metrics", *STREAM, f"--stream_shards={bad}"]) == 2
    error = capsys.readouterr().err
    assert f"--stream_shards='{bad}'" in error or f"--stream_shards={bad}" in error, error
