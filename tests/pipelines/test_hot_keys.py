"""No single-key stage (issue 14): every keyed step of every pipeline sees many keys.

On Dataflow and Flink a key is the unit of parallelism of a GroupByKey, a CombinePerKey and a
stateful DoFn: a step whose key is constant runs on one worker thread whatever the job's size.
Each pipeline is built for each mode, then every such step (a ``GroupByKey`` primitive, which
``CombinePerKey`` and ``Reshuffle`` expand to, or a ``ParDo`` of a stateful DoFn) gets a probe on
its input that counts the distinct keys reaching it; the pipeline runs on the local runner over
events of many users, ids and windows (a few duplicates, two malformed lines, a late record).
A step that sees exactly one distinct key over many elements is a hot key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import userstate

from headwater import pipelines, runners
from headwater.core.deadletter import DeadLetter
from headwater.pipelines.config import RunConfig

pytestmark = pytest.mark.slow

NAMESPACE = "hot_key_probe"
BASE_MS = 1_700_000_040_000  # a minute boundary
EVENTS = 60

LATE_ROUTER = re.compile(r"/RouteLate/")
#: The file writers: rows are keyed by (shard, window), dead letters and late records by one of
#: several shards (they used to be keyed by shard 0 alone: on Dataflow one worker wrote every file).
ONE_SHARD_WRITERS = re.compile(
    r"^((WriteRows|WriteRecords)/GroupPerWindowShard|(WriteDeadLetters|WriteLate)/GroupPerShard)$"
)


def _lines() -> list[str]:
    """Events of 6 users over 3 windows of 10 s, 3 re-deliveries, a late event, 12 bad lines."""
    events = [
        {"event_id": f"e{i}", "event_time": BASE_MS + i * 500, "user_id": f"u{i % 6}", "n": i}
        for i in range(EVENTS)
    ]
    lines = [json.dumps(e) for e in events]
    lines += lines[:3]  # duplicates
    late = {"event_id": "late", "event_time": BASE_MS + 1_000, "user_id": "u1", "n": 1}
    lines.append(json.dumps(late))  # 29 s behind the newest: late once window [0, 10) closed
    lines += [f"not json {i} {{" for i in range(12)]  # dead letters: enough to spread
    return lines


def _input(tmp_path: Path, name: str) -> list[str]:
    """The input flag: the events as a file, or (replay_dead_letters) as dead letters' payloads."""
    if name == "replay_dead_letters":
        letters = tmp_path / "letters" / "letters.jsonl"
        letters.parent.mkdir()
        rows = [DeadLetter("decode", "E", "e", line.encode()).to_json() for line in _lines()]
        letters.write_text("\n".join(rows) + "\n", encoding="utf-8")
        return [
            f"--dead_letter_input={letters}",
            "--replay_stages=decode",
            "--target=windowed_metrics",
        ]
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(_lines()) + "\n", encoding="utf-8")
    return [f"--input={data}"]


def _flags(tmp_path: Path, name: str, mode: str) -> list[str]:
    flags = [
        *_input(tmp_path, name),
        "--event_time_field=event_time",
        "--event_time_unit=ms",
        "--id_field=event_id",
        "--dedup_horizon=60s",
        "--max_out_of_orderness=2s",
        f"--dead_letter={tmp_path / 'dead'}",
    ]
    if name == "kafka_to_kafka":
        flags += ["--key_field=user_id", "--bootstrap_servers=unused:9092"]
    else:
        flags += [
            f"--output={tmp_path / 'out'}",  # default --output_shards=1, as users run it
            "--window=fixed:10s",
            "--allowed_lateness=0s",
            f"--late_output={tmp_path / 'late'}",
        ]
    if name in ("windowed_metrics", "replay_dead_letters"):
        flags += ["--key_field=user_id", "--metrics=count,sum:n"]
    if mode == "stream":  # files replayed as a stream: an unbounded TestStream, watermark moves
        flags += ["--replay_as_stream", "--replay_engine=teststream"]
    if mode == "parallel":  # the columnar batch path over id-hash shards, as on remote runners
        flags += ["--columnar_shards=2"]
    return flags


def _built(tmp_path: Path, name: str, mode: str) -> beam.Pipeline:
    """Pipeline ``name`` built for ``mode`` (not run)."""
    options = PipelineOptions(_flags(tmp_path, name, mode))
    runners.prepare(options, streaming=mode == "stream")
    module = pipelines.load(name)
    p = beam.Pipeline(options=options)
    config = RunConfig.from_options(options, module.Options)
    if name == "kafka_to_kafka":  # no broker here: the topic writes are no keyed step
        module.build(p, options, config=config, sink=beam.Map(lambda r: r))
    else:
        module.build(p, options, config=config)
    return p


class _ProbeFn(beam.DoFn):
    """Counts each distinct key reaching step ``label`` (a counter per key)."""

    def __init__(self, label: str):
        self._label = label

    def process(self, element: Any) -> Iterator[Any]:
        key = element[0]
        Metrics.counter(NAMESPACE, f"{self._label}\t{key!r}").inc()
        return iter(())


def _keyed_steps(p: beam.Pipeline) -> list[Any]:
    """Every GroupByKey primitive and stateful ParDo of ``p`` (applied transforms)."""
    steps = []
    todo = list(p.transforms_stack[0].parts)
    while todo:
        applied = todo.pop()
        todo.extend(applied.parts)
        transform = applied.transform
        if isinstance(transform, beam.GroupByKey) or (
            isinstance(transform, beam.ParDo) and userstate.is_stateful_dofn(transform.fn)
        ):
            steps.append(applied)
    return steps


def _keys_per_step(tmp_path: Path, name: str, mode: str) -> dict[str, dict[str, int]]:
    """Runs ``name`` in ``mode`` with a probe on each keyed step: step -> {key: elements}."""
    p = _built(tmp_path, name, mode)
    steps = _keyed_steps(p)
    assert steps, f"{name} ({mode}) has no keyed step"
    for i, applied in enumerate(steps):
        (pcoll,) = applied.inputs
        _ = pcoll | f"HotKeyProbe{i}" >> beam.ParDo(_ProbeFn(applied.full_label))
    result = p.run()
    result.wait_until_finish()
    found: dict[str, dict[str, int]] = {a.full_label: {} for a in steps}
    counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    for counter in counters:
        label, key = counter.key.metric.name.split("\t", 1)
        value = counter.committed if counter.committed is not None else counter.attempted
        found[label][key] = found[label].get(key, 0) + value
    return found


def _hot(keys: dict[str, dict[str, int]], which: re.Pattern[str] | None) -> dict[str, Any]:
    """The steps (matching ``which``, or all) that saw one key, many times."""
    hot = {}
    for label, counts in keys.items():
        if which is not None and which.search(label) is None:
            continue
        if len(counts) == 1 and sum(counts.values()) > 1:
            hot[label] = counts
    return hot


CASES = [
    ("windowed_metrics", "parallel"),  # the columnar engine over id-hash shards
    ("windowed_metrics", "stream"),
    ("stream_etl", "batch"),
    ("stream_etl", "stream"),
    ("kafka_to_kafka", "batch"),
    ("kafka_to_kafka", "stream"),
    ("replay_dead_letters", "batch"),  # target windowed_metrics, on the record path
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Any]:
    """Keys per keyed step of every case (each pipeline runs once per mode)."""
    return {
        (name, mode): _keys_per_step(tmp_path_factory.mktemp(f"{name}-{mode}"), name, mode)
        for name, mode in CASES
    }


def test_the_one_step_columnar_batch_path_has_no_keyed_step(tmp_path):
    """A local batch run of windowed_metrics reads the files, writes the window files and the
    dead letters in one DoFn: no GroupByKey, no stateful step (so no key at all to be hot)."""
    p = _built(tmp_path, "windowed_metrics", "batch")
    labels = [applied.full_label for applied in p.transforms_stack[0].parts]
    assert "WindowedMetricsColumnar" in labels
    assert "WriteDeadLetters" not in labels
    assert _keyed_steps(p) == []


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_no_keyed_step_sees_a_single_key(keys, name, mode):
    """Every GroupByKey/stateful step, the file writers included, sees more than one key."""
    found = keys[(name, mode)]
    exercised = [label for label, counts in found.items() if sum(counts.values()) > 1]
    assert exercised, f"{name} ({mode}): no keyed step saw elements: {sorted(found)}"
    hot = _hot(found, None)
    assert not hot, f"{name} ({mode}): steps keyed by a constant (one key each): {hot}"


@pytest.mark.parametrize("name", ["windowed_metrics", "stream_etl"])
def test_late_router_spreads_its_keys(keys, name):
    """The streaming late router keys records by more than one key."""
    found = {k: v for k, v in keys[(name, "stream")].items() if LATE_ROUTER.search(k)}
    assert found, f"{name}: no late router step in the stream graph"
    assert all(sum(c.values()) > 1 for c in found.values()), f"router not exercised: {found}"
    hot = _hot(keys[(name, "stream")], LATE_ROUTER)
    assert not hot, f"{name}: the late router keys everything by one key: {hot}"


@pytest.mark.parametrize(
    ("name", "mode"), [c for c in CASES if c[0] != "kafka_to_kafka" and c[1] != "parallel"]
)
def test_file_writers_spread_their_keys(keys, name, mode):
    """The row, dead-letter and late writers group by more than one key."""
    found = keys[(name, mode)]
    assert any(ONE_SHARD_WRITERS.search(k) and sum(c.values()) > 1 for k, c in found.items())
    hot = _hot(found, ONE_SHARD_WRITERS)
    assert not hot, f"{name} ({mode}): a writer keys everything by one shard: {hot}"
