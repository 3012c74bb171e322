"""Sensirion SHT4x (SHT40, SHT41, SHT45) temperature and humidity sensor on I2C, as scaled
integers (0.01 degC, 0.01 %RH).

    from sht4x import SHT4x
    sht = SHT4x(i2c, address=0x44)         # reads the serial number: proves the part is there
    await asyncio.sleep_ms(sht.start())     # high-repeatability measurement, 9 ms
    temp_cC, rh_cpct = sht.read()           # (2153, 4523)

Every word the part sends carries a CRC-8 (polynomial 0x31, init 0xFF; datasheet section 4.4:
crc8(b"\\xbe\\xef") == 0x92) and every one is checked: a mismatch raises OSError naming the word
and both CRCs, never a value. Conversion (datasheet 4.6), in integers:
T = -45 + 175 * S_T / 65535 degC, RH = -6 + 125 * S_RH / 65535 %RH, clamped to 0..100 %RH as the
datasheet recommends; both rounded to the nearest 0.01. Hand-written (no library) for the same
reasons as bme280.py: integers, preallocated buffers, start/read split.
"""

from micropython import const

_MEASURE_HIGH = const(0xFD)
_SERIAL = const(0x89)
_SOFT_RESET = const(0x94)
_WAIT_MS = const(9)  # 8.3 ms max for high repeatability


def crc8(data, start=0, end=None):
    c = 0xFF
    for i in range(start, len(data) if end is None else end):
        c ^= data[i]
        for _ in range(8):
            c = ((c << 1) ^ 0x31) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


class SHT4x:
    def __init__(self, i2c, address=0x44):
        self._i2c = i2c
        self._addr = address
        self._cmd = bytearray(1)
        self._buf = bytearray(6)
        try:
            self._command(_SERIAL)
            self._i2c.readfrom_into(address, self._buf)
        except OSError as exc:
            raise OSError("SHT4x not found at 0x%02x (%s)" % (address, exc))
        self._check()
        self.serial = (self._buf[0] << 24) | (self._buf[1] << 16) | (self._buf[3] << 8) | \
            self._buf[4]

    def _command(self, cmd):
        self._cmd[0] = cmd
        self._i2c.writeto(self._addr, self._cmd)

    def _check(self):
        b = self._buf
        for i, name in ((0, "first"), (3, "second")):
            c = crc8(b, i, i + 2)
            if c != b[i + 2]:
                raise OSError("SHT4x at 0x%02x: CRC error in the %s word: got 0x%02x, expected "
                              "0x%02x" % (self._addr, name, b[i + 2], c))

    def start(self):
        """Starts a high-repeatability measurement; returns the ms to wait before read()."""
        self._command(_MEASURE_HIGH)
        return _WAIT_MS

    def read(self):
        try:
            self._i2c.readfrom_into(self._addr, self._buf)
        except OSError as exc:
            raise OSError("SHT4x at 0x%02x: no result (%s)" % (self._addr, exc))
        self._check()
        b = self._buf
        st = (b[0] << 8) | b[1]
        srh = (b[3] << 8) | b[4]
        t = -4500 + (17500 * st + 32767) // 65535
        rh = -600 + (12500 * srh + 32767) // 65535
        return t, max(0, min(10000, rh))

    def reset(self):
        self._command(_SOFT_RESET)


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.


def create(spec, hw):
    return Sht4xSensor(spec, hw)


class Sht4xSensor:
    def __init__(self, spec, hw):
        import asyncio
        import channels as _channels

        self._sleep_ms = asyncio.sleep_ms
        self.label = "sht4x@%s:0x%02x" % (spec["bus"], spec["address"])
        self.interval_s = spec["interval_s"]
        self.dev = SHT4x(hw.i2c(spec["bus"]), address=spec["address"])
        inst = spec["instance"]
        self.keys = (_channels.key(_channels.TEMPERATURE, inst),
                     _channels.key(_channels.HUMIDITY, inst))

    async def sample(self):
        await self._sleep_ms(self.dev.start())
        t, rh = self.dev.read()
        return {self.keys[0]: t, self.keys[1]: rh}
