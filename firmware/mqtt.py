"""MQTT 3.1.1 client for the node, on asyncio streams.

Why not micropython-lib's umqtt.simple / umqtt.robust: their socket calls block, so one slow
broker stalls every sensor task on the node; they have no retransmission of unacknowledged
QoS 1 messages (a PUBLISH lost in a dropped TCP connection is simply gone), and no session
resume (umqtt.robust reconnects but forgets what was in flight). Meter readings are billing
data: a reading may leave the node's queue only after the broker's PUBACK for it.

This client does CONNECT/CONNACK (persistent sessions, Last Will), PUBLISH QoS 0/1 with
PUBACK, SUBSCRIBE, PINGREQ keepalive, DISCONNECT, with a deadline on every network wait so no
call blocks the scheduler, over TCP or TLS (`ssl=tls_context(ca, cert, key)`: the broker's
certificate checked against the one CA and the server name, a client certificate optional). It is the protocol layer only: the caller owns reconnection and
backoff, and after a reconnect re-sends what was not acknowledged with `dup=True` and the same
packet id.

    c = MQTTClient("node-01", "192.168.1.10", 1883, keepalive=60, clean_session=False,
                   will=("m/node-01/s", b"\xa1bon\xf4", 1, True))
    await c.connect()
    await c.publish("m/node-01/r", payload, qos=1)   # returns after PUBACK, or raises OSError
    pid = await c.send(topic, payload)               # in-flight window: send now ...
    await c.wait_ack(pid)                            # ... and wait for its PUBACK later
    await c.disconnect()

Incoming PUBLISH packets larger than `max_packet` are read off the socket in small chunks and
discarded (a downlink message can never exhaust the heap); `on_oversized(topic, size)` is
called instead of `on_message`. Incoming QoS 1 messages are acknowledged on receipt, before
`on_message` runs.

Errors: OSError for anything on the link (including timeouts, ETIMEDOUT), MQTTError for a
protocol refusal (CONNACK return code, malformed packet from the broker).
"""

import asyncio
import errno
import time

from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

CONNACK_REASONS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class MQTTError(Exception):
    """The broker refused us or spoke something we cannot parse."""


def tls_context(ca, cert=None, key=None):
    """A TLS client context that trusts only the CA `ca` (DER or PEM bytes), checks the
    server's certificate and name (CERT_REQUIRED; the name is the connection's
    server_hostname), and presents `cert`/`key` (DER or PEM bytes) when given. mbedTLS keeps
    the parsed certificates in C memory (ESP-IDF's heap on a device), not in this heap."""
    import tls

    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = tls.CERT_REQUIRED
    ctx.load_verify_locations(ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _encode_length(buf, n):
    # MQTT "remaining length": 7 bits per byte, high bit = more.
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf.append(b | 0x80)
        else:
            buf.append(b)
            return


def _str(buf, s):
    b = s.encode() if isinstance(s, str) else s
    buf.append(len(b) >> 8)
    buf.append(len(b) & 0xFF)
    buf.extend(b)


class MQTTClient:
    def __init__(self, client_id, host, port=1883, *, user=None, password=None, keepalive=60,
                 clean_session=True, timeout_ms=10000, will=None, max_packet=2048,
                 ssl=None, server_hostname=None):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.ssl = ssl  # a tls.SSLContext (tls_context()): TLS to the broker; None: plain
        self.server_hostname = server_hostname or host
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.timeout_ms = timeout_ms
        self.will = will  # (topic, payload, qos, retain) or None
        self.max_packet = max_packet
        self.on_message = None  # callback(topic: str, payload: bytes, retained: bool)
        self.on_oversized = None  # callback(topic: str, size: int)
        self._reader = None
        self._writer = None
        self._pid = 0
        self._acks = {}  # packet id -> asyncio.Event, set when its PUBACK/SUBACK arrives
        self._lock = asyncio.Lock()
        self._rx_task = None
        self._ka_task = None
        self._last_tx = 0
        self._last_rx = 0
        self.connected = False

    # ------------------------------------------------------------------ connection
    async def connect(self):
        """Opens the TCP connection and the MQTT session. Returns the CONNACK's
        session-present flag."""
        await self.close()
        try:
            return await self._connect()
        except EOFError:
            await self.close()
            raise OSError(errno.ECONNRESET)
        except asyncio.TimeoutError:
            await self.close()
            raise OSError(errno.ETIMEDOUT)
        except Exception:
            await self.close()
            raise

    async def _connect(self):
        t = self.timeout_ms
        # With TLS the handshake runs in the stream's first write and read, under the same
        # deadline: a broker that stops half way never blocks the scheduler.
        self._reader, self._writer = await asyncio.wait_for_ms(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                    server_hostname=self.server_hostname), t)
        pkt = bytearray()
        flags = 0x02 if self.clean_session else 0
        if self.will:
            wt, wp, wq, wr = self.will
            flags |= 0x04 | (wq << 3) | (0x20 if wr else 0)
        if self.user is not None:
            flags |= 0x80
            if self.password is not None:
                flags |= 0x40
        body = bytearray(b"\x00\x04MQTT\x04")
        body.append(flags)
        body.append(self.keepalive >> 8)
        body.append(self.keepalive & 0xFF)
        _str(body, self.client_id)
        if self.will:
            _str(body, wt)
            _str(body, wp)
        if self.user is not None:
            _str(body, self.user)
            if self.password is not None:
                _str(body, self.password)
        pkt.append(_CONNECT)
        _encode_length(pkt, len(body))
        pkt.extend(body)
        await self._send(pkt)
        head, data = await asyncio.wait_for_ms(self._read_packet(), t)
        if head != _CONNACK or len(data) != 2:
            raise MQTTError("expected CONNACK, got packet type 0x%02x" % head)
        if data[1]:
            raise MQTTError("connection refused: %s" % CONNACK_REASONS.get(data[1], data[1]))
        self.connected = True
        self._last_rx = time.ticks_ms()
        self._rx_task = asyncio.create_task(self._receiver())
        if self.keepalive:
            self._ka_task = asyncio.create_task(self._keepalive())
        return bool(data[0] & 1)

    async def disconnect(self):
        if self.connected:
            try:
                await self._send(bytearray((_DISCONNECT, 0)))
            except OSError:
                pass
        await self.close()

    async def close(self):
        """Drops the connection without DISCONNECT (the broker then sends the Last Will)."""
        self._link_down()
        for task in (self._rx_task, self._ka_task):
            if task is not None:
                task.cancel()
        self._rx_task = self._ka_task = None
        w = self._writer
        self._reader = self._writer = None
        if w is not None:
            try:
                w.close()
                await w.wait_closed()
            except OSError:
                pass
        self._acks = {}

    # ------------------------------------------------------------------ publishing
    def next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    async def publish(self, topic, payload, qos=1, retain=False, *, dup=False, pid=None):
        """Publishes and, for QoS 1, waits for the PUBACK. Raises OSError on a link failure or
        when no PUBACK arrives within the timeout (the message may or may not have arrived: the
        caller keeps it and re-sends with dup=True)."""
        pid = await self.send(topic, payload, qos, retain, dup=dup, pid=pid)
        if qos:
            await self.wait_ack(pid)
        return pid

    async def send(self, topic, payload, qos=1, retain=False, *, dup=False, pid=None):
        """Sends a PUBLISH and returns its packet id without waiting for the PUBACK (QoS 1);
        `wait_ack(pid)` waits for it. Raises OSError when the link is down."""
        if not self.connected:
            raise OSError(errno.ENOTCONN)
        pkt = bytearray()
        pkt.append(_PUBLISH | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0))
        tb = topic.encode() if isinstance(topic, str) else topic
        _encode_length(pkt, 2 + len(tb) + (2 if qos else 0) + len(payload))
        _str(pkt, tb)
        if qos == 0:
            await self._send(pkt, payload)
            return None
        if pid is None:
            pid = self.next_pid()
        pkt.append(pid >> 8)
        pkt.append(pid & 0xFF)
        await self._send_tracked(pid, pkt, payload)
        return pid

    async def wait_ack(self, pid, timeout_ms=None):
        """Waits for the PUBACK of a message sent with `send`. OSError: timed out (ETIMEDOUT)
        or the link went down (ECONNRESET); the message may or may not have arrived."""
        ev = self._acks.get(pid)
        if ev is None:
            raise OSError(errno.ECONNRESET)
        try:
            await asyncio.wait_for_ms(ev.wait(), timeout_ms or self.timeout_ms)
        except asyncio.TimeoutError:
            raise OSError(errno.ETIMEDOUT)
        finally:
            self._acks.pop(pid, None)
        if not self.connected:
            raise OSError(errno.ECONNRESET)

    async def subscribe(self, topic, qos=1):
        if not self.connected:
            raise OSError(errno.ENOTCONN)
        pid = self.next_pid()
        body = bytearray((pid >> 8, pid & 0xFF))
        _str(body, topic)
        body.append(qos)
        pkt = bytearray((_SUBSCRIBE,))
        _encode_length(pkt, len(body))
        pkt.extend(body)
        await self._exchange(pid, pkt)

    # ------------------------------------------------------------------ internals
    async def _exchange(self, pid, pkt, payload=None):
        """Sends a packet and waits for the PUBACK/SUBACK carrying `pid`."""
        await self._send_tracked(pid, pkt, payload)
        await self.wait_ack(pid)

    async def _send_tracked(self, pid, pkt, payload):
        # The ack event exists before the packet leaves: a fast PUBACK is never missed.
        self._acks[pid] = asyncio.Event()
        try:
            await self._send(pkt, payload)
        except Exception:
            self._acks.pop(pid, None)
            raise

    async def _send(self, head, payload=None):
        w = self._writer
        if w is None:
            raise OSError(errno.ENOTCONN)
        async with self._lock:
            w.write(head)
            if payload:
                w.write(payload)
            await asyncio.wait_for_ms(w.drain(), self.timeout_ms)
        self._last_tx = time.ticks_ms()

    def _link_down(self):
        """Marks the link dead and wakes everyone waiting for an ack; they see
        `connected == False` and raise."""
        self.connected = False
        for ev in self._acks.values():
            ev.set()

    async def _read_packet(self, limit=0x7FFFFFFF):
        """(first byte, body); a body over `limit` bytes is skipped and returned as its size."""
        r = self._reader
        if r is None:
            raise OSError(errno.ENOTCONN)
        head = (await r.readexactly(1))[0]
        n = 0
        shift = 0
        while True:
            b = (await r.readexactly(1))[0]
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 21:
                raise MQTTError("malformed remaining length")
        if n > limit:
            return head, n
        data = await r.readexactly(n) if n else b""
        return head, data

    async def _skip(self, n):
        while n:
            k = min(n, 128)
            await self._reader.readexactly(k)
            n -= k

    async def _receiver(self):
        try:
            while True:
                head, data = await self._read_packet(self.max_packet)
                self._last_rx = time.ticks_ms()
                kind = head & 0xF0
                if isinstance(data, int):
                    await self._oversized(head, data)
                    continue
                if kind == _PUBACK or kind == _SUBACK:
                    pid = (data[0] << 8) | data[1]
                    ev = self._acks.get(pid)
                    if ev is not None:
                        ev.set()
                elif kind == _PUBLISH:
                    await self._incoming(head, data)
                elif kind == _PINGRESP:
                    pass
        except asyncio.CancelledError:
            raise
        except Exception:  # EOF, reset, malformed: the link is gone
            self._link_down()

    async def _incoming(self, head, data):
        tl = (data[0] << 8) | data[1]
        topic = bytes(data[2:2 + tl]).decode()
        pos = 2 + tl
        qos = (head >> 1) & 3
        if qos:
            pid = (data[pos] << 8) | data[pos + 1]
            pos += 2
            await self._send(bytearray((_PUBACK, 2, pid >> 8, pid & 0xFF)))
        if self.on_message is not None:
            self.on_message(topic, bytes(data[pos:]), bool(head & 1))

    async def _oversized(self, head, size):
        # Read the topic (and packet id) to acknowledge and report it, then drop the rest.
        r = self._reader
        tl = await r.readexactly(2)
        n = (tl[0] << 8) | tl[1]
        left = size - 2
        topic = b""
        if n <= 256 and n <= left:
            topic = await r.readexactly(n)
            left -= n
        if (head >> 1) & 3 and left >= 2 and topic:
            p = await r.readexactly(2)
            left -= 2
            await self._send(bytearray((_PUBACK, 2, p[0], p[1])))
        await self._skip(left)
        if head & 0xF0 == _PUBLISH and self.on_oversized is not None:
            self.on_oversized(topic.decode(), size)

    async def _keepalive(self):
        period = self.keepalive * 1000
        try:
            while self.connected:
                await asyncio.sleep_ms(period // 4)
                now = time.ticks_ms()
                if time.ticks_diff(now, self._last_rx) > period * 3 // 2:
                    # no PINGRESP (or anything) for 1.5 keepalives: the link is dead
                    self._link_down()
                    return
                if time.ticks_diff(now, self._last_tx) >= period // 2:
                    try:
                        await self._send(bytearray((_PINGREQ, 0)))
                    except OSError:
                        self._link_down()
                        return
        except asyncio.CancelledError:
            pass
