"""A run's flags are read once: one RunConfig, one decoder and one event-time extractor."""

from __future__ import annotations

import pytest

from headwater.devtools.workload import write_jsonl
from headwater.pipelines import config as config_module
from headwater.pipelines import windowed_metrics
from headwater.pipelines.config import RunConfig
from headwater.pipelines.options import value


def test_replay_that_falls_back_builds_decoder_and_event_time_once(tmp_path, monkeypatch):
    """A stream replay that leaves the columnar engine converts the flags and builds each once."""
    built = {"decoder": 0, "event_time": 0, "flags": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            built[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(config_module, "decoder", counting("decoder", config_module.decoder))
    monkeypatch.setattr(
        config_module,
        "event_time_extractor",
        counting("event_time", config_module.event_time_extractor),
    )
    monkeypatch.setattr(config_module, "flag_values", counting("flags", config_module.flag_values))
    source = tmp_path / "events.jsonl"
    write_jsonl(source, 200, seed=3)
    summary = windowed_metrics.run(
        [
            f"--input={source}",
            f"--output={tmp_path / 'rows'}",
            f"--dead_letter={tmp_path / 'dlq'}",
            "--replay_as_stream",
            "--dedup_keep=last",  # the columnar replay keeps the first copy: TestStream runs
            "--allowed_lateness=10m",
        ]
    )
    assert summary["engine"] == "record"
    assert summary["records_in"] == 200
    assert built == {"decoder": 1, "event_time": 1, "flags": 1}


def test_a_flag_a_pipeline_lacks_reads_as_its_declared_default():
    """value() gives the declared default for a flag that is absent or unset, else the value."""
    assert value({}, "dedup_horizon") == "10m"
    assert value({"dedup_horizon": None}, "max_out_of_orderness") == "5s"
    assert value({"dedup_keep": "last"}, "dedup_keep") == "last"


def test_run_config_is_a_read_only_mapping_of_the_values():
    """RunConfig reads like the values it holds and refuses to be changed."""
    config = RunConfig({"window": "fixed:60s", "id_field": ""})
    assert dict(config) == {"window": "fixed:60s", "id_field": ""}
    assert config.get("trigger") is None
    assert config.dedup is None
    with pytest.raises(AttributeError):
        config.settings = {}  # type: ignore[misc]
