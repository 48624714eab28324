"""A streaming job killed mid-stream and restarted from committed offsets writes each window once.

On Prism with a real broker: ``windowed_metrics`` reads a two-partition topic unbounded, commits
its offsets to a consumer group and writes Parquet window files. The job is killed (SIGKILL, its
whole process tree: the runner loses every open window) after two windows were written and
offsets committed, the group is set back to the start of a wave whose records lie partly in a
written window (what a commit that follows the window writes would leave: the job died after
writing the window, before committing the offsets of the records in it), and a second job
resumes with ``--start=committed`` into the same folders while more records arrive. Its folders
must equal, file for file and byte for byte, those of one uninterrupted job over the same topic.

The events are the streaming suite's waves (``tests/runners/test_prism_streaming.py``: 16 events
per 4 s of event time, shuffled, two exact re-deliveries each; bounded out-of-orderness 5 s),
so no record is late however the partitions interleave and each window has one on-time pane.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_RUNNERS = Path(__file__).resolve().parents[1] / "runners"


def _load(name: str) -> ModuleType:
    """A module of tests/runners (the tests folder is not a package): its helpers, reused."""
    spec = importlib.util.spec_from_file_location(f"_runners_{name}", _RUNNERS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_jobs = _load("conftest")
_streaming = _load("test_prism_streaming")
# The Prism job fixtures (a subprocess per job, killed at teardown; polling with a deadline).
start_stream_job = _jobs.start_stream_job
wait_until = _jobs.wait_until_fixture

PARTITIONS = _streaming.PARTITIONS
LINES_PER_WAVE = _streaming.PER_WAVE + 2
FIRST_WAVES = 8  # event time [0 s, 32 s): windows [0, 10) and [10, 20) close while it runs
LATER_WAVES = 4  # [32 s, 48 s), produced while the restarted job runs
REREAD_WAVE = 2  # [8 s, 12 s): its records of window [0, 10) are read again after the restart


def _descendants(pid: int) -> list[int]:
    """The process ids below ``pid`` (the job's Prism binary, its workers), deepest first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
            children.setdefault(parent, []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        below = children.get(pending.pop(), [])
        found[:0] = below
        pending += below
    return found


def _kill_job(job: Any) -> None:
    """SIGKILL the job's process and everything it started, by their ids: a crash, no drain."""
    below = _descendants(job.process.pid)
    job.process.kill()
    job.process.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError):  # ended with its parent
            os.kill(pid, signal.SIGKILL)


def _offsets(bootstrap: str, topic: str, group: str) -> list[int]:
    """``group``'s committed offset per partition (-1: none yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return [tp.offset for tp in consumer.committed(parts, timeout=10)]
    finally:
        consumer.close()


def _set_offsets(bootstrap: str, topic: str, group: str, offsets: list[int]) -> None:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [TopicPartition(topic, p, o) for p, o in enumerate(offsets)]
        consumer.commit(offsets=parts, asynchronous=False)
    finally:
        consumer.close()


def _folder(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> bytes), completion markers aside."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "_SUCCESS"
    }


def _run_until_read(
    job: Any, wait: Callable[..., Any], bootstrap: str, topic: str, group: str, count: int
) -> dict[str, Any]:
    wait(
        lambda: sum(max(o, 0) for o in _offsets(bootstrap, topic, group)) == count,
        what=f"all {count} records read by {group}",
        job=job,
    )
    job.drain()
    return job.finish()


def test_killed_and_restarted_job_writes_the_files_of_an_uninterrupted_run(
    kafka_bootstrap: str,
    make_kafka_topic: Callable[..., str],
    start_stream_job: Callable[..., Any],
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """SIGKILL mid-stream, resume from committed offsets: an uninterrupted run's files, bytes."""
    topic = make_kafka_topic(PARTITIONS)
    rng = random.Random(29)
    waves = [_streaming._wave(k, rng) for k in range(FIRST_WAVES + LATER_WAVES)]
    first = [line for wave in waves[:FIRST_WAVES] for line in wave]
    later = [line for wave in waves[FIRST_WAVES:] for line in wave]
    _streaming._produce(kafka_bootstrap, topic, first)  # round-robin: line i -> offset i // 2
    restarted, group = tmp_path / "restarted", f"g-restarted-{topic}"
    resume = ("--start=committed", f"--group_id={group}", "--commit_offsets")
    argv = _streaming._argv(kafka_bootstrap, topic, restarted, *resume)
    metrics = restarted / "metrics"

    killed = start_stream_job("windowed_metrics", argv, "killed")
    wait_until(lambda: _streaming._window_file(metrics, 10), what="window [10 s, 20 s)", job=killed)
    reread_from = REREAD_WAVE * LINES_PER_WAVE // PARTITIONS
    wait_until(
        lambda: min(_offsets(kafka_bootstrap, topic, group)) >= reread_from,
        what="offsets committed past the re-read wave",
        job=killed,
    )
    _kill_job(killed)
    written = _folder(metrics)
    assert any(name.startswith("window_start=2023-11-14T22:14:00Z/") for name in written)
    # The job died after writing window [0 s, 10 s) but before committing the offsets of the
    # records in it: a commit that follows the window writes would stand at most here.
    _set_offsets(kafka_bootstrap, topic, group, [reread_from] * PARTITIONS)

    resumed = start_stream_job("windowed_metrics", argv, "resumed")
    _streaming._produce(kafka_bootstrap, topic, later)
    summary = _run_until_read(
        resumed, wait_until, kafka_bootstrap, topic, group, len(first) + len(later)
    )
    assert summary["identity_holds"], summary
    assert summary["records_in"] == len(first) + len(later) - PARTITIONS * reread_from

    uninterrupted, other = tmp_path / "uninterrupted", f"g-uninterrupted-{topic}"
    job = start_stream_job(
        "windowed_metrics",
        _streaming._argv(
            kafka_bootstrap,
            topic,
            uninterrupted,
            "--start=committed",  # no offsets yet: from the earliest
            f"--group_id={other}",
            "--commit_offsets",
        ),
        "uninterrupted",
    )
    once = _run_until_read(job, wait_until, kafka_bootstrap, topic, other, len(first) + len(later))
    _streaming._assert_identity(once, _streaming._expected(first + later))

    after = _folder(restarted)
    assert {name: after[f"metrics/{name}"] for name in written} == written, "a file replaced"
    assert after == _folder(uninterrupted)
    assert len(_folder(uninterrupted / "metrics")) == 5  # windows of 10 s over [0 s, 48 s)
    assert _streaming._rows(metrics) == _streaming._expected(first + later)["rows"]
