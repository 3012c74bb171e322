"""Every error meterlink raises on purpose, in one place.

    MeterlinkError                  base: an expected failure with a message meant for a person
     ├── ConfigError                a config file or option is invalid (key, rule, value got)
     ├── ChannelTableError          gateway/channels.json is malformed
     ├── RejectedInput              an input from the network is malformed; has a reason class
     │    ├── WireError             a reading payload breaks wire format v1 (reason, byte offset)
     │    └── TopicError            an MQTT topic breaks the topic rules (reason "topic")
     ├── SinkError                  the outbox or a sink cannot be opened or written
     ├── DeliveryError              a sink could not deliver a batch upstream
     │    ├── DeliveryFailed        transient (5xx, timeout, connection): retry, same key
     │    ├── DeliveryRejected      permanent (4xx): the batch goes to dead letters
     │    ├── DeliveryUnauthorized  401/403: the credential is refused; the sink pauses
     │    └── Unconvertible         items the sink cannot put in its format: dead letters
     └── UserError                  a command-line failure: `meterlink: msg` (+ hint), exit code

`MeterlinkError`, `UserError` and the exit codes (`EXIT_OK`, `EXIT_ERROR`, `EXIT_INPUT`) are
defined in `meterlink_common`, which the technician tools share with the gateway; they are
imported here so that the whole tree is in reach from one module. The other errors are the
gateway's own.

Errors from the libraries underneath (cbor2, tomllib, OS calls) are translated into these at
the boundary that calls the library, with `raise ... from exc`, so callers catch one hierarchy.
Anything else that escapes is a bug, not an input problem.
"""

from __future__ import annotations

from meterlink_common.errors import EXIT_ERROR, EXIT_INPUT, EXIT_OK, MeterlinkError, UserError

__all__ = [
    "EXIT_ERROR", "EXIT_INPUT", "EXIT_OK", "ChannelTableError", "ConfigError", "DeliveryError",
    "DeliveryFailed", "DeliveryRejected", "DeliveryUnauthorized", "MeterlinkError",
    "RejectedInput", "SinkError", "TopicError", "Unconvertible", "UserError", "WireError",
]


class ConfigError(MeterlinkError):
    """A config file or option is invalid; names the key, the rule and the value received.

    `ConfigError("mqtt.port", "must be an integer 1-65535", got='"abc"')` reads
    `mqtt.port must be an integer 1-65535: got "abc"`. `source` (the file) is prefixed when set.
    """

    def __init__(self, key: str | None, rule: str, *, got: str | None = None,
                 source: str | None = None) -> None:
        self.key = key
        self.rule = rule
        self.got = got
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"{self.key} {self.rule}" if self.key else self.rule
        if self.got is not None:
            text += f": got {self.got}"
        if self.source:
            text = f"{self.source}: {text}"
        return text

    def with_source(self, source: str) -> "ConfigError":
        """The same error, naming the file it came from."""
        return ConfigError(self.key, self.rule, got=self.got, source=source)


class ChannelTableError(MeterlinkError):
    """The channel table file is malformed (ids, names, units or scales)."""


class RejectedInput(MeterlinkError):
    """A network input is malformed. `reason` is a short class used as a counter name."""

    reason: str


class WireError(RejectedInput):
    """A payload breaks wire format v1.

    `reason` is the class of fault (see `gateway.wire.REASONS`), `offset` the byte offset of
    the offending CBOR item in the payload, `detail` the human sentence. `str()` reads
    `offset 14: record 1: channel key 7 value must be an integer, got float`.
    """

    def __init__(self, reason: str, offset: int, detail: str) -> None:
        self.reason = reason
        self.offset = offset
        self.detail = detail
        super().__init__(f"offset {offset}: {detail}")


class TopicError(RejectedInput):
    """An MQTT topic breaks the topic rules; `offset` is the character index of the fault."""

    reason = "topic"

    def __init__(self, topic: str, offset: int, detail: str) -> None:
        self.topic = topic
        self.offset = offset
        self.detail = detail
        super().__init__(f"topic {topic!r}: offset {offset}: {detail}")


class SinkError(MeterlinkError):
    """The sink could not be opened or written; the message is not acknowledged."""


class DeliveryError(MeterlinkError):
    """A sink could not deliver a batch upstream."""


class DeliveryFailed(DeliveryError):
    """Transient: the batch stays in the outbox and is retried under the same key.

    `retry_after` (seconds) when the upstream said when to come back (HTTP Retry-After).
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class DeliveryRejected(DeliveryError):
    """Permanent: the upstream refused the batch (HTTP 4xx); `status` and `reply` kept."""

    def __init__(self, message: str, *, status: int | None, reply: str) -> None:
        self.status = status
        self.reply = reply
        super().__init__(message)


class DeliveryUnauthorized(DeliveryError):
    """The upstream refused the sink's credential (HTTP 401/403, MQTT not authorised).

    Not a fault of the batch: the batch stays in the outbox, the sink pauses (probing now and
    then) and raises the `sink_auth` alarm until the credential is accepted again.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class Unconvertible(DeliveryError):
    """Some items of a batch cannot be put in the sink's format (a time past year 9999, a
    non-finite value); raised before anything was sent. `items` holds `(item, reason)`: those
    go to dead letters, the rest of the batch is delivered."""

    def __init__(self, items: list) -> None:
        self.items = items
        super().__init__(f"{len(items)} item(s) cannot be converted: {items[0][1]}")
