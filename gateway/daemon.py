"""The gateway daemon: MQTT in, outbox (SQLite) in the middle, sinks out.

    gateway = Gateway(load_config("gateway.toml"))
    sys.exit(gateway.run())          # blocks until SIGINT or SIGTERM

Threads, one job each:

    paho network thread   receives messages and puts them on the ingest queue (no I/O)
    ingest                takes up to `batch_messages` messages (waiting `batch_wait_ms` for
                          more), commits them in one outbox transaction (gateway.ingest), then
                          acknowledges them to the broker; once a second: stale nodes, gauges
    sink-NAME             one per sink (gateway.batcher): outbox -> batch -> sink -> confirm
    api                   the local HTTP API and /metrics (gateway.api)
    stats-writer          the stats file

Delivery: a persistent session (clean session off, fixed client id) with QoS 1 subscriptions
renewed on every connect, and manual acknowledgements: a message is acknowledged (PUBACK) only
after the transaction holding its records committed. If the outbox cannot be written the
gateway acknowledges nothing more and exits with status 1; the broker redelivers everything
unacknowledged to the next gateway process, and (node, seq) dedup drops what was committed.

Bounded disk: when the data in the outbox reaches `[outbox] max_bytes` (checked after every
batch, so it overshoots by one batch at most) the ingest thread stops taking messages (the
broker keeps them: they are not acknowledged) and raises the `outbox_full` alarm, until the
sinks drained it below `warn_percent` of the limit; from `warn_percent` a warning is logged
(at most once a minute).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import struct
import threading
import time
from typing import Any, Callable, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.batcher import SinkWorker
from gateway.channels import ChannelTable, default_table
from gateway.config import Config, load_config
from gateway.downlink import Pending, command_message, new_request_id
from gateway.replay import Replayer
from gateway.errors import EXIT_ERROR, EXIT_OK, ConfigError, SinkError
from gateway.ingest import Ingestor, Message, Outcome
from gateway import mqtt_tls
from gateway.logfmt import kv
from gateway.outbox import Outbox
from gateway.sinks import make_sink
from gateway.stats import DEFAULT_INTERVAL, Stats, StatsWriter

log = logging.getLogger("meterlink.gateway")
mqtt_log = logging.getLogger("meterlink.gateway.mqtt")

RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 30
PERIODIC_S = 1.0
WARN_EVERY_S = 60.0  # outbox_filling is logged at most this often
GATEWAY_NODE = "-gateway"  # registry/alarm key for gateway-level alarms (outbox_full)
_PUBACK = 0x40020000  # PUBACK fixed header (type 4, remaining length 2) above a 16-bit id
READ_AHEAD = 65536  # bytes read from the MQTT socket at once
READ_BURST = 64  # packets handled from those bytes before paho's loop waits in select again


class _ReadAhead:
    """The MQTT socket, read 64 KiB at a time.

    paho reads each packet as `recv(1)`, `recv(1)` (remaining length), `recv(rest)`: three
    system calls per message, and in this process (paho's network thread, the ingest thread
    and the sink threads share one interpreter) each is a hand-over of the interpreter lock
    to another thread and back, which cost more than the message's own processing. This
    wrapper serves those reads from one large `recv`; `pending()`, which paho asks of a TLS
    socket for bytes it already holds, makes paho's loop read on without waiting in select.
    Everything else goes to the socket.
    """

    __slots__ = ("_sock", "_buf", "_pos")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(READ_AHEAD)  # BlockingIOError when nothing is there
            if len(data) <= size:
                return data
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = start + size
        return self._buf[start:start + size]

    def pending(self) -> int:
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return max(0, len(self._buf) - self._pos) + inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Client(mqtt.Client):
    """paho's client on a read-ahead socket (`_ReadAhead`) that handles every packet already
    read before it waits in select again (at most `READ_BURST`, so that PUBACKs and pings
    still go out). paho is pinned, and every MQTT test runs through this."""

    def _create_socket(self) -> Any:
        return _ReadAhead(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        for _ in range(READ_BURST):
            sock = self.socket()
            if rc != mqtt.MQTT_ERR_SUCCESS or not isinstance(sock, _ReadAhead) \
                    or not sock.pending():
                break
            rc = super().loop_read(max_packets)
        return rc

    def puback_all(self, mids: Sequence[int]) -> None:
        """PUBACKs for the QoS 1 messages `mids`, queued as one write (one packet each on
        the wire, 4 bytes: 0x40 0x02 and the message id).

        paho has no call for that; `ack()` queues, wakes the network thread and writes one
        packet per message, a third of the gateway's per-message cost. So the PUBACKs go
        through paho's own packet queue, which this subclass may use (paho is pinned; the
        test `test_acknowledged_messages_are_not_delivered_again` fails if this stops
        reaching the broker). Without that queue, `ack()` for each.
        """
        queue_packet = getattr(self, "_packet_queue", None)
        if queue_packet is None:
            for mid in mids:
                self.ack(mid, 1)
        else:
            queue_packet(mqtt.PUBACK, struct.pack(f">{len(mids)}I",
                                                  *[_PUBACK | mid for mid in mids]), 0, 0)


class _PahoLog(logging.LoggerAdapter):
    """paho's log lines into the gateway log: debug text as it is, a callback's exception
    (suppressed by paho) as a `callback_failed` error."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR and str(msg).startswith("Caught exception"):
            self.logger.error("callback_failed", extra=kv(detail=str(msg) % args))
        elif self.logger.isEnabledFor(level):
            self.logger.log(logging.DEBUG, msg, *args)


class Gateway:
    """One gateway process: MQTT client, outbox, ingest thread, sink workers, API."""

    def __init__(self, config: Config, *, table: ChannelTable | None = None,
                 clock: Callable[[], float] = time.time,
                 stats_interval: float = DEFAULT_INTERVAL,
                 config_path: Any = None) -> None:
        self.config = config
        # the file `config` came from: `reload_rules` (SIGHUP, POST /api/rules/reload) reads
        # its [rules] again
        self.config_path = config_path
        self.table = table if table is not None else default_table()
        self._clock = clock
        self.stats = Stats(clock=clock, extra={"channel_table_version": self.table.version})
        self.box: Outbox | None = None
        self.ingestor: Ingestor | None = None
        self.workers: list[SinkWorker] = []
        self.api = None
        # paho's network thread appends, the ingest thread pops (deque: thread-safe, no lock);
        # `_arrived` wakes the ingest thread only when it said it waits (`_idle`)
        self._inbox: collections.deque[Message] = collections.deque()
        self._arrived = threading.Event()
        self._idle = False
        # registry changes asked for by other threads (the API), run by the ingest thread
        # between batches (`on_ingest_thread`)
        self._control: collections.deque[tuple[Callable[[Any], Any],
                                               concurrent.futures.Future]] = collections.deque()
        self._stats_writer = (StatsWriter(self.stats, config.gateway.stats_file,
                                          interval=stats_interval)
                              if config.gateway.stats_file else None)
        self._stop = threading.Event()
        self._exit_code = EXIT_OK
        self._failed = False
        self._started = False
        self._ingest_thread: threading.Thread | None = None
        self._pending: dict[tuple[str, str], Pending] = {}
        self._pending_lock = threading.Lock()
        self._outbox_full = False
        self._warn_after = 0.0
        self._ingested_at = 0.0  # monotonic time ingest last handled a batch
        self.client = self._make_client()
        self.source = None  # the JetStream source of the readings ([jetstream]), or None
        # gaps asked of their nodes again (gateway/replay.py), where this instance knows them
        after = self.config.gateway.replay_after_s
        self.replayer = Replayer(after, self.config.gateway.ack_timeout_s) \
            if after and self.config.knows_node_gaps else None

    def __repr__(self) -> str:
        m = self.config.mqtt
        return (f"Gateway({m.host}:{m.port}, sub={m.subscription!r}, "
                f"sinks={[s.name for s in self.config.sinks]})")

    # ---- lifecycle --------------------------------------------------------------------------

    def _make_client(self) -> _Client:
        cfg = self.config.mqtt
        client = _Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id,
                         clean_session=False, protocol=mqtt.MQTTv311, manual_ack=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, cfg.password)
        mqtt_tls.apply(client, tls=cfg.tls, ca_file=cfg.ca_file, cert_file=cfg.cert_file,
                       key_file=cfg.key_file)
        client.reconnect_delay_set(min_delay=RECONNECT_MIN_DELAY, max_delay=RECONNECT_MAX_DELAY)
        client.suppress_exceptions = True
        # paho formats a log line per packet for `on_log`; a logger is asked first whether
        # the level is on, so a message costs no formatting unless debug logging is
        client.enable_logger(_PahoLog(mqtt_log))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def open_storage(self) -> None:
        """Opens the outbox and builds the ingestor (no threads, no network)."""
        if self.box is None:
            self.box = Outbox(self.config.outbox.path, sinks=[s.name for s in self.config.sinks],
                              clock=self._clock, table=self.table)
            self.ingestor = Ingestor(self.config, self.table, self.box, self.stats,
                                     on_ack=self._on_node_ack)

    def start(self) -> None:
        """Opens the outbox, starts the sinks, ingest, API and the MQTT network thread.

        The broker need not be up: the client keeps trying to connect.
        SinkError when the outbox or a sink cannot be opened (nothing is connected then).
        """
        if self._started:
            return
        self.open_storage()
        for sink_cfg in self.config.sinks:
            worker = SinkWorker(make_sink(sink_cfg), sink_cfg, self.config.outbox.path,
                                self.stats, clock=self._clock, table=self.table)
            if worker.sink.background:
                worker.ingest_quiet = self.ingest_quiet_s
            worker.start()
            self.workers.append(worker)
        if self.config.api.enabled:
            from gateway.webapp import ApiServer
            try:
                self.api = ApiServer(self)
            except OSError as exc:
                log.error("api_bind_failed", extra=kv(host=self.config.api.host,
                                                      port=self.config.api.port,
                                                      error=exc.strerror or str(exc),
                                                      action="running without the API"))
            else:
                self.stats.set_state(api_port=self.api.start())
        if self._stats_writer:
            self._stats_writer.start()
        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="ingest",
                                               daemon=True)
        self._ingest_thread.start()
        if self.config.jetstream.servers:
            from gateway.jetstream import JetStreamSource

            self.source = JetStreamSource(self.config.jetstream, self.config.mqtt.prefix,
                                          deliver=self._deliver, clock=self._clock,
                                          stats=self.stats)
            self.source.start()
        cfg = self.config.mqtt
        log.info("starting", extra=kv(host=cfg.host, port=cfg.port, client_id=cfg.client_id,
                                      subscriptions=",".join(cfg.subscriptions),
                                      outbox=str(self.config.outbox.path),
                                      sinks=",".join(s.name for s in self.config.sinks),
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
        """Disconnects, finishes the ingest batch in hand, stops sinks and API, final stats."""
        if not self._started:
            return
        self._started = False
        self._stop.set()
        if self.source is not None:
            self.source.request_stop()  # no more pulls; what is in hand is still acknowledged
        self.client.disconnect()
        self.client.loop_stop()
        if self._ingest_thread is not None:
            self._ingest_thread.join(10)
        if self.source is not None:  # after ingest: the batch in hand is acknowledged
            self.source.stop()
        for worker in self.workers:
            worker.stop()
        if self.api is not None:
            self.api.stop()
        if self.box is not None:
            self.box.close()
        self.stats.set_state(connected=False, subscribed=False, running=False)
        if self._stats_writer:
            self._stats_writer.stop()
        log.info("stopped", extra=kv(exit_code=self._exit_code, **self._summary()))

    def run(self) -> int:
        """Runs until SIGINT or SIGTERM (or `stop()`); returns the exit status.

        0 after a clean stop, 1 when the outbox failed (unacknowledged messages stay with
        the broker).
        """
        handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                handlers[signum] = signal.signal(signum, self._on_signal)
            handlers[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)
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

    def _on_hangup(self, signum: int, frame: Any) -> None:
        """SIGHUP (`systemctl reload`): the rules are read again, off the signal handler."""
        log.info("signal", extra=kv(signal="SIGHUP", action="reload rules"))
        threading.Thread(target=self._reload_logged, name="reload", daemon=True).start()

    def _reload_logged(self) -> None:
        try:
            self.reload_rules()
        except ConfigError:
            pass  # logged and counted by reload_rules
        except SinkError as exc:
            log.error("rules_reload_failed", extra=kv(error=str(exc)))
        except Exception:  # noqa: BLE001 - a bug: loud, the gateway goes on with its rules
            log.exception("rules_reload_failed")

    def reload_rules(self) -> list[str]:
        """Reads the config file again and puts its `[rules]` in force, without a restart
        (the other sections need one: a change to them is logged and not taken). Returns the
        changes ("added x", "changed y", "removed z"). A file that does not check raises
        ConfigError naming the key, and the rules in force stay."""
        if self.config_path is None:
            raise ConfigError(None, "the gateway was not started from a config file: there "
                                    "is nothing to read again")
        try:
            new = load_config(self.config_path, table=self.table)
        except ConfigError as exc:
            self.stats.add(rules_reload_errors=1)
            log.error("rules_reload_failed", extra=kv(error=str(exc),
                                                      action="the rules in force stay"))
            raise
        others = [f.name for f in dataclasses.fields(new)
                  if f.name != "rules" and getattr(new, f.name) != getattr(self.config, f.name)]
        engine = self.ingestor.rules
        now = self._clock()
        changes = self.on_ingest_thread(lambda registry: engine.replace(new.rules, now))
        self.config = dataclasses.replace(self.config, rules=new.rules)
        self.stats.add(rules_reloads=1)
        log.info("rules_reloaded", extra=kv(rules=len(new.rules),
                                            changes="; ".join(changes) or "none",
                                            restart_needed=",".join(others) or None))
        return changes

    def _summary(self) -> dict[str, Any]:
        snap = self.stats.snapshot()
        return {k: snap[k] for k in ("received", "accepted_records", "duplicates", "rejected")}

    @property
    def ready(self) -> bool:
        """Subscribed, the outbox writable (not full), and ingest running."""
        snap = self.stats.snapshot()
        return bool(snap.get("subscribed")) and not self._failed and not self._outbox_full \
            and self._ingest_thread is not None and self._ingest_thread.is_alive()

    # ---- ingest thread ----------------------------------------------------------------------

    def ingest_quiet_s(self) -> float:
        """Seconds since ingest last handled a batch (background sinks wait for quiet)."""
        return time.monotonic() - self._ingested_at

    def on_ingest_thread(self, fn: Callable[[Any], Any], timeout: float = 10.0) -> Any:
        """`fn(registry)` in one outbox transaction on the ingest thread, which owns the
        registry's cache (retire a node, delete one); returns what it returns or raises what
        it raised. A gateway whose ingest thread was never started (opened for a tool or a
        test) runs it on the caller's thread."""
        assert self.ingestor is not None and self.box is not None
        thread = self._ingest_thread
        if thread is None:
            return self._run_control(fn)
        if not thread.is_alive():
            raise SinkError("the gateway's ingest thread is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._control.append((fn, future))
        self._arrived.set()
        return future.result(timeout)

    def _run_control(self, fn: Callable[[Any], Any]) -> Any:
        with self.box.transaction():
            return fn(self.ingestor.registry)

    def _drain_control(self) -> None:
        while self._control:
            fn, future = self._control.popleft()
            try:
                result = self._run_control(fn)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                self.ingestor.registry.forget()
                future.set_exception(exc)
            else:
                future.set_result(result)

    def _wait_inbox(self, timeout: float) -> bool:
        """Waits up to `timeout` for a message in the inbox; True when there is one."""
        inbox = self._inbox
        if inbox:
            return True
        self._idle = True
        self._arrived.clear()
        try:
            # checked after clear(): a message appended before it is seen here, one appended
            # after it sets the event
            return bool(inbox) or (self._arrived.wait(timeout) and bool(inbox))
        finally:
            self._idle = False

    def _take(self, timeout: float) -> list[Message]:
        """Up to `batch_messages` messages: what is there, plus what arrives within
        `batch_wait_ms` of the first while the batch is not full."""
        limits = self.config.ingest
        inbox = self._inbox
        if not self._wait_inbox(timeout):
            return []
        batch: list[Message] = []
        deadline = time.monotonic() + limits.batch_wait_ms / 1000
        while True:
            while inbox and len(batch) < limits.batch_messages:
                batch.append(inbox.popleft())
            if len(batch) >= limits.batch_messages:
                return batch
            left = deadline - time.monotonic()
            if left <= 0 or not self._wait_inbox(left):
                return batch

    def _check_outbox_size(self) -> None:
        assert self.box is not None
        size = self.box.size_bytes()
        self.stats.set_state(outbox_bytes=size)
        limit = self.config.outbox.max_bytes
        warn = limit * self.config.outbox.warn_percent / 100
        # full at the limit, and until drained below the warning level: one alarm per episode,
        # not one per batch the sinks free
        full = size >= (warn if self._outbox_full else limit)
        if full != self._outbox_full:
            self._outbox_full = full
            with self.box.transaction():
                self.ingestor.registry.set_alarm(
                    GATEWAY_NODE, "outbox_full", full, self._clock(),
                    f"outbox {size} bytes, limit {limit}")
        elif size >= warn and not full:
            now = time.monotonic()
            if now >= self._warn_after:
                self._warn_after = now + WARN_EVERY_S
                log.warning("outbox_filling", extra=kv(bytes=size, limit=limit))

    def wake_sinks(self) -> None:
        """Items were queued outside ingest (a replayed dead letter): look now."""
        for worker in self.workers:
            worker.wake()

    def _check_sinks(self) -> None:
        """`sink_auth:{sink}` raised while a sink is paused on a refused credential, cleared
        when it delivers again (the workers set `auth_problem`; alarms are written here, on
        the ingest thread's connection, like every other alarm)."""
        registry = self.ingestor.registry
        for worker in self.workers:
            problem = worker.auth_problem
            if problem is None and not worker.delivered:
                continue  # not known yet (after a restart the alarm stays until a delivery)
            alarm = f"sink_auth:{worker.name}"
            if (problem is not None) != registry.is_active(GATEWAY_NODE, alarm):
                with self.box.transaction():
                    self.ingestor.registry.set_alarm(GATEWAY_NODE, alarm, problem is not None,
                                                     self._clock(), problem)

    def _ingest_loop(self) -> None:
        assert self.ingestor is not None
        next_periodic = 0.0
        try:
            while True:
                self._drain_control()
                now = time.monotonic()
                if now >= next_periodic:
                    next_periodic = now + PERIODIC_S
                    self._check_outbox_size()
                    self._check_sinks()
                    gaps = self.ingestor.periodic(self._clock())
                    self._expire_pending()
                    self._ask_replays(gaps)
                if self._outbox_full:
                    if self._stop.wait(PERIODIC_S):
                        break
                    continue
                batch = self._take(0.2)
                if not batch:
                    if self._stop.is_set() and not self._inbox:
                        break
                    continue
                self.ingestor.handle_batch(batch)
                self._ingested_at = time.monotonic()
                self._ack(batch)
                self._check_outbox_size()  # a few page counts: the limit holds to a batch
                for worker in self.workers:
                    worker.wake()
            self.ingestor.close()
        except SinkError as exc:
            self._failed = True
            log.error("outbox_failed", extra=kv(error=str(exc), acknowledged=False,
                                                action="stopping"))
            self.stop(EXIT_ERROR)
        except Exception:  # noqa: BLE001 - a bug must stop the gateway loudly, not silently
            self._failed = True
            log.exception("ingest_crashed", extra=kv(action="stopping"))
            self.stop(EXIT_ERROR)

    def _ask_replays(self, gaps: Sequence[tuple[str, int, int]]) -> None:
        """Asks nodes for the readings of their `gaps` again (gateway/replay.py): at QoS 1 to
        a node not online (its session keeps the command until it wakes), at QoS 0 to one
        online, which gets it now or is asked again when it does not answer. (After a NATS
        partition healed, the JetStream consumers behind the nodes' QoS 1 subscriptions were
        seen stalled for over 3 minutes, while QoS 0 goes over the plain routes.)"""
        if self.replayer is None or not self.client.is_connected():
            return
        if self.source is not None and not self.source.asks_replays():
            return  # another instance asks (gateway/seen.py)
        registry = self.ingestor.registry
        for node, first, last in self.replayer.due(gaps, self._clock(), registry.is_online):
            args = {"from": first, "to": last}
            qos = 0 if registry.is_online(node) else 1
            self.send(self.box, [node], "command",
                      lambda rid, args=args: command_message("replay", args, request_id=rid),
                      timeout=self.config.gateway.ack_timeout_s, wait=False, qos=qos)
            self.stats.add(replay_requests=1)
            log.info("replay_asked", extra=kv(node=node, first=first, last=last, qos=qos))

    def _ack(self, batch: Sequence[Message]) -> None:
        """Acknowledges committed messages to the broker: the PUBACKs of a batch go out as
        one write (`_Client.puback_all`); QoS 2 messages take `client.ack()` (PUBCOMP)."""
        mids = [m.mid for m in batch if m.qos == 1 and m.mid > 0]
        if mids:
            self.client.puback_all(mids)
        if self.source is not None:  # JetStream's messages carry negative mids
            self.source.ack(batch, self.ingestor.took)
        for m in batch:
            if m.qos == 2:
                self.client.ack(m.mid, 2)

    # ---- MQTT callbacks (paho network thread) -----------------------------------------------

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
        subs = self.config.mqtt.subscriptions
        result, mid = client.subscribe([(t, self.config.mqtt.qos) for t in subs])
        log.info("connected", extra=kv(session_present=bool(flags.session_present),
                                       subscribe=",".join(subs), mid=mid))

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[Any], properties: Any) -> None:
        failed = [rc for rc in reason_codes if rc.is_failure]
        if failed:
            log.error("subscribe_refused", extra=kv(
                subscriptions=",".join(self.config.mqtt.subscriptions), reason=str(failed[0])))
            return
        self.stats.set_state(subscribed=True)
        log.info("subscribed", extra=kv(subscriptions=",".join(self.config.mqtt.subscriptions),
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
            return  # the outbox failed: acknowledge nothing more, the broker keeps it all
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker let bad UTF-8 through: paho's raw bytes (it
            # has no public name for them), decoded with replacement
            topic = message._topic.decode("utf-8", "replace")
        self._inbox.append(Message(topic, message.payload, message.mid, message.qos,
                                   self._clock(), bool(message.retain)))
        if self._idle:
            self._arrived.set()

    def _deliver(self, messages: list[Message]) -> None:
        """Messages from the JetStream source's thread into the inbox."""
        if self._failed:
            return  # the outbox failed: nothing more is taken (JetStream redelivers)
        self._inbox.extend(messages)
        if self._idle:
            self._arrived.set()

    # ---- synchronous processing (tests, tools) ----------------------------------------------

    def handle_message(self, topic: str, payload: bytes, *, received_at: float) -> Outcome:
        """Processes and commits one message now, without MQTT (raises only SinkError)."""
        self.open_storage()
        return self.ingestor.handle_batch([Message(topic, payload, 0, 1, received_at)])[0]

    # ---- downlink ---------------------------------------------------------------------------

    def _on_node_ack(self, node: str, ack: dict) -> None:
        if self.replayer is not None:
            self.replayer.on_ack(node, ack)
        with self._pending_lock:
            p = self._pending.pop((node, str(ack.get("id"))), None)
        if p is not None:
            p.ack = ack
            p.done.set()

    def _expire_pending(self) -> None:
        limit = self._clock() - self.config.gateway.ack_timeout_s * 2
        with self._pending_lock:
            for key in [k for k, p in self._pending.items() if p.sent_at < limit]:
                self._pending.pop(key).done.set()

    def send(self, box: Outbox, nodes: list[str], kind: str,
             build: Callable[[str], bytes], *, timeout: float,
             wait: bool = True, lock: Any = None, qos: int = 1) -> list[dict[str, Any]]:
        """Publishes a config (`kind` "config", retained on `c`) or command (`k`) to each
        node, records it in `downlinks`, and waits up to `timeout` for the acknowledgements.
        `qos` 0 only for a command whose sender asks again when it is not answered."""
        prefix = self.config.mqtt.prefix
        topic_kind = "c" if kind == "config" else "k"
        now = self._clock()
        pendings = []
        for node in nodes:
            rid = new_request_id()
            payload = build(rid)
            p = Pending(node, rid, kind, now)
            with self._pending_lock:
                self._pending[(node, rid)] = p
            with lock or contextlib.nullcontext(), box.transaction():
                box.downlinks.sent(node, kind, rid, payload.hex(), now, now + timeout)
            self.client.publish(f"{prefix}/{node}/{topic_kind}", payload, qos=qos,
                                retain=(kind == "config"))
            log.info("downlink_sent", extra=kv(node=node, kind=kind, id=rid,
                                               bytes=len(payload)))
            pendings.append(p)
        if wait:
            deadline = time.monotonic() + timeout
            for p in pendings:
                p.done.wait(max(0.0, deadline - time.monotonic()))
        reports = [p.report() if (p.ack or wait) else {**p.report(), "result": "sent"}
                   for p in pendings]
        return reports
