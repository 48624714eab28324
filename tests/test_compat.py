"""Fixes for Beam behaviour: metrics counted in every bundle; local state sampling period."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream

from headwater._compat import fix_direct_runner_metrics
from headwater.core.accounting import Accounting
from headwater.transforms.accounting import CountAs


def test_streaming_direct_runner_counts_elements_of_every_bundle():
    """Three elements in three TestStream bundles count as 3, not as the first bundle's 1."""
    assert fix_direct_runner_metrics()
    stream = (
        TestStream()
        .add_elements(["a"])
        .advance_watermark_to(5)
        .add_elements(["b"])
        .advance_watermark_to(10)
        .add_elements(["c", "d"])
        .advance_watermark_to_infinity()
    )
    p = TestPipeline(
        runner="BundleBasedDirectRunner", options=PipelineOptions(streaming=True), blocking=True
    )
    _ = p | stream | CountAs("records_in") | beam.Filter(lambda e: e != "b") | CountAs("output")
    accounting = Accounting.from_result(p.run())
    assert (accounting.records_in, accounting.output) == (4, 3)


def test_fix_is_idempotent():
    """Applying the fix twice keeps one wrapper."""
    from apache_beam.runners.worker import statesampler

    before = statesampler.StateSampler.scoped_state
    assert fix_direct_runner_metrics()
    assert statesampler.StateSampler.scoped_state is before


def test_local_fnapi_runs_sample_state_every_20_ms_at_most():
    """prepare() for the FnApiRunner makes new state samplers sleep at most 20 ms."""
    from apache_beam.runners.worker import statesampler
    from apache_beam.utils.counters import CounterFactory

    from headwater import runners
    from headwater._compat import LOCAL_SAMPLING_PERIOD_MS

    runners.prepare(PipelineOptions(["--runner=DirectRunner"]), streaming=False)
    sampler = statesampler.StateSampler("step", CounterFactory())
    assert sampler.sampling_period_ms == LOCAL_SAMPLING_PERIOD_MS == 20


def test_local_workers_start_headwaters_worker_only_for_beams_own_command():
    """lighter_local_workers() turns Beam's local worker command into headwater's (in a fresh
    interpreter: the patch is process-wide); any other command is left as it is."""
    import json
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "from apache_beam.transforms.environments import SubprocessSDKEnvironment as E\n"
        "from headwater._compat import lighter_local_workers\n"
        "beams = f'{sys.executable} -m apache_beam.runners.worker.sdk_worker_main'\n"
        "first, again = lighter_local_workers(), lighter_local_workers()\n"
        "print(json.dumps([first, again, E.from_command_string(beams).command_string,\n"
        "    E.from_command_string('my-worker --flag').command_string]))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        True,
        True,
        f"{sys.executable} -m headwater._local_worker",
        "my-worker --flag",
    ]
