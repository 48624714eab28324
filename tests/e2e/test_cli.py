"""The `headwater` CLI as a subprocess: batch, bounded Kafka and stream replay end to end.

Each run's output rows are compared with an independent plain-Python computation of the same
semantics (``headwater.devtools.reference``), and its accounting identity is checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from headwater.devtools.reference import windowed_metrics_reference
from headwater.devtools.workload import generate, write_jsonl

pytestmark = pytest.mark.e2e

N = 3_000


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _rows(folder: Path) -> list[tuple]:
    rows = []
    for path in sorted(folder.rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            rows.append(
                (
                    row["window_start"].isoformat(),
                    row["key"],
                    row["count"],
                    round(row["sum_amount"], 6),
                )
            )
    return sorted(rows)


def _expected(reference) -> list[tuple]:
    return sorted(
        (r["window_start"].isoformat(), r["key"], r["count"], round(r["sum_amount"], 6))
        for r in reference["rows"].values()
    )


def _metrics_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "run",
        "windowed_metrics",
        "--runner=DirectRunner",
        "--event_time_field=event_time",
        "--event_time_unit=ms",
        "--id_field=event_id",
        "--dedup_horizon=10m",
        "--key_field=user_id",
        "--window=fixed:60s",
        "--allowed_lateness=0s",
        "--metrics=count,sum:amount",
        "--output_format=parquet",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        f"--summary_json={tmp_path / 'summary.json'}",
        *extra,
    ]


def _summary(tmp_path: Path) -> dict:
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records_in"] == (
        summary["output"] + summary["duplicate"] + summary["dead_letter"] + summary["late"]
    )
    assert summary["identity_holds"] is True
    return summary


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_batch_over_files_matches_plain_python_and_reruns_byte_identical(tmp_path):
    """Batch over files equals the reference; a re-run rewrites byte-identical files."""
    write_jsonl(tmp_path / "events.jsonl", N, seed=5, malformed_frac=0.02)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    reference = windowed_metrics_reference(lines, window_s=60)
    args = _metrics_args(tmp_path, "--source=files", "--input=events.jsonl", "--format=json")
    first = _cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "records_in == output + duplicate + dead_letter + late: holds" in first.stdout
    summary = _summary(tmp_path)
    assert {
        k: summary[k] for k in ("records_in", "output", "duplicate", "dead_letter", "late")
    } == {k: reference[k] for k in ("records_in", "output", "duplicate", "dead_letter", "late")}
    assert _rows(tmp_path / "out") == _expected(reference)
    letters = [
        json.loads(x)
        for p in (tmp_path / "dlq").glob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert len(letters) == reference["dead_letter"]
    assert all(letter["origin"]["file"].endswith("events.jsonl") for letter in letters)
    before, letters_before = _digests(tmp_path / "out"), _digests(tmp_path / "dlq")
    second = _cli(*args, "--overwrite", cwd=tmp_path)  # a used folder needs --overwrite
    assert second.returncode == 0, second.stderr[-3000:]
    assert _digests(tmp_path / "out") == before
    # Batch dead-letter files leave out the wall-clock failed_at: the same bytes too.
    assert _digests(tmp_path / "dlq") == letters_before


@pytest.mark.integration
def test_bounded_kafka_read_matches_plain_python(tmp_path, kafka_bootstrap, kafka_topic):
    """`headwater generate --topic` then a bounded read equals the reference computation."""
    generated = _cli(
        "generate",
        f"--topic={kafka_topic}",
        f"--bootstrap_servers={kafka_bootstrap}",
        "--partitions=3",
        f"--events={N}",
        "--seed=9",
        "--malformed_frac=0.02",
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    lines = [e.line for e in generate(N, seed=9, malformed_frac=0.02)]
    reference = windowed_metrics_reference(lines, window_s=60)
    result = _cli(
        *_metrics_args(
            tmp_path,
            "--source=kafka",
            f"--bootstrap_servers={kafka_bootstrap}",
            f"--topic={kafka_topic}",
            "--start=earliest",
            "--stop_at_end",
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(tmp_path)
    assert summary["records_in"] == N
    # Per-partition order is kept but partitions interleave, so which copy of an id arrives
    # first can differ from the file order only between partitions; copies share bytes, so
    # the rows and counters are the same.
    assert (summary["duplicate"], summary["dead_letter"]) == (
        reference["duplicate"],
        reference["dead_letter"],
    )
    assert _rows(tmp_path / "out") == _expected(reference)


@pytest.mark.parametrize(
    ("engine", "runner"),
    [("auto", "FnApiRunner"), ("teststream", "BundleBasedDirectRunner")],
)
def test_stream_replay_routes_late_events_and_matches_reference(tmp_path, engine, runner):
    """--replay_as_stream, both engines: late events go to late; rows equal the reference."""
    events = list(generate(N, seed=13, malformed_frac=0.01, late_frac=0.02))
    (tmp_path / "events.jsonl").write_bytes(b"".join(e.line + b"\n" for e in events))
    late = [e.line for i, e in enumerate(events) if e.tag == "late" and i >= 1_000]
    assert late
    reference = windowed_metrics_reference(
        [e.line for e in events], window_s=60, late_lines=frozenset(late)
    )
    result = _cli(
        *_metrics_args(
            tmp_path,
            "--source=files",
            "--input=events.jsonl",
            "--replay_as_stream",
            f"--replay_engine={engine}",
            "--max_out_of_orderness=5s",
        ),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(tmp_path)
    assert summary["late"] == len(late)
    assert summary["runner"] == runner
    late_rows = [
        json.loads(x)
        for p in (tmp_path / "dlq" / "late").rglob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert sorted(
        json.loads(__import__("base64").b64decode(r["payload_b64"]))["event_id"] for r in late_rows
    ) == sorted(json.loads(x)["event_id"] for x in late)
    assert all(r["lateness_ms"] >= 60_000 and r["window"] for r in late_rows)
    assert _rows(tmp_path / "out") == _expected(reference)
    assert not math.isnan(summary["throughput_per_s"])


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["run", "no_such_pipeline"], "no_such_pipeline"),
        (["run", "windowed_metrics", "--output=o", "--dead_letter=d"], "--input"),
        (
            [
                "run",
                "windowed_metrics",
                "--source=kafka",
                "--topic=t",
                "--output=o",
                "--dead_letter=d",
            ],
            "--bootstrap_servers",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--window=hourly",
            ],
            "--window",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--metrics=median:amount",
            ],
            "--metrics",
        ),
        (["run", "windowed_metrics", "--input=x.jsonl", "--dead_letter=d"], "--output"),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--replay_as_stream",
                "--dedup_keep=last",
            ],
            "--allowed_lateness",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--allowed_lateness=-5s",
            ],
            "allowed_lateness",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--windw=fixed:1m",
            ],
            "did you mean --window?",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--metric=count",
            ],
            "did you mean --metrics?",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input",
                "x.jsonl",
                "y.jsonl",
                "--output=o",
                "--dead_letter=d",
            ],
            "'y.jsonl' after --input",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--topic=events",
            ],
            "--topic does not apply to --source=files",
        ),
        (
            [
                "run",
                "stream_etl",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--metrics=count",
            ],
            "--metrics does not apply to stream_etl",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--dedup_horizon=10",
            ],
            "has no unit (for seconds write '10s')",
        ),
        (
            [
                "run",
                "windowed_metrics",
                "--input=x.jsonl",
                "--output=o",
                "--dead_letter=d",
                "--window=fixed:60",
            ],
            "has no unit (for seconds write '60s')",
        ),
        (
            [
                "run",
                "replay_dead_letters",
                "--dead_letter_input=d/*.jsonl",
                "--output=o",
                "--dead_letter=d2",
                "--stop_at_end",
            ],
            "--stop_at_end does not apply",
        ),
    ],
)
def test_bad_flags_exit_non_zero_with_one_line_naming_the_flag(tmp_path, args, flag):
    """Every bad flag combination exits 2 with one line on stderr naming the flag."""
    (tmp_path / "x.jsonl").write_text("{}\n")
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [x for x in result.stderr.splitlines() if x.startswith("headwater")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert flag in lines[0]


def test_pipelines_lists_every_pipeline_and_run_help_shows_flags(tmp_path):
    """`headwater pipelines` lists each with a description; `run X --help` shows its flags."""
    listing = _cli("pipelines", cwd=tmp_path)
    assert listing.returncode == 0
    for name in ("windowed_metrics", "stream_etl", "kafka_to_kafka", "replay_dead_letters"):
        assert name in listing.stdout
    helped = _cli("run", "windowed_metrics", "--help", cwd=tmp_path)
    assert helped.returncode == 0
    for flag in (
        "--input",
        "--window",
        "--allowed_lateness",
        "--metrics",
        "--kafka_config",
        "--replay_as_stream",
        "--summary_json",
        "--report",
    ):
        assert flag in helped.stdout
    assert "Window spec" in helped.stdout


@pytest.mark.integration
def test_dev_broker_serves_kafka_until_stopped(tmp_path):
    """`headwater dev-broker` prints its address, serves topics, and stops on SIGINT."""
    import signal

    from confluent_kafka.admin import AdminClient

    process = subprocess.Popen(
        [sys.executable, "-m", "headwater", "dev-broker", "--topic=demo", "--partitions=2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(process.stdout.readline())
        metadata = AdminClient({"bootstrap.servers": info["bootstrap_servers"]}).list_topics(
            timeout=10
        )
        assert len(metadata.topics["demo"].partitions) == 2
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [x for x in result.stderr.splitlines() if x.startswith("headwater: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return errors[0]


def test_output_that_cannot_be_written_is_one_line_traceback_only_with_v(tmp_path):
    """An output path that is a file, or under a file, fails in one line (exit 1); -v adds the
    traceback."""
    write_jsonl(tmp_path / "events.jsonl", 50, seed=1)
    (tmp_path / "taken").write_text("a file")
    for output, says in (("taken", "is a file; expected a folder"), ("taken/out", "is a file")):
        args = _metrics_args(tmp_path, "--input=events.jsonl")
        args = [a for a in args if not a.startswith("--output=")] + [f"--output={output}"]
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 1
        line = _one_error_line(result)
        assert says in line
        assert "--output=" in line
    verbose = _cli("-v", *args, cwd=tmp_path)
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr


def test_jobs_list_without_credentials_is_one_line(tmp_path):
    """`headwater jobs list` without Google credentials: one line naming the cause, exit 1."""
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("GOOGLE_", "CLOUDSDK_", "GCE_"))
    }
    env.update(
        HOME=str(tmp_path),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
    )
    result = subprocess.run(
        [sys.executable, "-m", "headwater", "jobs", "list", "--project=p", "--region=r1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 1
    assert "credentials" in _one_error_line(result).lower()


@pytest.mark.parametrize(
    ("flag", "hint"),
    [
        ("--event_time_unit=s", "look like epoch milliseconds"),
        ("--metrics=count,sum:amout", "did you mean 'amount'?"),
    ],
)
def test_run_with_every_record_dead_lettered_exits_3_with_a_hint(tmp_path, flag, hint):
    """A wrong unit or a misspelt field dead-letters everything: a warning with the top reason
    and a hint, then one error line and exit 3 (never a quiet 0)."""
    write_jsonl(tmp_path / "events.jsonl", 300, seed=3)
    args = [
        a
        for a in _metrics_args(tmp_path, "--input=events.jsonl")
        if a.split("=")[0] != flag.split("=")[0]
    ]
    result = _cli(*args, flag, cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "300 of 300 records (100.0%) became dead letters" in result.stderr
    assert hint in result.stderr
    assert "no output from 300 records in" in _one_error_line(result)


def test_max_dead_letter_rate_fails_the_run_and_summary_folder_is_made(tmp_path):
    """Above --max_dead_letter_rate the run exits 3 naming the flag; --summary_json into a
    missing folder is written all the same."""
    write_jsonl(tmp_path / "events.jsonl", 1_000, seed=4, malformed_frac=0.05)
    args = [a for a in _metrics_args(tmp_path, "--input=events.jsonl") if "summary_json" not in a]
    summary = tmp_path / "reports" / "today" / "summary.json"
    result = _cli(*args, "--max_dead_letter_rate=0.01", f"--summary_json={summary}", cwd=tmp_path)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "--max_dead_letter_rate=0.01" in _one_error_line(result)
    assert json.loads(summary.read_text())["dead_letter"] > 10
    again = [a for a in args if not a.startswith(("--output=", "--dead_letter="))]
    passed = _cli(
        *again, "--output=out2", "--dead_letter=dlq2", "--max_dead_letter_rate=0.2", cwd=tmp_path
    )
    assert passed.returncode == 0, passed.stderr[-3000:]


def test_malformed_kafka_config_never_prints_the_secret(tmp_path):
    """--kafka_config=sasl.password:VALUE (and a misspelt flag name) never echo VALUE."""
    kafka = ["--source=kafka", "--bootstrap_servers=127.0.0.1:9", "--topic=t", "--stop_at_end"]
    for bad in (
        "--kafka_config=sasl.password:pw-secret-99",
        "--kafka-config=sasl.password=pw-secret-99",
    ):
        result = _cli(
            "run", "windowed_metrics", "--output=o", "--dead_letter=d", *kafka, bad, cwd=tmp_path
        )
        assert result.returncode == 2
        assert "kafka" in _one_error_line(result)
        assert "pw-secret-99" not in result.stdout + result.stderr


def test_generate_makes_missing_folders_and_no_sidecar_next_to_the_data(tmp_path):
    """`generate -o dir/file` creates dir; nothing but the data lands in it; --stats goes
    where asked."""
    result = _cli(
        "generate", "-n", "20", "-o", "new/dir/events.jsonl", "--stats=s.json", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in (tmp_path / "new" / "dir").iterdir()] == ["events.jsonl"]
    assert json.loads((tmp_path / "s.json").read_text())["events"] == 20


@pytest.mark.integration
def test_dev_broker_stops_its_broker_on_sigterm(tmp_path):
    """SIGTERM to `headwater dev-broker` stops the broker process too (no orphan left)."""
    import os
    import signal

    process = subprocess.Popen(
        [sys.executable, "-m", "headwater", "dev-broker"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        broker_pid = json.loads(process.stdout.readline())["pid"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    # The command waited for its broker to exit before it returned: the PID must be gone now
    # (an orphan would have been adopted by init and still answer).
    try:
        os.kill(broker_pid, 0)
    except ProcessLookupError:
        return
    os.kill(broker_pid, signal.SIGKILL)
    pytest.fail(f"broker process {broker_pid} outlived the dev-broker command")


@pytest.mark.parametrize(
    "args",
    [["--help"], ["pipelines"], ["run", "windowed_metrics", "--help"]],
    ids=["help", "pipelines", "run-help"],
)
def test_help_and_listing_do_not_import_beam(tmp_path, args):
    """--help, `pipelines` and `run X --help` answer without importing apache_beam at all."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "headwater", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "headwater.cli" in result.stderr  # -X importtime did report the imports
    beam = [line for line in result.stderr.splitlines() if "apache_beam" in line]
    assert not beam, beam[:5]


def test_demo_exit_code_follows_the_runs_data_check(monkeypatch):
    """`headwater demo` fails like `headwater run` when its data check fails (exit 3), not 0."""
    from headwater import cli
    from headwater.devtools import demo

    failed = {"identity_holds": True, "data_check": {"failure": "no record reached the output"}}
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: failed)
    assert cli.main(["demo", "--workdir", "unused"]) == 3
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: {"identity_holds": False})
    assert cli.main(["demo", "--workdir", "unused"]) == 1


def test_the_command_freezes_what_is_left_before_the_process_ends(capsys):
    """``headwater`` (the console script, ``python -m headwater``) runs main, then freezes the
    objects left out of the garbage collector: the interpreter's teardown skips them."""
    import gc
    from importlib.metadata import entry_points

    from headwater import cli

    (script,) = entry_points(group="console_scripts", name="headwater")
    assert script.value == "headwater.cli:console"
    try:
        assert cli.console(["pipelines"]) == 0
        assert "windowed_metrics" in capsys.readouterr().out
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
