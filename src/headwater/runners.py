"""Which runner a pipeline runs on, and the runner-specific options headwater sets.

Local runs never wait on Beam's Prism download: ``DirectRunner`` (or no runner) maps to the
``FnApiRunner`` for batch and the ``BundleBasedDirectRunner`` for streaming (``TestStream``).
Remote runners (Dataflow, Flink, the portable runner) are passed through unchanged.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

__all__ = ["LOCAL_RUNNERS", "is_local", "prepare"]

LOCAL_RUNNERS = ("DirectRunner", "FnApiRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def is_local(runner: str) -> bool:
    """Whether ``runner`` runs in this process (results can be waited for and summarized)."""
    return runner in LOCAL_RUNNERS


def prepare(options: PipelineOptions, *, streaming: bool) -> str:
    """Sets the runner (and its options) on ``options``; returns the runner's name."""
    standard = options.view_as(StandardOptions)
    streaming = streaming or bool(standard.streaming)
    runner = standard.runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner"):
        runner = "BundleBasedDirectRunner" if streaming else "FnApiRunner"
    standard.runner = runner
    if streaming:
        standard.streaming = True
    return str(runner)
