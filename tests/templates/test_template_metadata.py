"""``metadata.json`` generated from the pipelines' flags, and the local parameter check."""

from __future__ import annotations

import argparse
import json
import re

import pytest
from google.cloud.dataflow_v1beta3 import ParameterType, TemplateMetadata

from headwater import pipelines
from headwater.pipelines.options import FLAGS, Flag
from headwater.templates.commands import run_command
from headwater.templates.metadata import (
    LOCAL_ONLY,
    _parameter,
    check_parameters,
    metadata_for,
)

TEMPLATED = ("windowed_metrics", "stream_etl", "kafka_to_kafka")
REQUIRED_OK = {"output": "gs://b/o", "dead_letter": "gs://b/d"}


def _cli_actions(name: str) -> dict[str, argparse.Action]:
    """The argparse actions ``headwater run NAME`` registers, by dest."""
    parser = argparse.ArgumentParser(add_help=False)
    pipelines.load(name).Options._add_argparse_args(parser)
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize("name", ["windowed_metrics", "stream_etl"])
def test_parameters_equal_the_cli_flags(name):
    """Names, order, required-ness and help of the parameters equal the pipeline's CLI flags."""
    actions = _cli_actions(name)
    params = metadata_for(name)["parameters"]
    assert [p["name"] for p in params] == [d for d in actions if d not in LOCAL_ONLY]
    for param in params:
        action = actions[param["name"]]
        assert action.option_strings == [f"--{param['name']}"]
        assert param["isOptional"] is ("(required)" not in action.help)
        assert action.help.startswith(param["helpText"].split(" Template value:")[0])
        assert param["label"]


@pytest.mark.parametrize("name", ["windowed_metrics", "stream_etl"])
def test_local_only_flags_stay_out_of_the_template(name):
    """replay_as_stream, summary_json and report are CLI flags but not template parameters."""
    names = {p["name"] for p in metadata_for(name)["parameters"]}
    actions = _cli_actions(name)
    for flag in LOCAL_ONLY:
        assert flag in actions
        assert flag not in names


def test_required_follows_the_pipeline():
    """A flag required only by one pipeline (bootstrap_servers) is required only there."""
    optional = {
        name: {p["name"]: p["isOptional"] for p in metadata_for(name)["parameters"]}
        for name in TEMPLATED
    }
    assert optional["kafka_to_kafka"]["bootstrap_servers"] is False
    assert optional["stream_etl"]["bootstrap_servers"] is True
    assert optional["stream_etl"]["output"] is False


@pytest.mark.parametrize("name", TEMPLATED)
def test_metadata_parses_as_dataflow_template_metadata(name):
    """The JSON parses into the API's own TemplateMetadata message without unknown fields."""
    meta = metadata_for(name)
    parsed = TemplateMetadata.from_json(json.dumps(meta))
    assert parsed.name == meta["name"]
    assert parsed.description == pipelines.load(name).DESCRIPTION
    assert [p.name for p in parsed.parameters] == [p["name"] for p in meta["parameters"]]
    assert parsed.streaming is True
    assert parsed.supports_exactly_once is True


def test_replay_dead_letters_is_a_batch_template():
    """replay_dead_letters (dead-letter files only) has no streaming flag; the others do."""
    meta = metadata_for("replay_dead_letters")
    assert "streaming" not in meta
    assert TemplateMetadata.from_json(json.dumps(meta)).streaming is False
    assert all(metadata_for(name)["streaming"] is True for name in TEMPLATED)


def test_booleans_enums_and_numbers_are_typed():
    """Booleans get ^(true|false)$, enums their options, integer flags NUMBER."""
    params = {p["name"]: p for p in metadata_for("stream_etl")["parameters"]}
    assert params["stop_at_end"]["regexes"] == ["^(true|false)$"]
    assert params["stop_at_end"]["paramType"] == "BOOLEAN"
    assert params["stop_at_end"]["defaultValue"] == "false"
    options = [o["value"] for o in params["output_format"]["enumOptions"]]
    assert options == list(FLAGS["output_format"].choices or ())
    assert all(re.match(params["output_format"]["regexes"][0], o) for o in options)
    assert not re.match(params["output_format"]["regexes"][0], "csv")
    assert params["output_shards"]["paramType"] == "NUMBER"
    assert params["output_shards"]["defaultValue"] == "1"
    assert params["window"]["regexes"] == [FLAGS["window"].regex]
    assert ParameterType[params["window"]["paramType"]] == ParameterType.TEXT


def test_required_and_repeated_parameters_have_no_default():
    """Required parameters and kafka_config carry no defaultValue."""
    params = {p["name"]: p for p in metadata_for("windowed_metrics")["parameters"]}
    assert "defaultValue" not in params["output"]
    assert "defaultValue" not in params["kafka_config"]
    assert params["kafka_config"]["regexes"] == [r"^\[.*\]$"]
    assert params["dedup_horizon"]["defaultValue"] == str(FLAGS["dedup_horizon"].default)


def test_secret_looking_flag_never_gets_a_default():
    """A flag whose name looks secret never puts its default in the metadata."""
    param = _parameter(Flag("sasl_password", "Password", "The password.", default="hunter2"))
    assert "defaultValue" not in param
    assert "hunter2" not in json.dumps(param)


def test_spec_command_prints_the_metadata(capsys):
    """``headwater template spec NAME`` prints metadata_for(NAME) as JSON."""
    assert run_command(["template", "spec", "windowed_metrics"]) == 0
    assert json.loads(capsys.readouterr().out) == metadata_for("windowed_metrics")


def test_check_parameters_returns_strings():
    """Booleans, ints and lists become the strings a template launch carries."""
    checked = check_parameters(
        "stream_etl",
        {
            **REQUIRED_OK,
            "stop_at_end": True,
            "output_shards": 3,
            "kafka_config": ["security.protocol=SSL", "client.id=a,b"],
        },
    )
    assert checked == {
        **REQUIRED_OK,
        "stop_at_end": "true",
        "output_shards": "3",
        "kafka_config": '["security.protocol=SSL","client.id=a,b"]',
    }


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"window": "hourly"}, "'window'"),
        ({"output_format": "csv"}, "'output_format'"),
        ({"stop_at_end": "yes please"}, "'stop_at_end'"),
        ({"output_shards": "0"}, "'output_shards'"),
        ({"bootstrap_servers": "no-port"}, "'bootstrap_servers'"),
        ({"dedup_horizon": "10 minutes"}, "'dedup_horizon'"),
        ({"nope": "x"}, "'nope'"),
        ({"replay_as_stream": "true"}, "local-only"),
        ({"output": ""}, "'output' is required"),
        ({"kafka_config": "[1, 2]"}, "'kafka_config'"),
        ({"kafka_config": ["NOT A KEY"]}, "'kafka_config'"),
    ],
)
def test_check_parameters_names_the_bad_parameter(params, named):
    """Every refused value raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match=re.escape(named)):
        check_parameters("stream_etl", {**REQUIRED_OK, **params})


def test_unknown_pipeline_is_named():
    """metadata_for an unknown pipeline names it."""
    with pytest.raises(ValueError, match="'no_such'"):
        metadata_for("no_such")
