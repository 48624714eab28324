"""The SDK worker of a local multi-process run, with Beam imported as the run's own process did.

A local FnApiRunner run with ``--direct_running_mode=multi_processing`` starts one Python SDK
worker process per ``--direct_num_workers``; Beam's command for it imports Beam whole, Google
Cloud libraries included (about half of the worker's start-up here: 1.2-1.3 s against 0.6-0.7 s
without them). When the run's own process left them out (:func:`headwater._startup.
cloud_left_out`), :func:`headwater._compat.lighter_local_workers` has the runner start this
module instead: the same worker (``apache_beam.runners.worker.sdk_worker_main``), imported
without them. Anything imported later, by the pipeline's own code, imports normally.
"""

from __future__ import annotations

import sys
from typing import Any

from headwater._startup import load_without_cloud

__all__ = ["import_harness", "main"]


def import_harness() -> Any:
    """Beam's SDK worker module, imported without Beam's Google Cloud libraries."""

    def load() -> Any:
        from apache_beam.runners.worker import sdk_worker_main

        return sdk_worker_main

    return load_without_cloud(load)


def main() -> None:
    import_harness().main(sys.argv)


if __name__ == "__main__":
    main()
