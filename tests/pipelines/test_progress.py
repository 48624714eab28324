"""Progress of a local run: every engine counts what it reads; lines every period, none with -q."""

from __future__ import annotations

import io
import threading

import pytest

from headwater import cli
from headwater.devtools.workload import write_jsonl
from headwater.pipelines import windowed_metrics
from headwater.transforms.progress import ProgressLines, count_read, records_read

N = 600


def _argv(tmp_path, *extra: str) -> list[str]:
    source = tmp_path / "events.jsonl"
    if not source.exists():
        write_jsonl(source, N, seed=7)
    return [
        f"--input={source}",
        f"--output={tmp_path / 'rows'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        "--overwrite",
        "--window=fixed:60s",
        *extra,
    ]


@pytest.mark.parametrize(
    ("engine", "reason", "extra"),
    [
        ("columnar", None, ["--runner=FnApiRunner"]),
        ("columnar-replay", None, ["--replay_as_stream"]),
        ("record", "dedup is not keep='first'", ["--runner=FnApiRunner", "--dedup_keep=last"]),
        (
            "record",
            "--replay_engine=teststream",
            ["--replay_as_stream", "--replay_engine=teststream"],
        ),
        ("record", "dedup is not keep='first'", ["--runner=PrismRunner", "--dedup_keep=last"]),
    ],
    ids=["columnar", "columnar-replay", "record-fnapi", "record-teststream", "record-prism"],
)
def test_every_engine_counts_its_records_for_the_progress_lines(tmp_path, engine, reason, extra):
    """Whatever engine runs, the progress count ends at records_in; the summary says why."""
    summary = windowed_metrics.run(_argv(tmp_path, *extra))
    assert summary["engine"] == engine
    if reason is None:
        assert "engine_reason" not in summary
    else:
        assert reason in summary["engine_reason"]
    assert summary["records_in"] == N
    assert records_read() == N


class _Lines(io.StringIO):
    """Collects what is written; ``enough`` is set once ``want`` lines came."""

    def __init__(self, want: int):
        super().__init__()
        self.want = want
        self.enough = threading.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.getvalue().count("\n") >= self.want:
            self.enough.set()
        return written


def test_progress_lines_come_every_period_with_count_rate_and_elapsed():
    """A running ProgressLines prints the records counted so far, their rate and the time."""
    out = _Lines(want=2)
    with ProgressLines(period=0.01, out=out):
        count_read(1234)
        assert out.enough.wait(timeout=10), "no progress lines within 10 s"
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[-1].startswith("headwater: 1,234 records read, ")
    assert lines[-1].endswith(" s")
    assert "/s, " in lines[-1]


def test_no_period_prints_nothing():
    """period=None (headwater -q) starts no thread and prints no line."""
    out = io.StringIO()
    with ProgressLines(period=None, out=out) as progress:
        count_read(5)
        assert progress.line().startswith("headwater: 5 records read")
    assert out.getvalue() == ""
    assert not any(t.name == "headwater-progress" for t in threading.enumerate())


def test_bad_period_names_the_value():
    """A period that is not a positive number of seconds is refused, naming it."""
    with pytest.raises(ValueError, match="progress period 0 must be a positive"):
        ProgressLines(period=0)


def test_cli_run_prints_progress_lines_and_quiet_prints_none(tmp_path, capsys):
    """`headwater --progress 0.01 run ...` prints progress lines; with -q it prints none."""
    argv = _argv(tmp_path, "--runner=FnApiRunner", "--dedup_keep=last")
    assert cli.main(["--progress", "0.01", "run", "windowed_metrics", *argv]) == 0
    err = capsys.readouterr().err
    assert "records read, " in err, err[-2000:]
    assert cli.main(["-q", "--progress", "0.01", "run", "windowed_metrics", *argv]) == 0
    assert "records read" not in capsys.readouterr().err
