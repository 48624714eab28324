"""The early parse of a local run's input (headwater.columnar.early, headwater._launch): a real
forked process in a fresh interpreter (this one has Beam imported: nothing is forked here), and
the command line's runs with and without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headwater import _launch
from headwater.columnar import early, jsonblocks
from headwater.core.forked import CAN_FORK
from headwater.devtools.bench_e2e import COMPUTATION_FLAGS

pytestmark = pytest.mark.skipif(not CAN_FORK, reason="forks on Linux only")

# In a fresh interpreter: start the early process for argv[1], wait (with a deadline) until it
# has finished its first block, then claim argv[2] (or discard) and report what is left.
_PROBE = """
import json, os, sys, time
from headwater.columnar import early
path, claimed, how = sys.argv[1:4]
if how == "beam":
    import apache_beam
early.start(lambda: path)
started = early._EARLY[0]
report = {"started": started is not None}
if started is not None:
    first = os.path.join(started.folder, "1")
    deadline = time.monotonic() + 60
    while not os.path.exists(first) and time.monotonic() < deadline:
        time.sleep(0.005)  # a condition with a deadline: the first block's file
    if how == "discard":
        early.discard()
        spool = None
    else:
        spool = early.claim(claimed)
    try:
        os.kill(started.pid, 0)
        report["alive"] = True
    except ProcessLookupError:
        report["alive"] = False
    report["blocks"] = None if spool is None else sorted(spool.first_lines)
    report["folder"] = os.path.isdir(started.folder)
    report["again"] = early.claim(claimed) is not None
print(json.dumps(report))
"""


def _probe(path: Path, claimed: Path, how: str = "claim", **env: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(claimed), how],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _events(path: Path, count: int, *, width: int = 0) -> Path:
    """``count`` JSON lines of the reference shape (``width``: padded with spaces to it)."""
    with path.open("w") as out:
        for i in range(count):
            line = json.dumps(
                {
                    "event_id": f"e{i - 1 if i % 11 == 0 else i}",
                    "user_id": f"u{i % 97}",
                    "event_time": 1_700_000_000_000 + 37 * i,
                    "amount": i % 500 + 0.25,
                },
                separators=(",", ":"),
            )
            out.write(line[:-1] + " " * max(0, width - len(line)) + "}\n")
    return path


def test_the_early_process_hands_its_finished_blocks_to_a_claim_of_the_same_file(tmp_path):
    path = _events(tmp_path / "events.jsonl", 200_000)
    report = _probe(path, path)
    assert report["started"]
    assert report["blocks"][0] == 1
    assert len(report["blocks"]) >= 1
    assert report["alive"] is False  # stopped (and reaped) by the claim
    assert report["folder"]  # the claimer's to remove
    assert report["again"] is False  # claimed once


def test_a_claim_of_another_file_or_a_discard_removes_the_early_folder(tmp_path):
    path = _events(tmp_path / "events.jsonl", 50_000)
    other = _events(tmp_path / "other.jsonl", 10)
    for report in (_probe(path, other), _probe(path, path, "discard")):
        assert report["started"]
        assert report["blocks"] is None
        assert report["alive"] is False
        assert report["folder"] is False


def test_nothing_is_forked_with_beam_imported_or_when_turned_off(tmp_path):
    path = _events(tmp_path / "events.jsonl", 10)
    assert _probe(path, path, "beam") == {"started": False}
    assert _probe(path, path, **{early.ENV: "0"}) == {"started": False}
    early.start(lambda: str(path))  # this process has Beam imported
    assert early._EARLY[0] is None


def test_only_a_local_batch_run_of_one_large_json_lines_file_is_parsed_early(tmp_path):
    big = tmp_path / "big.jsonl"
    with big.open("wb") as out:  # a sparse file as large as forked decoding asks for
        out.truncate(jsonblocks.FORK_DECODE_BYTES)
    small = _events(tmp_path / "small.jsonl", 10)
    args = ["--source=files", f"--input={big}", "--format=json"]
    assert _launch.local_json_input(args) == str(big)
    assert _launch.local_json_input([*args, "--window=fixed:60s"]) == str(big)
    for other in (
        ["--source=kafka", f"--input={big}"],
        [f"--input={big}", "--format=avro"],
        [*args, "--replay_as_stream"],
        ["--source=files", f"--input={tmp_path}/*.jsonl"],
        ["--source=files", f"--input={small}"],  # too small to fork for
        ["--source=files", f"--input={tmp_path}/missing.jsonl"],
        ["--source=files", f"--input={big}.gz"],
    ):
        assert _launch.local_json_input(other) is None, other


def _run(tmp_path: Path, name: str, path: Path, *flags: str, **env: str) -> tuple[dict, str]:
    out = tmp_path / name
    temp = tmp_path / f"{name}-tmp"
    temp.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater",
            "-v",
            "-q",
            "run",
            "windowed_metrics",
            "--source=files",
            f"--input={path}",
            "--format=json",
            *COMPUTATION_FLAGS,  # the bench's computation
            "--window=fixed:60s",
            f"--output={out}/rows",
            f"--dead_letter={out}/dead",
            *flags,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TMPDIR": str(temp), **env},
    )
    assert list(temp.iterdir()) == []  # no early folder left behind
    files = {str(f.relative_to(out)): f.read_bytes() for f in out.rglob("*") if f.is_file()}
    return files, done.stderr


@pytest.mark.slow
def test_a_run_with_its_input_parsed_early_writes_the_same_files(tmp_path):
    """A 32 MiB file: the run that parsed it early (the claim is logged) writes the bytes of
    the run that did not; a run on the parallel path discards the early process."""
    path = _events(tmp_path / "events.jsonl", 280_000, width=120)
    assert path.stat().st_size >= jsonblocks.FORK_DECODE_BYTES
    parsed, log = _run(tmp_path, "early", path)
    assert "blocks parsed while the pipeline started" in log
    plain, log = _run(tmp_path, "plain", path, **{early.ENV: "0"})
    assert "parsed while" not in log
    assert len(plain) > 3
    assert parsed == plain
    _, log = _run(tmp_path, "parallel", path, "--columnar_shards=2")
    assert "parsed while" not in log


# In a fresh interpreter: start the early process, print its folder, and die without a word.
_KILLED = """
import os, signal, sys
from headwater.columnar import early
early.start(lambda: sys.argv[1])
print(early._EARLY[0].folder, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("count", [50, 200_000], ids=["finished", "parsing"])
def test_an_early_process_whose_run_was_killed_removes_its_folder(tmp_path, count):
    """The run is SIGKILLed (no atexit) while its early process parses or after it finished:
    reading the run's output to its end does not wait for the early process (its streams are
    /dev/null), which removes its folder and exits."""
    path = _events(tmp_path / "events.jsonl", count)
    done = subprocess.run(
        [sys.executable, "-c", _KILLED, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == -9
    folder = Path(done.stdout.strip())
    assert folder.parent == tmp_path
    deadline = time.monotonic() + 60
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # a condition with a deadline: the folder is gone
    assert not folder.exists()
