"""The gateway daemon: MQTT in, decode and validate, dedup, JSONL sink out.

    gateway = Gateway(load_config("gateway.toml"))
    sys.exit(gateway.run())          # blocks until SIGINT or SIGTERM

Flow of one message (paho's network thread, `_on_message`):

    topic -> parse_topic -> decode_reading -> resolve_records -> sink.store (fsync) -> PUBACK

Delivery: the client has a persistent session (clean session off, fixed client id) and
subscribes `{prefix}/+/r` at QoS 1 on every connect, so the broker queues readings while the
gateway is away. Acknowledgements are manual (`manual_ack=True`): a message is acknowledged
only after its records are synced to the sink, or after it was rejected as malformed (a
malformed message never becomes valid; it is logged with its reason and offset, counted, and
acknowledged so it does not block the session). If the sink cannot be written, the message is
not acknowledged and the gateway stops with exit status 1: the broker keeps the message for
the session and delivers it again when the gateway is back. Manual acks rather than paho's
automatic ack-after-callback make that last case safe: with automatic acks a failed write
would either be acknowledged anyway or have to raise through paho's network thread.

Nothing raised while handling a message escapes the callback: an unexpected exception is
logged with its traceback and the payload, counted under reason "internal", and acknowledged.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.channels import ChannelTable, default_table
from gateway.config import Config
from gateway.errors import EXIT_ERROR, EXIT_OK, RejectedInput, SinkError, TopicError
from gateway.logfmt import kv
from gateway.sink import JsonlSink
from gateway.stats import DEFAULT_INTERVAL, Stats, StatsWriter
from gateway.wire import decode_reading, parse_topic, resolve_records

log = logging.getLogger("meterlink.gateway")
mqtt_log = logging.getLogger("meterlink.gateway.mqtt")

RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 30
READING_KIND = "r"

Outcome = Literal["accepted", "rejected", "internal"]


class Gateway:
    """One gateway process: an MQTT client, the channel table, the sink and the counters."""

    def __init__(self, config: Config, *, table: ChannelTable | None = None,
                 clock: Callable[[], float] = time.time,
                 stats_interval: float = DEFAULT_INTERVAL) -> None:
        self.config = config
        self.table = table if table is not None else default_table()
        self._clock = clock
        self.stats = Stats(clock=clock, extra={"channel_table_version": self.table.version})
        self.sink = JsonlSink(config.sink.path)
        self._stats_writer = (StatsWriter(self.stats, config.gateway.stats_file,
                                          interval=stats_interval)
                              if config.gateway.stats_file else None)
        self._stop = threading.Event()
        self._exit_code = EXIT_OK
        self._failed = False
        self._started = False
        self.client = self._make_client()

    def __repr__(self) -> str:
        mqtt_cfg = self.config.mqtt
        return (f"Gateway({mqtt_cfg.host}:{mqtt_cfg.port}, sub={mqtt_cfg.subscription!r}, "
                f"sink={str(self.sink.path)!r})")

    # ---- lifecycle --------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                             clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY, max_delay=RECONNECT_MAX_DELAY)
        # A bug in a callback must not end paho's network thread: paho logs it (on_log) and
        # carries on. Its other messages are protocol chatter, kept for DEBUG.
        client.suppress_exceptions = True
        client.on_log = self._on_log
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        """Opens the sink, starts the stats writer and the MQTT network thread; returns at once.

        The broker need not be up: the client keeps trying to connect.
        SinkError when the sink cannot be opened (nothing is connected then).
        """
        if self._started:
            return
        self.sink.open()
        if self._stats_writer:
            self._stats_writer.start()
        cfg = self.config.mqtt
        log.info("starting", extra=kv(host=cfg.host, port=cfg.port, client_id=cfg.client_id,
                                      subscription=cfg.subscription, sink=str(self.sink.path),
                                      channel_table_version=self.table.version))
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive)
        self.client.loop_start()
        self._started = True

    def stop(self, exit_code: int | None = None) -> None:
        """Asks `run()` to return (thread- and signal-safe)."""
        if exit_code is not None:
            self._exit_code = exit_code
        self._stop.set()

    def shutdown(self) -> None:
        """Disconnects cleanly, closes the sink and writes the final stats."""
        if not self._started:
            return
        self._started = False
        self.client.disconnect()
        self.client.loop_stop()
        self.sink.close()
        self.stats.set_state(connected=False, subscribed=False, running=False)
        if self._stats_writer:
            self._stats_writer.stop()
        log.info("stopped", extra=kv(exit_code=self._exit_code, **self._summary()))

    def run(self) -> int:
        """Runs until SIGINT or SIGTERM (or `stop()`); returns the exit status.

        0 after a clean stop, 1 when the sink failed (the unacknowledged message stays with
        the broker).
        """
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
        try:
            self.start()
            while not self._stop.wait(1.0):
                pass
        finally:
            try:
                self.shutdown()
            finally:
                for signum, previous in handlers.items():
                    signal.signal(signum, previous)
        return self._exit_code

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.info("signal", extra=kv(signal=signal.Signals(signum).name))
        self.stop()

    def _summary(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        return {k: snap[k] for k in ("received", "accepted_records", "duplicates", "rejected")}

    # ---- MQTT callbacks (paho network thread) -----------------------------------------------

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and text.startswith("Caught exception"):
            mqtt_log.error("callback_failed", extra=kv(detail=text))
        else:
            mqtt_log.debug(text)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        cfg = self.config.mqtt
        log.warning("connect_failed", extra=kv(host=cfg.host, port=cfg.port,
                                               reconnect="automatic"))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any,
                    reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("connect_refused", extra=kv(reason=str(reason_code)))
            return
        self.stats.add(connects=1)
        self.stats.set_state(connected=True, subscribed=False)
        topic = self.config.mqtt.subscription
        result, mid = client.subscribe(topic, qos=self.config.mqtt.qos)
        log.info("connected", extra=kv(session_present=bool(flags.session_present),
                                       subscribe=topic, mid=mid))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("subscribe_refused", extra=kv(subscription=self.config.mqtt.subscription,
                                                    reason=str(failed[0])))
            return
        self.stats.set_state(subscribed=True)
        log.info("subscribed", extra=kv(subscription=self.config.mqtt.subscription,
                                        qos=[rc.value for rc in reason_codes]))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any,
                       reason_code: Any, properties: Any) -> None:
        self.stats.set_state(connected=False, subscribed=False)
        if self._stop.is_set():
            log.info("disconnected", extra=kv(reason=str(reason_code)))
        else:
            log.warning("disconnected", extra=kv(reason=str(reason_code),
                                                 reconnect="automatic"))

    def _on_message(self, client: mqtt.Client, userdata: Any,
                    message: mqtt.MQTTMessage) -> None:
        if self._failed:
            return  # the sink failed: acknowledge nothing more, the broker keeps it all
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = message._topic.decode("utf-8", "replace")  # broker let bad UTF-8 through
        try:
            self.handle_message(topic, message.payload, received_at=int(self._clock()))
        except SinkError as exc:
            self._failed = True
            log.error("sink_failed", extra=kv(error=str(exc), topic=topic, mid=message.mid,
                                              acknowledged=False, action="stopping"))
            self.stop(EXIT_ERROR)
            return
        client.ack(message.mid, message.qos)

    # ---- processing (no MQTT here: testable on its own) -------------------------------------

    def handle_message(self, topic: str, payload: bytes, *, received_at: int) -> Outcome:
        """Processes one message from the reading subscription.

        Returns how it ended; raises only SinkError (nothing was acknowledged then).
        """
        self.stats.add(received=1)
        node_id = "-"
        try:
            node_id, kind = parse_topic(topic, self.config.mqtt.prefix)
            if kind != READING_KIND:
                raise TopicError(topic, len(topic) - 1, f"kind must be {READING_KIND!r} on the "
                                                        f"reading subscription, got {kind!r}")
            reading = decode_reading(payload, self.table)
            records = resolve_records(node_id, reading, self.table, received_at=received_at)
            result = self.sink.store(node_id, [(rec.seq, senml) for rec, senml in records])
        except RejectedInput as exc:
            self.stats.reject(exc.reason)
            log.warning("rejected", extra=kv(node=node_id, topic=topic, reason=exc.reason,
                                             offset=getattr(exc, "offset", None),
                                             detail=getattr(exc, "detail", str(exc)),
                                             bytes=len(payload)))
            return "rejected"
        except SinkError:
            raise
        except Exception:
            self.stats.reject("internal")
            log.exception("internal_error", extra=kv(node=node_id, topic=topic,
                                                     payload=_payload_hex(payload)))
            return "internal"
        self.stats.add(accepted_messages=1, accepted_records=result.stored,
                       duplicates=result.duplicates, senml_records=result.lines)
        log.debug("accepted", extra=kv(node=node_id, seq=reading.seq, last_seq=reading.last_seq,
                                       records=len(reading.records), stored=result.stored,
                                       duplicates=result.duplicates))
        return "accepted"


def _payload_hex(payload: object) -> str:
    """The payload for an error log line, so the message can be reprocessed by hand."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload).hex()
    return f"<{type(payload).__name__}>"
