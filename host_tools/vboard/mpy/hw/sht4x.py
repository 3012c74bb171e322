"""Sensirion SHT4x (SHT40/41/45) humidity and temperature sensor at I2C command level
(datasheet "SHT4x", version 6.x, sections 4.4-4.6)."""

# Modelled: addresses 0x44 (SHT4x-A), 0x45 (-B), 0x46 (-C); commands 0xFD / 0xF6 / 0xE0
# (measure T and RH, high / medium / low repeatability; the model takes the typical 6.9 / 3.7 /
# 1.3 ms, a driver must wait the maximum 8.3 / 4.5 / 1.6 ms),
# 0x89 (serial number, two words), 0x94 (soft reset, 1 ms). A read returns 6 bytes: word,
# CRC-8, word, CRC-8 (polynomial 0x31, init 0xFF). While a measurement runs the part does not
# acknowledge its address, so an early read fails with ENODEV, as on the bus. A read with no
# result pending is also NACKed. The heater commands are accepted and ignored.
#
# Values come from env.json (temperature_c, humidity_pct) through the datasheet's conversion
# inverted: S_T = (T + 45) * 65535 / 175, S_RH = (RH + 6) * 65535 / 125, rounded.
#
# Test hook: `forced = (S_T, S_RH)` makes measurements report exactly these raw words.
#
# Faults (env.json "faults", key "i2c<bus>:0x<addr>"): the bus's "absent" and "timeout", and
# "crc" (the first CRC of every result is wrong, like a disturbed line), "busy" (a measurement
# never finishes: every read is NACKed).
#
# (Details are comments rather than docstring: see hw/__init__.py.)

import errno
import time

from hw import env
from hw.core import I2CDevice

_MEASURE_US = {0xFD: 6900, 0xF6: 3700, 0xE0: 1300}  # typical durations (max 8.3/4.5/1.6 ms)


def crc8(data):
    c = 0xFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


class SHT4x(I2CDevice):
    def __init__(self, address=0x44, serial=0x0F3A5C21):
        if address not in (0x44, 0x45, 0x46):
            raise ValueError("SHT4x address must be 0x44, 0x45 or 0x46: got %r" % (address,))
        super().__init__(address)
        self.serial = serial
        self._out = None  # bytes ready to read
        self._ready_us = 0
        self._t0 = time.ticks_us()
        self.forced = None  # (S_T, S_RH): the next measurements report these raw words

    def _words(self, a, b):
        out = bytearray(6)
        out[0], out[1] = a >> 8, a & 0xFF
        out[2] = crc8(out[0:2])
        out[3], out[4] = b >> 8, b & 0xFF
        out[5] = crc8(out[3:5])
        return out

    def i2c_write(self, bufs):
        data = b"".join(bytes(b) for b in bufs)
        if not data:
            return
        cmd = data[0]
        self._t0 = time.ticks_us()
        if cmd in _MEASURE_US:
            e = env()
            e.refresh()
            st = int((e.get("temperature_c") + 45) * 65535 / 175 + 0.5)
            srh = int((e.get("humidity_pct") + 6) * 65535 / 125 + 0.5)
            if self.forced is not None:
                st, srh = self.forced
            self._out = self._words(max(0, min(65535, st)), max(0, min(65535, srh)))
            self._ready_us = _MEASURE_US[cmd]
        elif cmd == 0x89:
            self._out = self._words(self.serial >> 16, self.serial & 0xFFFF)
            self._ready_us = 0
        elif cmd == 0x94:
            self._out = None
            self._ready_us = 1000

    def i2c_read(self, buf):
        f = self.fault()
        if f == "busy" or self._out is None or \
                time.ticks_diff(time.ticks_us(), self._t0) < self._ready_us:
            raise OSError(errno.ENODEV)
        out, self._out = self._out, None
        if f == "crc":
            out[2] ^= 0x01
        for i in range(len(buf)):
            buf[i] = out[i] if i < len(out) else 0xFF
