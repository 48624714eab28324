"""``make bench``, streaming on Prism: Apache Kafka -> ``windowed_metrics`` -> window files.

Both runs start the real Apache Kafka broker (:func:`headwater.testing.kafka_server.start_kafka`)
and ``headwater run windowed_metrics --runner=PrismRunner`` on an *unbounded* read of a fresh
topic (3 partitions) as a subprocess, as a user would; the job is drained (SIGINT, as Ctrl-C:
the read stops, open windows are written, the job ends) once the consumer group's committed
offsets show every record read.

:func:`throughput` produces a backlog of the workload's lines first (fixed 60 s windows, the
batch bench's flags), then starts the job: events/s from the job's process start to the last
window file written (start-up, the read, the windows and the drain all count). While it runs,
the CPU seconds of the job's Python process (the SDK harness runs there: ``LOOPBACK``), of
Prism (Go) and of the broker (Java) are sampled from ``/proc``: where the time goes.

:func:`latency` starts the job first, then a paced producer writes ``rate`` events/s (event time
= the wall clock at produce, 1 s windows, ``--max_out_of_orderness=0s``). The latency of a
window is the time its file appears minus the wall time its last event was produced, over the
windows whose last event came after the job's first window file (start-up excluded) and whose
files were written before the drain.

:func:`profile` runs the throughput job on a prefix under :mod:`cProfile` (one profile per
thread of the job process, merged) and reports the functions and packages that take the time.
"""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import pstats
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["latency", "profile", "throughput"]

_PARTITIONS = 3
_GROUP = "headwater-bench"
_DEADLINE_S = 900.0
_KAFKA_FLAGS = (
    "--source=kafka",
    "--start=earliest",
    f"--group_id={_GROUP}",
    "--commit_offsets",
)


def _clock_ticks() -> int:
    return int(os.sysconf("SC_CLK_TCK"))


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (``/proc/PID/stat``), None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _clock_ticks()


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


class _CpuSampler:
    """The last CPU seconds seen for the job, its children (Prism) and the broker."""

    def __init__(self, job: int, broker: int):
        self._job, self._broker = job, broker
        self.seconds: dict[str, float] = {}

    def sample(self) -> None:
        for name, pid in (("python_sdk_harness", self._job), ("kafka_broker", self._broker)):
            value = _cpu_seconds(pid)
            if value is not None:
                self.seconds[name] = value
        total = 0.0
        for child in _children(self._job):
            total += _cpu_seconds(child) or 0.0
        if total:
            self.seconds["prism"] = max(total, self.seconds.get("prism", 0.0))


def _window_files(folder: Path) -> dict[str, float]:
    """Window folder name -> the earliest mtime of its files (wall clock seconds)."""
    found: dict[str, float] = {}
    for path in folder.rglob("*.parquet") if folder.exists() else ():
        mtime = path.stat().st_mtime
        name = path.parent.name
        found[name] = min(found.get(name, mtime), mtime)
    return found


def _job_command(bootstrap: str, topic: str, out: Path, *extra: str) -> list[str]:
    from headwater.devtools.bench_e2e import COMPUTATION_FLAGS, cli_command

    return [
        *cli_command(),
        "run",
        "windowed_metrics",
        "--runner=PrismRunner",
        f"--bootstrap_servers={bootstrap}",
        f"--topic={topic}",
        *_KAFKA_FLAGS,
        *COMPUTATION_FLAGS,
        f"--output={out / 'rows'}",
        f"--dead_letter={out / 'dead_letters'}",
        f"--summary_json={out / 'summary.json'}",
        *extra,
    ]


class _Job:
    """A ``headwater run ... --runner=PrismRunner`` subprocess, drained with SIGINT."""

    def __init__(self, command: list[str], out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._log = (out / "job.log").open("wb")
        self.started_wall = time.time()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"the Prism job exited {self.process.returncode}:\n{self.tail()}")

    def tail(self) -> str:
        return "\n".join((self.out / "job.log").read_text(errors="replace").splitlines()[-20:])

    def records_read(self) -> int:
        """The job's last progress count (its committed offsets trail the open windows)."""
        from headwater.transforms.progress import last_records_read

        return last_records_read((self.out / "job.log").read_text(errors="replace"))

    def drain(self, timeout: float = 300.0, *, check: bool = True) -> dict[str, Any]:
        """SIGINT, then waits for the exit (0 unless not ``check``); returns the run summary."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(f"the drained job did not end in {timeout:g} s") from None
        finally:
            self._log.close()
        if code != 0 and check:
            raise RuntimeError(f"the drained Prism job exited {code}:\n{self.tail()}")
        return {"exit": code, **json.loads((self.out / "summary.json").read_text())}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


def _wait(condition: Any, job: _Job, what: str, sample: Any = None) -> float:
    """Polls ``condition()`` every 0.2 s until true; returns the wall time it became true."""
    deadline = time.monotonic() + _DEADLINE_S
    while not condition():
        job.check_running()
        if sample is not None:
            sample()
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {_DEADLINE_S:g} s waiting for {what}")
        time.sleep(0.2)
    return time.time()


def _produce_backlog(bootstrap: str, topic: str, lines: Sequence[bytes]) -> float:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True}
    )
    began = time.perf_counter()
    for i, line in enumerate(lines):
        while True:
            try:
                producer.produce(topic, value=line, partition=i % _PARTITIONS)
                break
            except BufferError:
                producer.poll(0.2)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("the backlog was not acknowledged by the broker")
    return time.perf_counter() - began


def _summary_counts(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("records_in", "output", "duplicate", "dead_letter", "late", "identity_holds")
    return {key: summary.get(key) for key in keys}


def throughput(broker: Any, lines: Sequence[bytes], out: Path, *, topic: str) -> dict[str, Any]:
    """A backlog of ``lines`` read by the Prism job to window files; events/s and CPU."""
    broker.create_topic(topic, partitions=_PARTITIONS)
    produce_s = _produce_backlog(broker.bootstrap_servers, topic, lines)
    job = _Job(_job_command(broker.bootstrap_servers, topic, out, "--window=fixed:60s"), out)
    sampler = _CpuSampler(job.process.pid, broker.pid)
    cpu_before = _cpu_seconds(broker.pid) or 0.0
    try:
        first = _wait(
            lambda: _window_files(out / "rows"), job, "the first window file", sampler.sample
        )
        read_all = _wait(
            lambda: job.records_read() >= len(lines),
            job,
            "every record read",
            sampler.sample,
        )
        sampler.sample()
        summary = job.drain()
    finally:
        job.stop()
    files = _window_files(out / "rows")
    last = max(files.values())
    seconds = last - job.started_wall
    if "kafka_broker" in sampler.seconds:
        sampler.seconds["kafka_broker"] -= cpu_before
    return {
        "events": len(lines),
        "produce_s": round(produce_s, 2),
        "seconds": round(seconds, 2),
        "events_per_s": round(len(lines) / seconds, 1),
        "first_window_file_s": round(first - job.started_wall, 2),
        "all_read_s": round(read_all - job.started_wall, 2),
        "window_files": len(files),
        "cpu_s": {name: round(value, 1) for name, value in sampler.seconds.items()},
        **_summary_counts(summary),
    }


def _latency_line(number: int, at_ms: int) -> bytes:
    return (
        f'{{"event_id":"l{number}","user_id":"u{number % 1000:04d}",'
        f'"event_time":{at_ms},"amount":1.5}}'
    ).encode()


def latency(broker: Any, out: Path, *, topic: str, rate: int, seconds: float) -> dict[str, Any]:
    """p50/p95 of produce -> window file at ``rate`` events/s for ``seconds`` of steady state."""
    from confluent_kafka import Producer

    broker.create_topic(topic, partitions=_PARTITIONS)
    job = _Job(
        _job_command(
            broker.bootstrap_servers, topic, out, "--window=fixed:1s", "--max_out_of_orderness=0s"
        ),
        out,
    )
    producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 1})
    last_produced: dict[int, float] = {}  # window (epoch second) -> wall time of its last event
    steady: list[float] = []  # [wall time of the first window file, end of the steady input]
    last_steady_window: int | None = None
    produced, checked = 0, 0.0
    began, began_wall = time.monotonic(), time.time()
    try:
        while True:
            now = time.monotonic()
            if now - checked >= 0.25:  # warm-up -> steady -> tail: what the files say
                checked = now
                job.check_running()
                files = _window_files(out / "rows")
                if not steady and files:
                    steady.append(time.time())
                if len(steady) == 1 and time.time() - steady[0] >= seconds:
                    steady.append(time.time())
                    last_steady_window = int(steady[1]) - 1
                if last_steady_window is not None and any(
                    _window_second(name) >= last_steady_window for name in files
                ):
                    break  # every steady window has closed on live input
                if now - began > _DEADLINE_S:
                    raise RuntimeError(f"the latency run did not finish in {_DEADLINE_S:g} s")
            due = began + produced / rate
            if due > now:
                time.sleep(due - now)
            wall = time.time()
            producer.produce(
                topic, value=_latency_line(produced, int(wall * 1000)), partition=produced % 3
            )
            last_produced[int(wall * 1000) // 1000] = time.time()
            produced += 1
            if produced % 100 == 0:
                producer.poll(0)
        produce_s = time.monotonic() - began
        producer.flush(60)
        files = _window_files(out / "rows")
        _wait(
            lambda: job.records_read() >= produced,
            job,
            "every latency record read",
        )
        summary = job.drain()
    finally:
        job.stop()
    latencies = []
    for name, written in files.items():
        second = _window_second(name)
        produced_at = last_produced.get(second)
        if produced_at is not None and steady[0] <= produced_at and second <= int(steady[1]):
            latencies.append(written - produced_at)
    latencies.sort()
    return {
        "rate_per_s": rate,
        "events": produced,
        "achieved_rate_per_s": round(produced / produce_s, 1),
        "warm_up_s": round(steady[0] - began_wall, 1),
        "steady_seconds": seconds,
        "windows_measured": len(latencies),
        "p50_s": _percentile(latencies, 0.50),
        "p95_s": _percentile(latencies, 0.95),
        "max_s": round(latencies[-1], 3) if latencies else None,
        **_summary_counts(summary),
    }


def _window_second(folder_name: str) -> int:
    import datetime as dt

    text = folder_name.split("=", 1)[1]
    return int(
        dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


# ------------------------------------------------------------------------------------------
# Where the time goes: cProfile over every thread of the job process

_WAITING = ("acquire", "wait", "sleep", "select", "poll", "recv", "_next", "get", "result")


def _category(filename: str, name: str) -> str:
    if filename == "~" or filename.startswith("<"):
        short = name.strip("{}").split(" of ")[0].split()[-1].strip("'")
        return "waiting" if short in _WAITING else "builtins"
    for package in ("apache_beam", "headwater", "grpc", "confluent_kafka", "pyarrow", "google"):
        if f"/{package}/" in filename:
            return package
    return "stdlib/other"


def summarize_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Own CPU time (seconds) by package and the ``top`` functions, waits kept apart."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = {}
    functions = []
    for (filename, line, name), (_, _, tottime, _, _) in stats.items():
        category = _category(filename, name)
        by_package[category] = by_package.get(category, 0.0) + tottime
        if category != "waiting":
            where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}"
            functions.append((tottime, f"{name} ({where})" if line else name))
    functions.sort(reverse=True)
    busy = sum(v for k, v in by_package.items() if k != "waiting")
    return {
        "busy_s": round(busy, 1),
        "own_time_s_by_package": {
            k: round(v, 1) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "top_functions_own_s": [[round(t, 2), what] for t, what in functions[:top]],
    }


def profile(broker: Any, lines: Sequence[bytes], out: Path, *, topic: str) -> dict[str, Any]:
    """The throughput job on ``lines`` under cProfile (all threads); :func:`summarize_profile`."""
    profile_path = out / "job.prof"
    command = _job_command(broker.bootstrap_servers, topic, out, "--window=fixed:60s")
    script = command.index("run")
    profiled = [sys.executable, "-m", "headwater.devtools.bench_prism", "--profile"]
    command = [*profiled, str(profile_path), *command[script:]]
    broker.create_topic(topic, partitions=_PARTITIONS)
    _produce_backlog(broker.bootstrap_servers, topic, lines)
    job = _Job(command, out)
    try:
        _wait(lambda: job.records_read() >= len(lines), job, "all read")
        # Under the profiler Prism may split bundles that hold timers (apache/beam#35771) and
        # the run's counters stop adding up (exit 1): the profile is still what the worker did.
        summary = job.drain(check=False)
    finally:
        job.stop()
    return {
        "events": len(lines),
        "exit": summary["exit"],
        **_summary_counts(summary),
        **summarize_profile(profile_path),
    }


def _profiled_cli(profile_path: str, argv: list[str]) -> int:
    """``headwater`` ``argv`` in this process with one cProfile per thread, merged at the end.

    Each profile's clock is its thread's CPU time, so a thread blocked in gRPC or on a lock
    costs nothing: the figures are where the CPU goes.
    """
    from headwater import cli

    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_thread(frame: Any, event: str, arg: Any) -> None:
        sys.setprofile(None)
        thread_profile = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(thread_profile)
        thread_profile.enable()

    threading.setprofile(start_thread)
    main_profile = cProfile.Profile(time.thread_time)
    main_profile.enable()
    try:
        return cli.main(argv)
    finally:
        main_profile.disable()
        threading.setprofile(None)
        merged = pstats.Stats(main_profile)
        with lock:
            for thread_profile in profiles:
                with contextlib.suppress(Exception):
                    merged.add(thread_profile)
        merged.dump_stats(profile_path)


def main(argv: Sequence[str] | None = None) -> int:
    """Internal: ``python -m headwater.devtools.bench_prism --profile OUT.prof run ...``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] != "--profile":
        print(
            "usage: python -m headwater.devtools.bench_prism --profile OUT.prof run ...",
            file=sys.stderr,
        )
        return 2
    return _profiled_cli(args[1], args[2:])


if __name__ == "__main__":
    sys.exit(main())
