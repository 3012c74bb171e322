"""Plantower PMS5003 particulate sensor on a UART (9600 8N1), in passive mode, as scaled
integers (ug/m3).

    pms = PMS5003(uart)
    await pms.wake()              # fan on; the datasheet wants 30 s before data is stable
    await asyncio.sleep(30)
    pm1, pm2_5, pm10 = await pms.read()
    await pms.sleep()             # fan off between readings: the fan's life is ~8000 h

Passive mode (command E1 00) so the sensor speaks only when asked (E2), instead of a frame a
second the node would have to drain. A frame is 42 4D, length 28, thirteen big-endian words
and a check code = the byte sum of everything before it; the start bytes, the length and the
check code are verified, and the atmospheric-environment values (words 4-6) are returned.
Hand-written for the async, allocation-free reads (a preallocated 32-byte buffer).
"""

import asyncio
import time

from micropython import const

_FRAME = const(32)


class PMS5003:
    def __init__(self, uart, name="pms5003"):
        self._u = uart
        self._name = name
        self._cmd = bytearray(7)
        self._buf = bytearray(_FRAME)
        self.passive = False

    async def _send(self, cmd, data):
        c = self._cmd
        c[0], c[1], c[2], c[3], c[4] = 0x42, 0x4D, cmd, 0, data
        s = 0x42 + 0x4D + cmd + data
        c[5], c[6] = s >> 8, s & 0xFF
        while self._u.any():
            self._u.read()
        self._u.write(c)
        await asyncio.sleep_ms(50)  # the answer to E1 / E4 (8 bytes) is not needed

    async def wake(self):
        await self._send(0xE4, 1)

    async def sleep(self):
        await self._send(0xE4, 0)

    async def read(self, timeout_ms=1500):
        if not self.passive:
            await self._send(0xE1, 0)
            self.passive = True
        while self._u.any():
            self._u.read()
        await self._send_read()
        buf = self._buf
        mv = memoryview(buf)
        got = 0
        deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
        while got < _FRAME:
            n = self._u.any()
            if n:
                got += self._u.readinto(mv[got:], min(n, _FRAME - got))
                if got >= 2 and (buf[0] != 0x42 or buf[1] != 0x4D):
                    raise OSError("%s: frame starts %02x %02x, expected 42 4D"
                                  % (self._name, buf[0], buf[1]))
            elif time.ticks_diff(deadline, time.ticks_ms()) <= 0:
                raise OSError("%s: %s within %d ms" % (
                    self._name, "frame cut short: %d of 32 bytes" % got if got else "no frame",
                    timeout_ms))
            else:
                await asyncio.sleep_ms(10)
        if buf[2] != 0 or buf[3] != 28:
            raise OSError("%s: frame length %d, expected 28" % (self._name, buf[2] << 8 | buf[3]))
        s = 0
        for i in range(30):
            s += buf[i]
        got_cs = buf[30] << 8 | buf[31]
        if got_cs != s & 0xFFFF:
            raise OSError("%s: check code 0x%04x, expected 0x%04x" % (self._name, got_cs, s))
        return (buf[10] << 8 | buf[11], buf[12] << 8 | buf[13], buf[14] << 8 | buf[15])

    async def _send_read(self):
        c = self._cmd
        c[0], c[1], c[2], c[3], c[4], c[5], c[6] = 0x42, 0x4D, 0xE2, 0, 0, 0x01, 0x71
        self._u.write(c)


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.


def create(spec, hw):
    return PMS5003Sensor(spec, hw)


class PMS5003Sensor:
    def __init__(self, spec, hw):
        import channels

        self.label = "pms5003@%s" % spec["bus"]
        self.interval_s = spec["interval_s"]
        uart, _, _ = hw.uart(spec["bus"])
        self.dev = PMS5003(uart, self.label)
        self._warm = spec["warmup_ms"]
        self._sleep = spec["sleep"]
        self._awake_since = None
        i = spec["instance"]
        self.keys = (channels.key(channels.PM1, i), channels.key(channels.PM2_5, i),
                     channels.key(channels.PM10, i))

    async def sample(self):
        d = self.dev
        if self._awake_since is None:
            await d.wake()
            self._awake_since = time.ticks_ms()
        left = self._warm - time.ticks_diff(time.ticks_ms(), self._awake_since)
        if left > 0:
            await asyncio.sleep_ms(left)
        try:
            values = await d.read()
        finally:
            if self._sleep:
                await d.sleep()
                self._awake_since = None
        return dict(zip(self.keys, values))
