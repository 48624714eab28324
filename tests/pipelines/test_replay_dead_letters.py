"""replay_dead_letters: after the cause is fixed, dead letters move into the output."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from headwater.pipelines import replay_dead_letters, windowed_metrics


def _metrics_flags(tmp_path: Path, run: str, metrics: str) -> list[str]:
    return [
        f"--output={tmp_path / run / 'out'}",
        f"--dead_letter={tmp_path / run / 'dlq'}",
        "--window=fixed:60s",
        f"--metrics={metrics}",
        "--key_field=user_id",
    ]


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted(folder.rglob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_fixed_cause_moves_dead_letters_into_output_and_totals_add_up(tmp_path):
    """Records lacking `price` fail `sum:price`; replayed with `sum:amount` they are output."""
    records = [
        {
            "event_id": f"e{i}",
            "user_id": "u",
            "event_time": 1_000 * i,
            "amount": i,
            **({"price": i} if i % 2 else {}),
        }
        for i in range(1, 9)
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    first = windowed_metrics.run(
        [f"--input={tmp_path / 'in.jsonl'}", *_metrics_flags(tmp_path, "first", "count,sum:price")]
    )
    assert (first["output"], first["dead_letter"]) == (4, 4)
    replay = replay_dead_letters.run(
        [
            f"--dead_letter_input={tmp_path / 'first' / 'dlq' / '*.jsonl'}",
            "--target=windowed_metrics",
            *_metrics_flags(tmp_path, "replay", "count,sum:amount"),
        ]
    )
    assert replay["identity_holds"]
    assert (replay["records_in"], replay["output"], replay["dead_letter"]) == (4, 4, 0)
    assert first["output"] + replay["output"] == len(records)
    [row] = _rows(tmp_path / "replay" / "out")
    assert (row["count"], row["sum_amount"]) == (4, 2 + 4 + 6 + 8)


def test_still_broken_records_become_dead_letters_again(tmp_path):
    """Replaying without fixing the cause yields the same dead letters, none lost."""
    (tmp_path / "in.jsonl").write_text('{"event_id":"a","user_id":"u"}\nnot json\n')
    first = windowed_metrics.run(
        [f"--input={tmp_path / 'in.jsonl'}", *_metrics_flags(tmp_path, "first", "count")]
    )
    assert first["dead_letter"] == 2
    replay = replay_dead_letters.run(
        [
            f"--dead_letter_input={tmp_path / 'first' / 'dlq' / '*'}",
            "--target=windowed_metrics",
            *_metrics_flags(tmp_path, "replay", "count"),
        ]
    )
    assert (replay["records_in"], replay["dead_letter"], replay["output"]) == (2, 2, 0)
    letters = [
        json.loads(x)
        for p in (tmp_path / "replay" / "dlq").glob("*.jsonl")
        for x in p.read_text().splitlines()
    ]
    assert sorted(d["origin"]["replayed_from"] for d in letters) == ["decode", "event_time"]


def test_replaying_into_the_folder_being_read_is_refused(tmp_path):
    """--dead_letter equal to the replayed folder would overwrite the input: refused."""
    with pytest.raises(ValueError, match="--dead_letter must differ"):
        replay_dead_letters.run(
            [
                f"--dead_letter_input={tmp_path}/dlq/*.jsonl",
                f"--output={tmp_path}/o",
                f"--dead_letter={tmp_path}/dlq",
            ]
        )
