"""The node runtime: sensor tasks, the reading queue and the publisher, on one asyncio loop.

    import node
    node.main()          # what main.py does

Each configured sensor runs in its own task on its own interval; a failing sensor is logged,
counted and retried on its next slot without delaying the others. A reading gets its sequence
number when it is taken and waits in the queue until the broker's PUBACK for the message that
carried it; the publisher batches whatever is queued into as few messages as the payload limit
allows, and reconnects with exponential backoff and jitter when the broker is unreachable.

This is the walking-skeleton runtime: the queue lives in RAM (bounded, drop-oldest, counted).
The flash queue, persistent MQTT session, downlink, power modes and watchdog come with the node
runtime work and replace pieces here without changing the wire format.
"""

import asyncio
import gc
import time

import cbor
import config
import log
import mqtt
import sensors
import seqno
import wire

from micropython import const

_MAX_PAYLOAD = const(512)
_MAX_QUEUE = const(256)
_BACKOFF_MAX_S = const(60)
_UNIX_2000 = const(946684800)  # 2000-01-01 in Unix time: the ESP32 port's old epoch
_CLOCK_VALID_AFTER = const(1700000000)  # 2023-11-14: any earlier wall-clock time is unset

_EPOCH_OFFSET = _UNIX_2000 if time.gmtime(0)[0] == 2000 else 0


def unix_time():
    """Wall-clock Unix seconds, or None while the clock is not set."""
    t = time.time() + _EPOCH_OFFSET
    return t if t >= _CLOCK_VALID_AFTER else None


def _jitter_ms(limit):
    # Cheap jitter without the random module: low bits of the microsecond timer.
    return time.ticks_us() % limit


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.node_id = cfg["node_id"]
        self.topic_r = "%s/%s/r" % (cfg["prefix"], self.node_id)
        b = cfg["broker"]
        self.client = mqtt.MQTTClient(self.node_id, b["host"], b["port"], user=b["user"],
                                      password=b["password"], keepalive=b["keepalive"])
        self.seq = seqno.SeqAllocator("seq.dat")
        self.queue = []  # (seq, time, relative, values), oldest first
        self.dropped = 0
        self.errors = {}  # sensor label -> consecutive failures
        self.sent = 0
        self.wake = asyncio.Event()
        self.enc = cbor.Encoder(_MAX_PAYLOAD)
        self.hw = sensors.Hardware(cfg)

    # ------------------------------------------------------------------ readings
    def record(self, values):
        """Queues one reading record (values: {channel key: scaled int})."""
        if not values:
            return
        t = unix_time()
        relative = t is None
        if relative:
            t = time.time()  # seconds since boot-ish; only differences reach the wire
        self.queue.append((self.seq.next(), t, relative, values))
        if len(self.queue) > _MAX_QUEUE:
            self.queue.pop(0)
            self.dropped += 1
            log.warn("queue", "full: dropped the oldest reading (%d dropped)", self.dropped)
        self.wake.set()

    async def sensor_task(self, spec):
        label = sensors.label(spec)
        interval = spec["interval_s"] * 1000
        sensor = None
        due = time.ticks_ms()
        while True:
            try:
                if sensor is None:
                    sensor = sensors.create(spec, self.hw)
                    log.info("sensor", "%s ready", label)
                values = await sensor.sample()
                self.errors[label] = 0
                self.record(values)
                log.info("sensor", "%s seq=%d %s", label, self.seq.peek() - 1, values)
            except Exception as exc:  # OSError from the bus, MemoryError, a driver bug: never fatal
                sensor = None  # re-probe the part on the next slot
                self.errors[label] = self.errors.get(label, 0) + 1
                log.error("sensor", "%s failed (%d in a row): %r", label, self.errors[label], exc)
            due = time.ticks_add(due, interval)
            delay = time.ticks_diff(due, time.ticks_ms())
            if delay < 0:  # overran a slot: skip ahead, never burst to catch up
                due = time.ticks_ms()
                delay = 0
            await asyncio.sleep_ms(delay)

    # ------------------------------------------------------------------ publishing
    def _batch(self):
        """The longest run at the head of the queue with consecutive seqs and one clock kind."""
        q = self.queue
        first_seq, _, relative, _ = q[0]
        n = 1
        while n < len(q) and n < wire.MAX_RECORDS and q[n][0] == first_seq + n and q[n][2] == relative:
            n += 1
        records = [(r[1], r[3]) for r in q[:n]]
        now = time.time() if relative else None
        return first_seq, records, now

    async def _connect(self):
        b = self.cfg["broker"]
        await self._wifi()
        await self.client.connect()
        log.info("mqtt", "connected to %s:%d as %s", b["host"], b["port"], self.node_id)

    async def _wifi(self):
        import network

        wlan = network.WLAN(network.STA_IF)
        if wlan.isconnected():
            return
        wlan.active(True)
        w = self.cfg["wifi"]
        if w["ssid"]:
            wlan.connect(w["ssid"], w["password"] or "")
        deadline = time.ticks_add(time.ticks_ms(), 15000)
        while not wlan.isconnected():
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError("wifi: not connected to %s" % w["ssid"])
            await asyncio.sleep_ms(100)

    async def publisher(self):
        backoff = 1
        while True:
            if not self.client.connected:
                try:
                    await self._connect()
                    backoff = 1
                except Exception as exc:  # OSError, MQTTError: keep the node alive
                    delay = backoff * 1000 + _jitter_ms(backoff * 500 + 1)
                    log.warn("mqtt", "connect failed (%r); retry in %d ms", exc, delay)
                    await asyncio.sleep_ms(delay)
                    backoff = min(backoff * 2, _BACKOFF_MAX_S)
                    continue
            if not self.queue:
                self.wake.clear()
                try:
                    await asyncio.wait_for_ms(self.wake.wait(), 1000)
                except asyncio.TimeoutError:
                    pass
                continue
            seq, records, now = self._batch()
            n = wire.encode_reading(self.enc, seq, records, now_uptime=now)
            if n == 0:
                log.error("pub", "seq=%d does not fit in %d bytes: dropped", seq, _MAX_PAYLOAD)
                self.queue.pop(0)
                self.dropped += 1
                continue
            payload = bytes(self.enc.view())
            try:
                await self.client.publish(self.topic_r, payload, qos=1)
            except Exception as exc:
                log.warn("mqtt", "publish of seq=%d..%d failed (%r); will resend", seq, seq + n - 1, exc)
                await self.client.close()
                continue
            del self.queue[:n]
            self.sent += n
            gc.collect()
            log.info("pub", "seq=%d..%d acked (%d records, %d bytes, heap free %d)",
                     seq, seq + n - 1, n, len(payload), gc.mem_free())

    async def run(self):
        log.info("node", "%s starting: %d sensor(s), broker %s:%d", self.node_id,
                 len(self.cfg["sensors"]), self.cfg["broker"]["host"], self.cfg["broker"]["port"])
        for spec in self.cfg["sensors"]:
            asyncio.create_task(self.sensor_task(spec))
        await self.publisher()


def main(path="config.json"):
    try:
        cfg = config.load(path)
    except config.ConfigError as exc:
        # Stay at the REPL with a clear reason instead of boot-looping.
        log.error("config", "%s", exc)
        return
    asyncio.run(Node(cfg).run())
