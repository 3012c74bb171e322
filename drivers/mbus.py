"""Wired M-Bus master (EN 13757-2 link layer) over a UART at 2400 baud 8E1, and the node
adapter for water, gas and heat meters; the telegram parser is drivers/mbusparse.py, which also
defines MBusError (this module imports it, never the reverse)."""

#     from mbus import MBus
#     from mbusparse import parse
#     bus = MBus(uart)
#     await bus.snd_nke(5)                      # initialise meter 5 (answers E5)
#     frame = await bus.req_ud2(5)              # RSP_UD long frame, checked
#     t = parse(frame)                          # {"id": 12345678, "medium": 7, "records": [...]}
#
# Hand-written: no M-Bus library runs on MicroPython, and the parser must work on a
# preallocated buffer without floats (values stay integers with a decimal exponent).
#
# Link layer: short frame 10 C A CS 16, long frame 68 L L 68 C A CI data CS 16 (CS: the byte sum
# of C..data; L: the byte count of C..data), single character E5. A received long frame is
# checked for start bytes, both length bytes, its total length, checksum and stop byte; each
# failure names the byte offset. REQ_UD2 carries FCV and the frame-count bit FCB, toggled after
# every answered request and kept on a retry, so the meter repeats a telegram whose answer was
# lost instead of moving on; SND_NKE restarts the sequence. Secondary addressing selects a meter
# by ID / manufacturer / version / medium (SND_UD CI 52 to address 253), then reads it at 253.
#
# Application layer (CI 72, variable data structure with long header): 12-byte header (ID as
# 8 BCD digits, manufacturer code, version, medium, access number, status, signature), then
# records: DIF (data field, function, storage bit, extension) + DIFEs (storage, tariff,
# subunit), VIF + VIFEs (tables FB / FD followed, plain-text VIF skipped), data. Decoded
# VIFs: energy (Wh, J), volume (m3), mass, volume flow (m3/h, /min, /s), power, flow / return /
# external temperature, temperature difference, pressure, date (type G), date and time (type
# F), error flags (FD 17), durations, fabrication number, bus address. Values are integers with a
# power-of-ten exponent in the record's unit; BCD (F in the top digit: negative) and integer
# codings up to 64 bits, 32-bit reals; idle filler (2F) is skipped, manufacturer data (0F/1F)
# ends the records.


import asyncio
import time

import mbusparse
from mbusparse import MBusError

from micropython import const

_WIRE_LIMIT = 1 << 53  # |value| a reading carries (the gateway rejects the message otherwise)
_ACK = const(0xE5)
_SND_NKE = const(0x40)
_REQ_UD2 = const(0x5B)  # FCV set; FCB is 0x20
_SND_UD = const(0x53)
_SELECT = const(0xFD)
_CI_SELECT = const(0x52)
_GAP_MS = const(50)  # the longest silence inside an answer


def checksum(data, start, end):
    s = 0
    for i in range(start, end):
        s += data[i]
    return s & 0xFF


def check_long(buf, n):
    """Raises MBusError naming the offset when buf[:n] is not one valid long frame."""
    if n < 9:
        raise MBusError("long frame cut short: %d bytes" % n)
    if buf[0] != 0x68 or buf[3] != 0x68:
        raise MBusError("long frame: start bytes 0x%02x 0x%02x at offsets 0 and 3, expected 0x68"
                        % (buf[0], buf[3]))
    if buf[1] != buf[2]:
        raise MBusError("long frame: length bytes differ at offsets 1 and 2 (%d, %d)"
                        % (buf[1], buf[2]))
    want = buf[1] + 6
    if n < want:
        raise MBusError("long frame cut short: %d of %d bytes" % (n, want))
    cs = checksum(buf, 4, want - 2)
    if buf[want - 2] != cs:
        raise MBusError("long frame: checksum 0x%02x at offset %d, expected 0x%02x"
                        % (buf[want - 2], want - 2, cs))
    if buf[want - 1] != 0x16:
        raise MBusError("long frame: stop byte 0x%02x at offset %d, expected 0x16"
                        % (buf[want - 1], want - 1))
    return want


class MBus:
    def __init__(self, uart, *, timeout_ms=500, retries=2):
        self._u = uart
        self._timeout = timeout_ms
        self._retries = retries
        self._fcb = {}  # address -> the FCB of the next REQ_UD2
        self._short = bytearray(5)
        self._buf = bytearray(261)

    def _drain(self):
        while self._u.any():
            self._u.read()

    async def _quiet(self):
        """Waits (up to 1 s) until the line is silent: the rest of a bad answer must not be
        read as the start of the next one."""
        for _ in range(20):
            self._drain()
            await asyncio.sleep_ms(_GAP_MS)
            if not self._u.any():
                return

    async def _read(self, ack_only):
        """Reads one answer: E5 (returns 1), or with ack_only False a long frame (returns its
        byte count, its length taken from the L byte; check_long() checks the rest)."""
        u, buf = self._u, self._buf
        mv = memoryview(buf)
        got, want = 0, 1
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        while True:
            n = u.any()
            if n:
                got += u.readinto(mv[got:], min(n, want - got))
                # a long frame takes its time (72 bytes: 330 ms at 2400 baud): after the first
                # byte the limit is a gap in the answer, not the whole answer
                deadline = time.ticks_add(time.ticks_ms(), _GAP_MS)
                if buf[0] == _ACK:
                    return 1
                if buf[0] != 0x68 or ack_only:
                    raise MBusError("unexpected first byte 0x%02x, expected %s"
                                    % (buf[0], "E5" if ack_only else "E5 or 68"))
                want = buf[1] + 6 if got >= 2 else 2
                if got >= want > 2:
                    return got
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                if got:
                    raise MBusError("answer cut short: %d of %d bytes" % (got, want))
                raise MBusError("no answer within %d ms" % self._timeout)
            await asyncio.sleep_ms(5)

    async def _exchange(self, frame, long_answer):
        last = None
        for _ in range(self._retries + 1):
            self._drain()
            self._u.write(frame)
            try:
                n = await self._read(not long_answer)
                if long_answer:
                    if n == 1:
                        raise MBusError("E5 where a long frame was expected")
                    return check_long(self._buf, n)
                if n != 1:
                    raise MBusError("a frame where E5 was expected")
                return 1
            except MBusError as exc:
                last = exc
                await self._quiet()
        raise MBusError("no valid answer after %d tries: %s" % (self._retries + 1, last))

    def _short_frame(self, c, a):
        f = self._short
        f[0], f[1], f[2], f[3], f[4] = 0x10, c, a, (c + a) & 0xFF, 0x16
        return f

    async def snd_nke(self, address):
        await self._exchange(self._short_frame(_SND_NKE, address), False)
        self._fcb[address] = 0x20  # after SND_NKE the first REQ_UD2 has FCB set

    async def deselect(self):
        self._u.write(self._short_frame(_SND_NKE, _SELECT))  # no answer expected
        await asyncio.sleep_ms(20)

    async def select(self, ident, manufacturer=0xFFFF, version=0xFF, medium=0xFF):
        """Secondary address selection; ident is 8 BCD digits as an int, or -1 for any."""
        body = bytearray((_SND_UD, _SELECT, _CI_SELECT))
        v = ident
        for _ in range(4):
            body.append(0xFF if ident < 0 else (v % 10) | ((v // 10 % 10) << 4))
            v //= 100
        body += bytes((manufacturer & 0xFF, manufacturer >> 8, version, medium))
        frame = bytes((0x68, len(body), len(body), 0x68)) + body + \
            bytes((checksum(body, 0, len(body)), 0x16))
        await self._exchange(frame, False)
        self._fcb[_SELECT] = 0x20

    async def req_ud2(self, address):
        """The meter's RSP_UD long frame, checked; a memoryview valid until the next call."""
        fcb = self._fcb.get(address, 0x20)
        last = None
        for _ in range(self._retries + 1):
            try:
                n = await self._exchange(self._short_frame(_REQ_UD2 | fcb, address), True)
                self._fcb[address] = fcb ^ 0x20
                return memoryview(self._buf)[:n]
            except MBusError as exc:
                last = exc  # same FCB again: the meter repeats the telegram
        raise last


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.


def create(spec, hw):
    return MBusSensor(spec, hw)


_MEDIUM_GAS = const(0x03)  # EN 13757-3 medium code of gas


class MBusSensor:
    def __init__(self, spec, hw):
        import channels

        self.interval_s = spec["interval_s"]
        uart, _, _ = hw.uart(spec["bus"])
        self.bus = MBus(uart, timeout_ms=spec["timeout_ms"])
        self._addr = spec["address"]
        self._sec = None if spec["secondary"] is None else int(spec["secondary"])
        self.label = "mbus@%s:%s" % (spec["bus"], spec["secondary"] or spec["address"])
        inst = spec["instance"]
        k = channels.key
        self._keys = {"water": k(channels.WATER_VOLUME, inst), "gas": k(channels.GAS_VOLUME, inst),
                      "flow": k(channels.WATER_FLOW, inst),
                      "flow_temp_C": k(channels.TEMPERATURE, inst),
                      "return_temp_C": k(channels.TEMPERATURE, inst + 1 if inst < 15 else inst),
                      "energy": k(channels.HEAT_ENERGY, inst), "alarms": k(channels.ALARMS, inst)}
        self._ready = False
        self.last = None  # the last decoded telegram, for diagnostics

    async def sample(self):
        b = self.bus
        try:
            if self._sec is not None:
                await b.select(self._sec)
                frame = await b.req_ud2(_SELECT)
            else:
                if not self._ready:
                    await b.snd_nke(self._addr)
                    self._ready = True
                frame = await b.req_ud2(self._addr)
            t = mbusparse.parse(frame)
        except OSError as exc:
            raise OSError("%s: %s" % (self.label, exc))
        finally:
            if self._sec is not None:
                await b.deselect()
        self.last = t
        values = {}
        keys = self._keys
        self.unsent = []  # (unit or channel key, why) of values decoded but not sendable
        alarm = 8 if t["status"] & 0x1C or t["status"] & 3 in (2, 3) else 0
        for unit, exp, value, storage, tariff, subunit, fn, vifes in t["records"]:
            if storage or tariff or subunit or fn or vifes and unit != "error_flags" \
                    or not isinstance(value, (int, float)):
                continue  # history, tariffs, backward flow, text, dates: not sent
            if isinstance(value, float) and (value != value or value - value != 0):
                continue  # a real that is no number here (32-bit floats): not a wrong one
            try:
                if unit == "m3":
                    key = keys["gas"] if t["medium"] == _MEDIUM_GAS else keys["water"]
                    values[key] = mbusparse.scaled(value, exp, -3)  # litres
                elif unit == "m3/h":
                    values[keys["flow"]] = mbusparse.scaled(value * 1000000, exp, 0) // 3600
                elif unit in ("flow_temp_C", "return_temp_C"):
                    values[keys[unit]] = mbusparse.scaled(value, exp, -2)
                elif unit == "Wh":
                    values[keys["energy"]] = mbusparse.scaled(value * 36, exp - 1, 0)  # kJ
                elif unit == "J":
                    values[keys["energy"]] = mbusparse.scaled(value, exp, 3)
                elif unit == "error_flags" and value:
                    alarm = 8
            except (OverflowError, ValueError):  # a real too large once scaled (32-bit)
                self.unsent.append((unit, "out of range once scaled"))
        for key in [k for k, v in values.items() if not -_WIRE_LIMIT < v < _WIRE_LIMIT]:
            self.unsent.append((key, "past what a reading carries (2^53)"))
            del values[key]  # sent, the gateway would refuse the reading and its total
        values[keys["alarms"]] = alarm
        if not alarm and self.last_alarm == 0:
            del values[keys["alarms"]]
        self.last_alarm = alarm
        return values

    last_alarm = 0
