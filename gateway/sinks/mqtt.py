"""The `mqtt` sink: a bridge that republishes to an upstream broker.

Each batch's readings are published as SenML packs (JSON arrays, `pack_json`: each reading
record's values with `node`, `seq`, `rid`, and its base name and base time on the first) to
`{topic_prefix}/senml`, as few packs as fit in `pack_max_bytes` each: whole reading records in
batch order, and only a reading record too big for one pack on its own is cut, each part led
by its base name and base time again. Each alarm event goes on its own to
`{topic_prefix}/{node_id}/event`. QoS 1, not retained. The batch is confirmed when the
upstream broker acknowledged every publish (PUBACK) within `timeout_s`; otherwise the whole
batch is published again, and the upstream may see some packs twice (consumers dedup by
`rid`; a pack has no key of its own: a batch is several messages, any of which may have
arrived before the failure).

Packs, not a message per record: a QoS 1 publish costs the same acknowledgement round trip
and broker work whatever its size, so one per reading record (what this sink sent before)
capped the bridge at a few thousand readings a second.

After an outage the client reconnects within `RECONNECT_DELAY`'s cap of the broker's return
and tells the batcher (`resume`), which then delivers at once instead of waiting out its
backoff. A CONNACK refusing the credential pauses the sink (`DeliveryUnauthorized`).
"""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import mqtt_tls
from gateway.errors import DeliveryFailed, DeliveryUnauthorized
from gateway.logfmt import kv
from gateway.outbox import Batch, Item
from gateway.sinks.base import Sink, convert_each, pack_json

log = logging.getLogger("meterlink.gateway.sink.mqtt")

# Reconnect attempts (seconds, doubling up to the cap) while the upstream is away: a refused
# TCP connection costs the platform nothing, and the cap bounds recovery after an outage to
# about 4 s. A refused credential waits longer between attempts (until the platform fixes it).
RECONNECT_DELAY = (1, 4)
REFUSED_DELAY = (5, 15)
REFUSED_CREDENTIALS = (134, 135)  # CONNACK: bad user name or password, not authorized


class MqttSink(Sink):
    """Republishes SenML packs to an upstream MQTT broker."""

    name = "mqtt"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.client: mqtt.Client | None = None
        self.refused: str | None = None  # the CONNACK that refused the credential

    def open(self) -> None:
        o = self.config.options
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=o["client_id"],
                             clean_session=True, protocol=mqtt.MQTTv311)
        if o["username"] is not None:
            client.username_pw_set(o["username"], o["password"])
        mqtt_tls.apply(client, tls=o["tls"], ca_file=o["ca_file"], cert_file=o["cert_file"],
                       key_file=o["key_file"], where=f"sinks.{self.name}")
        client.reconnect_delay_set(*RECONNECT_DELAY)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.connect_async(o["host"], o["port"], keepalive=o["keepalive"])
        client.loop_start()
        self.client = client

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        o = self.config.options
        if reason.is_failure:
            if reason.value in REFUSED_CREDENTIALS:
                self.refused = str(reason)
                client.reconnect_delay_set(*REFUSED_DELAY)
            log.warning("bridge_refused", extra=kv(host=o["host"], port=o["port"],
                                                   reason=str(reason)))
            return
        if self.refused is not None:
            client.reconnect_delay_set(*RECONNECT_DELAY)
        self.refused = None
        log.info("bridge_connected", extra=kv(host=o["host"], port=o["port"],
                                              reason=str(reason)))
        self.resume()  # the batcher stops waiting out its backoff

    def deliver(self, batch: Batch) -> None:
        if self.refused is not None:
            raise DeliveryUnauthorized(f"upstream broker {self.config.options['host']}:"
                                       f"{self.config.options['port']} refused the "
                                       f"credential: {self.refused}")
        if self.client is None or not self.client.is_connected():
            raise DeliveryFailed(f"upstream broker {self.config.options['host']}:"
                                 f"{self.config.options['port']} not connected")
        infos = [self.client.publish(topic, payload, qos=1)
                 for topic, payload in self.messages(batch)]
        deadline = time.monotonic() + self.config.options["timeout_s"]
        for info in infos:
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise DeliveryFailed(f"upstream publish failed: {mqtt.error_string(info.rc)}")
            try:
                info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as exc:
                raise DeliveryFailed(f"upstream publish failed: {exc}") from exc
            if not info.is_published():
                raise DeliveryFailed("upstream broker did not acknowledge within "
                                     f"{self.config.options['timeout_s']:g}s")

    def messages(self, batch: Batch) -> list[tuple[str, bytes]]:
        """(topic, payload) of every publish of the batch, in order: the readings in packs of
        at most `pack_max_bytes` (see the module docstring), each event on its own."""
        prefix = self.config.options["topic_prefix"]
        limit = self.config.options["pack_max_bytes"]
        topic = f"{prefix}/senml"
        out: list[tuple[str, bytes]] = []
        pack: list[str] = []
        size = 1  # "[", and "]" or "," after each record's text
        for item, text in zip(batch.items, convert_each(batch, self.convert)):
            if item.kind != "reading":
                if pack:
                    out.append((topic, f"[{','.join(pack)}]".encode()))
                    pack, size = [], 1
                out.append((f"{prefix}/{item.node}/event", f"[{text}]".encode()))
                continue
            for part in (_cut(item, limit) if len(text) + 2 > limit else (text,)):
                if not part:
                    continue
                if pack and size + len(part) + 1 > limit:
                    out.append((topic, f"[{','.join(pack)}]".encode()))
                    pack, size = [], 1
                pack.append(part)
                size += len(part) + 1
        if pack:
            out.append((topic, f"[{','.join(pack)}]".encode()))
        return out

    @staticmethod
    def convert(item) -> str:
        """The item's SenML pack records as JSON text, without the enclosing brackets (strict
        JSON: no NaN or Infinity; ASCII, so its length is its size in bytes)."""
        return pack_json(item)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None


def _cut(item: Item, limit: int) -> list[str]:
    """The records of a reading record too big for one pack, as `pack_json` texts of parts of
    it that fit in `limit` bytes each with their brackets (each part a pack of its own, led
    by base name and base time). A record's size alone, with that lead, bounds its size in
    a part, so the parts fit; a record bigger than `limit` by itself (none is: a few hundred
    bytes at most, and the limit is at least 1 KiB) goes alone."""
    parts: list[str] = []
    chunk: list = []
    size = 1
    for record in item.body:
        alone = len(pack_json(item._replace(body=[record]))) + 1
        if chunk and size + alone > limit:
            parts.append(pack_json(item._replace(body=chunk)))
            chunk, size = [], 1
        chunk.append(record)
        size += alone
    if chunk:
        parts.append(pack_json(item._replace(body=chunk)))
    return parts
