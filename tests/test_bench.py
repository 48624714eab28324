"""``make bench`` smoke run: every measurement runs on a tiny workload (no timing assertions)."""

from __future__ import annotations

import json

from headwater import bench
from headwater.testing.workload import write_jsonl


def test_quick_bench_writes_results_and_checks_output_against_plain_python(tmp_path, capsys):
    """A tiny run writes bench.json with events/s, ratios and an equal-output check."""
    bench.main(
        [
            "--workdir", str(tmp_path), "--quick", "--events", "1500", "--beam-events", "500",
            "--replay-events", "300", "--beam-stream-events", "300", "--skip-kafka",
            "--skip-memory", "--skip-record-path",
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
    assert "events/s" in capsys.readouterr().out


def test_dedup_memory_reports_peak_rss_and_ids_held(tmp_path):
    """The dedup-memory probe reports the ids it held and the process's peak RSS."""
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 2_000)
    result = bench.dedup_memory(str(path))
    assert result["events"] == 2_000
    assert 0 < result["max_ids_held"] <= 2_000
    assert result["duplicates"] > 0
    assert result["peak_rss_mb"] > 0
