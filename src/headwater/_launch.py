"""What ``headwater`` does first in its process, before its command line is imported.

:func:`launch` is called by ``python -m headwater`` before it imports :mod:`headwater.cli`, and
by :func:`headwater.cli.console` (the ``headwater`` script) first thing:

- OpenBLAS, which numpy loads, gets one thread (``OPENBLAS_NUM_THREADS=1``, unless the
  environment sets it): headwater does no linear algebra, and each process that loads OpenBLAS
  with more starts a thread per core that spins ~0.1 s of CPU waiting for work (2.5% of a local
  run's CPU samples in ``perf``, on the 2 cores the run needs);
- :func:`start_early_parse` forks the process that parses a local ``windowed_metrics`` run's
  large JSON-lines input while Beam is imported (:mod:`headwater.columnar.early`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from headwater._startup import runs_here_without_cloud

__all__ = ["OPENBLAS_THREADS", "launch", "local_json_input", "start_early_parse"]

#: The environment variable OpenBLAS reads its thread count from, when it is loaded.
OPENBLAS_THREADS = "OPENBLAS_NUM_THREADS"


# compressed files (by extension, as Beam detects them) are not parsed early
_COMPRESSED = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".lzma", ".xz", ".snappy", ".z")


def launch(argv: Sequence[str]) -> None:
    """The command line's first steps in its process, for ``headwater`` arguments ``argv``
    (see the module's docstring); before numpy is imported, or OpenBLAS keeps its threads."""
    os.environ.setdefault(OPENBLAS_THREADS, "1")
    start_early_parse(argv)


def start_early_parse(argv: Sequence[str]) -> None:
    """Forks the early parse (:func:`headwater.columnar.early.start`) for ``headwater``
    arguments ``argv`` that run ``windowed_metrics`` here; the early process reads the flags."""
    argv = list(argv)
    if "run" not in argv:
        return
    at = argv.index("run")
    if argv[at + 1 : at + 2] != ["windowed_metrics"]:
        return
    args = list(argv[at + 2 :])
    if not runs_here_without_cloud(args) or "--streaming" in args:
        return
    from headwater.columnar import early

    early.start(lambda: local_json_input(args))


def local_json_input(args: Sequence[str]) -> str | None:
    """The one local, uncompressed JSON-lines file a batch run of files with pipeline flags
    ``args`` reads, when it is large enough to be decoded in forked processes; else ``None``.

    The flags are read with their declarations (:mod:`headwater.pipelines.options`); a guess
    that does not hold only costs the early process's work (the reader checks the file).
    """
    import argparse
    import os

    from headwater.columnar import jsonblocks
    from headwater.pipelines.options import FLAGS, value

    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for name in ("source", "input", "format", "replay_as_stream"):
        FLAGS[name].add_to(parser)
    given = vars(parser.parse_known_args(args)[0])
    values = {name: FLAGS[name].convert(raw) for name, raw in given.items()}
    path = values.get("input")
    if (
        value(values, "source") != "files"
        or value(values, "format") != "json"
        or values.get("replay_as_stream")
        or not isinstance(path, str)
        or any(char in path for char in "*?[")
        or "://" in path
        or path.lower().endswith(_COMPRESSED)
        or not os.path.isfile(path)
    ):
        return None
    return path if os.path.getsize(path) >= jsonblocks.FORK_DECODE_BYTES else None
