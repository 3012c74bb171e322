"""Bosch BME280 at register level (datasheet BST-BME280-DS002), as a driver sees it over I2C."""

# Modelled:
# - chip id 0xD0 = 0x60; soft reset by writing 0xB6 to 0xE0 (registers back to reset values,
#   status.im_update set for the 2 ms start-up time while the NVM is copied);
# - calibration 0x88..0xA1 (dig_T1..dig_P9, dig_H1 at 0xA1) and 0xE1..0xE7 (dig_H2, dig_H3,
#   dig_H4/dig_H5 as two signed 12-bit values sharing 0xE5, dig_H6);
# - ctrl_hum 0xF2 (latched only by the next write to ctrl_meas, section 5.4.3), status 0xF3
#   (bit 3 measuring, bit 0 im_update), ctrl_meas 0xF4 (osrs_t, osrs_p, mode: a forced
#   conversion returns the mode bits to sleep when done), config 0xF5 (t_sb for normal mode;
#   ignored while in normal mode, as the datasheet warns);
# - data 0xF7..0xFE (press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb), updated only when a
#   conversion completes; a skipped channel (osrs = 0) and the reset value read 0x80000 (20-bit)
#   or 0x8000 (humidity);
# - I2C protocol (section 6.2): a write is a register address followed by data, further
#   registers as address/data pairs (no auto-increment on writes); a read continues from the
#   last address written, auto-incrementing; undefined registers read 0, writes to read-only
#   registers are ignored;
# - conversion time (section 9.1, typical): 1 + 2*T + (2*P + 0.5) + (2*H + 0.5) ms, the P and H
#   terms only when enabled, with T/P/H the oversampling factors; timed with time.ticks_ms().
#   Normal mode repeats conversions every t_measure + t_standby.
#
# Raw values come from the physical environment (hw env.json, re-read at most once per
# measurement trigger) by inverting the datasheet's integer compensation: binary search over
# the 20-bit (16-bit for humidity) ADC range, the compensation being monotonic, for the raw
# value whose compensated output is nearest the environment's (0.01 degC, 1/256 Pa, 1/1024 %RH).
# A driver that follows the datasheet therefore reads the environment back within one output
# LSB. The real part's noise, the resolution loss at low oversampling without the IIR filter,
# and the IIR filter itself are not modelled. A raw value that would land exactly on the
# "skipped" marker is moved one LSB, so it never reads as a missing channel.
#
# Calibration: calibration= in board.json or the constructor, a set named in hw/bme280_comp.py
# ("production", the default, or "datasheet") or a dict of all dig_* values.
#
# Test hooks: force_raw(adc_T, adc_P, adc_H) makes the next conversions report exactly these
# ADC values (None lifts it); raw() returns the last raw values the part converted.
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

import struct
import time

from hw import env
from hw.core import I2CDevice
from hw.bme280_comp import SKIPPED, SKIPPED_H, Compensation

CHIP_ID = 0x60
_OSRS = (0, 1, 2, 4, 8, 16, 16, 16)  # register code -> oversampling factor
_T_SB_US = (500, 62500, 125000, 250000, 500000, 1000000, 10000, 20000)
_STARTUP_MS = 2
_SLEEP = 0
_FORCED = 1
_NORMAL = 3


def measure_time_us(osrs_t, osrs_p, osrs_h):
    """Typical conversion time in microseconds (datasheet 9.1) for register codes."""
    t, p, h = _OSRS[osrs_t], _OSRS[osrs_p], _OSRS[osrs_h]
    us = 1000 + 2000 * t
    if p:
        us += 2000 * p + 500
    if h:
        us += 2000 * h + 500
    return us


class BME280(I2CDevice):
    def __init__(self, address=0x76, calibration="production"):
        super().__init__(address)
        self.comp = Compensation(calibration)  # the datasheet math for this part's trimming
        self._forced_raw = None
        self._cache_key = None
        self._cache = None
        self._regs = bytearray(256)
        self.power_on()

    # ------------------------------------------------------------------ state
    def power_on(self):
        """Power-on / soft reset: every register to its reset value, NVM copied again."""
        r = self._regs
        for i in range(256):
            r[i] = 0
        c = self.comp
        struct.pack_into("<HhhHhhhhhhhh", r, 0x88, c.dig_T1, c.dig_T2, c.dig_T3, c.dig_P1,
                         c.dig_P2, c.dig_P3, c.dig_P4, c.dig_P5, c.dig_P6, c.dig_P7, c.dig_P8,
                         c.dig_P9)
        r[0xA1] = c.dig_H1
        struct.pack_into("<hB", r, 0xE1, c.dig_H2, c.dig_H3)
        r[0xE4] = (c.dig_H4 >> 4) & 0xFF
        r[0xE5] = ((c.dig_H5 & 0x0F) << 4) | (c.dig_H4 & 0x0F)
        r[0xE6] = (c.dig_H5 >> 4) & 0xFF
        r[0xE7] = c.dig_H6 & 0xFF
        r[0xD0] = CHIP_ID
        self._store(SKIPPED, SKIPPED, SKIPPED_H)
        self._ptr = 0
        self._mode = _SLEEP
        self._latched = (0, 0, 0)  # osrs_t, osrs_p, osrs_h of the running conversion
        self._t0 = 0
        self._meas_us = 0
        self._done = 0
        self._pending = None
        self._boot = time.ticks_ms()

    def force_raw(self, adc_t=None, adc_p=None, adc_h=None):
        """Test hook: later conversions report these ADC values instead of the environment's."""
        self._forced_raw = None if adc_t is None else (adc_t, adc_p, adc_h)

    def raw(self):
        """The raw ADC values in the data registers: (adc_T, adc_P, adc_H)."""
        self._tick()
        r = self._regs
        return ((r[0xFA] << 12) | (r[0xFB] << 4) | (r[0xFC] >> 4),
                (r[0xF7] << 12) | (r[0xF8] << 4) | (r[0xF9] >> 4),
                (r[0xFD] << 8) | r[0xFE])

    # ------------------------------------------------------------------ I2C
    def i2c_write(self, bufs):
        first = True
        for buf in bufs:
            for b in buf:
                if first:
                    self._ptr = b
                else:
                    self._write_reg(self._ptr, b)
                first = not first

    def i2c_read(self, buf):
        self._tick()
        p = self._ptr
        for i in range(len(buf)):
            buf[i] = self._read_reg(p)
            p = (p + 1) & 0xFF
        self._ptr = p

    def _read_reg(self, a):
        if a == 0xF3:
            return (0x08 if self._measuring() else 0) | \
                (0x01 if time.ticks_diff(time.ticks_ms(), self._boot) < _STARTUP_MS else 0)
        return self._regs[a]

    def _write_reg(self, a, v):
        self._tick()
        if a == 0xE0:
            if v == 0xB6:
                self.power_on()
        elif a == 0xF2:
            self._regs[a] = v & 0x07
        elif a == 0xF5:
            if self._mode != _NORMAL:
                self._regs[a] = v & 0xFD  # bit 1 is reserved
        elif a == 0xF4:
            self._regs[a] = v
            self._start(v)

    # ------------------------------------------------------------------ conversions
    def _start(self, ctrl_meas):
        mode = ctrl_meas & 0x03
        self._latched = ((ctrl_meas >> 5) & 7, (ctrl_meas >> 2) & 7, self._regs[0xF2] & 7)
        self._meas_us = measure_time_us(*self._latched)
        self._t0 = time.ticks_ms()
        self._done = 0
        if mode == _SLEEP:
            self._mode = _SLEEP
        elif mode == _NORMAL:
            self._mode = _NORMAL
        else:  # 01 and 10 both mean forced
            self._mode = _FORCED
            self._pending = self._convert()  # the world as it is at the trigger

    def _elapsed_us(self):
        return time.ticks_diff(time.ticks_ms(), self._t0) * 1000

    def _measuring(self):
        self._tick()
        if self._mode == _FORCED:
            return True
        if self._mode == _NORMAL:
            return self.fault() == "busy" or self._elapsed_us() % self._period_us() < self._meas_us
        return False

    def _period_us(self):
        return self._meas_us + _T_SB_US[self._regs[0xF5] >> 5]

    def _tick(self):
        """Completes whatever conversion finished since the last register access."""
        if self._mode == _SLEEP:
            return
        el = self._elapsed_us()
        if el < self._meas_us or self.fault() == "busy":
            return
        if self._mode == _FORCED:
            self._store(*self._pending)
            self._pending = None
            self._mode = _SLEEP
            self._regs[0xF4] &= 0xFC
        else:
            done = (el - self._meas_us) // self._period_us() + 1
            if done != self._done:
                self._done = done
                self._store(*self._convert())

    def _store(self, adc_t, adc_p, adc_h):
        r = self._regs
        r[0xF7], r[0xF8], r[0xF9] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        r[0xFA], r[0xFB], r[0xFC] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        r[0xFD], r[0xFE] = adc_h >> 8, adc_h & 0xFF

    def _convert(self):
        """Raw values of one conversion with the latched oversampling settings."""
        ot, op, oh = self._latched
        adc_t, adc_p, adc_h = self._forced_raw or self._from_env()
        return (adc_t if ot else SKIPPED, adc_p if op else SKIPPED, adc_h if oh else SKIPPED_H)

    def _from_env(self):
        e = env()
        e.refresh()
        if self._cache_key != (e, e.version):
            self._cache = self.comp.invert(e.get("temperature_c"), e.get("pressure_pa"),
                                      e.get("humidity_pct"))
            self._cache_key = (e, e.version)
        return self._cache
