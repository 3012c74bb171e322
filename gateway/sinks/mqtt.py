"""The `mqtt` sink: a bridge that republishes to an upstream broker.

Each reading record is published as a SenML pack (JSON array, the records of one reading
record with `node`, `seq`, `rid`, base name and base time on the first: `senml_pack`) to `{topic_prefix}/{node_id}/senml`, each alarm event to
`{topic_prefix}/{node_id}/event`, QoS 1, not retained. The batch is confirmed when the
upstream broker acknowledged every publish (PUBACK) within `timeout_s`; otherwise the whole
batch is retried and the upstream may see some packs twice (consumers dedup by `rid`).

After an outage the client reconnects within `RECONNECT_DELAY`'s cap of the broker's return
and tells the batcher (`resume`), which then delivers at once instead of waiting out its
backoff. A CONNACK refusing the credential pauses the sink (`DeliveryUnauthorized`).
"""

from __future__ import annotations

import json
import logging
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import mqtt_tls
from gateway.errors import DeliveryFailed, DeliveryUnauthorized
from gateway.logfmt import kv
from gateway.outbox import Batch
from gateway.sinks import Sink, convert_each, senml_pack

log = logging.getLogger("meterlink.gateway.sink.mqtt")

# Reconnect attempts (seconds, doubling up to the cap) while the upstream is away: a refused
# TCP connection costs the platform nothing, and the cap bounds recovery after an outage to
# about 4 s. A refused credential waits longer between attempts (until the platform fixes it).
RECONNECT_DELAY = (1, 4)
REFUSED_DELAY = (5, 15)
REFUSED_CREDENTIALS = (134, 135)  # CONNACK: bad user name or password, not authorized

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


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
        prefix = self.config.options["topic_prefix"]
        infos = []
        for item, payload in zip(batch.items, convert_each(batch, self.convert)):
            kind = "senml" if item.kind == "reading" else "event"
            infos.append(self.client.publish(f"{prefix}/{item.node}/{kind}", payload, qos=1))
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

    @staticmethod
    def convert(item) -> bytes:
        """The item's SenML pack (strict JSON: no NaN or Infinity)."""
        return _encode(senml_pack(item)).encode()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
            self.client = None
