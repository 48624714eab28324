"""Kafka connection settings and secret masking; the consumer every Kafka step uses.

:class:`KafkaConnection` is the one typed connection config of :mod:`headwater.io.kafka`: the
bootstrap servers plus any librdkafka settings passed through unchanged as a dict
(``security.protocol``, ``sasl.*``, ``ssl.*`` ... work by passthrough). Secret values --
``sasl.password``, ``ssl.key.password``, ``ssl.key.pem``, ``sasl.oauthbearer.client.secret`` and
any setting whose name contains ``password``, ``secret`` or ``key.pem`` -- never appear in its
``repr``, in log lines or in error messages: they are shown as ``***``.

:func:`check_reachable` answers within a bounded time when no broker can be reached, instead of
letting a client retry forever; :func:`make_consumer` builds a consumer whose offsets headwater
commits itself (auto commit off). Errors are :mod:`headwater.io.kafka.errors` types.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from headwater.io.kafka.errors import KafkaConnectError, KafkaTopicError, wrap_kafka_error

__all__ = [
    "MASK",
    "KafkaConnection",
    "check_reachable",
    "consumer_config",
    "is_secret_key",
    "make_consumer",
    "mask_config",
    "mask_setting",
    "scrub",
]

MASK = "***"

#: Settings that are always secret, whatever their name says.
_SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.key.pem",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.config",  # often carries clientSecret=...
        "basic.auth.user.info",  # schema registry user:password
        "bearer.auth.token",
    }
)
_SECRET_PARTS = ("password", "secret", "key.pem")

#: Keys that headwater sets itself and that the passthrough dict may not contradict.
_RESERVED = frozenset({"bootstrap.servers"})

_LOG = logging.getLogger("headwater.io.kafka")
_CLIENT_LOG = logging.getLogger("headwater.io.kafka.client")


def is_secret_key(key: str) -> bool:
    """Whether the librdkafka setting ``key`` holds a secret that must never be shown.

    >>> is_secret_key("sasl.password"), is_secret_key("sasl.username")
    (True, False)
    """
    lowered = key.lower()
    return lowered in _SECRET_KEYS or any(part in lowered for part in _SECRET_PARTS)


def mask_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every secret value replaced by ``***``."""
    return {key: (MASK if is_secret_key(key) else value) for key, value in config.items()}


_SETTING_RE = re.compile(r"\s*([A-Za-z0-9_.-]+)\s*([=:]|\s)?(.*)", re.DOTALL)


def mask_setting(item: str) -> str:
    """``KEY=VALUE`` as it may be shown: a secret key's value, and anything after the key of a
    malformed item (``sasl.password:hunter2``, a typo for ``=``), become ``***``.

    >>> mask_setting("sasl.password=hunter2"), mask_setting("sasl.password:hunter2")
    ('sasl.password=***', 'sasl.password:***')
    >>> mask_setting("client.id=etl")
    'client.id=etl'
    """
    match = _SETTING_RE.fullmatch(item)
    if match is None:
        return MASK
    key, sep, rest = match.groups()
    if sep == "=" and not is_secret_key(key):
        return item
    if not sep and not rest:
        return key
    return f"{key}{sep or ''}{MASK}"


def _secret_values(config: Mapping[str, Any]) -> list[str]:
    values: list[str] = []
    for key, value in config.items():
        if is_secret_key(key) and isinstance(value, str) and value:
            values.append(value)
            if key.lower() == "basic.auth.user.info" and ":" in value:
                values.append(value.split(":", 1)[1])
            # key=value pairs inside a secret setting (sasl.oauthbearer.config)
            values.extend(m for m in re.findall(r"=(\S+)", value) if len(m) >= 4)
    return sorted(set(values), key=len, reverse=True)


def scrub(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with any secret value of ``config`` replaced by ``***``."""
    for value in _secret_values(config):
        text = text.replace(value, MASK)
    return text


class _ClientLogger:
    """Routes librdkafka's log lines to Python logging, with secret values scrubbed."""

    def __init__(self, secrets: Iterable[str]):
        self._secrets = tuple(secrets)

    def log(self, level: int, fmt: str, *args: Any) -> None:
        if not _CLIENT_LOG.isEnabledFor(level):
            return
        text = fmt % args if args else fmt
        for value in self._secrets:
            text = text.replace(value, MASK)
        _CLIENT_LOG.log(level, "%s", text)


class KafkaConnection:
    """Where and how to connect: bootstrap servers plus librdkafka settings passed through.

    ``bootstrap_servers`` is ``"host:port,host:port"`` or a list of ``host:port``. ``config`` is
    any librdkafka settings (``{"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
    "sasl.username": ..., "sasl.password": ...}``); it may not set ``bootstrap.servers`` again.
    ``repr`` and :meth:`masked` show secret values as ``***``; :meth:`client_config` returns the
    real values, for the client only.

    >>> conn = KafkaConnection("localhost:9092", {"sasl.password": "hunter2"})
    >>> conn
    KafkaConnection(bootstrap_servers='localhost:9092', config={'sasl.password': '***'})
    """

    def __init__(
        self, bootstrap_servers: str | Sequence[str], config: Mapping[str, Any] | None = None
    ):
        if isinstance(bootstrap_servers, str):
            servers = [s.strip() for s in bootstrap_servers.split(",")]
        elif isinstance(bootstrap_servers, Sequence) and all(
            isinstance(s, str) for s in bootstrap_servers
        ):
            servers = [s.strip() for s in bootstrap_servers]
        else:
            raise ValueError(
                f"bootstrap_servers={bootstrap_servers!r} must be 'host:port[,host:port]' "
                "or a list of 'host:port'"
            )
        if not servers or any(not s for s in servers):
            raise ValueError(
                f"bootstrap_servers={bootstrap_servers!r} must name at least one host:port"
            )
        if config is None:
            config = {}
        if not isinstance(config, Mapping):
            raise ValueError(
                f"config={type(config).__name__} must be a dict of librdkafka settings"
            )
        bad_keys = [k for k in config if not isinstance(k, str) or not k]
        if bad_keys:
            raise ValueError(f"config keys {bad_keys!r} must be non-empty strings")
        reserved = sorted(_RESERVED.intersection(config))
        if reserved:
            raise ValueError(
                f"config sets {reserved[0]!r}; pass the servers as bootstrap_servers=... instead"
            )
        self.bootstrap_servers = ",".join(servers)
        self.config: dict[str, Any] = dict(config)

    def masked(self) -> dict[str, Any]:
        """The librdkafka settings with secret values shown as ``***``."""
        return {"bootstrap.servers": self.bootstrap_servers, **mask_config(self.config)}

    def client_config(self, defaults: Mapping[str, Any] | None = None, **overrides: Any) -> dict:
        """The full dict for a confluent-kafka client (real secrets; never log it).

        ``defaults`` yield to the user's settings; ``overrides`` (keys with ``_`` for ``.``)
        win over them. Client log lines go to the ``headwater.io.kafka.client`` logger with
        secrets scrubbed, unless the user passed their own ``logger``.
        """
        result: dict[str, Any] = dict(defaults or {})
        result.update(self.config)
        result.update({key.replace("_", "."): value for key, value in overrides.items()})
        result["bootstrap.servers"] = self.bootstrap_servers
        result.setdefault("logger", _ClientLogger(_secret_values(self.config)))
        return result

    def scrub(self, text: str) -> str:
        """``text`` with this connection's secret values replaced by ``***``."""
        return scrub(text, self.config)

    def __repr__(self) -> str:
        return (
            f"KafkaConnection(bootstrap_servers={self.bootstrap_servers!r}, "
            f"config={mask_config(self.config)!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KafkaConnection):
            return NotImplemented
        return (self.bootstrap_servers, self.config) == (other.bootstrap_servers, other.config)

    def __hash__(self) -> int:
        return hash((KafkaConnection, self.bootstrap_servers))


def check_reachable(connection: KafkaConnection, *, timeout: float, topics: Iterable[str] = ()):
    """Fetches cluster metadata within ``timeout`` seconds, or raises :class:`KafkaConnectError`.

    Returns the ``ClusterMetadata``. With ``topics``, a topic that does not exist raises
    :class:`KafkaTopicError` naming it.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        admin = AdminClient(connection.client_config())
    except KafkaException as exc:
        raise wrap_kafka_error(
            exc, action="creating a Kafka client", connection=connection
        ) from None
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        error = wrap_kafka_error(
            exc,
            action=f"connecting to Kafka (waited {timeout:g}s)",
            connection=connection,
            cls=KafkaConnectError,
        )
        raise error from None
    missing = [t for t in topics if t not in metadata.topics or metadata.topics[t].error]
    if missing:
        raise KafkaTopicError(
            f"topic {missing[0]!r} does not exist on {connection.bootstrap_servers} "
            f"(known topics: {sorted(t for t in metadata.topics if not t.startswith('_'))[:20]})",
            code="UNKNOWN_TOPIC_OR_PART",
        )
    _LOG.info(
        "connected to Kafka at %s: %d broker(s)",
        connection.bootstrap_servers,
        len(metadata.brokers),
    )
    return metadata


def consumer_config(
    connection: KafkaConnection, group_id: str | None, **overrides: Any
) -> dict[str, Any]:
    defaults = {
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
    }
    config = connection.client_config(defaults)
    # These change delivery semantics: headwater owns them.
    config["enable.auto.commit"] = False
    config["enable.auto.offset.store"] = False
    config["group.id"] = group_id or config.get("group.id") or f"headwater-{uuid.uuid4().hex}"
    config.update(overrides)
    return config


def make_consumer(connection: KafkaConnection, group_id: str | None) -> Any:
    from confluent_kafka import Consumer, KafkaException

    try:
        return Consumer(consumer_config(connection, group_id))
    except (KafkaException, ValueError) as exc:
        raise wrap_kafka_error(
            exc, action="creating a Kafka consumer", connection=connection
        ) from None
