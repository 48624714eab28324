"""Kafka connection config: secret masking, readable wrapped errors, bounded connect failures."""

from __future__ import annotations

import logging
import socket
import time

import apache_beam as beam
import pytest
from confluent_kafka import KafkaError, KafkaException

from headwater.io.kafka import (
    KafkaConfigError,
    KafkaConnectError,
    KafkaConnection,
    KafkaDeliveryError,
    ReadFromKafka,
    WriteToKafka,
    check_reachable,
    is_secret_key,
    mask_config,
    mask_setting,
    wrap_kafka_error,
)

SECRETS = {
    "sasl.password": "pw-one-1234",
    "ssl.key.password": "pw-two-1234",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----abcd",
    "sasl.oauthbearer.client.secret": "oauth-secret-1234",
    "my.custom.password.thing": "pw-three-1234",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("key", sorted(SECRETS))
def test_secret_keys_are_recognised(key):
    """Every secret setting, including any *password* name, is a secret key."""
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["sasl.username", "security.protocol", "client.id"])
def test_plain_keys_are_not_secret(key):
    """Non-secret settings are shown as they are."""
    assert not is_secret_key(key)


def test_repr_masks_every_secret():
    """repr shows *** instead of each secret value, and the plain settings as they are."""
    conn = KafkaConnection("h:9092", {**SECRETS, "sasl.username": "alice"})
    text = repr(conn)
    assert all(value not in text for value in SECRETS.values())
    assert "alice" in text
    assert mask_config(SECRETS) == dict.fromkeys(SECRETS, "***")


@pytest.mark.parametrize(
    "item",
    [
        "sasl.password:pw-typo-1234",
        "sasl.password pw-typo-1234",
        "sasl.password=pw-typo-1234",
        "my.custom.password.thing:pw-typo-1234",
        "client.id;pw-typo-1234",
    ],
)
def test_mask_setting_never_shows_a_secret_or_a_malformed_value(item):
    """A secret's value, and anything after the key of a malformed item, is never shown."""
    shown = mask_setting(item)
    assert "pw-typo-1234" not in shown
    assert shown.startswith(item[:8])


def test_mask_setting_shows_plain_settings():
    """A well-formed non-secret setting is shown as it is."""
    assert mask_setting("security.protocol=SASL_SSL") == "security.protocol=SASL_SSL"


def test_malformed_kafka_config_flag_does_not_echo_the_value():
    """--kafka_config=sasl.password:VALUE (a typo for =) is refused without the value."""
    from headwater.pipelines.config import kafka_config

    with pytest.raises(ValueError, match=r"sasl\.password") as caught:
        kafka_config({"kafka_config": ["sasl.password:pw-typo-1234"]})
    assert "pw-typo-1234" not in str(caught.value)


def test_transform_reprs_mask_secrets():
    """ReadFromKafka and WriteToKafka reprs do not show secrets."""
    read = ReadFromKafka(bootstrap_servers="h:1", topics="t", config=SECRETS)
    write = WriteToKafka(bootstrap_servers="h:1", topic="t", config=SECRETS)
    for text in (repr(read), repr(write)):
        assert all(value not in text for value in SECRETS.values())


def test_client_config_keeps_real_values_for_the_client():
    """client_config passes the real secret to the client and sets bootstrap.servers."""
    config = KafkaConnection(["a:1", "b:2"], {"sasl.password": "pw"}).client_config()
    assert config["sasl.password"] == "pw"
    assert config["bootstrap.servers"] == "a:1,b:2"


@pytest.mark.parametrize(
    ("servers", "config", "bad"),
    [
        ("", None, "bootstrap_servers=''"),
        (42, None, "bootstrap_servers=42"),
        ("h:1", {"bootstrap.servers": "x:1"}, "'bootstrap.servers'"),
        ("h:1", ["a"], "config=list"),
    ],
)
def test_connection_validation_names_the_bad_value(servers, config, bad):
    """Bad connection options raise ValueError naming them."""
    with pytest.raises(ValueError, match=bad):
        KafkaConnection(servers, config)


def test_wrapped_error_is_readable_and_scrubbed():
    """A client error becomes a headwater error with action, servers, code, hint, no secret."""
    conn = KafkaConnection("h:9092", {"sasl.password": "hunter2-secret"})
    error = KafkaException(KafkaError(KafkaError._TRANSPORT, "auth hunter2-secret failed"))
    wrapped = wrap_kafka_error(
        error, action="reading t[0]", connection=conn, cls=KafkaDeliveryError
    )
    assert isinstance(wrapped, KafkaDeliveryError)
    text = str(wrapped)
    assert "reading t[0] failed" in text
    assert "h:9092" in text
    assert "_TRANSPORT" in text
    assert "hunter2-secret" not in text
    assert wrapped.code == "_TRANSPORT"


def test_invalid_client_setting_is_a_config_error():
    """An unknown librdkafka property surfaces as KafkaConfigError naming it."""
    with pytest.raises(KafkaConfigError, match=r"bogus\.property"):
        check_reachable(KafkaConnection("127.0.0.1:1", {"bogus.property": 1}), timeout=1)


def test_unreachable_broker_fails_within_bounded_time(caplog):
    """No broker: KafkaConnectError within the timeout, naming servers, without the secret."""
    caplog.set_level(logging.DEBUG)
    servers = f"127.0.0.1:{_closed_port()}"
    conn = KafkaConnection(servers, {"sasl.password": "pw-never-shown"})
    began = time.monotonic()
    with pytest.raises(KafkaConnectError) as caught:
        check_reachable(conn, timeout=1.5)
    assert time.monotonic() - began < 10
    assert servers in str(caught.value)
    assert "waited 1.5s" in str(caught.value)
    assert "pw-never-shown" not in str(caught.value)
    assert "pw-never-shown" not in caplog.text


def test_pipeline_against_unreachable_broker_fails_fast():
    """A bounded read against a closed port fails the pipeline with KafkaConnectError, no hang."""
    servers = f"127.0.0.1:{_closed_port()}"
    began = time.monotonic()
    with (
        pytest.raises(KafkaConnectError, match="connecting to Kafka") as caught,
        beam.Pipeline("FnApiRunner") as p,
    ):
        _ = p | ReadFromKafka(
            bootstrap_servers=servers,
            topics="t",
            stop_at_end=True,
            connect_timeout="1s",
            config={"sasl.oauthbearer.client.secret": "zz-secret"},
        )
    assert "zz-secret" not in str(caught.value)
    assert time.monotonic() - began < 20


def test_closed_port_is_still_reported_as_unreachable():
    """Nothing listening: the hint asks whether the broker runs (no protocol guess)."""
    connection = KafkaConnection(f"127.0.0.1:{_closed_port()}", {"security.protocol": "SSL"})
    with pytest.raises(KafkaConnectError, match="is the broker running") as caught:
        check_reachable(connection, timeout=2)
    assert "mismatch" not in str(caught.value)


@pytest.mark.integration
def test_scram_against_a_plaintext_broker_names_the_protocol_mismatch(kafka_bootstrap):
    """SASL/SCRAM against a plaintext listener: the broker runs, so the error names an
    authentication/protocol mismatch instead of asking whether it is running."""
    config = {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "sasl.password": "pw-scram-1234",
    }
    with pytest.raises(KafkaConnectError) as caught:
        check_reachable(KafkaConnection(kafka_bootstrap, config), timeout=5)
    text = str(caught.value)
    assert "authentication or protocol mismatch" in text
    assert "security.protocol=SASL_PLAINTEXT" in text
    assert "is the broker running" not in text
    assert "pw-scram-1234" not in text
