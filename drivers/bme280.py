"""Bosch BME280 temperature, pressure and humidity sensor on I2C, as scaled integers.

    from machine import I2C, Pin
    from bme280 import BME280

    bme = BME280(I2C(0, scl=Pin(22), sda=Pin(21)), address=0x76)
    wait_ms = bme.start()                  # one forced-mode conversion: 10 ms at 1x
    await asyncio.sleep_ms(wait_ms)        # the scheduler waits, the driver never does
    temp_cC, pressure_Pa, humidity_cpct = bme.read()
    # (2153, 101325, 4523): 21.53 degC, 101325 Pa, 45.23 %RH

Why integers: the datasheet's compensation is integer code, and on the ESP32 a float is a
32-bit heap object while an int below 2**30 costs no heap at all. The results go on the wire
as CBOR ints in the channel table's scales (0.01 degC, Pa, 0.01 %RH), so nothing is lost or
converted twice. (micropython-lib drivers return floats; this is a deliberate departure.)

Rounding, from the datasheet's integer compensation (BST-BME280-DS002 section 4.2.3):
- temperature: BME280_compensate_T_int32 as published, 0.01 degC ((t_fine * 5 + 128) >> 8);
- pressure: the 64-bit BME280_compensate_P_int64, Q24.8 Pa, rounded to the nearest Pa
  ((p + 128) >> 8);
- humidity: bme280_compensate_H_int32, Q22.10 %RH (clamped by the datasheet to 0..100 %),
  converted to 0.01 %RH rounded to nearest ((h * 100 + 512) >> 10), so 0..10000.

Oversampling: osrs_t, osrs_p, osrs_h are oversampling factors, 1, 2, 4, 8 or 16. osrs_p=0 or
osrs_h=0 turns that channel off, and read() gives None in its slot (missing values are
omitted on the wire, never sent as zero). Temperature cannot be turned off: pressure and
humidity compensation need it.

Errors are OSError naming the address: "BME280 not found at 0x76" when nothing answers the
chip-id read, a wrong chip id with its value (0x58 is a BMP280), or a channel that is on but
holds the datasheet's "skipped" marker (0x80000; humidity 0x8000): read() before any
conversion finished, or the part was reset or lost power since start(). Bus errors during
start()/ready()/read() pass through as the I2C driver raised them (ENODEV, ETIMEDOUT).

Memory: the buffers are allocated once in the constructor. start(), ready() and read() use no
floats, no slicing and no string formatting (only an error message is formatted); read()
allocates its result tuple and, on the ESP32, the transient big ints of the 64-bit pressure
formula (constant terms are computed once, at construction).
"""

import struct
import time

from micropython import const

_REG_CALIB00 = const(0x88)  # dig_T1 .. dig_P9 (24 bytes), 0xA0 unused, dig_H1 at 0xA1
_REG_ID = const(0xD0)
_REG_RESET = const(0xE0)
_REG_CALIB26 = const(0xE1)  # dig_H2 .. dig_H6 (7 bytes)
_REG_CTRL_HUM = const(0xF2)
_REG_STATUS = const(0xF3)
_REG_CTRL_MEAS = const(0xF4)
_REG_DATA = const(0xF7)  # press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb

_CHIP_ID = const(0x60)
_RESET_WORD = const(0xB6)
_STATUS_MEASURING = const(0x08)
_STATUS_IM_UPDATE = const(0x01)
_MODE_FORCED = const(0x01)
_SKIPPED = const(0x80000)
_SKIPPED_H = const(0x8000)
_HUM_MAX = const(419430400)  # 100 %RH in the datasheet's pre-shift Q22.10 scale

_FACTORS = (0, 1, 2, 4, 8, 16)  # register code -> oversampling factor


def _code(name, factor, allow_off):
    if factor in _FACTORS and (factor or allow_off):
        return _FACTORS.index(factor)
    raise ValueError("%s must be %s1, 2, 4, 8 or 16: got %r"
                     % (name, "0 (off), " if allow_off else "", factor))


def _s8(b):
    return b - 256 if b > 127 else b


class BME280:
    """One BME280 on a ready I2C bus (machine.I2C or SoftI2C)."""

    def __init__(self, i2c, address=0x76, *, osrs_t=1, osrs_p=1, osrs_h=1):
        self._i2c = i2c
        self._addr = address
        ot = _code("osrs_t", osrs_t, False)
        op = _code("osrs_p", osrs_p, True)
        oh = _code("osrs_h", osrs_h, True)
        self._on_p = op != 0
        self._on_h = oh != 0
        self._reg = bytearray(1)
        self._data = bytearray(8)
        # start(): ctrl_hum then ctrl_meas in one write, as register address/data pairs;
        # ctrl_hum only takes effect with the ctrl_meas write that follows it
        self._cmd = bytearray((_REG_CTRL_HUM, oh, _REG_CTRL_MEAS,
                               (ot << 5) | (op << 2) | _MODE_FORCED))
        # datasheet 9.1, maximum conversion time in us, rounded up to whole ms
        us = 1250 + 2300 * osrs_t
        if osrs_p:
            us += 2300 * osrs_p + 575
        if osrs_h:
            us += 2300 * osrs_h + 575
        self._wait_ms = (us + 999) // 1000

        try:
            i2c.readfrom_mem_into(address, _REG_ID, self._reg)
        except OSError as exc:
            raise OSError("BME280 not found at 0x%02x (%s)" % (address, exc))
        chip_id = self._reg[0]
        if chip_id != _CHIP_ID:
            raise OSError("BME280 not found at 0x%02x: chip id is 0x%02x, not 0x60%s" % (
                address, chip_id, " (a BMP280, no humidity)" if chip_id == 0x58 else ""))

        # soft reset: a known state (sleep mode, filter off) whatever ran before us
        self._reg[0] = _RESET_WORD
        i2c.writeto_mem(address, _REG_RESET, self._reg)
        for _ in range(10):  # start-up time is 2 ms
            time.sleep_ms(1)
            i2c.readfrom_mem_into(address, _REG_STATUS, self._reg)
            if not self._reg[0] & _STATUS_IM_UPDATE:
                break
        else:
            raise OSError("BME280 at 0x%02x: calibration copy did not finish" % address)
        self._read_calibration()

    def _read_calibration(self):
        buf = bytearray(26)
        self._i2c.readfrom_mem_into(self._addr, _REG_CALIB00, buf)
        (self._t1, self._t2, self._t3, self._p1, self._p2, self._p3, self._p4, self._p5,
         self._p6, self._p7, self._p8, self._p9) = struct.unpack_from("<HhhHhhhhhhhh", buf)
        self._h1 = buf[25]
        self._i2c.readfrom_mem_into(self._addr, _REG_CALIB26, buf)
        self._h2 = struct.unpack_from("<h", buf)[0]
        self._h3 = buf[2]
        # dig_H4 and dig_H5 are signed 12-bit values sharing the nibbles of 0xE5
        h4 = (_s8(buf[3]) << 4) | (buf[4] & 0x0F)
        h5 = (_s8(buf[5]) << 4) | (buf[4] >> 4)
        self._h6 = _s8(buf[6])
        if self._t1 == 0 or self._p1 == 0:
            raise OSError("BME280 at 0x%02x: calibration reads as zero" % self._addr)
        # constant terms of the compensation, computed once
        self._h4s = h4 << 20
        self._h5 = h5
        self._p4s = self._p4 << 35
        self._p7s = self._p7 << 4

    # ------------------------------------------------------------------ sampling
    def start(self):
        """Triggers one forced-mode conversion; returns the longest it can take, in ms
        (datasheet 9.1 maximum for the configured oversampling)."""
        self._i2c.writeto(self._addr, self._cmd)
        return self._wait_ms

    def ready(self):
        """True when no conversion is running (the last start()'s result can be read)."""
        self._i2c.readfrom_mem_into(self._addr, _REG_STATUS, self._reg)
        return not self._reg[0] & _STATUS_MEASURING

    def read(self):
        """(temp_cC, pressure_Pa, humidity_cpct) of the last conversion: 0.01 degC, Pa,
        0.01 %RH; None for a channel turned off with osrs_p=0 / osrs_h=0."""
        self._fetch()
        d = self._data
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        if adc_t == _SKIPPED:
            raise self._missing("temperature")
        adc_p = None
        if self._on_p:
            adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
            if adc_p == _SKIPPED:
                raise self._missing("pressure")
        adc_h = None
        if self._on_h:
            adc_h = (d[6] << 8) | d[7]
            if adc_h == _SKIPPED_H:
                raise self._missing("humidity")
        return self.compensate(adc_t, adc_p, adc_h)

    def read_raw(self):
        """(adc_T, adc_P, adc_H) as the data registers hold them, skipped markers included."""
        self._fetch()
        d = self._data
        return ((d[3] << 12) | (d[4] << 4) | (d[5] >> 4),
                (d[0] << 12) | (d[1] << 4) | (d[2] >> 4),
                (d[6] << 8) | d[7])

    def _fetch(self):
        self._i2c.readfrom_mem_into(self._addr, _REG_DATA, self._data)

    def _missing(self, channel):
        return OSError("BME280 at 0x%02x: no %s data (0x80000): read before a conversion "
                       "finished, or the part was reset" % (self._addr, channel))

    # ------------------------------------------------------------------ compensation
    def compensate(self, adc_t, adc_p=None, adc_h=None):
        """Datasheet integer compensation of raw ADC values: (temp_cC, pressure_Pa,
        humidity_cpct), None for a raw value given as None."""
        t1 = self._t1
        var1 = (((adc_t >> 3) - (t1 << 1)) * self._t2) >> 11
        d = (adc_t >> 4) - t1
        t_fine = var1 + ((((d * d) >> 12) * self._t3) >> 14)
        temp_cC = (t_fine * 5 + 128) >> 8
        pressure_Pa = None if adc_p is None else self._pressure(adc_p, t_fine)
        humidity_cpct = None if adc_h is None else self._humidity(adc_h, t_fine)
        return temp_cC, pressure_Pa, humidity_cpct

    def _pressure(self, adc_p, t_fine):
        var1 = t_fine - 128000
        var2 = var1 * var1 * self._p6
        var2 = var2 + ((var1 * self._p5) << 17) + self._p4s
        var1 = ((var1 * var1 * self._p3) >> 8) + ((var1 * self._p2) << 12)
        var1 = (((1 << 47) + var1) * self._p1) >> 33
        if var1 <= 0:
            raise OSError("BME280 at 0x%02x: pressure out of range" % self._addr)
        p = 1048576 - adc_p
        p = ((p << 31) - var2) * 3125
        p = p // var1 if p >= 0 else -(-p // var1)  # C division truncates toward zero
        var1 = (self._p9 * (p >> 13) * (p >> 13)) >> 25
        var2 = (self._p8 * p) >> 19
        p = ((p + var1 + var2) >> 8) + self._p7s  # Q24.8 Pa
        return (p + 128) >> 8

    def _humidity(self, adc_h, t_fine):
        v = t_fine - 76800
        v = ((((adc_h << 14) - self._h4s - (self._h5 * v)) + 16384) >> 15) * \
            (((((((v * self._h6) >> 10) * (((v * self._h3) >> 11) + 32768)) >> 10)
               + 2097152) * self._h2 + 8192) >> 14)
        v -= (((((v >> 15) * (v >> 15)) >> 7) * self._h1) >> 4)
        if v < 0:
            v = 0
        elif v > _HUM_MAX:
            v = _HUM_MAX
        return ((v >> 12) * 100 + 512) >> 10  # Q22.10 %RH -> 0.01 %RH


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py; they live in the driver module because
# every extra module costs about 1.5 KB of heap on the node. The config entry is checked by a
# drivers/cfg_*.py module, dropped from memory once the config is validated.


def create(spec, hw):
    return Bme280Sensor(spec, hw)


class Bme280Sensor:
    def __init__(self, spec, hw):
        import asyncio

        import channels as _channels

        self._sleep_ms = asyncio.sleep_ms
        self.label = "bme280@%s:0x%02x" % (spec["bus"], spec["address"])
        self.interval_s = spec["interval_s"]
        self.dev = BME280(hw.i2c(spec["bus"]), address=spec["address"])
        inst = spec["instance"]
        self.keys = (_channels.key(_channels.TEMPERATURE, inst),
                     _channels.key(_channels.PRESSURE, inst),
                     _channels.key(_channels.HUMIDITY, inst))

    async def sample(self):
        await self._sleep_ms(self.dev.start())
        values = {}
        for k, v in zip(self.keys, self.dev.read()):
            if v is not None:
                values[k] = v
        return values
