"""Readable Kafka errors: :class:`KafkaIOError` and its kinds, and :func:`wrap_kafka_error`.

Errors raised by confluent-kafka are wrapped in :class:`KafkaIOError` subclasses whose message
says what was being done, against which servers, the client's error name and text, and a hint;
secret values of the connection are scrubbed from it.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from headwater.io.kafka.config import KafkaConnection

__all__ = [
    "KafkaCommitError",
    "KafkaConfigError",
    "KafkaConnectError",
    "KafkaConsumeError",
    "KafkaDeliveryError",
    "KafkaIOError",
    "KafkaTopicError",
    "wrap_kafka_error",
]


class KafkaIOError(RuntimeError):
    """A Kafka client operation failed; the message is readable and free of secrets.

    ``code`` is the client's error name (``"_TRANSPORT"``, ``"MSG_SIZE_TOO_LARGE"`` ...) when the
    error came from confluent-kafka, else ``None``; ``retriable`` says whether retrying may help.
    """

    def __init__(self, message: str, *, code: str | None = None, retriable: bool = False):
        super().__init__(message)
        self.code = code
        self.retriable = retriable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), str(self), self.code, self.retriable))


def _rebuild(cls: type[KafkaIOError], message: str, code: str | None, retriable: bool) -> Any:
    return cls(message, code=code, retriable=retriable)


class KafkaConfigError(KafkaIOError, ValueError):
    """The client refused a setting (unknown property, invalid value)."""


class KafkaConnectError(KafkaIOError):
    """No broker could be reached (or it did not answer) within the time allowed."""


class KafkaTopicError(KafkaIOError):
    """A topic or partition does not exist or cannot be described."""


class KafkaConsumeError(KafkaIOError):
    """Reading from a partition failed."""


class KafkaCommitError(KafkaIOError):
    """Committing offsets to the consumer group failed."""


class KafkaDeliveryError(KafkaIOError):
    """The producer could not deliver a record; the bundle fails so the runner retries it."""


_HINTS = {
    "_TRANSPORT": "is the broker running and reachable from this machine?",
    "_ALL_BROKERS_DOWN": "is the broker running and reachable from this machine?",
    "_TIMED_OUT": "is the broker running and reachable from this machine?",
    "_RESOLVE": "check the host names in bootstrap_servers",
    "_AUTHENTICATION": "check the SASL/SSL settings (security.protocol, sasl.mechanism, ...)",
    "SASL_AUTHENTICATION_FAILED": "check the SASL username and password",
    "TOPIC_AUTHORIZATION_FAILED": "the principal lacks permission on the topic",
    "GROUP_AUTHORIZATION_FAILED": "the principal lacks permission on the consumer group",
    "UNKNOWN_TOPIC_OR_PART": "create the topic first, or check its name",
    "_UNKNOWN_PARTITION": "the partition does not exist",
    "_UNKNOWN_TOPIC": "create the topic first, or check its name",
    "MSG_SIZE_TOO_LARGE": "the record is larger than message.max.bytes (producer) or the "
    "broker's/topic's max.message.bytes",
    "_MSG_TIMED_OUT": "the broker did not acknowledge the record within message.timeout.ms",
    "_INVALID_ARG": "check the librdkafka config dict",
}


_UNREACHABLE_CODES = frozenset({"_TRANSPORT", "_ALL_BROKERS_DOWN", "_TIMED_OUT"})


def _listening_hint(connection: KafkaConnection, *, timeout: float = 1.0) -> str | None:
    """When a bootstrap server accepts TCP connections the broker is running, so a transport
    failure is a protocol or authentication mismatch: the hint says so, else ``None``."""
    for server in connection.bootstrap_servers.split(","):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                pass
        except (OSError, ValueError):
            continue
        settings = {k: connection.config[k] for k in _PROTOCOL_KEYS if k in connection.config}
        protocol = str(settings.get("security.protocol", "plaintext")).lower()
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "security.protocol=plaintext"
        if protocol == "plaintext":
            return (
                f"the broker at {server} accepts connections but the Kafka protocol failed: its "
                "listener may expect SSL or SASL (set security.protocol and sasl.* to match it)"
            )
        return (
            f"the broker at {server} is running (it accepts connections), so this is an "
            f"authentication or protocol mismatch: check that its listener speaks {shown} and "
            "accepts these credentials"
        )
    return None


_PROTOCOL_KEYS = ("security.protocol", "sasl.mechanism", "sasl.mechanisms")


def wrap_kafka_error(
    exc: BaseException,
    *,
    action: str,
    connection: KafkaConnection | None = None,
    cls: type[KafkaIOError] = KafkaIOError,
) -> KafkaIOError:
    """``exc`` (a ``KafkaException``, ``KafkaError`` or any error) as a readable headwater error.

    The message reads ``"<action> failed (servers ...): <client text> [<CODE>]; <hint>"`` with
    secret values scrubbed. ``_INVALID_ARG`` errors become :class:`KafkaConfigError`.
    """
    if isinstance(exc, KafkaIOError):
        return exc
    error: Any = exc.args[0] if getattr(exc, "args", None) else exc
    code = retriable = None
    text = str(exc)
    if hasattr(error, "name") and hasattr(error, "str"):  # a confluent_kafka.KafkaError
        code = error.name()
        text = error.str()
        retriable = bool(error.retriable())
    servers = f" (bootstrap servers {connection.bootstrap_servers})" if connection else ""
    message = f"{action} failed{servers}: {text}"
    if code:
        message += f" [{code}]"
    hint = _HINTS.get(code or "")
    if code in _UNREACHABLE_CODES and connection is not None:
        hint = _listening_hint(connection) or hint
    if hint:
        message += f"; {hint}"
    if connection is not None:
        message = connection.scrub(message)
    if code == "_INVALID_ARG" and cls is KafkaIOError:
        cls = KafkaConfigError
    return cls(message, code=code, retriable=bool(retriable))
