"""Which runner a pipeline runs on, and the runner-specific options headwater sets.

Input: the parsed ``PipelineOptions`` of a pipeline run and whether the pipeline itself needs
streaming (stream replay). Output: the options, completed and checked for the runner, and the
runner's canonical name. Nothing here builds a graph, uploads or submits anything: every check
runs before Beam stages a single file, and a ``ValueError`` names the flag to fix.

* Local: ``DirectRunner`` (or no runner) maps to the ``FnApiRunner`` for batch and the
  ``BundleBasedDirectRunner`` for streaming (``TestStream``), so a run never waits on Beam's
  Prism download. An unbounded Kafka read, which neither can run, goes to Prism.
* ``PrismRunner``: Beam's portable local runner (Go), for real streaming on this machine. The
  binary is the one ``make tools`` builds, found by :func:`find_prism`; Beam never downloads
  one. Its SDK harness runs in this process (``LOOPBACK``), so the run is waited for and
  summarized like a local one.
* ``DataflowRunner``: ``--project``, ``--region`` and a ``gs://`` ``--temp_location`` (or
  ``--staging_location``) are required; ``--setup_file`` defaults to headwater's own
  ``setup.py`` (found next to the source checkout) unless ``--sdk_container_image``,
  ``--requirements_file`` or ``--extra_package`` says how workers get their code; streaming jobs
  run on the Streaming Engine; ``--update`` needs ``--job_name`` and ``--streaming`` and
  ``--transform_name_mapping`` needs ``--update``.
* ``FlinkRunner`` / ``PortableRunner`` (the portable Job API): ``PortableRunner`` needs
  ``--job_endpoint``; workers outside this process (any ``--environment_type`` but
  ``LOOPBACK``) get ``--setup_file`` like Dataflow's. A ``FlinkRunner`` run on an embedded
  Flink (``--flink_master`` ``[local]`` or ``[auto]``, no ``--job_endpoint``) gets
  ``--flink_job_server_jar`` from :func:`find_flink_job_server_jar` when it finds one, instead
  of Beam's download of a jar Maven Central does not serve.
* On every remote runner a Kafka source without ``--stop_at_end``/``--max_records`` is an
  unbounded read, so the job is submitted with ``--streaming`` (logged), never as a batch job
  that would never finish.

Remote runners are not waited on by default; :func:`waits_for_result` says when a run can be
waited for and summarized from the runner's metrics (local runs and batch portable runs).

>>> from apache_beam.options.pipeline_options import PipelineOptions
>>> prepare(PipelineOptions([]), streaming=False)
'FnApiRunner'
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from apache_beam.options.pipeline_options import (
    DebugOptions,
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    PrismRunnerOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from headwater._compat import (
    fix_direct_runner_metrics,
    lighter_local_workers,
    shorten_state_sampling,
    skip_embedded_state_cache,
)
from headwater._startup import (  # (one list of names: the CLI reads it before Beam's import)
    DATAFLOW_RUNNER,
    LOCAL_RUNNERS,
    PORTABLE_RUNNERS,
    PRISM_RUNNER,
    canonical_runner,
    cloud_left_out,
)

__all__ = [
    "DATAFLOW_RUNNER",
    "LOCAL_RUNNERS",
    "PORTABLE_RUNNERS",
    "PRISM_ENV",
    "PRISM_NO_SPLIT",
    "PRISM_RUNNER",
    "FLINK_JAR_ENV",
    "SETUP_FILE_ENV",
    "find_flink_job_server_jar",
    "find_prism",
    "find_setup_file",
    "in_this_process",
    "is_local",
    "is_portable",
    "prepare",
    "runs_here",
    "wait_for",
    "waits_for_result",
]

_LOG = logging.getLogger("headwater.runners")

SETUP_FILE_ENV = "HEADWATER_SETUP_FILE"
"""Environment variable naming the ``setup.py`` to stage when the package has no checkout."""

FLINK_JAR_ENV = "HEADWATER_FLINK_JOB_SERVER_JAR"
"""Environment variable naming the Flink job-server jar for embedded Flink runs."""

PRISM_ENV = "HEADWATER_PRISM"
"""Environment variable naming the Prism binary (when ``--prism_location`` is not given)."""

PRISM_NO_SPLIT = "prism_disable_sdf_split"
"""The experiment that stops Prism splitting a running bundle; every Prism run sets it.

Prism (Beam 2.77) splits a bundle that makes no progress for a while. For a stateful step it
cuts the bundle's element list at the SDK's first-residual index, but the SDK counts data
elements only while the list also holds the bundle's timers (``splitBundle`` in Prism's
``elementmanager.go``, apache/beam#35771). Records before the cut that the SDK already
processed are then sent again: dedup, the late router and the commit step saw some records
twice under load, and the run's accounting identity broke (1,502 outcomes for 1,500 records).
Without runner splits each bundle runs to its end; the Kafka reader still checkpoints itself.
"""


def is_local(runner: str) -> bool:
    """Whether ``runner`` runs in this process (results can be waited for and summarized)."""
    return runner in LOCAL_RUNNERS


def in_this_process(options: PipelineOptions) -> bool:
    """Whether a run's DoFns run on this process's own threads: a local runner in Beam's
    in-memory mode (the default), no worker process and no gRPC channel. Such a process may be
    forked by a DoFn (:mod:`headwater.core.forked`)."""
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return (
        isinstance(runner, str)
        and is_local(canonical_runner(runner))
        and options.view_as(DirectOptions).direct_running_mode == "in_memory"
    )


def is_portable(runner: str) -> bool:
    """Whether ``runner`` submits through the portable Job API (Flink's job server, Beam's)."""
    return runner in PORTABLE_RUNNERS


def waits_for_result(runner: str, options: PipelineOptions) -> bool:
    """Whether a run on ``runner`` should be waited for and summarized from its metrics.

    Local runs and Prism runs (streaming too: they end at ``--max_duration`` or when the user
    interrupts them) always; runs on the portable runners when they are batch (their job
    service reports the ``headwater`` counters through ``result.metrics()``) or run their SDK
    harness in this process (``--environment_type=LOOPBACK``: the job cannot outlive it).
    Dataflow jobs and other streaming portable jobs are submitted and left running: the caller
    prints the job id.
    """
    if is_local(runner) or runner == PRISM_RUNNER:
        return True
    return is_portable(runner) and (
        not options.view_as(StandardOptions).streaming or _loopback(options)
    )


def _loopback(options: PipelineOptions) -> bool:
    return (options.view_as(PortableOptions).environment_type or "").upper() == "LOOPBACK"


def runs_here(runner: str, options: PipelineOptions | None) -> bool:
    """Whether a run's SDK workers are this process: a local runner, Prism, or a portable
    runner with ``--environment_type=LOOPBACK`` (its progress can be counted here)."""
    return (
        is_local(runner)
        or runner == PRISM_RUNNER
        or (is_portable(runner) and options is not None and _loopback(options))
    )


def wait_for(result: Any, runner: str, options: PipelineOptions | None = None) -> str:
    """Waits for a run to end and returns its final state (``"DONE"``, ``"CANCELLED"`` ...).

    During a Prism run (or a portable one whose SDK harness is this process, ``LOOPBACK``, e.g.
    ``--runner=PortableRunner`` against Prism's job server) the first Ctrl-C (SIGINT) drains
    the job (:func:`headwater.io.kafka.request_drain`: the Kafka read stops, every open
    window is closed and written, the job ends by itself); a second one cancels it (windows
    still open are not written). Either way the job is not left running in the background.
    """
    if is_local(runner) or not runs_here(runner, options):
        return _state_name(result.wait_until_finish())
    from headwater.io.kafka import request_drain, reset_drain

    interrupts = 0

    def on_interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            raise KeyboardInterrupt
        print("headwater: draining the job (Ctrl-C again cancels it)", file=sys.stderr)
        request_drain()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        state = result.wait_until_finish()
    except KeyboardInterrupt:
        _LOG.warning("interrupted again: cancelling the %s job", runner)
        result.cancel()
        state = result.state
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        reset_drain()  # the drain ended this run; later reads in this process run on
    return _state_name(state)


def _state_name(state: Any) -> str:
    return str(getattr(state, "value", state))


def find_setup_file() -> str | None:
    """headwater's ``setup.py``: ``$HEADWATER_SETUP_FILE``, else the source checkout's; or None.

    The checkout is found from the package itself (``<repo>/src/headwater`` ->
    ``<repo>/setup.py``) and must declare ``name="headwater"``; an installed wheel has no
    ``setup.py`` next to it, so this returns ``None`` there.
    """
    explicit = os.environ.get(SETUP_FILE_ENV)
    if explicit:
        return str(Path(explicit).resolve())
    package = Path(__file__).resolve().parent
    for folder in (package.parent, package.parent.parent):
        candidate = folder / "setup.py"
        try:
            text = candidate.read_text(encoding="utf-8")
        except OSError:
            continue
        if 'name="headwater"' in text or "name='headwater'" in text:
            return str(candidate)
    return None


def find_flink_job_server_jar() -> str | None:
    """The Flink job-server jar for an embedded Flink: ``$HEADWATER_FLINK_JOB_SERVER_JAR``, else
    ``.tools/flink/job-server.jar`` of the checkout whose ``.venv`` runs this Python (the launcher
    ``make tools`` writes); ``None`` when neither exists."""
    explicit = os.environ.get(FLINK_JAR_ENV)
    if explicit:
        if not os.path.isfile(explicit):
            raise ValueError(f"${FLINK_JAR_ENV}={explicit!r} is not a file")
        return str(Path(explicit).resolve())
    beside = Path(sys.prefix).parent / ".tools" / "flink" / "job-server.jar"
    return str(beside) if beside.is_file() else None


def find_prism(location: str | None = None) -> str:
    """The Prism binary: ``location`` (``--prism_location``), ``$HEADWATER_PRISM``, ``prism``
    next to this Python (the venv's ``bin``, where ``make tools`` links it), or on ``PATH``.

    ``ValueError`` (one line, how to build it) when none exists: Beam's own fallback, a
    download from GitHub, is never tried.
    """
    from apache_beam.version import __version__ as beam_version

    build = (
        f"run `make tools` (go install github.com/apache/beam/sdks/v2/go/cmd/prism@v{beam_version})"
    )
    for where, candidate in (
        ("--prism_location", location),
        (f"${PRISM_ENV}", os.environ.get(PRISM_ENV)),
    ):
        if candidate:
            if not os.path.isfile(candidate) or not os.access(candidate, os.X_OK):
                raise ValueError(
                    f"{where}={candidate!r} is not an executable Prism binary: {build}"
                )
            return str(Path(candidate).resolve())
    beside = Path(sys.executable).parent / "prism"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside.resolve())
    found = shutil.which("prism")
    if found:
        return str(Path(found).resolve())
    raise ValueError(f"Prism is not built: {build}")


def _canonical(runner: Any) -> Any:
    if not isinstance(runner, str) or "." in runner:
        return runner
    return canonical_runner(runner)


def prepare(options: PipelineOptions, *, streaming: bool, unbounded: bool = False) -> str:
    """Sets the runner (and its options) on ``options``; returns the runner's name.

    ``unbounded``: the pipeline reads a source with no end (an unbounded Kafka read), so it
    runs as a stream (on Prism when the runner is the DirectRunner).
    ``ValueError`` names the missing or bad flag; it is raised before anything is staged.
    """
    standard = options.view_as(StandardOptions)
    streaming = streaming or bool(standard.streaming)
    runner = _canonical(standard.runner)
    if runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        if unbounded:
            _LOG.info("an unbounded Kafka read runs on Prism: --runner=%s", PRISM_RUNNER)
            runner = PRISM_RUNNER
            streaming = True
        else:
            runner = "BundleBasedDirectRunner" if streaming else "FnApiRunner"
    elif not is_local(str(runner)) and not streaming and unbounded:
        _LOG.info(
            "--source=kafka without --stop_at_end or --max_records is an unbounded read: "
            "submitting a streaming job (--streaming)"
        )
        streaming = True
    standard.runner = runner
    if streaming:
        standard.streaming = True
    if runner == "BundleBasedDirectRunner":
        fix_direct_runner_metrics()  # see headwater._compat: counters of every bundle
    if runner == "FnApiRunner":
        skip_embedded_state_cache()  # see headwater._compat: 5x on stateful steps, same output
        shorten_state_sampling()  # see headwater._compat: a bundle's end waits <= 20 ms
        if cloud_left_out():
            lighter_local_workers()  # see headwater._compat: workers start in half the time
    if runner == DATAFLOW_RUNNER:
        _prepare_dataflow(options, streaming=streaming)
    elif runner in PORTABLE_RUNNERS:
        _prepare_portable(options, runner=str(runner))
    elif runner == PRISM_RUNNER:
        prism = options.view_as(PrismRunnerOptions)
        prism.prism_location = find_prism(prism.prism_location)
        options.view_as(DebugOptions).add_experiment(PRISM_NO_SPLIT)
    return str(runner)


# ------------------------------------------------------------------------------------------
# Dataflow


def _prepare_dataflow(options: PipelineOptions, *, streaming: bool) -> None:
    gcp = options.view_as(GoogleCloudOptions)
    where = "with --runner=DataflowRunner"
    if not gcp.project:
        raise ValueError(f"--project is required {where} (the Google Cloud project of the job)")
    if not gcp.region:
        raise ValueError(f"--region is required {where} (e.g. --region=europe-west1)")
    if not gcp.temp_location and not gcp.staging_location:
        raise ValueError(f"--temp_location is required {where} (a gs://bucket/folder)")
    for flag in ("temp_location", "staging_location"):
        value = getattr(gcp, flag)
        if value and not str(value).startswith("gs://"):
            raise ValueError(f"--{flag}={value!r} must be a gs:// path {where}")
    if not gcp.temp_location:
        gcp.temp_location = gcp.staging_location
    if not gcp.staging_location:
        gcp.staging_location = str(gcp.temp_location).rstrip("/") + "/staging"
    _check_update(gcp, streaming=streaming)
    _default_setup_file(options, where)
    if streaming:
        gcp.enable_streaming_engine = True
        options.view_as(DebugOptions).add_experiment("enable_streaming_engine")


def _check_update(gcp: GoogleCloudOptions, *, streaming: bool) -> None:
    mapping = gcp.transform_name_mapping
    if mapping is not None:
        if not gcp.update:
            raise ValueError("--transform_name_mapping only applies with --update")
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValueError(
                f"--transform_name_mapping={mapping!r} must be a JSON object of "
                '"old step label": "new step label"'
            )
    if not gcp.update:
        return
    if not gcp.job_name:
        raise ValueError("--update needs --job_name: the name of the running job to replace")
    if not streaming:
        raise ValueError("--update replaces a running streaming job; add --streaming")


def _default_setup_file(options: PipelineOptions, where: str) -> None:
    """``--setup_file`` := headwater's setup.py unless workers get their code another way."""
    setup = options.view_as(SetupOptions)
    worker = options.view_as(WorkerOptions)
    if setup.setup_file:
        if not os.path.isfile(setup.setup_file):
            raise ValueError(f"--setup_file={setup.setup_file!r} does not exist")
        return
    if setup.requirements_file or setup.extra_packages or worker.sdk_container_image:
        return
    found = find_setup_file()
    if found is None:
        raise ValueError(
            f"--setup_file is required {where}: this headwater is installed without its "
            f"source checkout, so workers cannot build it from setup.py; pass "
            f"--sdk_container_image=IMAGE (an image with headwater installed), "
            f"--extra_package=headwater-*.whl, --setup_file=PATH or set ${SETUP_FILE_ENV}"
        )
    _LOG.info("staging headwater for the workers from %s", found)
    setup.setup_file = found


# ------------------------------------------------------------------------------------------
# Flink and the portable runner


def _prepare_portable(options: PipelineOptions, *, runner: str) -> None:
    portable = options.view_as(PortableOptions)
    if runner == "PortableRunner" and not portable.job_endpoint:
        raise ValueError(
            "--job_endpoint is required with --runner=PortableRunner "
            "(HOST:PORT of a Beam job server, e.g. Flink's on port 8099)"
        )
    if runner == "PortableRunner":  # the job server may be Prism's (other servers ignore it)
        options.view_as(DebugOptions).add_experiment(PRISM_NO_SPLIT)
    flink = options.view_as(FlinkRunnerOptions)
    embedded = flink.flink_master in ("[local]", "[auto]") and not portable.job_endpoint
    if runner == "FlinkRunner" and embedded and not flink.flink_job_server_jar:
        jar = find_flink_job_server_jar()
        if jar is not None:
            _LOG.info("embedded Flink: Beam starts the job server from %s", jar)
            flink.flink_job_server_jar = jar
    environment = (portable.environment_type or "DOCKER").upper()
    if environment == "LOOPBACK":
        return  # the SDK harness is this process: headwater is already importable
    if portable.environment_config or options.view_as(WorkerOptions).sdk_container_image:
        return
    _default_setup_file(options, f"with --runner={runner} --environment_type={environment}")
