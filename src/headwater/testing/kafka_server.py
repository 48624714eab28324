"""Apache Kafka itself for tests: one KRaft node (broker and controller), built by ``make tools``.

:func:`start_kafka` formats a fresh KRaft log in a temporary folder, starts
``java -cp '<tools>/kafka/libs/*' kafka.Kafka server.properties`` on free 127.0.0.1 ports,
waits (with a deadline) until the broker answers Kafka metadata requests, and returns a
:class:`~headwater.testing.broker.LocalBroker` -- the same object :func:`start_broker` returns
for Tansu, so ``.bootstrap_servers``, ``.pid``, ``.create_topic(...)``, ``.stop()`` and the
``with`` block behave alike. Stopping sends SIGTERM to the broker's PID (SIGKILL after a grace
period) and removes the folder with its data and log.

The jars come from ``tools/kafka/pom.xml`` (``make tools`` copies them to ``.tools/kafka/libs``);
the tools folder is ``$HEADWATER_TOOLS`` or the ``.tools`` folder of the headwater checkout
found above the working directory or above this package (an editable install). Java 17+ must be
``java`` on PATH. Unlike Tansu, Kafka's high watermark is (last offset + 1), topics are created
automatically on first use, and data lives on disk until the broker is stopped.

>>> with start_kafka() as kafka:                        # doctest: +SKIP
...     kafka.create_topic("events", partitions=3)
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from headwater.testing.broker import (
    BrokerError,
    LocalBroker,
    free_port,
    spawn_in_workdir,
    start_until_answering,
)

__all__ = ["TOOLS_ENV", "java_for", "kafka_libs", "start_kafka", "tool_jars", "tools_dir"]

TOOLS_ENV = "HEADWATER_TOOLS"
_BUILD_HINT = "run `make tools` in the headwater checkout"
_REPO_MARKER = Path("tools") / "kafka" / "pom.xml"
_JVM_OPTIONS = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",  # two cores shared with the tests: no parallel GC threads
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    # the full configuration dump at start is thousands of lines
    "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config.AbstractConfig=warn",
)


def tools_dir() -> Path:
    """The folder ``make tools`` fills: ``$HEADWATER_TOOLS``, else the checkout's ``.tools``.

    The checkout is the first folder holding ``tools/kafka/pom.xml`` above the working
    directory, then above this package's file. Raises :class:`BrokerError` when neither exists.
    """
    override = os.environ.get(TOOLS_ENV)
    if override:
        return Path(override)
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            if (folder / _REPO_MARKER).is_file():
                return folder / ".tools"
    raise BrokerError(
        f"no headwater checkout above {Path.cwd()} or {Path(__file__).parent}, so no tools "
        f"folder: {_BUILD_HINT}, or set {TOOLS_ENV} to the folder it built"
    )


def tool_jars(tool: str, jar: str, what: str) -> Path:
    """``<tools>/TOOL/libs`` when it holds a jar matching ``jar``; else :class:`BrokerError`
    saying that ``what`` is not built and to run ``make tools``."""
    libs = tools_dir() / tool / "libs"
    if not any(libs.glob(jar)):
        raise BrokerError(f"{what} is not built: no {jar} in {libs}: {_BUILD_HINT}")
    return libs


def java_for(what: str) -> str:
    """The ``java`` on PATH; :class:`BrokerError` saying that ``what`` needs it when absent."""
    found = shutil.which("java")
    if not found:
        raise BrokerError(f"{what} needs Java 17+ as `java` on PATH; install a JRE")
    return found


def kafka_libs() -> Path:
    """The folder of Apache Kafka's jars; :class:`BrokerError` naming ``make tools`` if absent."""
    return tool_jars("kafka", "kafka_2.13-*.jar", "Apache Kafka")


def _cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes, URL-safe base64 without padding (Kafka's Uuid)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # Kafka refuses ids a command line would read as a flag
            return text


def _server_properties(workdir: Path, host: str, port: int, controller_port: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"{host}:{controller_port}",
        "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(workdir / "data"),
        "num.partitions": "3",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "5",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "5",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # No time-based retention: tests and the bench produce records stamped in 2023, which
        # the default 7 days would delete at the next retention check (every 5 minutes), in the
        # middle of a test
        "log.retention.ms": "-1",
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def _format_storage(java: str, classpath: str, properties: Path, log_path: Path) -> None:
    with open(log_path, "ab") as log:
        result = subprocess.run(
            [
                java,
                *_JVM_OPTIONS,
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                _cluster_id(),
                "--config",
                str(properties),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise BrokerError(
            f"formatting Apache Kafka's KRaft storage failed (exit {result.returncode}); "
            f"its log ends:\n{tail}"
        )


def start_kafka(*, host: str = "127.0.0.1", startup_timeout: float = 90.0) -> LocalBroker:
    """Starts a single-node Apache Kafka (KRaft) on free ports of ``host``; waits until it answers.

    Raises :class:`BrokerError` naming ``make tools`` when the jars are missing, and with the
    broker's last log lines when it exits at start or does not answer within
    ``startup_timeout`` seconds.
    """

    def launch() -> LocalBroker:
        classpath = str(kafka_libs() / "*")
        java = java_for("Apache Kafka")
        port, controller_port = free_port(host), free_port(host)

        def command(workdir: Path) -> list[str]:
            properties = workdir / "server.properties"
            properties.write_text(_server_properties(workdir, host, port, controller_port))
            _format_storage(java, classpath, properties, workdir / "kafka.log")
            return [java, *_JVM_OPTIONS, "-cp", classpath, "kafka.Kafka", str(properties)]

        process, workdir, log_path = spawn_in_workdir("headwater-kafka-", "kafka.log", command)
        return LocalBroker(process, host, port, log_path, workdir=workdir, name="Apache Kafka")

    return start_until_answering(launch, attempts=3, startup_timeout=startup_timeout)
