"""Parsing a local run's input while Apache Beam is imported (``headwater run``: one core idles).

A local ``headwater run windowed_metrics`` spends its first ~0.8 s on one core: the interpreter,
Apache Beam's import, the pipeline's construction and the runner's start. The columnar path
then decodes a large JSON-lines file in forked processes (:mod:`headwater.columnar.reader`).
:func:`start` lets the idle core begin that work at once: called first thing by the command
line (before Beam is imported), it forks one process that reads the command line's flags
(:mod:`headwater.pipelines.options`, the same declarations) and, when they name one local,
uncompressed JSON-lines file as large as the reader decodes in forked processes, cuts it into
the reader's blocks (:func:`~headwater.columnar.jsonblocks.json_pieces`), lays out each
block's lines (:func:`~headwater.columnar.jsonblocks.block_layout`, without a size limit) and
parses its runs with pyarrow (:func:`~headwater.columnar.jsonruns.parse_run`): none of it
depends on the run's other options. Each block's layout and tables are pickled into a
temporary folder, one file per block in file order, each renamed into place whole.

When the columnar DoFn starts decoding a file in forked processes, it calls :func:`claim`: the
early process is killed (a block it had not finished is not in the folder) and, if it read the
same file (device, inode, size and modification time), the decoders take the blocks it
finished (:meth:`Spool.take`) and only check them: the fast checks and the record path's code
for the lines set aside, as for a block they parse. A block whose layout the run's options
would change (a parsed line longer than ``--max_record_bytes``, a column the checks take only
as integers read as floating point) is decoded anew. The rows, counters and dead letters are
the same either way; only where a block was parsed differs.

Nothing is forked when Beam is already imported (a program calling
:func:`headwater.cli.main`), when other threads run, without ``fork``, or with
``HEADWATER_EARLY_PARSE=0``. The early process parses at most ``MAX_BLOCKS`` blocks, then
waits; an unclaimed one is killed and its folder removed by :func:`discard` (a run that does
not decode the file in forked processes) or when the process exits. When the run's process
dies without a word (``SIGKILL``, the kernel's OOM killer), the early process notices (its
parent changes while it parses; the end of a pipe the run holds while it waits), removes its
folder and exits. Its standard streams are /dev/null.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from headwater.core.forked import CAN_FORK

__all__ = ["ENV", "MAX_BLOCKS", "EarlyBlock", "Spool", "claim", "discard", "start"]

#: ``HEADWATER_EARLY_PARSE=0`` forks no early process (to compare).
ENV = "HEADWATER_EARLY_PARSE"
#: The blocks an early process parses at most (192 MiB of JSON; ~20 while Beam is imported).
MAX_BLOCKS = 48

_LOG = logging.getLogger(__name__)
_SOURCE = "source"  # the folder's file naming the input: device, inode, size, mtime


@dataclasses.dataclass
class _Early:
    pid: int
    folder: str
    held: int  # the pipe's write end: closed with the run's process (and the decoders it forks)


_EARLY: list[_Early | None] = [None]
_STARTED = [False]


def start(find_input: Callable[[], str | None]) -> None:
    """Forks the early process, which parses the file ``find_input()`` names (if any: it runs
    in the early process, and may import what the parent has not yet); once per process,
    never raises."""
    if _STARTED[0]:
        return
    _STARTED[0] = True
    if (
        os.environ.get(ENV, "1") == "0"
        or not CAN_FORK
        or "apache_beam" in sys.modules
        or threading.active_count() > 1
    ):
        return
    try:
        folder = tempfile.mkdtemp(prefix="headwater-early-")
    except OSError:
        return
    try:
        alive, held = os.pipe()  # EOF on ``alive`` once the run's processes are all gone
        pid = os.fork()
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(held)
            _detach()
            path = find_input()
            if path is not None:
                _parse_ahead(path, folder, os.getppid())
                os.read(alive, 1)  # until the run claims (kills) it or ends without a word
        except BaseException:  # nothing to report: the run decodes as usual
            code = 1
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # reached only when nobody claimed it
            os._exit(code)
    os.close(alive)
    _EARLY[0] = _Early(pid, folder, held)
    atexit.register(discard)


def _detach() -> None:
    """The early process's standard streams go to /dev/null: it writes nothing, and a caller
    reading the run's output to its end does not wait for it."""
    null = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(null, stream)
    os.close(null)


def claim(path: str) -> Spool | None:
    """The early process's finished blocks of ``path`` (it is stopped first), else ``None``.

    The caller owns the spool (:meth:`Spool.remove` when its decoding is over); a second claim
    gets ``None``.
    """
    early = _stop()
    if early is None:
        return None
    try:
        with open(os.path.join(early.folder, _SOURCE), encoding="ascii") as handle:
            source = handle.read()
        same = source == _identity(path)
    except OSError:
        same = False
    spool = Spool(early.folder)
    if not same:
        spool.remove()
        return None
    _LOG.info("%s: %d blocks parsed while the pipeline started", path, len(spool.first_lines))
    return spool


def discard() -> None:
    """Stops an unclaimed early process and removes its folder (nothing when there is none)."""
    early = _stop()
    if early is not None:
        shutil.rmtree(early.folder, ignore_errors=True)


def _stop() -> _Early | None:
    early, _EARLY[0] = _EARLY[0], None
    if early is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(early.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(early.pid, 0)
        os.close(early.held)
    return early


@dataclasses.dataclass
class EarlyBlock:
    """A block as the early process left it: its size, layout (without its bytes), the parsed
    runs (:func:`~headwater.columnar.jsonruns.parse_run`'s tables and lines set aside) and the
    odd kinds known once it was parsed."""

    size: int
    layout: Any  # jsonblocks.BlockLayout, text None
    parsed: list[tuple[list[tuple[Any, Any]], list[int]]]
    odd_kinds: frozenset[tuple[str, str]]

    def fits(self, size: int, max_bytes: int | None, whole: tuple[str, ...]) -> bool:
        """Whether the block is what the reader would parse with these options: the same
        bytes, no parsed line over ``max_bytes``, no column of ``whole`` read as floats."""
        if size != self.size:
            return False
        if max_bytes is not None and self.layout.longest_parsed() > max_bytes:
            return False
        return not any(
            _floating(table, name)
            for tables, _ in self.parsed
            for _, table in tables
            for name in whole
        )


def _floating(table: Any, name: str) -> bool:
    import pyarrow as pa

    index = table.schema.get_field_index(name)
    return index >= 0 and pa.types.is_floating(table.schema.field(index).type)


class Spool:
    """The blocks an early process finished, by their first line number."""

    def __init__(self, folder: str):
        self.folder = folder
        names = os.listdir(folder)
        self.first_lines = {int(name) for name in names if name.isdigit()}

    def take(self, first_line: int) -> EarlyBlock | None:
        """The block starting at line ``first_line``, if the early process finished it."""
        if first_line not in self.first_lines:
            return None
        with open(os.path.join(self.folder, str(first_line)), "rb") as handle:
            block: EarlyBlock = pickle.load(handle)  # noqa: S301 -- our own child wrote it
        return block

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _identity(path: str) -> str:
    """What names a file's bytes here: device, inode, size and modification time."""
    info = os.stat(path)
    return f"{info.st_dev} {info.st_ino} {info.st_size} {info.st_mtime_ns}"


def _parse_ahead(path: str, folder: str, parent: int) -> None:
    """The early process: the file's first blocks laid out and parsed, one file each."""
    from headwater.columnar.jsonblocks import block_layout, json_pieces
    from headwater.columnar.jsonruns import parse_run

    odd_kinds: set[tuple[str, str]] = set()
    with open(path, "rb") as handle:
        with open(os.path.join(folder, _SOURCE), "w", encoding="ascii") as out:
            out.write(_identity(path))
        for index, (first_line, block) in enumerate(json_pieces(handle)):
            if index >= MAX_BLOCKS:
                return
            if os.getppid() != parent:  # the run ended abruptly (killed): its folder goes
                raise ProcessLookupError(parent)
            layout = block_layout(block, None)
            parsed = [parse_run(*layout.run_text(run), (), odd_kinds) for run in layout.runs]
            layout.text = None  # the decoders read the block themselves
            done = EarlyBlock(len(block), layout, parsed, frozenset(odd_kinds))
            partial = os.path.join(folder, f".{first_line}")
            with open(partial, "wb") as out:
                pickle.dump(done, out, protocol=pickle.HIGHEST_PROTOCOL)
            os.rename(partial, os.path.join(folder, str(first_line)))
