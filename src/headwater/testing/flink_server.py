"""Apache Flink for tests and the bench: Beam's Flink job server on an embedded Flink cluster.

:func:`start_flink` runs ``java -cp '<tools>/flink/libs/*'
org.apache.beam.runners.flink.FlinkJobServerDriver --flink-master=[local]`` on a free port: the
portable Job API in front of a Flink mini-cluster in the same JVM (a job manager and one task
manager with as many slots as a job's ``--parallelism`` asks). It waits (with a deadline) until
the job service accepts connections and returns a :class:`FlinkJobServer`; submit to its
``endpoint`` with ``--runner=FlinkRunner --job_endpoint=ENDPOINT`` and an SDK harness
environment (``LOOPBACK``: the submitting process; ``EXTERNAL``: a worker pool, see
:func:`start_worker_pool`). Stopping sends
SIGTERM to the JVM's PID (SIGKILL after a grace period) and removes its folder (log, staged
artifacts, Flink configuration).

The jars come from ``tools/flink/pom.xml`` (``make tools`` copies them to ``.tools/flink/libs``):
Beam 2.62.0's Flink 1.19 runner, the newest whose job service Maven Central serves here; the
Job and Fn APIs it speaks are versioned protocols, and the tests run the pinned Python SDK on it.

>>> with start_flink() as flink:                        # doctest: +SKIP
...     argv = ["--runner=FlinkRunner", f"--job_endpoint={flink.endpoint}",
...             "--environment_type=LOOPBACK", "--parallelism=2"]
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path

from headwater.testing.broker import (
    LocalServer,
    free_port,
    spawn_in_workdir,
    start_until_answering,
)
from headwater.testing.kafka_server import java_for, tool_jars

__all__ = ["FlinkJobServer", "flink_libs", "start_flink", "start_worker_pool"]

_DRIVER = "org.apache.beam.runners.flink.FlinkJobServerDriver"
_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx1g",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
    # Flink's start-up and every checkpoint, and Beam's job service (every job's metrics, in
    # JSON), log at INFO: warnings only, and the job server's own start and stop
    "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
    f"-Dorg.slf4j.simpleLogger.log.{_DRIVER}=info",
    # Flink serializes some JDK classes by reflection (Kryo); Java 17 closes them by default
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
)
# One task manager's resources in the mini-cluster: enough slots for parallelism 4, and managed
# memory kept small (Beam's portable operators keep their state on the heap).
_FLINK_CONFIG = {
    "taskmanager.numberOfTaskSlots": "4",
    "taskmanager.memory.managed.size": "64m",
    "rest.bind-port": "0",
}


class FlinkJobServer(LocalServer):
    """A running Flink job server; ``endpoint`` is its Job API address (``localhost:PORT``)."""

    kind = "job server"

    @property
    def endpoint(self) -> str:
        """What ``--job_endpoint`` takes."""
        return self.address


def flink_libs() -> Path:
    """The folder of the Flink job server's jars; :class:`BrokerError` naming ``make tools``."""
    return tool_jars("flink", "beam-runners-flink-*.jar", "Flink")


def _command(java: str, classpath: str, workdir: Path, port: int) -> list[str]:
    conf = workdir / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(
        "".join(f"{key}: {value}\n" for key, value in _FLINK_CONFIG.items()), encoding="utf-8"
    )
    return [
        java,
        *_JVM_OPTIONS,
        f"-Djava.io.tmpdir={workdir}",
        "-cp",
        classpath,
        _DRIVER,
        "--flink-master=[local]",
        f"--flink-conf-dir={conf}",
        f"--job-port={port}",
        "--artifact-port=0",
        "--expansion-port=-1",
        f"--artifacts-dir={workdir / 'artifacts'}",
    ]


def _accepts(server: LocalServer, timeout: float) -> bool:
    """The job service is a gRPC server: accepting a connection means it serves."""
    return server.running()


def start_flink(*, startup_timeout: float = 120.0) -> FlinkJobServer:
    """Starts Beam's Flink job server with an embedded Flink; waits until its Job API answers.

    Raises :class:`BrokerError` naming ``make tools`` when the jars are missing, and with the
    server's last log lines when it exits at start or does not answer within
    ``startup_timeout`` seconds.
    """

    def launch() -> FlinkJobServer:
        classpath = str(flink_libs() / "*")
        java = java_for("Flink's job server")
        port = free_port("127.0.0.1")
        process, workdir, log_path = spawn_in_workdir(
            "headwater-flink-", "flink.log", lambda folder: _command(java, classpath, folder, port)
        )
        return FlinkJobServer(
            process, "localhost", port, log_path, workdir=workdir, name="Apache Flink"
        )

    return start_until_answering(
        launch, attempts=3, startup_timeout=startup_timeout, answers=_accepts
    )


def start_worker_pool(*, startup_timeout: float = 60.0) -> LocalServer:
    """Starts Beam's SDK worker pool (``apache_beam.runners.worker.worker_pool_main``) here.

    For ``--environment_type=EXTERNAL --environment_config=ADDRESS``: the runner asks the pool
    for SDK workers and the pool starts each as a process of this Python (its folder first on
    ``PATH``, since the pool runs ``python``), with this process's environment, so
    ``--sdk_worker_parallelism=N`` gives N worker processes: work in parallel, not threads
    sharing one interpreter as with ``LOOPBACK``. Stopped (with its workers) by its PID.
    """
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), environment["PATH"]))

    def launch() -> LocalServer:
        port = free_port("127.0.0.1")
        module = "apache_beam.runners.worker.worker_pool_main"
        command = [sys.executable, "-m", module, f"--service_port={port}"]
        process, workdir, log_path = spawn_in_workdir(
            "headwater-worker-pool-", "worker-pool.log", lambda _: command, env=environment
        )
        return _WorkerPool(process, "localhost", port, log_path, workdir=workdir, name="Beam SDK")

    return start_until_answering(
        launch, attempts=3, startup_timeout=startup_timeout, answers=_accepts
    )


class _WorkerPool(LocalServer):
    kind = "worker pool"

    def stop(self) -> None:
        """Stops the pool and the SDK workers it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        super().stop()
