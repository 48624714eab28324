"""A streaming job killed mid-stream and restarted from committed offsets writes each window once.

On Prism with a real broker: ``windowed_metrics`` reads a two-partition topic unbounded, commits
its offsets to a consumer group and writes Parquet window files. The job is killed (SIGKILL, its
whole process tree: the runner loses every open window) after two windows were written and
offsets committed. The commit follows the writes (``headwater.io.kafka.ledger``): every record
before a committed offset is in a written window (or a duplicate), and the records of the open
windows are not committed. A second job resumes from the committed offsets as they are, into the
same folders, while more records arrive. Its folders must equal, file for file and byte for byte,
those of one uninterrupted job over the same topic.

The events are the streaming suite's waves (``tests/runners/test_prism_streaming.py``: 16 events
per 4 s of event time, shuffled, two exact re-deliveries each; bounded out-of-orderness 5 s),
so no record is late however the partitions interleave and each window has one on-time pane.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
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
TOTAL = (FIRST_WAVES + LATER_WAVES) * LINES_PER_WAVE


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


def _window_starts(lines: list[bytes]) -> list[list[int]]:
    """Per partition, by offset: the start (s after BASE_MS) of each record's window."""
    starts: list[list[int]] = [[] for _ in range(PARTITIONS)]
    for i, line in enumerate(lines):  # produced round-robin: line i -> partition i % 2
        at_s = (json.loads(line)["event_time"] - _streaming.BASE_MS) / 1000
        starts[i % PARTITIONS].append(int(at_s // _streaming.WINDOW_S) * _streaming.WINDOW_S)
    return starts


def _folder(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (relative path -> bytes), completion markers aside."""
    return {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted(out.rglob("*"))
        if path.is_file() and path.name != "_SUCCESS"
    }


def _run_until_read(
    job: Any, wait: Callable[..., Any], count: int, committed: Callable[[], list[int]]
) -> dict[str, Any]:
    """Drains the job once it has read ``count`` records; its summary. The drain writes every
    open window, after which the group has committed every record: the end offsets."""
    wait(lambda: job.records_read() == count, what=f"{count} records read", job=job)
    job.drain()
    summary = job.finish()
    assert committed() == [TOTAL // PARTITIONS] * PARTITIONS, "the drained job's commit"
    return summary


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
    wait_until(
        lambda: min(_offsets(kafka_bootstrap, topic, group)) > 0,
        what="offsets committed in every partition",
        job=killed,
    )
    _kill_job(killed)
    written = _folder(metrics)
    assert {name.split("/")[0] for name in written} == {
        "window_start=2023-11-14T22:14:00Z",
        "window_start=2023-11-14T22:14:10Z",
    }
    committed = _offsets(kafka_bootstrap, topic, group)
    starts = _window_starts(first)
    for partition, offset in enumerate(committed):
        # Every record before the commit point is in a written window (or is a duplicate of
        # one, which shares its event time); the open windows' records are all after it.
        assert all(start < 20 for start in starts[partition][:offset]), (partition, committed)
        assert 20 in starts[partition][offset:], (partition, committed)

    resumed = start_stream_job("windowed_metrics", argv, "resumed")
    _streaming._produce(kafka_bootstrap, topic, later)
    summary = _run_until_read(
        resumed,
        wait_until,
        TOTAL - sum(committed),
        lambda: _offsets(kafka_bootstrap, topic, group),
    )
    assert summary["identity_holds"], summary
    assert summary["records_in"] == TOTAL - sum(committed)

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
    once = _run_until_read(job, wait_until, TOTAL, lambda: _offsets(kafka_bootstrap, topic, other))
    _streaming._assert_identity(once, _streaming._expected(first + later))

    after = _folder(restarted)
    assert {name: after[f"metrics/{name}"] for name in written} == written, "a file replaced"
    assert after == _folder(uninterrupted)
    assert len(_folder(uninterrupted / "metrics")) == 5  # windows of 10 s over [0 s, 48 s)
    assert _streaming._rows(metrics) == _streaming._expected(first + later)["rows"]
