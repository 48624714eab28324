"""A local run imports Apache Beam without its Google Cloud integrations (no Beam import here).

Apache Beam imports every Google Cloud client library it finds when it is imported: Cloud
Storage (for ``gs://`` paths), BigQuery, Pub/Sub and the Dataflow API, with google-auth and
google-api-core under them (and MongoDB's client, a dependency of Beam). headwater installs them
(Dataflow runs and Flex Templates need them), so every ``headwater run`` paid for them: about a
third of Beam's import time on this machine kind (``python -X importtime``), before the first
record of a local run, which uses none of them.

:func:`load_pipeline` imports a pipeline's module for ``headwater run``. When the run is local
(no ``--runner``, or a runner that runs here: the direct runners, the FnApiRunner, Prism), no
argument names a ``gs://`` path, and Beam is not imported yet in this process, it imports the
module with those libraries refused (``ImportError``), which Beam takes as "not installed": its
Google Cloud IO, ``gs://`` file system and Dataflow runner stay unavailable *in this process*,
which the run does not use. Anything imported after that, lazily, imports normally. Any other
run (Dataflow, a portable job server, a ``gs://`` path anywhere in the arguments) imports Beam
as it is.

Such a run also asks numpy not to advise transparent huge pages for its large arrays (numpy's
default on Linux): a local run's arrays live for one block and are freed, and a huge page is
zeroed whole (2 MiB) when first touched, which cost a run over 1M events about 0.15 s of system
time in page faults. It imports ``numpy.ma`` too, which numpy imports on a first ``np.unique``:
once before the run forks its decoding processes instead of once in each.

>>> runs_here_without_cloud(["--input=events/*.jsonl", "--runner=FnApiRunner"])
True
>>> runs_here_without_cloud(["--input=gs://bucket/events/*.jsonl"])
False
>>> runs_here_without_cloud(["--runner", "DataflowRunner"])
False
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "DATAFLOW_RUNNER",
    "LOCAL_RUNNERS",
    "PORTABLE_RUNNERS",
    "PRISM_RUNNER",
    "canonical_runner",
    "cloud_left_out",
    "load_pipeline",
    "load_without_cloud",
    "runs_here_without_cloud",
]

# The runners headwater knows by name (headwater.runners re-exports them; here without Beam).
LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
PORTABLE_RUNNERS = ("FlinkRunner", "PortableRunner")
DATAFLOW_RUNNER = "DataflowRunner"
PRISM_RUNNER = "PrismRunner"

_CANONICAL = {
    name.lower(): name
    for name in (*LOCAL_RUNNERS, *PORTABLE_RUNNERS, DATAFLOW_RUNNER, PRISM_RUNNER)
}

#: Beam imports these only inside ``try: ... except ImportError`` (checked for apache-beam 2.77
#: by tests/test_startup.py): the Google Cloud clients, Beam's own BigQuery IO (which imports
#: ``requests`` and GCE metadata helpers even without the clients) and MongoDB's client.
_LEFT_OUT = (
    "apache_beam.io.gcp.bigquery",
    "apitools",
    "google.api_core",
    "google.auth",
    "google.cloud.bigquery",
    "google.cloud.bigquery_storage_v1",
    "google.cloud.dataflow",
    "google.cloud.dataflow_v1beta3",
    "google.cloud.pubsub",
    "google.cloud.pubsub_v1",
    "google.cloud.storage",
    "google.iam",
    "google.oauth2",
    "google.pubsub_v1",
    "google.resumable_media",
    "google_auth_httplib2",
    "oauth2client",
    "pymongo",
)

T = TypeVar("T")


def canonical_runner(name: str) -> str:
    """A runner's name as Beam spells it, from any case, with or without "Runner"; a name
    headwater does not know, as given.

    >>> canonical_runner("prism"), canonical_runner("FNAPIRUNNER"), canonical_runner("Mine")
    ('PrismRunner', 'FnApiRunner', 'Mine')
    """
    key = name.lower()
    return _CANONICAL.get(key, _CANONICAL.get(key + "runner", name))


def _runner(argv: Sequence[str]) -> str | None:
    """The last ``--runner`` in ``argv`` (Beam's parser keeps the last one), or ``None``."""
    runner = None
    for i, arg in enumerate(argv):
        if arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        elif arg == "--runner" and i + 1 < len(argv):
            runner = argv[i + 1]
    return runner


def runs_here_without_cloud(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a run on this machine that names no ``gs://`` path."""
    if any("gs://" in arg for arg in argv):
        return False
    runner = _runner(argv)
    if runner is None:
        return True
    return canonical_runner(runner) in (*LOCAL_RUNNERS, PRISM_RUNNER)


class _RefuseGoogleCloud(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        for name in _LEFT_OUT:
            if fullname == name or fullname.startswith(name + "."):
                raise ImportError(f"{fullname} is left out of a local run's Beam import")
        return None


_CLOUD_LEFT_OUT = [False]  # whether this process imported Beam with them left out


def cloud_left_out() -> bool:
    """Whether this process imported Beam without its Google Cloud libraries (a local run)."""
    return _CLOUD_LEFT_OUT[0]


def load_without_cloud(load: Callable[[], T]) -> T:
    """``load()`` with Beam's Google Cloud libraries refused (see the module docstring)."""
    refuse = _RefuseGoogleCloud()
    # Beam warns that it could not load its gs:// file system and MongoDB's bson: true, and meant.
    quiet = [logging.getLogger(f"apache_beam.io.{name}") for name in ("filesystems", "mongodbio")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    sys.meta_path.insert(0, refuse)
    try:
        loaded = load()
        _CLOUD_LEFT_OUT[0] = True
        return loaded
    finally:
        sys.meta_path.remove(refuse)
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def load_pipeline(load: Callable[[], T], argv: Sequence[str]) -> T:
    """``load()`` (a pipeline module's import), without Beam's Google Cloud libraries when
    :func:`runs_here_without_cloud` and Beam is not imported yet; else ``load()`` as it is."""
    if "apache_beam" in sys.modules or not runs_here_without_cloud(argv):
        return load()
    loaded = load_without_cloud(load)
    from numpy._core.multiarray import (  # type: ignore[attr-defined]  # numpy 2, untyped
        _set_madvise_hugepage,
    )

    _set_madvise_hugepage(False)
    import numpy.ma  # noqa: F401 -- numpy imports it on a first np.unique: once here, not per fork

    return loaded
