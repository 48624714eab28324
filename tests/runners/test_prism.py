"""PrismRunner: its binary found (never downloaded), unbounded Kafka reads sent to it."""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import (
    DebugOptions,
    PipelineOptions,
    PrismRunnerOptions,
    StandardOptions,
)

from headwater import runners
from headwater.pipelines import windowed_metrics
from headwater.pipelines.running import unbounded_source

KAFKA = ["--source=kafka", "--bootstrap_servers=127.0.0.1:1", "--topic=events"]


def _binary(folder: Path, name: str = "prism") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def no_prism(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No Prism anywhere: no $HEADWATER_PRISM, none beside this Python, none on PATH."""
    monkeypatch.delenv(runners.PRISM_ENV, raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return tmp_path


def test_prism_location_flag_wins_over_the_environment(
    no_prism: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--prism_location is used before $HEADWATER_PRISM."""
    flag = _binary(no_prism / "flag")
    monkeypatch.setenv(runners.PRISM_ENV, str(_binary(no_prism / "env")))
    options = PipelineOptions(["--runner=PrismRunner", f"--prism_location={flag}"])
    assert runners.prepare(options, streaming=False) == "PrismRunner"
    assert options.view_as(PrismRunnerOptions).prism_location == str(flag.resolve())


def test_prism_found_by_environment_then_venv_then_path(
    no_prism: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$HEADWATER_PRISM, then prism beside sys.executable, then prism on PATH."""
    on_path = _binary(no_prism / "empty")
    assert runners.find_prism() == str(on_path.resolve())
    beside = _binary(no_prism / "venv" / "bin")
    assert runners.find_prism() == str(beside.resolve())
    env = _binary(no_prism / "env")
    monkeypatch.setenv(runners.PRISM_ENV, str(env))
    assert runners.find_prism() == str(env.resolve())


def test_missing_prism_says_how_to_build_it(no_prism: Path) -> None:
    """No binary anywhere: a one-line ValueError naming `make tools` and the go install."""
    with pytest.raises(ValueError, match=r"^Prism is not built: run `make tools` \(go install "):
        runners.prepare(PipelineOptions(["--runner=PrismRunner"]), streaming=True)


def test_bad_prism_location_is_refused_not_downloaded(no_prism: Path) -> None:
    """A --prism_location that is not a local executable is refused by name (no download)."""
    url = "https://github.com/apache/beam/releases/tag/v2.77.0"
    with pytest.raises(ValueError, match=r"^--prism_location='https://github.com/.*make tools"):
        runners.prepare(
            PipelineOptions(["--runner=prism", f"--prism_location={url}"]), streaming=True
        )


def test_unbounded_kafka_read_on_the_direct_runner_goes_to_prism(no_prism: Path) -> None:
    """DirectRunner (or no runner) with an unbounded Kafka read runs on Prism, streaming."""
    binary = _binary(no_prism / "venv" / "bin")
    for argv in (KAFKA, ["--runner=DirectRunner", *KAFKA], [*KAFKA, "--max_duration=1m"]):
        options = PipelineOptions(argv)
        unbounded = unbounded_source(options)
        assert runners.prepare(options, streaming=False, unbounded=unbounded) == "PrismRunner"
        assert options.view_as(StandardOptions).streaming
        assert options.view_as(PrismRunnerOptions).prism_location == str(binary.resolve())
    bounded = PipelineOptions([*KAFKA, "--stop_at_end"])
    unbounded = unbounded_source(bounded)
    assert runners.prepare(bounded, streaming=False, unbounded=unbounded) == "FnApiRunner"


def test_prism_runs_are_waited_for_and_summarized() -> None:
    """waits_for_result holds for Prism, streaming or not."""
    options = PipelineOptions(["--streaming"])
    assert runners.waits_for_result("PrismRunner", options)


def test_unbounded_read_on_fnapi_runner_points_to_prism(tmp_path: Path) -> None:
    """The runner that cannot run an unbounded read names --runner=PrismRunner."""
    argv = [
        "--runner=FnApiRunner",
        *KAFKA,
        "--key_field=user_id",
        "--window=fixed:60s",
        "--metrics=count",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
    ]
    with pytest.raises(ValueError, match=r"FnApiRunner cannot run: use --runner=PrismRunner"):
        windowed_metrics.run(argv)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("keep", ["first", "last"])
def test_processing_time_dedup_over_files_finishes_on_prism_like_fnapi(
    tmp_path: Path, keep: str
) -> None:
    """A batch run with --dedup_time_domain=processing ends at once on Prism (it waited a
    horizon of wall-clock time for processing-time timers) with the FnApiRunner's counts."""
    from headwater.devtools.workload import write_jsonl

    events = tmp_path / "events.jsonl"
    write_jsonl(events, 300, seed=4)
    summaries = {}
    for runner in ("FnApiRunner", "PrismRunner"):
        summaries[runner] = windowed_metrics.run(
            [
                f"--runner={runner}",
                f"--input={events}",
                f"--output={tmp_path / runner / 'out'}",
                f"--dead_letter={tmp_path / runner / 'dlq'}",
                "--dedup_time_domain=processing",
                "--dedup_horizon=1h",
                f"--dedup_keep={keep}",
                "--window=fixed:60s",
                "--metrics=count",
            ]
        )
    counts = {
        runner: [s[n] for n in ("records_in", "output", "duplicate", "dead_letter", "late")]
        for runner, s in summaries.items()
    }
    assert counts["PrismRunner"] == counts["FnApiRunner"]
    assert counts["PrismRunner"][2] > 0  # the workload's re-deliveries were found


class _CountBundles(beam.DoFn):
    """Each element takes longer than Prism's progress tick, so Prism sees a stalled bundle."""

    def __init__(self) -> None:
        self._bundles = Metrics.counter("test", "bundles")

    def start_bundle(self) -> None:
        self._bundles.inc()

    def process(self, element: int) -> Iterator[int]:
        deadline = time.perf_counter() + 0.4  # CPU work of one element, not a wait
        while time.perf_counter() < deadline:
            pass
        yield element


def _bundles_on_prism(*, split: bool) -> int:
    options = PipelineOptions(["--runner=PrismRunner", "--environment_type=LOOPBACK"])
    runners.prepare(options, streaming=False)
    if split:  # what Prism does without headwater's experiment
        options.view_as(DebugOptions).experiments.remove(runners.PRISM_NO_SPLIT)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam.Create(list(range(6))) | beam.Reshuffle() | beam.ParDo(_CountBundles())
    result = pipeline.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("bundles"))["counters"]
    return sum(counter.committed for counter in counters)


def test_prism_runs_never_split_a_running_bundle() -> None:
    """Every Prism run sets runners.PRISM_NO_SPLIT (Prism re-sends processed records when it
    splits a stateful bundle that holds timers); without it the same stalled bundle is split."""
    assert _bundles_on_prism(split=False) == 1
    assert _bundles_on_prism(split=True) > 1


def test_portable_runs_ask_a_prism_job_server_for_no_splits_too() -> None:
    """PortableRunner may point at Prism's job server (``prism --job_port``): the experiment is
    set there as well (other job servers ignore it)."""
    options = PipelineOptions(
        ["--runner=PortableRunner", "--job_endpoint=localhost:1", "--environment_type=LOOPBACK"]
    )
    assert runners.prepare(options, streaming=True) == "PortableRunner"
    assert runners.PRISM_NO_SPLIT in options.view_as(DebugOptions).experiments
