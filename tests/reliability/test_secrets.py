"""Secrets given as librdkafka config never appear anywhere a person or a log collector can read.

One test gathers every output a run produces -- ``--help``, the CLI's stdout and stderr at INFO
level (a failed connect and a successful bounded read against the real broker), the files the
run wrote (dead letters with their payloads, rows, the summary JSON), in-process logs at DEBUG
(caplog), the text, ``repr`` and traceback of a connect error, the ``repr`` of the IO transforms
and connection, and the Flex Template metadata of every pipeline -- and greps all of it for the
secret values.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from _reliability import event, line

from headwater.devtools.produce import produce_lines
from headwater.io.kafka import KafkaConnection, ReadFromKafka, WriteToKafka, check_reachable

SASL_PASSWORD = "S3cr3t-sasl-7f1c"
KEY_PASSWORD = "K3y-passw0rd-9c2e"
PEM_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCs3cr3tPemBody42"
PEM = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----"
SECRETS = (SASL_PASSWORD, KEY_PASSWORD, PEM_BODY)
CONFIG = {
    "sasl.username": "alice",
    "sasl.password": SASL_PASSWORD,
    "ssl.key.password": KEY_PASSWORD,
    "ssl.key.pem": PEM,
}
CONFIG_FLAGS = [f"--kafka_config={k}={v}" for k, v in CONFIG.items()]


def _cli(*args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "headwater", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"[exit {result.returncode}]\n{result.stdout}\n{result.stderr}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _files_text(folder: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", "replace") for p in sorted(folder.rglob("*")) if p.is_file()
    )


@pytest.mark.integration
def test_secrets_never_appear_in_logs_errors_repr_files_metadata_or_help(
    tmp_path, caplog, kafka_bootstrap, kafka_topic
):
    """Grep every output of runs given SASL/SSL secrets: none of the secret values is there."""
    outputs: dict[str, str] = {}
    run_flags = [
        "run",
        "windowed_metrics",
        "--source=kafka",
        f"--topic={kafka_topic}",
        "--stop_at_end",
        f"--output={tmp_path / 'out'}",
        f"--dead_letter={tmp_path / 'dlq'}",
        f"--summary_json={tmp_path / 'summary.json'}",
        *CONFIG_FLAGS,
    ]
    outputs["help"] = _cli("run", "windowed_metrics", *CONFIG_FLAGS, "--help", cwd=tmp_path)
    unreachable = f"127.0.0.1:{_free_port()}"
    outputs["cli unreachable"] = _cli(
        "-v", *run_flags, f"--bootstrap_servers={unreachable}", cwd=tmp_path
    )
    # A real bounded read (PLAINTEXT: the SASL/SSL settings are carried, not used), with a bad
    # record whose dead letter carries its payload.
    produce_lines(
        kafka_bootstrap,
        kafka_topic,
        [(None, line(event(1))), (None, b'{"broken": ')],
        partitions=3,
    )
    outputs["cli read"] = _cli(
        "-v", *run_flags, f"--bootstrap_servers={kafka_bootstrap}", cwd=tmp_path
    )
    outputs["files written"] = _files_text(tmp_path)

    with caplog.at_level(logging.DEBUG):
        connection = KafkaConnection(unreachable, CONFIG)
        read = ReadFromKafka(bootstrap_servers=unreachable, topics=["t"], config=CONFIG)
        write = WriteToKafka(bootstrap_servers=unreachable, topic="t", config=CONFIG)
        outputs["repr"] = "\n".join(repr(x) for x in (connection, read, write))
        outputs["client config masked"] = repr(connection.masked())
        with pytest.raises(Exception) as caught:  # noqa: PT011 -- any error type; its text matters
            check_reachable(connection, timeout=1.0, topics=["t"])
        outputs["exception"] = "\n".join(
            [str(caught.value), repr(caught.value), *traceback.format_exception(caught.value)]
        )
    outputs["caplog"] = caplog.text

    try:
        from headwater.templates.metadata import metadata_for
    except ImportError:  # another part of the project; nothing to check without it
        pass
    else:
        import json

        from headwater import pipelines

        outputs["template metadata"] = "\n".join(
            json.dumps(metadata_for(name)) for name in pipelines.NAMES
        )

    assert "exit 1" in outputs["cli unreachable"]
    assert "exit 0" in outputs["cli read"], outputs["cli read"][-2000:]
    assert "dead_letters" in outputs["files written"] or "payload_b64" in outputs["files written"]
    leaks = [
        (where, secret) for where, text in outputs.items() for secret in SECRETS if secret in text
    ]
    assert not leaks, f"secrets found in: {leaks}"
    # The check can fail: the secrets did reach the client (the masked view names the keys).
    assert "sasl.password" in outputs["client config masked"]
