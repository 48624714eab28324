"""The columnar fast path of ``windowed_metrics``: files read in blocks, decoded into Arrow.

Batch runs over JSON-lines, Parquet or Avro files (and ``--replay_as_stream`` replays of them)
are computed over blocks of records instead of one record at a time, with the record path's
rules (:mod:`headwater.windowing.rules`) and its own code for every record the vectorized
checks do not accept. The modules, bottom up:

``jsonblocks`` a JSON-lines file in blocks, each block's lines laid out for pyarrow;
``jsonruns``   a run of lines parsed by pyarrow, the lines it refuses set aside;
``early``      the input parsed by a process forked while Beam is imported (``headwater run``);
``idtable``    the carried ``id -> anchor`` table of the dedup (numpy open addressing);
``state``      one run's configuration and state: accepted rows, dedup, pre-aggregation, merge;
``reader``     files into blocks: JSON lines parsed by pyarrow on a thread pool, Parquet, Avro;
``write``      merged rows as windowed values, or written column-wise into the window files;
``batch``      the batch DoFn (reader + state + writer);
``parallel``   the batch path spread over workers: splits, id-hash shards, per-window merge;
``replay``     the replay DoFn: the stream's watermark replayed, late records, windows closing;
``transform``  the PTransforms and the functions that say whether a configuration qualifies.

``jsonblocks``, ``jsonruns`` and ``early`` do not import Apache Beam (the command line's early
parse runs before Beam is imported), so the names below are imported on first use.
"""

from typing import Any

__all__ = [
    "COLUMNAR_FORMATS",
    "ComputeWindowedMetricsColumnar",
    "ComputeWindowedMetricsParallel",
    "ReplayWindowedMetricsColumnar",
    "columnar_supported",
    "columnar_unsupported_reason",
    "parallel_unsupported_reason",
    "replay_supported",
    "replay_unsupported_reason",
]


def __getattr__(name: str) -> Any:
    if name in ("ComputeWindowedMetricsParallel", "parallel_unsupported_reason"):
        from headwater.columnar import parallel

        return getattr(parallel, name)
    if name in __all__:
        from headwater.columnar import transform

        return getattr(transform, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
