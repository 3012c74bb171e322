"""Modbus RTU master over a UART (RS-485), for water-quality probes and ultrasonic flow meters,
with the register map in the node's config.

    from modbus import ModbusRTU
    bus = ModbusRTU(uart, baudrate=9600, timeout_ms=200, retries=2)
    data = await bus.read_registers(1, 4, 0, 2)     # slave 1, function 04, registers 0-1
    # a memoryview of the 4 data bytes, valid until the next request

Hand-written (no umodbus): the master needs two function codes, must not block the asyncio
scheduler (it polls uart.any() and awaits between polls) and must allocate its frame buffers
once; the libraries block in uart.read() and build frames per call.

Framing (Modbus over Serial Line V1.02): a request is address, function, start, quantity, CRC-16
(polynomial 0xA001 reflected, init 0xFFFF, low byte first: CRC of 01 03 00 00 00 01 is 84 0A).
Before a request the line is left silent 3.5 character times (1.75 ms above 19200 baud); the
answer must come within `timeout_ms`. An answer is checked for its address, function, byte
count and CRC. Exceptions (function | 0x80) raise ModbusError with the code and its name;
slave busy (06) is retried like a timeout or a corrupted answer, the others are not (asking
again gives the same answer). After `retries` more tries the error names the last cause.
"""

import asyncio
import time

from micropython import const

_MAX_REGS = const(125)
_WIRE_LIMIT = 1 << 53  # |value| a reading carries (the gateway rejects the message otherwise)
_EXC = {1: "illegal function", 2: "illegal data address", 3: "illegal data value",
        4: "slave device failure", 5: "acknowledge", 6: "slave device busy",
        8: "memory parity error", 10: "gateway path unavailable",
        11: "gateway target failed to respond"}


def crc16(data, n=None):
    c = 0xFFFF
    for i in range(len(data) if n is None else n):
        c ^= data[i]
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return c


class ModbusError(OSError):
    """The slave answered with an exception code."""

    def __init__(self, slave, fn, code):
        super().__init__("slave %d function %d: exception %d (%s)"
                         % (slave, fn, code, _EXC.get(code, "unknown")))
        self.code = code


class ModbusRTU:
    def __init__(self, uart, *, baudrate=9600, timeout_ms=200, retries=2, de=None):
        self._u = uart
        self._timeout = timeout_ms
        self._retries = retries
        self._de = de  # RS-485 driver-enable Pin, high while sending (None: auto-direction)
        self._req = bytearray(8)
        self._buf = bytearray(5 + 2 * _MAX_REGS)
        char_us = 11 * 1000000 // baudrate
        self._gap_ms = 2 if baudrate > 19200 else (35 * char_us + 9999) // 10000
        self._char_ms = (char_us + 999) // 1000

    async def read_registers(self, slave, fn, start, count):
        if fn not in (3, 4) or not 1 <= count <= _MAX_REGS:
            raise ValueError("function must be 3 or 4 and quantity 1-125")
        last = None
        for _ in range(self._retries + 1):
            try:
                return await self._transact(slave, fn, start, count)
            except ModbusError as exc:
                if exc.code != 6:
                    raise
                last = exc
            except OSError as exc:
                last = exc
        raise OSError("no valid answer after %d tries: %s" % (self._retries + 1, last))

    async def _transact(self, slave, fn, start, count):
        u = self._u
        while u.any():  # a late answer to an earlier request must not be taken for this one
            u.read()
        r = self._req
        r[0], r[1], r[2], r[3], r[4], r[5] = slave, fn, start >> 8, start & 255, count >> 8, \
            count & 255
        c = crc16(r, 6)
        r[6], r[7] = c & 255, c >> 8
        await asyncio.sleep_ms(self._gap_ms)
        if self._de is not None:
            self._de.value(1)
        u.write(r)
        if self._de is not None:
            while not u.txdone():
                await asyncio.sleep_ms(1)
            self._de.value(0)
        want = 5 + 2 * count
        got = 0
        buf = self._buf
        mv = memoryview(buf)
        deadline = time.ticks_add(time.ticks_ms(), self._timeout)
        while True:
            n = u.any()
            if n:
                got += u.readinto(mv[got:], min(n, want - got))
                # once the answer started, the limit is a gap in it (t1.5 with margin), so a
                # long answer at a low baud rate is not cut off by the answer timeout
                deadline = time.ticks_add(time.ticks_ms(), 8 * self._char_ms + 5)
                if got >= 2 and buf[1] == fn | 0x80:
                    want = 5
                if got >= want:
                    break
            if time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                if got:
                    raise OSError("slave %d: answer cut short: %d of %d bytes"
                                  % (slave, got, want))
                raise OSError("slave %d: no answer within %d ms" % (slave, self._timeout))
            await asyncio.sleep_ms(self._char_ms)
        c = crc16(buf, want - 2)
        if buf[want - 2] != c & 255 or buf[want - 1] != c >> 8:
            raise OSError("slave %d: CRC error: got %02x %02x, expected %02x %02x"
                          % (slave, buf[want - 2], buf[want - 1], c & 255, c >> 8))
        if buf[0] != slave:
            raise OSError("answer from slave %d to a request for %d" % (buf[0], slave))
        if buf[1] == fn | 0x80:
            raise ModbusError(slave, fn, buf[2])
        if buf[1] != fn or buf[2] != 2 * count:
            raise OSError("slave %d: malformed answer: function %d, %d data bytes for %d "
                          "registers" % (slave, buf[1], buf[2], count))
        return mv[3:3 + 2 * count]


def decode(data, kind, order="hl"):
    """A register value from its bytes: kind u16, s16, u32, s32 or f32 (two registers, `order`
    "hl" high word first, the Modbus convention, or "lh")."""
    if kind in ("u16", "s16"):
        v = (data[0] << 8) | data[1]
        return v - 65536 if kind == "s16" and v > 32767 else v
    hi, lo = ((data[0] << 8) | data[1]), ((data[2] << 8) | data[3])
    if order == "lh":
        hi, lo = lo, hi
    v = (hi << 16) | lo
    if kind == "f32":
        import struct

        return struct.unpack(">f", struct.pack(">I", v))[0]
    return v - (1 << 32) if kind == "s32" and v > 0x7FFFFFFF else v


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.
def create(spec, hw):
    return ModbusSensor(spec, hw)


class ModbusSensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "modbus@%s:%d" % (spec["bus"], spec["address"])
        self.interval_s = spec["interval_s"]
        self._slave = spec["address"]
        uart, baud, de = hw.uart(spec["bus"])
        self.bus = ModbusRTU(uart, baudrate=baud, timeout_ms=spec["timeout_ms"],
                             retries=spec["retries"], de=de)
        self._regs = []
        for r in spec["registers"]:
            key = channels.key(r["id"], r["instance"])
            self._regs.append((r, key))

    async def sample(self):
        values = {}
        for r, key in self._regs:
            n = 1 if r["type"] in ("u16", "s16") else 2
            try:
                data = await self.bus.read_registers(self._slave, r["fn"], r["reg"], n)
            except OSError as exc:
                raise OSError("%s: %s (fn %d reg %d): %s"
                              % (self.label, r["channel"], r["fn"], r["reg"], exc))
            v = decode(data, r["type"], r["order"])
            if r["type"] == "f32" and (v != v or v - v != 0):
                raise OSError("%s: %s (fn %d reg %d): the register holds %s, no value"
                              % (self.label, r["channel"], r["fn"], r["reg"],
                                 "NaN" if v != v else "an infinity"))
            if r["mask"] is not None:
                values[key] = values.get(key, 0) | (8 if int(v) & r["mask"] else 0)
            elif r["type"] == "f32":
                x = v * r["mul"] / r["div"]
                values[key] = int(x + 0.5) if x >= 0 else -int(0.5 - x)
            else:
                num = v * r["mul"]
                values[key] = (2 * num + r["div"]) // (2 * r["div"])  # rounded
            if not -_WIRE_LIMIT < values[key] < _WIRE_LIMIT:
                raise OSError("%s: %s (fn %d reg %d): %s is past what a reading carries (2^53)"
                              % (self.label, r["channel"], r["fn"], r["reg"], values[key]))
        return values
