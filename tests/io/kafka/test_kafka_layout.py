"""The Kafka IO package's shape: modules of a readable size, public names only between modules."""

from __future__ import annotations

import ast
import pathlib

import pytest

import headwater.io.kafka

_PACKAGE = pathlib.Path(headwater.io.kafka.__file__).parent
_MODULES = sorted(_PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", _MODULES, ids=lambda p: p.name)
def test_kafka_modules_import_only_public_names(path):
    """No module of headwater.io.kafka imports an underscore name of another headwater module."""
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("headwater.")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


@pytest.mark.parametrize("path", _MODULES, ids=lambda p: p.name)
def test_kafka_modules_stay_a_few_hundred_lines(path):
    """Each module of the package is at most ~600 lines."""
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 600


def test_the_package_exports_its_public_api():
    """headwater.io.kafka re-exports the transforms, the record, the connection and the errors."""
    exported = set(headwater.io.kafka.__all__)
    assert {
        "ReadFromKafka",
        "WriteToKafka",
        "KafkaRecord",
        "KafkaConnection",
        "KafkaIOError",
    } <= exported
    assert all(not name.startswith("_") for name in exported)
    assert all(hasattr(headwater.io.kafka, name) for name in exported)


def test_the_old_modules_are_gone():
    """headwater.io.kafkaio and headwater.io.kafkaconfig no longer exist (no shim)."""
    for old in ("kafkaio.py", "kafkaconfig.py"):
        assert not (_PACKAGE.parent / old).exists()
