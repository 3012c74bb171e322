"""Wall-clock time for the node: NTP when online, else the time the gateway sends with its
configuration and commands, else none (readings then carry relative time, see
docs/wire-format.md).

The clock is `time.time()` plus an offset learned from a time source, kept in RTC memory with
the source, so it survives deep sleep and resets but not a power cut. Before any source set it,
`unix()` is None, whatever `time.time()` says: after a power-on the ESP32's RTC starts from its
epoch and its seconds mean nothing. A later NTP answer replaces a gateway time; a gateway time
never replaces NTP of the same power cycle.

    clock.init(rtc_state)
    clock.unix()           # Unix seconds, or None
    clock.set(t, clock.NTP)

Send slots (docs/node-runtime.md, "When a node sends"): readings are taken at wall-clock
multiples of their interval, and a node sends them `send_offset()` seconds into each interval,
a fixed offset from its id, so that a fleet's messages spread over the interval instead of
arriving in the same second. These two functions are plain Python: the fleet load generator
(host_tools/loadgen.py) schedules its simulated nodes with them.
"""

import binascii
import time

NONE = 0
NTP = 1
GATEWAY = 2
SOURCES = ("none", "ntp", "gateway")

_rtc = None


def init(rtc):
    global _rtc
    _rtc = rtc


def raw():
    """The device clock (seconds, its own epoch): what relative times are measured in."""
    return time.time()


def unix():
    if _rtc is None or not _rtc.clock_src:
        return None
    return time.time() + _rtc.clock_offset


def source():
    return SOURCES[_rtc.clock_src] if _rtc is not None else "none"


def set(unix_now, src):
    """Sets the clock from a source; returns False when a better source already set it."""
    if _rtc.clock_src == NTP and src == GATEWAY:
        return False
    now = time.time()
    _rtc.clock_offset = int(unix_now) - now
    _rtc.clock_at = now
    _rtc.clock_src = src
    _rtc.save()
    return True


async def ntp(host, port=123, timeout_ms=3000):
    """Asks an (S)NTP server (RFC 4330 client request) and returns Unix seconds, without
    blocking the scheduler; raises OSError when no valid answer came in time."""
    import asyncio
    import socket
    import struct

    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        req = bytearray(48)
        req[0] = 0x23  # LI 0, version 4, mode 3 (client)
        s.sendto(req, addr)
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while time.ticks_diff(deadline, time.ticks_ms()) > 0:
            try:
                data = s.recv(48)
            except OSError:
                await asyncio.sleep_ms(20)
                continue
            # mode 4 (server), a stratum 1..15, a transmit timestamp
            if len(data) >= 48 and data[0] & 7 == 4 and 0 < data[1] < 16:
                secs = struct.unpack_from("!I", data, 40)[0]
                if secs:
                    return secs - 2208988800  # NTP era 0 starts 1900-01-01
        raise OSError("NTP: no answer from %s:%d" % (host, port))
    finally:
        s.close()


def send_offset(node_id, spread_s):
    """The node's send offset into each interval, in seconds: 0 <= offset < spread_s."""
    if spread_s <= 1:
        return 0
    return (binascii.crc32(node_id.encode()) & 0xFFFFFFFF) % spread_s


def send_slot(t, interval_s, offset_s):
    """When a reading taken at Unix second `t` is sent: its interval's start plus the offset."""
    return t - t % interval_s + offset_s
