"""``make bench`` smoke run: every measurement runs on a tiny workload (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from headwater.devtools import bench, plain_script
from headwater.devtools.bench_e2e import read_script_rows
from headwater.devtools.reference import windowed_metrics_reference
from headwater.devtools.workload import write_jsonl


def test_quick_bench_writes_results_and_checks_output_against_plain_python(tmp_path, capsys):
    """A tiny run writes bench.json with events/s, ratios and an equal-output check."""
    bench.main(
        [
            "--workdir", str(tmp_path), "--quick", "--events", "1500", "--beam-events", "500",
            "--replay-events", "300", "--beam-stream-events", "300", "--skip-kafka",
            "--skip-memory", "--skip-record-path", "--skip-prism", "--window-events", "400",
        ]
    )  # fmt: skip
    results = json.loads((tmp_path / "bench.json").read_text())
    names = (
        "plain_python",
        "pyarrow",
        "plain_beam",
        "plain_beam_streaming",
        "headwater_batch",
        "headwater_replay",
        "headwater_replay_teststream",
    )
    for name in names:
        assert "error" not in results[name], results[name]
        assert results[name]["events_per_s"] > 0
    batch = results["headwater_batch"]
    assert batch["equal_to_plain_python"] is True
    assert batch["records_in"] == 1500
    assert {"x_plain_python", "x_plain_beam", "x_pyarrow"} <= batch.keys()
    replay, teststream = results["headwater_replay"], results["headwater_replay_teststream"]
    assert (replay["records_in"], replay["runner"]) == (1500, "FnApiRunner")
    assert (teststream["records_in"], teststream["runner"]) == (300, "BundleBasedDirectRunner")
    assert teststream["columnar_replay_equal"] is True
    assert "x_plain_beam_streaming" in replay
    printed = capsys.readouterr().out
    assert "events/s" in printed
    assert "end to end" in printed
    assert set(results["startup"]) >= {"help", "pipelines", "run_help"}
    assert all(results["startup"][k] > 0 for k in ("help", "pipelines", "run_help"))
    for fraction, malformed in (("0", 0), ("0.005", 1), ("0.01", 1)):
        e2e = results[f"e2e_malformed_{fraction}"]
        assert "error" not in e2e, e2e
        assert e2e["equal_to_plain_script"] is True
        assert e2e["headwater"]["records_in"] == 1500
        assert e2e["headwater"]["identity_holds"] is True
        assert (e2e["plain_script"]["dead_letter"] > 0) == bool(malformed)
        assert e2e["x_plain_script"] > 0
    assert results["e2e_malformed_0.005"]["plain_beam"]["events"] == 500
    windows = results["e2e_windows"]
    assert "error" not in windows, windows
    assert {windows[k]["records_in"] for k in ("fixed", "session", "calendar")} == {400}
    assert windows["session_x_fixed_time"] > 0
    assert windows["calendar_x_fixed_time"] > 0
    flink = results["flink_scale_out"]  # Apache Flink at parallelism 1 and 2, worker pool
    assert "error" not in flink, flink
    assert flink["same_bytes"] is True
    assert flink["same_bytes_as_fnapi"] is True
    assert flink["same_counters"] is True
    assert flink["runs"]["parallelism_2"]["records_in"] == 1500
    assert flink["runs"]["parallelism_2"]["engine"] == "columnar-parallel"
    assert flink["speedup_2_vs_1_pipeline"] > 0
    stages = batch["stages_s"]
    assert stages["columnar_fn"] > 0
    assert stages["parse_and_checks"] > 0
    assert stages["columnar_fn"] >= stages["dedup"] + stages["aggregate"] + stages["write"]


def test_dedup_memory_reports_peak_rss_and_ids_held(tmp_path, monkeypatch):
    """The dedup-memory probe reports the ids it held, the ids on disk and the peak RSS; a
    table that fills up holds fewer ids and finds the same duplicates."""
    from headwater.columnar import batchids, idtable, jsonblocks

    path = tmp_path / "events.jsonl"
    # one event a second for 50 minutes (5 horizons), every 10th a retry of one 31 s back
    lines = [
        json.dumps(
            {
                "event_id": f"e{i - 31 if i % 10 == 9 else i}",
                "user_id": f"u{i % 7}",
                "event_time": i * 1_000,
                "amount": 1,
            }
        )
        for i in range(3_000)
    ]
    path.write_text("\n".join(lines) + "\n")
    result = bench.dedup_memory(str(path))
    assert result["events"] == 3_000
    assert 0 < result["max_ids_held"] <= 3_000
    assert result["ids_on_disk"] == 0
    assert result["duplicates"] > 0
    assert result["peak_rss_mb"] > 0
    monkeypatch.setattr(idtable, "_ID_SLOTS", 256)
    monkeypatch.setattr(batchids, "_SIZED_IDS", 64)
    monkeypatch.setattr(jsonblocks, "BLOCK_BYTES", 4_096)
    small = bench.dedup_memory(str(path))
    assert small["duplicates"] == result["duplicates"]
    assert small["ids_on_disk"] > 0
    assert small["max_ids_held"] < result["max_ids_held"]


def test_plain_script_is_standalone_and_matches_the_reference(tmp_path):
    """The baseline script, run by path, gives the reference's counters and rows."""
    events = tmp_path / "events.jsonl"
    write_jsonl(events, 3_000, malformed_frac=0.02)
    done = subprocess.run(
        [sys.executable, "-I", plain_script.__file__, str(events), str(tmp_path / "out")],
        capture_output=True,
        check=True,
    )
    counts = json.loads(done.stdout)
    want = windowed_metrics_reference(events.read_bytes().splitlines())
    assert counts == {k: want[k] for k in counts}
    assert counts["dead_letter"] > 0
    rows = read_script_rows(tmp_path / "out" / "rows")
    assert rows.keys() == want["rows"].keys()
    assert bench.compare_rows(rows, want["rows"]) == []
    letters = (tmp_path / "out" / "dead_letters.jsonl").read_text().splitlines()
    assert len(letters) == counts["dead_letter"]


@pytest.mark.integration
@pytest.mark.slow
def test_prism_streaming_bench_reads_the_backlog_and_measures_latency(tmp_path):
    """On Apache Kafka and Prism: a drained backlog run adds up; latency windows are measured."""
    results = bench.main(
        [
            "--workdir", str(tmp_path), "--quick", "--events", "2000", "--skip-end-to-end",
            "--skip-kafka", "--skip-memory", "--skip-record-path", "--beam-events", "200",
            "--replay-events", "100", "--beam-stream-events", "100", "--prism-events", "1500",
            "--latency-rate", "200", "--latency-seconds", "3", "--skip-flink", "--skip-scale-out",
        ]
    )  # fmt: skip
    throughput, latency = results["prism_throughput"], results["prism_latency"]
    assert "error" not in throughput, throughput
    assert (throughput["records_in"], throughput["identity_holds"]) == (1500, True)
    assert throughput["dead_letter"] > 0
    assert throughput["duplicate"] > 0
    assert throughput["events_per_s"] > 0
    assert throughput["window_files"] > 0
    assert throughput["cpu_s"]["prism"] > 0
    assert throughput["cpu_s"]["python_sdk_harness"] > 0
    assert "error" not in latency, latency
    assert latency["identity_holds"] is True
    assert latency["records_in"] == latency["events"]
    assert latency["output"] + latency["late"] == latency["events"]
    assert latency["windows_measured"] > 0
    assert 0 < latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]


def test_end_to_end_figures_are_medians_of_alternating_rounds():
    """Rounds alternate the runs (a slow moment falls on each), and each figure is the median
    round, every round's seconds kept beside it."""
    calls: list[str] = []
    seconds = {"a": iter([3.0, 1.0, 2.0]), "b": iter([5.0, 6.0, 4.0])}

    def run(name):
        def once():
            calls.append(name)
            return {"seconds": next(seconds[name]), "round": len(calls)}

        return once

    result = bench._median_runs({"a": run("a"), "b": run("b")}, 3)
    assert calls == ["a", "b", "a", "b", "a", "b"]
    assert result["a"] == {"seconds": 2.0, "round": 5, "rounds_s": [3.0, 1.0, 2.0]}
    assert result["b"] == {"seconds": 5.0, "round": 2, "rounds_s": [5.0, 6.0, 4.0]}


@pytest.mark.parametrize(
    ("flags", "rounds"), [([], 5), (["--quick"], 1), (["--quick", "--e2e-rounds", "2"], 2)]
)
def test_end_to_end_rounds_given_are_kept_quick_or_not(tmp_path, monkeypatch, flags, rounds):
    """--quick runs one round unless --e2e-rounds says otherwise: a value typed is never
    replaced."""
    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda args: seen.update(vars(args)) or {})
    monkeypatch.setattr(bench, "print_table", lambda results: None)
    bench.main(["--workdir", str(tmp_path), *flags])
    assert seen["e2e_rounds"] == rounds
