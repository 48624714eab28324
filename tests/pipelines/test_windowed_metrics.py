"""``windowed_metrics`` flags that depend on the kind of run: what batch refuses, what streams."""

from __future__ import annotations

import json

import pytest

from headwater import cli
from headwater.pipelines import windowed_metrics


def _argv(tmp_path, *extra: str) -> list[str]:
    source = tmp_path / "events.jsonl"
    records = [
        {"event_id": f"e{i}", "user_id": "u", "event_time": 1_000 * i, "amount": i} for i in (1, 2)
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [
        f"--input={source}",
        f"--output={tmp_path / 'rows'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        "--event_time_field=event_time",
        "--id_field=event_id",
        "--key_field=user_id",
        "--metrics=count,sum:amount",
        "--window=fixed:60s",
        *extra,
    ]


def test_early_trigger_in_a_batch_run_is_a_flag_error_naming_it(tmp_path, capsys):
    """--trigger=early:10s over files in batch exits 2 with one line naming the flag and why."""
    code = cli.main(["run", "windowed_metrics", *_argv(tmp_path, "--trigger=early:10s")])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("headwater")]
    assert len(lines) == 1, err[-2000:]
    assert "--trigger=early:10s in a batch run: early panes fire on processing time" in lines[0]
    assert "--replay_as_stream" in lines[0]
    assert not (tmp_path / "rows").exists()


def test_early_trigger_in_a_stream_replay_runs(tmp_path):
    """The same flag is accepted where it means something: files replayed as a stream."""
    summary = windowed_metrics.run(
        _argv(tmp_path, "--trigger=early:10s", "--replay_as_stream", "--allowed_lateness=0s")
    )
    assert summary["runner"] == "BundleBasedDirectRunner"
    assert (summary["records_in"], summary["output"]) == (2, 2)


def test_on_time_trigger_in_a_batch_run_is_accepted(tmp_path):
    """An explicit on-time (or late) trigger has a meaning in batch and runs."""
    summary = windowed_metrics.run(_argv(tmp_path, "--trigger=on_time"))
    assert (summary["records_in"], summary["output"]) == (2, 2)


@pytest.mark.parametrize("trigger", ["early:10s", "early:1m,late,accumulating"])
def test_every_early_trigger_is_refused_by_run_in_batch(tmp_path, trigger):
    """run() raises ValueError naming --trigger for every form with early panes."""
    with pytest.raises(ValueError, match=f"--trigger={trigger} in a batch run"):
        windowed_metrics.run(_argv(tmp_path, f"--trigger={trigger}"))


_SUMMARY = {  # a run summary, as running.summarize makes it
    "pipeline": "windowed_metrics",
    "runner": "PrismRunner",
    "records_in": 10,
    "wall_s": 1.0,
    "output": 9,
    "duplicate": 0,
    "dead_letter": 0,
    "late": 1,
    "identity_holds": True,
}


@pytest.mark.parametrize(
    ("field", "warning"),
    [
        ("late_unverified", "3 records went to their windows without a verified late-data clock"),
        ("kafka_offsets_deleted", "3 Kafka offsets were deleted by the broker"),
    ],
)
def test_summary_warns_with_the_count(field, warning):
    """Records judged without a late clock, Kafka offsets deleted before the read: a summary
    with the count prints a warning line; none without it."""
    import io

    from headwater.pipelines.running import print_summary

    quiet, warned = io.StringIO(), io.StringIO()
    print_summary(_SUMMARY, quiet)
    print_summary({**_SUMMARY, field: 3}, warned)
    assert "WARNING" not in quiet.getvalue()
    assert f"WARNING: {warning}" in warned.getvalue()
