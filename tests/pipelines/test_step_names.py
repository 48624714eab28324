"""Stable step names: every pipeline's graph, per source and mode, has the checked-in labels.

Dataflow's ``--update`` matches a running job's steps to the new graph's by full label, so a
renamed step silently starts with empty state. Each graph is built (never run) and its labels
compared with ``src/headwater/pipelines/step-names/<pipeline>-<variant>.txt``; a difference
fails with the labels that changed and how to map them. After an intended rename, record
``"old": "new"`` in ``step-names/renamed.json`` and rewrite the lists with
``HEADWATER_WRITE_STEP_NAMES=1 .venv/bin/python -m pytest tests/pipelines/test_step_names.py``.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from headwater import pipelines
from headwater.cli import main
from headwater.pipelines.catalog import SPECS
from headwater.pipelines.step_names import (
    STEP_NAMES_DIR,
    check_transform_name_mapping,
    graph_step_names,
    released_step_names,
    renamed_steps,
)

FILES = ["--input=gs://hw-bucket/in/*.jsonl", "--output=gs://hw-bucket/out"]
DEAD = ["--dead_letter=gs://hw-bucket/dlq"]
KAFKA = ["--source=kafka", "--bootstrap_servers=broker:9092", "--topic=events"]
TOPICS = ["--output_topic=clean", "--dlq_topic=dlq"]
REPLAY = ["--dead_letter_input=gs://hw-bucket/dlq/*.jsonl", "--dead_letter=gs://hw-bucket/dlq2"]
# batch: a read that ends (files, or Kafka up to its end offsets); streaming: --streaming, as
# `headwater run` submits an unbounded Kafka read or a --streaming job.
BATCH, STREAMING = [], ["--streaming"]
# ... committing offsets as the outcomes are written (the commit steps are stateful too)
COMMIT = ["--commit_offsets", "--group_id=g", "--start=committed", *STREAMING]
VARIANTS: dict[str, dict[str, list[str]]] = {
    "windowed_metrics": {
        "files-batch": [*FILES, *DEAD, *BATCH],
        "files-streaming": [*FILES, *DEAD, *STREAMING],
        "kafka-batch": [*KAFKA, "--stop_at_end", "--output=gs://hw-bucket/out", *DEAD],
        "kafka-streaming": [*KAFKA, "--output=gs://hw-bucket/out", *DEAD, *STREAMING],
        "kafka-streaming-commit": [*KAFKA, "--output=gs://hw-bucket/out", *DEAD, *COMMIT],
    },
    "stream_etl": {
        "files-batch": [*FILES, *DEAD, *BATCH],
        "files-streaming": [*FILES, *DEAD, *STREAMING],
        "kafka-batch": [*KAFKA, "--stop_at_end", "--output=gs://hw-bucket/out", *DEAD],
        "kafka-streaming": [*KAFKA, "--output=gs://hw-bucket/out", *DEAD, *STREAMING],
        "kafka-streaming-commit": [*KAFKA, "--output=gs://hw-bucket/out", *DEAD, *COMMIT],
    },
    "kafka_to_kafka": {
        "files-batch": [FILES[0], "--bootstrap_servers=broker:9092", *TOPICS, *BATCH],
        "files-streaming": [FILES[0], "--bootstrap_servers=broker:9092", *TOPICS, *STREAMING],
        "kafka-batch": [*KAFKA, "--stop_at_end", *TOPICS],
        "kafka-streaming": [*KAFKA, *TOPICS, *STREAMING],
        "kafka-streaming-commit": [*KAFKA, *TOPICS, *COMMIT],
    },
    "replay_dead_letters": {
        f"{target}-{mode}": [
            *REPLAY,
            f"--target={target}",
            *(
                ["--output_topic=replayed", "--bootstrap_servers=broker:9092"]
                if target == "topic"
                else ["--output=gs://hw-bucket/replay"]
            ),
            *flags,
        ]
        for target in ("windowed_metrics", "stream_etl", "topic")
        for mode, flags in (("batch", BATCH), ("streaming", STREAMING))
    },
}
CASES = [(name, variant) for name, variants in VARIANTS.items() for variant in variants]
WRITE = os.environ.get("HEADWATER_WRITE_STEP_NAMES") == "1"


def _labels(name: str, variant: str) -> list[str]:
    """The labels of ``name``'s graph for ``variant``, built and never run."""
    p = beam.Pipeline(options=PipelineOptions(VARIANTS[name][variant]))
    pipelines.load(name).build(p, p.options)
    return graph_step_names(p)


def _path(name: str, variant: str) -> Path:
    return STEP_NAMES_DIR / f"{name}-{variant}.txt"


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_step_labels_are_the_checked_in_ones(name, variant):
    """Each pipeline's labels, per source and mode, equal its checked-in list."""
    labels = _labels(name, variant)
    path = _path(name, variant)
    if WRITE:
        path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    checked_in = path.read_text(encoding="utf-8").splitlines()
    gone = sorted(set(checked_in) - set(labels))
    new = sorted(set(labels) - set(checked_in))
    mapping = json.dumps(dict(zip(gone, new, strict=False)) or {"<old label>": "<new label>"})
    assert (gone, new) == ([], []), (
        f"{name} ({variant}) changed its step labels: a streaming job updated with --update "
        f"starts these steps with empty state.\n  gone: {gone}\n  new:  {new}\n"
        f"Keep the old labels if you can. Otherwise record each rename in {STEP_NAMES_DIR.name}/"
        f"renamed.json, tell users to update with --transform_name_mapping='{mapping}', and "
        f"rewrite the lists: HEADWATER_WRITE_STEP_NAMES=1 pytest {Path(__file__).name}"
    )


def test_every_pipeline_has_its_graphs_checked_in():
    """Every pipeline of the catalog has its variants here, and no list is left over."""
    assert set(VARIANTS) == set(SPECS)
    expected = {_path(name, variant).name for name, variant in CASES}
    assert {p.name for p in STEP_NAMES_DIR.glob("*.txt")} == expected


# A label Beam makes up from a lambda or a bound object: line numbers and addresses change with
# every edit of the file, so monitoring names and --update matching would change with them.
_MADE_UP = re.compile(r"<lambda at (?P<file>[\w.]+):\d+>|<locals>|at 0x[0-9a-f]+")
_OUR_MODULES = {p.name for p in Path(pipelines.__file__).parents[1].rglob("*.py")}


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_no_label_is_made_up_from_our_code(name, variant):
    """No label names a lambda of headwater's code, a local function or an address."""
    made_up = []
    for label in _labels(name, variant):
        for match in _MADE_UP.finditer(label):
            if match["file"] is None or match["file"] in _OUR_MODULES:
                made_up.append(label)
    assert not made_up, f"{name} ({variant}): give these steps a label: {made_up}"


def test_renamed_labels_are_gone_and_their_new_names_exist():
    """renamed.json maps labels no graph has any more to labels of this release's graphs."""
    for name, mapping in renamed_steps().items():
        current = {line for v in VARIANTS[name] for line in _path(name, v).read_text().split()}
        for old, new in mapping.items():
            assert old not in current, f"{name}: {old!r} is renamed yet still a step"
            assert new in current, f"{name}: {old!r} became {new!r}, which is no step"


def test_mapping_key_that_is_no_step_is_refused_naming_it():
    """A --transform_name_mapping key that no release nor the new graph has is refused."""
    graph = _labels("windowed_metrics", "kafka-streaming")
    with pytest.raises(ValueError, match=r"'WindowedMetrics/Proces/Deduplicate' is not a step"):
        check_transform_name_mapping(
            {"WindowedMetrics/Proces/Deduplicate": "WindowedMetrics/Process/Dedup"},
            pipeline="windowed_metrics",
            graph=graph,
        )


def test_mapping_keys_of_a_release_or_the_new_graph_pass():
    """Keys that are labels of this release (any variant), an earlier one or the new graph pass."""
    released = sorted(released_step_names("windowed_metrics"))
    check_transform_name_mapping(
        {label: label + "2" for label in released}, pipeline="windowed_metrics", graph=[]
    )
    check_transform_name_mapping(
        {"Custom/Step": "Custom/Renamed"}, pipeline="windowed_metrics", graph=["Custom/Step"]
    )
    for name, mapping in renamed_steps().items():
        check_transform_name_mapping(mapping, pipeline=name, graph=[])


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records every request and answers 500: nothing should reach it."""

    requests: list[str]

    def _any(self) -> None:
        self.requests.append(f"{self.command} {self.path}")
        self.send_response(500)
        self.end_headers()

    def do_GET(self) -> None:
        self._any()

    def do_POST(self) -> None:
        self._any()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def dataflow_endpoint() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP endpoint for --dataflow_endpoint and the requests it received."""
    handler = type("Handler", (_Recorder,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def _update_argv(endpoint: str, mapping: str) -> list[str]:
    return [
        "run",
        "windowed_metrics",
        *VARIANTS["windowed_metrics"]["kafka-streaming"],
        "--runner=DataflowRunner",
        "--project=hw-project",
        "--region=europe-west1",
        "--temp_location=gs://hw-bucket/tmp",
        "--no_auth",
        f"--dataflow_endpoint={endpoint}",
        "--job_name=hw-metrics",
        "--update",
        f"--transform_name_mapping={mapping}",
    ]


def test_run_update_refuses_an_unknown_mapping_key_before_any_request(dataflow_endpoint, capsys):
    """headwater run --update with a key that is no step exits 2 naming it; nothing is sent."""
    endpoint, requests = dataflow_endpoint
    mapping = json.dumps({"WindowedMetrics/Dedup": "WindowedMetrics/Process/Deduplicate"})
    assert main(_update_argv(endpoint, mapping)) == 2
    err = capsys.readouterr().err
    assert (
        "--transform_name_mapping: 'WindowedMetrics/Dedup' is not a step of windowed_metrics"
        in (err)
    )
    assert requests == []


def test_run_update_names_the_flag_of_a_mapping_that_is_not_json(dataflow_endpoint, capsys):
    """A --transform_name_mapping that is not JSON exits 2 naming the flag; nothing is sent."""
    endpoint, requests = dataflow_endpoint
    assert main(_update_argv(endpoint, '{"WindowedMetrics": ')) == 2
    err = capsys.readouterr().err
    assert "--transform_name_mapping is not JSON" in err
    assert requests == []
