"""Child process of the broker-restart test: a bounded Kafka read while its broker restarts.

Run as ``python -c "import _restart_read; _restart_read.main(N)"`` from this folder (imported,
not run as ``__main__``, so the DoFn and its state are pickled by reference). Starts its own
Tansu broker, produces ``N`` records to a one-partition topic, then runs a bounded read
(``stop_at_end``) on the FnApiRunner; a DoFn right after the read stops the broker when the
1000th record passes and starts a new, empty one on the same port (Tansu keeps data in memory,
so the restarted broker has lost the topic). Prints one JSON line:
``{"outcome": "completed", "count": n}``, ``{"outcome": "failed", "error": ...}`` or, when the
read is still running after ``DEADLINE_S``, ``{"outcome": "hung"}`` -- then stops every broker it
started and exits, so the parent never has to kill it blind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from typing import Any

import apache_beam as beam

from headwater.devtools.produce import produce_lines
from headwater.io.kafka import ReadFromKafka
from headwater.testing.broker import start_broker, tansu_command, tansu_path

DEADLINE_S = 30.0
STOP_AT = 1000
# Small fetches, so the client has not prefetched the whole topic when the broker stops.
SMALL_FETCHES = {"queued.max.messages.kbytes": "1", "queued.min.messages": "1"}
_STATE: dict[str, Any] = {"seen": 0, "restarted": None, "processes": []}


def _start_tansu(port: int) -> subprocess.Popen:
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        tansu_command(tansu_path(), url),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _STATE["processes"].append(process)
    return process


def _restart(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        process = _start_tansu(port)
        for _ in range(40):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                _STATE["restarted"] = round(time.monotonic() - _STATE["t0"], 2)
                return
            except OSError:
                if process.poll() is not None:
                    break
                time.sleep(0.1)
        time.sleep(0.5)


class _StopBrokerFn(beam.DoFn):
    def process(self, record):
        _STATE["seen"] += 1
        if _STATE["seen"] == STOP_AT:
            broker = _STATE["broker"]
            broker.stop()
            threading.Thread(target=_restart, args=(broker.port,), daemon=True).start()
        yield record


def _record_count(count: int) -> None:
    _STATE["count"] = count


def _cleanup() -> None:
    _STATE["broker"].stop()
    for process in _STATE["processes"]:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def _watchdog() -> None:
    time.sleep(DEADLINE_S)
    print(
        json.dumps(
            {"outcome": "hung", "seen": _STATE["seen"], "restarted_after_s": _STATE["restarted"]}
        ),
        flush=True,
    )
    _cleanup()
    os._exit(0)


def main(n: int) -> None:
    """Runs the read; prints the outcome as one JSON line."""
    broker = start_broker()
    _STATE["broker"] = broker
    try:
        broker.create_topic("events", partitions=1)
        for first in range(0, n, 50_000):  # produce_lines queues a call's records at once
            produce_lines(
                broker.bootstrap_servers,
                "events",
                [(None, b'{"i":%d}' % i) for i in range(first, min(n, first + 50_000))],
                partitions=1,
            )
        threading.Thread(target=_watchdog, daemon=True).start()
        _STATE["t0"] = time.monotonic()
        try:
            p = beam.Pipeline("FnApiRunner")
            _ = (
                p
                | ReadFromKafka(
                    bootstrap_servers=broker.bootstrap_servers,
                    topics=["events"],
                    stop_at_end=True,
                    config=SMALL_FETCHES,
                    stall_timeout=5,
                )
                | beam.ParDo(_StopBrokerFn())
                | beam.combiners.Count.Globally()
                | beam.Map(_record_count)
            )
            p.run().wait_until_finish()
            outcome = {"outcome": "completed", "count": _STATE.get("count", 0)}
        except Exception as exc:
            outcome = {"outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
        outcome.update(seen=_STATE["seen"], restarted_after_s=_STATE["restarted"])
        print(json.dumps(outcome), flush=True)
    finally:
        _cleanup()
