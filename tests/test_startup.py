"""A local run imports Beam without its Google Cloud libraries; any other run imports them."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys

import pytest

from headwater import _startup

# In a fresh interpreter (this test process has Beam imported already): load windowed_metrics
# the way `headwater run` does, then report what was imported and whether gs:// resolves.
_PROBE = """
import importlib, json, sys
from headwater._startup import load_pipeline
module = load_pipeline(
    lambda: importlib.import_module("headwater.pipelines.windowed_metrics"), sys.argv[1:]
)
from apache_beam.io.filesystems import FileSystems
try:
    FileSystems.get_filesystem("gs://bucket/events.jsonl")
    gs = True
except ValueError:
    gs = False
masked = "numpy.ma" in sys.modules  # imported by the load, not by a first np.unique per fork
left_out = [
    name
    for name in ("google.cloud.storage", "apache_beam.io.gcp.bigquery", "pymongo")
    if name not in sys.modules
]
import google.cloud.storage  # after the pipeline's import: as usual
from numpy._core.multiarray import _set_madvise_hugepage
huge = _set_madvise_hugepage(True)  # the setting it had
print(json.dumps({"left_out": left_out, "gs": gs, "options": hasattr(module, "Options"),
    "huge_pages": huge, "numpy_ma": masked}))
"""


def _probe(*argv: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_the_module_examples_run():
    outcome = doctest.testmod(_startup)
    assert outcome.attempted > 0
    assert outcome.failed == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--input=events/*.jsonl"],
        ["--runner=PrismRunner", "--source=kafka"],
        ["--runner", "fnapi"],
        ["--runner=DirectRunner", "--runner=prism"],  # the last one counts, as in Beam
    ],
)
def test_a_local_run_leaves_google_cloud_out_of_its_beam_import(argv):
    """Beam takes the refused libraries as not installed, quietly; later imports work."""
    found, stderr = _probe(*argv)
    assert found == {
        "left_out": ["google.cloud.storage", "apache_beam.io.gcp.bigquery", "pymongo"],
        "gs": False,
        "options": True,
        "huge_pages": False,  # numpy's advice off: arrays live for a block
        "numpy_ma": True,  # before the run forks, once
    }
    assert "GCSFileSystem" not in stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--input=events/*.jsonl", "--dead_letter=gs://bucket/dlq"],
        ["--runner=DataflowRunner"],
        ["--runner", "PortableRunner"],
        ["--runner=PrismRunner", "--runner=dataflow"],
    ],
)
def test_a_cloud_run_or_a_gs_path_imports_beam_as_it_is(argv):
    found, _ = _probe(*argv)
    assert found == {
        "left_out": [],
        "gs": True,
        "options": True,
        "huge_pages": True,
        "numpy_ma": found["numpy_ma"],  # as Beam's import leaves it
    }


def test_the_local_worker_imports_beams_worker_without_google_cloud():
    """The SDK worker of a local multi-process run (headwater._local_worker) imports Beam's
    worker as the run's own process imported Beam: without its Google Cloud libraries."""
    probe = (
        "import json, sys\n"
        "from headwater._local_worker import import_harness\n"
        "from headwater._startup import cloud_left_out\n"
        "harness = import_harness()\n"
        "print(json.dumps({'main': callable(harness.main), 'left_out': cloud_left_out(),\n"
        "    'storage': 'google.cloud.storage' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "main": True,
        "left_out": True,
        "storage": False,
    }
    assert "bson" not in done.stderr  # the refusal's own warnings stay quiet


# In a fresh interpreter: the command line's first steps (or none), then numpy's import; the
# process's threads after it, and what OPENBLAS_NUM_THREADS says.
_THREADS = """
import json, os, sys
if sys.argv[1] == "launch":
    from headwater._launch import launch
    launch(["pipelines"])
import numpy
print(json.dumps({"threads": len(os.listdir("/proc/self/task")),
    "setting": os.environ.get("OPENBLAS_NUM_THREADS")}))
"""


def _threads(how: str, **env: str) -> dict:
    import os

    environment = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", _THREADS, how],
        capture_output=True,
        text=True,
        check=True,
        env={**environment, **env},
    )
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_the_command_line_gives_openblas_one_thread_unless_told_otherwise():
    """numpy's OpenBLAS starts a thread per core that spins when it loads: the command line's
    process keeps one thread; a setting of the user's own is left as it is."""
    import os

    assert _threads("launch") == {"threads": 1, "setting": "1"}
    assert _threads("launch", OPENBLAS_NUM_THREADS="2")["setting"] == "2"
    if (os.cpu_count() or 1) > 1:  # the control: without it, OpenBLAS starts its threads
        assert _threads("plain")["threads"] > 1
