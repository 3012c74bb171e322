"""The node runtime: sensors, the flash queue, the MQTT session, downlink, power and watchdog,
on one asyncio loop.

    import node
    node.main()              # what main.py does
    node.diagnostics()       # at the REPL after Ctrl-C: the status keys plus "last" readings

Readings: each sensor task reads on its own interval (aligned to wall-clock multiples of the
interval once the time is known), and every reading is appended to the flash queue
(firmware/fqueue.py) with its sequence number before anything is sent. A failing sensor is
logged, counted per sensor and retried with backoff (1, 2, 4 ... s, at most its interval)
without delaying the others.

Alarms: a sensor with an `alarm` threshold in its config (drivers/cfg_alarm.py) is also read
every `poll_s` (default 1 s) between its readings; its reading is queued when due, and at once
when its alarm bits change (the threshold's gas or flood bit, or a driver's own bits: a
detector fault, a meter's tamper). Such an urgent reading is queued like any other and also
sent at once ahead of the queue (_send_urgent). The `relay` output follows the threshold bits
its config lists (never a sensor fault), and its state rides in the sensor's readings.

Sending: the publisher batches queued records into as few `r` messages as the payload limit
allows and keeps up to WINDOW of them in flight; a record leaves the queue only when the
broker's PUBACK for its message arrived (and every earlier one). The MQTT session is
persistent (clean session off): after a reconnect, the unacknowledged messages are sent again,
byte for byte, with DUP set and their packet ids. Reconnects back off exponentially with
jitter. On every connect the node publishes its retained status (`s`); its Last Will marks it
offline.

Downlink: configuration updates (`c`) and commands (`k`) are checked, applied and answered on
`a`, as docs/wire-format.md describes. Power: `mains` stays connected; `battery` reads, sends
(every `send_every` wake-ups), and deep-sleeps until the next slot. Watchdog: machine.WDT is fed
by a task that runs only while the loop is healthy. After `safe_mode_after` boots in a row that
crashed before reaching a healthy loop, the node starts in safe mode: no sensors, the MQTT
session and the REPL only. docs/node-runtime.md is the operator's description of all of it.

Modules: this one imports what runs every cycle. The code for rare events is imported for the
call and dropped after it (heap): session.py (the connect duties, the status message, the last
good configuration; it loads status.py), downlink.py (with cbordec.py, and ota.py for an
update), appslot.py; power.py only on a battery node. None of them imports this module: each is
handed the running Node and uses its attributes and methods (`firmware`, `tls_context()`,
`wake_pins()`, `ack()` ...), so every dependency goes one way (tests/test_node_imports.py fails
on an import cycle among firmware/ and drivers/).

Sensor slots: Node.sensors holds one list per sensor, read with the indices _SPEC, _LABEL,
_ADAPTER, _LOCK, _FAILS, _THRESH and _BITS (and Node.inflight one list per message in flight:
_PID, _FIRST, _LAST, _PAYLOAD). They are const(): inlined when the module is compiled, so a name costs no
global, no lookup and no heap. A namedtuple (MicroPython 1.25 has collections.namedtuple)
cannot change in place, and a slot must (the adapter is made, dropped after a failure and made
again; the failures are counted); an object per sensor would cost its own dict (MicroPython
accepts __slots__ and ignores it). Only this module reads the slots: power.py asks
wake_pins(), and downlink.py's `interval` command changes cfg["sensors"], the very dicts the
slots hold as _SPEC.
"""

import asyncio
import gc
import sys
import time

import cbor
import clock
import fqueue
import log
import mqtt
import seqno
import sensors
import wire
from files import read_int as _read_int, read_text as _read_text

from micropython import const

FIRMWARE_VERSION = "0.3.0"
_MAX_PAYLOAD = const(512)
_WINDOW = const(2)  # r messages in flight before waiting for PUBACKs
_BACKOFF_MAX_S = const(30)
_HEALTHY_AFTER_MS = const(30000)  # running this long without a crash ends a crash streak
_DOWNLINK_MAX = const(1024)
_REVERT_AFTER = const(8)  # failed connects with an unconfirmed new config before reverting

# A sensor's slot in Node.sensors (the module docstring says why a list with const indices)
_SPEC = const(0)  # its validated config entry (the same dict as cfg["sensors"][i])
_LABEL = const(1)  # sensors.label(spec), for logs, `err` and `diag`
_ADAPTER = const(2)  # the driver's adapter, or None until made (and after a failure)
_LOCK = const(3)  # an asyncio.Lock: one reading of the part at a time
_FAILS = const(4)  # failed readings in a row (the retry backoff)
_THRESH = const(5)  # the alarm bit its threshold (`alarm` in its config) holds raised, or 0
_BITS = const(6)  # the `alarms` value it last reported: a change makes a reading urgent
# An `r` message in flight in Node.inflight (a re-send changes its packet id in place)
_PID = const(0)  # its MQTT packet id
_FIRST = const(1)  # the first and last sequence numbers it carries
_LAST = const(2)
_PAYLOAD = const(3)  # the bytes sent, sent again byte for byte after a reconnect

_ALARMS = const(16)  # channel ids (firmware/channels.py) and the instance stride of a key
_RELAY = const(28)
_STRIDE = const(64)

_current = None  # the running Node, for diagnostics() at the REPL


def _jitter_ms(limit):
    # Cheap jitter without the random module: low bits of the microsecond timer.
    return time.ticks_us() % limit


class Node:
    # for the modules handed the node (status, ota), which must not import this one
    firmware = FIRMWARE_VERSION

    def __init__(self, boot):
        global _current
        self.boot = boot
        self.rtc = boot.rtc
        clock.init(self.rtc)
        cfg = boot.cfg
        self.cfg = cfg
        self.raw = boot.raw
        self.node_id = cfg["node_id"]
        base = "%s/%s/" % (cfg["prefix"], self.node_id)
        self.topic_r = base + "r"
        self.topic_s = base + "s"
        self.topic_a = base + "a"
        self.topic_c = base + "c"
        self.topic_k = base + "k"
        self.battery = cfg["power"]["mode"] == "battery"
        b = cfg["broker"]
        self.client = mqtt.MQTTClient(
            self.node_id, b["host"], b["port"], user=b["user"], password=b["password"],
            keepalive=b["keepalive"], clean_session=False, max_packet=_DOWNLINK_MAX + 128,
            will=(self.topic_s, cbor.encode({"on": False}), 1, True),
            server_hostname=b["tls"] and b["tls"]["server_name"])
        self.client.on_message = self._on_message
        self.brokers = [(b["host"], b["port"])] + b["fallback"]  # tried in turn on failure
        self.broker_i = 0
        self.client.on_oversized = self._on_oversized
        self.seq = seqno.SeqAllocator("seq.dat", rtc=self.rtc)
        qbytes = cfg["queue"]["max_kb"] * 1024
        self.q = fqueue.FlashQueue("q", max_bytes=qbytes, seg_bytes=min(4096, max(512, qbytes // 4)))
        if self.q.truncated:
            log.warn("queue", "recovered: cut a torn record of %d bytes", self.q.truncated)
        self.hw = sensors.Hardware(cfg)  # reads board.json when a driver first asks
        self.sensors = []  # one slot per sensor: [_SPEC, _LABEL, _ADAPTER, _LOCK, _FAILS,
        for spec in cfg["sensors"]:  # _THRESH, _BITS]
            self.sensors.append([spec, sensors.label(spec), None, asyncio.Lock(), 0, 0, 0])
        self.urgent = []  # seqs of alarm readings to send at once, ahead of the queue
        self.replay = None  # [from, to]: acknowledged records to send again (`replay` command)
        self.relay = None  # [Pin, alarm bits that switch it, active level, state] (`relay`)
        r = cfg.get("relay")
        if r is not None:
            import machine

            self.relay = [machine.Pin(r[0], machine.Pin.OUT, value=1 - r[2]), r[1], r[2], 0]
        self.errors = {}  # sensor label -> failed readings since boot
        self.last = {}  # sensor label -> last values
        self.enc = cbor.Encoder(_MAX_PAYLOAD)
        self.renc = cbor.Encoder(256)
        self.wake = asyncio.Event()
        self.inbox = []  # downlink messages waiting for the handler
        self.inbox_ev = asyncio.Event()
        self.mod_lock = asyncio.Lock()  # one on-demand module (session, downlink) at a time
        self.inflight = []  # [_PID, _FIRST, _LAST, _PAYLOAD], oldest first
        self.sent = 0
        self.rejected = 0  # downlink messages rejected
        self.flush = False  # send what is queued now, not at the slot (`read`, `flush`)
        self.hold = time.ticks_ms()  # queued readings wait for this moment: the send slot
        self.next_msg = self.hold  # the earliest moment for the next `r` message
        self.started = time.ticks_ms()
        self.heap_peak = 0
        self.connect_failures = 0
        self.trial = None  # a new credential to try at the next connect (the `cred` command)
        self.app = getattr(boot, "app", None)  # app.json: the app update running, or None
        self.app_trial = bool(self.app) and "trial" in self.app
        self.restart_after_ack = False  # a downlink message asked for a restart
        self.safe = boot.safe
        # only a whole runtime is the REPL's to inspect and resume: Ctrl-C can stop this
        # constructor half way, and `meterlink status` then finds none and soft-resets
        _current = self

    # ------------------------------------------------------------------ readings
    def record(self, values, urgent=False):
        """Queues one reading record durably; returns its sequence number. An urgent one (its
        alarm bits changed) is also sent at once, ahead of the queue (_send_urgent)."""
        t = clock.unix()
        enc = self.renc
        enc.reset()
        if t is None:  # relative: device clock and power cycle, resolved when sent
            enc.array(3)
            enc.int(clock.raw())
        else:
            enc.array(2)
            enc.int(t)
        enc.map(len(values))
        for k in sorted(values):
            enc.int(k)
            enc.int(values[k])
        if t is None:
            enc.int(self.rtc.power_cycle)
        seq = self.seq.next()
        dropped = self.q.dropped
        waiting = len(self.q)
        self.q.append(seq, enc.view())
        if not waiting and t is not None and self.sent:  # goes at its slot (the first at once)
            self.hold = self._slot(t)
        log.info("queue", "queued seq=%d (%d waiting)", seq, len(self.q))
        if self.q.dropped != dropped:
            log.warn("queue", "full: dropped the oldest %d readings (%d dropped in all)",
                     self.q.dropped - dropped, self.q.dropped)
        if urgent and len(self.urgent) < 4:
            self.urgent.append(seq)
        self.wake.set()
        return seq

    async def read_sensor(self, s, due=True):
        """Reads one sensor now and queues its values when `due`, or at once when its alarm bits
        changed; returns the values, or None when it failed (logged, counted)."""
        label, adapter = s[_LABEL], s[_ADAPTER]
        async with s[_LOCK]:
            try:
                if adapter is None:
                    adapter = s[_ADAPTER] = sensors.create(s[_SPEC], self.hw)
                    log.info("sensor", "%s ready", label)
                values = await adapter.sample()
            except Exception as exc:  # OSError from the bus, a driver bug: never fatal
                if not hasattr(s[_ADAPTER], "save"):  # one that keeps counts (pulses) keeps them
                    s[_ADAPTER] = None  # re-probe the part next time
                s[_FAILS] += 1
                self.errors[label] = self.errors.get(label, 0) + 1
                log.error("sensor", "%s failed (%d in a row): %r", label, s[_FAILS], exc)
                return None
        s[_FAILS] = 0
        if values:
            urgent = self._alarm(s, values)
            if due or urgent:
                self.last[label] = values
                self.record(values, urgent)
        return values

    def _alarm(self, s, values):
        """Applies the sensor's threshold to `values` (its bit into the `alarms` channel, the
        relay's state beside it) and returns True when the sensor's alarm bits changed."""
        spec = s[_SPEC]
        ka = _ALARMS + _STRIDE * spec["instance"]
        a = spec.get("alarm")
        if a is not None:
            key, sign, level, clear, bit = a  # raised at `level`, held until past `clear`
            v = values.get(key)
            if v is not None:
                s[_THRESH] = bit if sign * v >= sign * (clear if s[_THRESH] else level) else 0
            values[ka] = values.get(ka, 0) | s[_THRESH]
            r = self.relay
            if r is not None:
                bits = 0
                for x in self.sensors:
                    bits |= x[_THRESH]
                on = 1 if bits & r[1] else 0
                if on != r[3]:
                    r[0].value(on if r[2] else 1 - on)
                    r[3] = on
                    log.warn("relay", "output %s (alarm bits %d)", "ON" if on else "off", bits)
                values[_RELAY] = on
        bits = values.get(ka)
        if bits is None or bits == s[_BITS]:
            return False
        s[_BITS] = bits
        log.warn("alarm", "%s: alarm bits %d", s[_LABEL], bits)
        return True

    async def read_all(self):
        first = self.seq.peek()
        for s in self.sensors:
            await self.read_sensor(s)
        return first

    async def sensor_task(self, s):
        """Reads the sensor on its interval; one with an alarm is also read every `poll_s`
        between (its reading queued only when due, or when its alarm bits changed)."""
        due = time.ticks_ms()
        while True:
            try:
                spec = s[_SPEC]
                interval = spec["interval_s"]
                poll = spec.get("poll_s") or interval
                is_due = time.ticks_diff(time.ticks_ms(), due) >= 0
                values = await self.read_sensor(s, is_due)
                if values is None:  # failed: retry with backoff, 1 2 4 ... s, at most the interval
                    delay = min(interval, 1 << min(s[_FAILS] - 1, 10)) * 1000
                else:
                    if is_due:
                        t = clock.unix()
                        due = time.ticks_add(time.ticks_ms(), interval * 1000 if t is None
                                             else (interval - t % interval) * 1000)
                    delay = min(poll * 1000, max(0, time.ticks_diff(due, time.ticks_ms())))
            except Exception as exc:  # MemoryError in the queue or the log: the task lives on
                log.error("sensor", "%s: %r", s[_LABEL], exc)
                delay = 1000
            await asyncio.sleep_ms(delay)

    # ------------------------------------------------------------------ publishing
    def _records(self, after, limit=wire.MAX_RECORDS, kept=False):
        """The next run of queued records after seq `after` that fits one message: consecutive
        seqs and one kind of time. Returns (first seq, [(time, values)], now or None). With
        `kept`, acknowledged records still on flash too (a replay)."""
        rows = self.q.peek(limit, _MAX_PAYLOAD, after=after, kept=kept)
        if not rows:
            return None
        out = []
        first = rows[0][0]
        rel = None
        now_raw = clock.raw()
        now_unix = clock.unix()
        for i, (seq, body) in enumerate(rows):
            if seq != first + i:
                break
            try:
                item = _parse_record(body)
                t, values = item[0], item[1]
            except (ValueError, IndexError, TypeError) as exc:  # CRC-valid but undecodable
                log.error("queue", "seq=%d unreadable (%r): skipped", seq, exc)
                if i == 0 and kept:
                    return first, out, None
                if i == 0:
                    self.q.ack(seq)
                    return self._records(after, limit)
                break
            is_rel = len(item) == 3
            if is_rel:
                same_cycle = item[2] == self.rtc.power_cycle
                if now_unix is not None and same_cycle:
                    t, is_rel = t + self.rtc.clock_offset, False  # the clock got set since
                elif not same_cycle:
                    t = self.rtc.boot_time  # taken before a power cut: at best "before boot"
            if rel is None:
                rel = is_rel
            elif rel != is_rel:
                break
            out.append((t, values))
        return first, out, (now_raw if rel else None)

    async def _send_next(self):
        after = self.inflight[-1][_LAST] if self.inflight else None
        batch = self._records(after)
        if batch is None:
            return False
        wait = time.ticks_diff(self.next_msg, time.ticks_ms())
        if wait > 0:  # a backlog drains at send.max_msgs_s messages a second at most
            await asyncio.sleep_ms(wait)
            return True  # (the queue is looked at again: it may have moved meanwhile)
        self.next_msg = time.ticks_add(time.ticks_ms(), 1000 // self.cfg["send"]["max_msgs_s"])
        seq, records, now = batch
        n = wire.encode_reading(self.enc, seq, records, now_uptime=now)
        if n == 0:
            log.error("pub", "seq=%d does not fit in %d bytes: dropped", seq, _MAX_PAYLOAD)
            self.q.ack(seq)
            return True
        payload = bytes(self.enc.view())
        pid = await self.client.send(self.topic_r, payload, 1)
        self.inflight.append([pid, seq, seq + n - 1, payload])
        self.q.held = seq + n - 1  # in RAM until acknowledged, even if the queue drops them
        return True

    async def _send_urgent(self, seq):
        """A copy of the alarm reading `seq`, ahead of the queue: QoS 0, since the original
        stays queued and follows in order with QoS 1; the gateway keeps one of the two by
        (node, seq), so the reading arrives exactly once either way."""
        batch = self._records(seq - 1, 1)
        if batch is None or batch[0] != seq:  # acknowledged meanwhile
            return
        if wire.encode_reading(self.enc, seq, batch[1], now_uptime=batch[2]):
            await self.client.send(self.topic_r, bytes(self.enc.view()), 0)
            log.info("pub", "seq=%d sent at once (alarm)", seq)

    async def _send_replay(self):
        """The next message of the range the gateway asked for again (`replay`): records
        already acknowledged, still on flash; sent at QoS 1 as they were, the gateway keeps
        one of each by (node, seq). Seqs never given to a reading (a power cut skips some)
        and records no longer kept are not sent."""
        lo, hi = self.replay
        batch = self._records(lo - 1, kept=True) if lo <= hi else None
        if batch is None or batch[0] > hi:
            self.replay = None
            log.info("pub", "replay done")
            return
        first, records, now = batch
        n = wire.encode_reading(self.enc, first, records[:hi - first + 1], now_uptime=now)
        if n:
            pid = await self.client.send(self.topic_r, bytes(self.enc.view()), 1)
            await self.client.wait_ack(pid)
            log.info("pub", "seq=%d..%d sent again (replay)", first, first + n - 1)
        self.replay[0] = first + max(n, 1)

    async def _resend_inflight(self):
        for m in self.inflight:
            m[_PID] = await self.client.send(self.topic_r, m[_PAYLOAD], 1, dup=True, pid=m[_PID])
        if self.inflight:
            log.info("pub", "re-sent %d unacknowledged message(s) with DUP", len(self.inflight))

    async def pump(self, queued=True):
        """Sends the urgent copies and (`queued`) the queued records until the queue is empty,
        and waits for what is in flight; raises OSError when the link fails."""
        while True:
            while self.urgent:
                await self._send_urgent(self.urgent.pop(0))
            while self.replay:
                await self._send_replay()
            while queued and len(self.inflight) < _WINDOW and await self._send_next():
                pass
            if not self.inflight:
                return
            pid, first, last, payload = self.inflight[0]
            await self.client.wait_ack(pid)
            self.inflight.pop(0)
            self.q.ack(last)
            self.sent += last - first + 1
            self._heap_mark()
            log.info("pub", "seq=%d..%d acked (%d records, %d bytes, heap free %d)",
                     first, last, last - first + 1, len(payload), gc.mem_free())
            self.boot.healthy()  # a reading reached the broker: this boot works
            if self.app_trial:
                await self.confirm_app()

    async def confirm_app(self):
        """The app update on trial made the node healthy: it stays (firmware/appslot.py)."""
        self.app_trial = False
        import appslot

        ack = appslot.confirm()
        sys.modules.pop("appslot", None)
        if ack:
            self.app = appslot.load()
            log.info("ota", "update %s is healthy: kept", ack["v"])
            await self.ack(ack)

    def _heap_mark(self):
        used = gc.mem_alloc()
        if used > self.heap_peak:
            self.heap_peak = used
        gc.collect()

    async def _wifi(self, timeout_s):
        import network

        wlan = network.WLAN(network.STA_IF)
        if wlan.isconnected():
            return wlan
        wlan.active(True)
        w = self.cfg["wifi"]
        if w["ssid"]:
            wlan.connect(w["ssid"], w["password"] or "")
        deadline = time.ticks_add(time.ticks_ms(), timeout_s * 1000)
        while not wlan.isconnected():
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError("wifi: not connected to %s within %d s" % (w["ssid"], timeout_s))
            await asyncio.sleep_ms(100)
        return wlan

    async def connect(self):
        await self._wifi(self.cfg["wifi"]["timeout_s"])
        if self.trial is not None:
            trial, self.trial = self.trial, None
            await self._session("try_credential", trial)
            return
        t = self.cfg["broker"]["tls"]
        if t and self.client.ssl is None:  # made once: the parsed certificates stay in it
            self.client.ssl = self.tls_context(t["cert"], t["key"])
        present = await self.client.connect()
        await self._session("established", present)

    def tls_context(self, cert, key):
        """A TLS context to the broker: the configured CA, and the client certificate and key
        in the files `cert` and `key` (None: no client certificate). Also for session.py's
        credential trial."""
        return mqtt.tls_context(_read_file(self.cfg["broker"]["tls"]["ca"]),
                                cert and _read_file(cert), key and _read_file(key))

    async def _session(self, fn, *args):
        """Runs a function of session.py (the connect duties, the status message, the last
        good configuration), loaded for the call and dropped after it, with the status.py it
        may load: heap."""
        async with self.mod_lock:  # never this and the downlink module at once: heap
            gc.collect()
            import session

            try:
                r = getattr(session, fn)(self, *args)
                if hasattr(r, "send"):  # a coroutine
                    r = await r
                return r
            finally:
                session = None
                sys.modules.pop("session", None)
                sys.modules.pop("status", None)

    def diagnostics(self):
        import status  # loaded for the call, dropped after it: heap

        try:
            return status.diagnostics(self)
        finally:
            sys.modules.pop("status", None)

    async def publish_status(self, on=True, sleep_s=None):
        await self._session("publish_status", on, sleep_s)

    async def _connect_failed(self, exc):
        self.connect_failures += 1
        log.warn("mqtt", "connect failed (%r), %d in a row", exc, self.connect_failures)
        if len(self.brokers) > 1:  # the next server of the cluster (broker.fallback)
            self.broker_i = (self.broker_i + 1) % len(self.brokers)
            c = self.client
            c.host, c.port = self.brokers[self.broker_i]
            t = self.cfg["broker"]["tls"]
            if not (t and t["server_name"]):
                c.server_hostname = c.host
            log.warn("mqtt", "next broker: %s:%d", c.host, c.port)
        if self.connect_failures >= _REVERT_AFTER and await self._session(
                "revert_config", "could not connect %d times in a row (%r)" % (
                    self.connect_failures, exc)):
            _reset()  # the last good configuration is back in config.json: start on it

    def _spread(self):
        """(interval, spread) in s: the send slot lies in the first `spread` seconds of each
        interval (config send.spread_s; by default the whole interval, at most an hour)."""
        iv = self.interval() or 60
        sp = self.cfg["send"]["spread_s"]
        return iv, min(iv, 3600 if sp is None else sp)

    def _slot(self, t):
        """ticks_ms of the send slot of a reading taken at Unix second `t`: its interval's
        start plus the node's offset (clock.send_slot); send.spread_s 0: now."""
        iv, sp = self._spread()
        wait = clock.send_slot(t, iv, clock.send_offset(self.node_id, sp)) - t if sp else 0
        return time.ticks_add(time.ticks_ms(), max(0, wait) * 1000)

    async def publisher(self):
        """Connects, and sends: urgent copies at once, queued readings at the node's send slot
        (the first ones after a boot, after a `read` or `flush` command, at once; after an
        outage, at a random moment of the spread, so that a fleet coming back does not send
        its backlogs together)."""
        backoff = 1
        while True:
            if not self.client.connected:
                try:
                    await self.connect()
                    # back after an outage: the backlog at a random moment of the spread,
                    # unless the queue is half full (spreading must never cost a reading)
                    if backoff > 1:
                        room = self.q.bytes_waiting() * 2 < self.q.max_bytes
                        self.hold = time.ticks_add(time.ticks_ms(), _jitter_ms(
                            self._spread()[1] * 1000 + 1) if room else 0)
                    backoff = 1
                except Exception as exc:  # OSError, MQTTError: keep the node alive
                    await self.client.close()
                    await self._connect_failed(exc)
                    delay = backoff * 1000 + _jitter_ms(backoff * 500 + 1)
                    log.warn("mqtt", "retry in %d ms", delay)
                    await asyncio.sleep_ms(delay)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    continue
            due = self.flush or time.ticks_diff(time.ticks_ms(), self.hold) >= 0
            try:
                await self.pump(due)
            except Exception as exc:
                log.warn("mqtt", "link lost while sending (%r); %d message(s) to re-send",
                         exc, len(self.inflight))
                await self.client.close()
                continue
            if due:
                self.flush = False
            self.wake.clear()
            wait = time.ticks_diff(self.hold, time.ticks_ms())
            try:
                await asyncio.wait_for_ms(self.wake.wait(), max(1, min(1000, wait)))
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------------ downlink
    def _on_message(self, topic, payload, retained):
        if len(self.inbox) >= 4:
            log.warn("down", "busy: dropped a message on %s", topic)
            self.rejected += 1
            return
        self.inbox.append((topic, payload))
        self.inbox_ev.set()

    def _on_oversized(self, topic, size):
        self.rejected += 1
        log.error("down", "%s: message of %d bytes is over the %d-byte limit: rejected",
                  topic, size, _DOWNLINK_MAX)
        self.inbox.append((topic, None))
        self.inbox_ev.set()

    async def downlink(self):
        while True:
            await self.inbox_ev.wait()
            self.inbox_ev.clear()
            tries = 0
            while self.inbox:
                topic, payload = self.inbox.pop(0)
                mod = None
                try:
                    async with self.mod_lock:
                        gc.collect()
                        mod = __import__("downlink")  # loaded for the message, then dropped
                        await mod.handle(self, topic, payload)
                    tries = 0
                except MemoryError as exc:
                    # a busy moment (a backlog going out): try again shortly, a few times
                    tries += 1
                    if tries < 6:
                        self.inbox.insert(0, (topic, payload))
                        await asyncio.sleep_ms(500 * tries)
                    else:
                        tries = 0
                        log.error("down", "handling %s failed: %r", topic, exc)
                except Exception as exc:  # a bug here must never stop the node
                    log.error("down", "handling %s failed: %r", topic, exc)
                finally:
                    mod = None  # the module must not stay referenced from this frame
                    sys.modules.pop("downlink", None)
                    sys.modules.pop("cbordec", None)
                    sys.modules.pop("status", None)
                    gc.collect()

    async def ack(self, body):
        try:
            payload = cbor.encode(body)
            gc.collect()
            await self.client.publish(self.topic_a, payload, 1)
        except Exception as exc:
            log.warn("down", "ack not delivered: %r", exc)

    def interval(self):
        return min([s[_SPEC]["interval_s"] for s in self.sensors] or [0])

    async def restart(self, why="reboot"):
        """Resets the node after telling the gateway it will be back (`bye` in a retained
        status, then a clean DISCONNECT, so no Last Will): a restart is not an outage."""
        if self.client.connected:
            try:
                # built here, not by status.py: the downlink that asks for the restart holds
                # the module lock (and the gateway needs only these two fields)
                await self.client.publish(self.topic_s, cbor.encode({"on": False, "bye": why}),
                                          1, True)
                await self.client.disconnect()
            except OSError as exc:
                log.warn("mqtt", "restart not announced: %r", exc)
        await self.shutdown()
        _reset()

    # ------------------------------------------------------------------ running
    async def watchdog(self):
        import machine

        secs = self.cfg["watchdog_s"]
        if not secs:
            return
        wdt = machine.WDT(timeout=secs * 1000)
        while True:
            # This task runs only while the loop turns: a task that blocks the loop (a hung
            # driver) or an exception that ends it stops the feeding, and the WDT resets.
            wdt.feed()
            if self.rtc.flags & 2 and time.ticks_diff(time.ticks_ms(), self.started) > _HEALTHY_AFTER_MS:
                self.boot.healthy()
            await asyncio.sleep_ms(1000)

    async def shutdown(self):
        self.save()

    def save(self):
        """Saves what must survive a reset: sensor state (pulse totals), the queue's tail."""
        for s in self.sensors:
            a = s[_ADAPTER]
            if a is not None and hasattr(a, "save"):
                try:
                    a.save()
                except Exception as exc:
                    log.error("sensor", "%s save failed: %r", s[_LABEL], exc)
        self.q.close()

    def wake_pins(self):
        """The (gpio, level) pairs the adapters ask to be woken by from deep sleep (asked
        after save(), as firmware/sensors.py's contract says)."""
        pins = []
        for s in self.sensors:
            a = s[_ADAPTER]
            if a is not None and hasattr(a, "wake_pins"):
                pins.extend(a.wake_pins())
        return pins

    async def run_mains(self):
        gc.collect()
        log.info("node", "%s starting: %d sensor(s), broker %s:%d, %s, heap free %d",
                 self.node_id, len(self.sensors), self.cfg["broker"]["host"],
                 self.cfg["broker"]["port"], "SAFE MODE: " + self.safe if self.safe else "mains",
                 gc.mem_free())
        asyncio.create_task(self.watchdog())
        asyncio.create_task(self.downlink())
        if not self.safe:
            for s in self.sensors:
                asyncio.create_task(self.sensor_task(s))
        await self.publisher()


def _int(b, i):
    """(value, next index) of the CBOR integer at b[i] (major type 0 or 1)."""
    ib = b[i]
    info = ib & 0x1F
    i += 1
    if info < 24:
        v = info
    elif info <= 27:
        v = 0
        for _ in range(1 << (info - 24)):
            v = (v << 8) | b[i]
            i += 1
    else:
        raise ValueError("bad integer")
    if ib >> 5 == 1:
        v = -1 - v
    elif ib >> 5:
        raise ValueError("not an integer")
    return v, i


def _parse_record(b):
    """A queue record as node.record() writes it: [time, {key: value, ...}(, power cycle)].
    (The general decoder, cbordec, stays out of the heap; this reads just this shape.)"""
    n = b[0] - 0x80
    if not 2 <= n <= 3:
        raise ValueError("not a queue record")
    t, i = _int(b, 1)
    m = b[i] - 0xA0
    if not 0 <= m < 24:
        raise ValueError("not a queue record")
    i += 1
    values = {}
    for _ in range(m):
        k, i = _int(b, i)
        values[k], i = _int(b, i)
    if n == 3:
        pc, i = _int(b, i)
        return t, values, pc
    return t, values


def _read_file(name):
    try:
        with open(name, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError("tls: cannot read %s (%r): provision the node again" % (name, exc))


def _reset():
    import machine

    machine.reset()


def diagnostics():
    """The running node's diagnostics (for the REPL and `meterlink status`), or what the
    flash holds when the runtime is not running."""
    if _current is not None:
        return _current.diagnostics()
    return {"on": False, "fw": FIRMWARE_VERSION, "boot": _read_int("boots.dat"),
            "cfg_err": _read_text("config.err"), "running": False}


def run(boot):
    """Runs the node for a booted device (`bootinfo.start()`): forever on mains; one wake-up on
    battery. A crash is logged and resets the device, which counts it towards safe mode."""
    try:
        n = Node(boot)
        if n.battery:
            import power  # only a battery node loads it: heap

            asyncio.run(power.run(n))
        else:
            asyncio.run(n.run_mains())
    except KeyboardInterrupt:
        # Ctrl-C from the REPL: stop here and leave the node to the technician, with sensor
        # state saved. The runtime's tasks are dropped, so code the technician runs with
        # asyncio.run starts clean. (Either can meet a locked or full heap: best effort.)
        for step in (_current.save if _current else None, asyncio.new_event_loop):
            try:
                if step:
                    step()
            except Exception:
                pass
        raise
    except Exception as exc:
        log.error("node", "crashed: %r", exc)
        sys.print_exception(exc)
        boot.rtc.flags |= 2
        boot.rtc.save()
        time.sleep_ms(1000)
        _reset()
