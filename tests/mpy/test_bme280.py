# The BME280 driver (drivers/bme280.py) against the register-level model (hw/bme280.py) on the
# virtual board, in the MicroPython unix port with the 96 KB heap of a small ESP32.
import gc
import os
import time

import machine
from hw.bme280_comp import CALIBRATIONS, Compensation

import bme280
from driver_support import expect_oserror

_DIR = "vb_bme280"
_ADDR = 0x76
# production trimming with signed dig_H5/dig_H6 (0xE5 high nibble 2, 0xE6 0xFE, 0xE7 0xF9):
# a driver that forgets the sign extension reads humidity tens of percent off
_SIGNED_H = dict(CALIBRATIONS["production"], dig_H2=370, dig_H4=331, dig_H5=-30, dig_H6=-7)


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _board(calibration="production", address=_ADDR):
    """A fresh board: one BME280 on I2C0 (SCL 22, SDA 21); returns the bus and the part."""
    _rm(_DIR + "/env.json")
    dev = {"model": "bme280", "address": address, "calibration": calibration}
    b = machine.vboard_configure(_DIR, {"i2c": {"0": {"scl": 22, "sda": 21, "devices": [dev]}}})
    i2c = machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21))
    return i2c, b.i2c[0].devices[address]


def _measure(bme):
    time.sleep_ms(bme.start())
    assert bme.ready()
    return bme.read()


# ------------------------------------------------------------------ datasheet worked example
def test_datasheet_worked_example_through_the_registers():
    # BMP280 datasheet 3.12 / BME280 4.2.3: dig_T1 = 27504, dig_T2 = 26435, dig_T3 = -1000,
    # dig_P1..P9 = 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000;
    # adc_T = 519888 -> t_fine 128422, 25.08 degC; adc_P = 415148 -> 100653 Pa (64-bit formula)
    i2c, part = _board("datasheet")
    part.force_raw(519888, 415148, 30000)
    bme = bme280.BME280(i2c)
    t, p, h = _measure(bme)
    assert (t, p) == (2508, 100653), (t, p)
    assert bme.read_raw() == (519888, 415148, 30000)
    assert bme.compensate(519888, 415148)[:2] == (2508, 100653)


def test_datasheet_example_in_the_model_math():
    c = Compensation("datasheet")
    assert c.t_fine(519888) == 128422
    assert c.temperature(519888) == 2508
    # The published 64-bit code gives 25767233 (100653.25 Pa); the datasheet's table prints
    # 25767236, taken from its floating-point reference. Both are 100653 Pa.
    assert c.pressure(415148, 128422) == 25767233


def test_humidity_compensation_agrees_between_driver_and_model():
    i2c, part = _board("datasheet")
    bme = bme280.BME280(i2c)
    c = part.comp
    for adc_t in (400000, 519888, 600000):
        tf = c.t_fine(adc_t)
        for adc_h in (0, 20000, 30000, 36000, 65535):
            want = (c.humidity(adc_h, tf) * 100 + 512) >> 10
            assert bme.compensate(adc_t, None, adc_h)[2] == want, (adc_t, adc_h)


# ------------------------------------------------------------------ identity and absence
def test_missing_part_raises_oserror_naming_the_address():
    i2c, _ = _board(address=0x77)
    expect_oserror(lambda: bme280.BME280(i2c, address=0x76), "BME280 not found at 0x76")


def test_wrong_chip_id_is_named():
    i2c, part = _board()
    part._regs[0xD0] = 0x58  # what a BMP280 answers
    expect_oserror(lambda: bme280.BME280(i2c), "0x76", "0x58", "BMP280")


def test_absent_fault_is_an_oserror_not_a_zero():
    i2c, _ = _board()
    bme = bme280.BME280(i2c)
    machine.vboard_set_env(faults={"i2c0:0x76": "absent"})
    assert i2c.scan() == []
    exc = expect_oserror(bme.start)
    assert exc.errno == 19  # ENODEV, as the ESP32 port raises on a NACK
    expect_oserror(lambda: bme280.BME280(i2c), "BME280 not found at 0x76")
    machine.vboard_set_env(faults={})
    assert _measure(bme)[0] == 2000


# ------------------------------------------------------------------ the environment read back
def _check_points(calibration):
    i2c, _ = _board(calibration)
    bme = bme280.BME280(i2c, osrs_t=2, osrs_p=4, osrs_h=1)
    points = ((21.53, 101325.0, 45.23), (-12.34, 95000.5, 33.3), (-40.0, 30000.0, 0.0),
              (85.0, 110000.0, 100.0), (0.0, 70000.0, 100.0), (35.5, 30000.0, 0.0),
              (-0.01, 109999.0, 0.01), (25.0, 80000.0, 99.99))
    for tc, pa, rh in points:
        machine.vboard_set_env(temperature_c=tc, pressure_pa=pa, humidity_pct=rh)
        t, p, h = _measure(bme)
        want = (int(round(tc * 100)), int(round(pa)), int(round(rh * 100)))
        assert abs(t - want[0]) <= 1 and abs(p - want[1]) <= 1 and abs(h - want[2]) <= 1, \
            (calibration, (tc, pa, rh), (t, p, h))
        assert 0 <= h <= 10000


def test_environment_read_back_within_one_lsb_production_part():
    _check_points("production")


def test_environment_read_back_within_one_lsb_datasheet_part():
    _check_points("datasheet")


def test_signed_humidity_trimming_is_decoded():
    _check_points(_SIGNED_H)


def test_launcher_rewrite_is_seen_at_the_next_trigger():
    i2c, _ = _board()
    bme = bme280.BME280(i2c)
    for tc in (21.5, 22.5, 21.5, 23.5):  # same file size every time, same second
        with open(_DIR + "/env.json.tmp", "w") as f:
            f.write('{"temperature_c": %s, "humidity_pct": 40.0}' % tc)
        os.rename(_DIR + "/env.json.tmp", _DIR + "/env.json")
        t, p, h = _measure(bme)
        assert abs(t - int(tc * 100)) <= 1 and abs(h - 4000) <= 1 and abs(p - 101325) <= 1, \
            (tc, t, p, h)


def test_missing_env_file_gives_the_defaults():
    i2c, _ = _board()
    t, p, h = _measure(bme280.BME280(i2c))
    assert abs(t - 2000) <= 1 and abs(p - 101325) <= 1 and abs(h - 5000) <= 1


# ------------------------------------------------------------------ forced mode and timing
def test_forced_mode_measuring_bit_and_wait():
    i2c, part = _board()
    # datasheet 9.1 maximum: 1.25 + 2.3 * T + (2.3 * P + 0.575) + (2.3 * H + 0.575) ms, rounded up
    assert bme280.BME280(i2c).start() == 10
    assert bme280.BME280(i2c, osrs_t=1, osrs_p=0, osrs_h=0).start() == 4
    bme = bme280.BME280(i2c, osrs_t=16, osrs_p=16, osrs_h=16)  # typically 98 ms: easy to catch
    wait = bme.start()
    assert wait == 113
    assert i2c.readfrom_mem(_ADDR, 0xF3, 1)[0] & 0x08  # measuring
    assert i2c.readfrom_mem(_ADDR, 0xF4, 1)[0] & 0x03 == 0x01  # forced
    assert not bme.ready()
    time.sleep_ms(wait)
    assert bme.ready()
    assert i2c.readfrom_mem(_ADDR, 0xF3, 1)[0] & 0x08 == 0
    assert i2c.readfrom_mem(_ADDR, 0xF4, 1)[0] & 0x03 == 0  # back to sleep by itself
    assert abs(bme.read()[0] - 2000) <= 1


def test_a_stuck_conversion_never_reports_ready():
    i2c, _ = _board()
    bme = bme280.BME280(i2c)
    machine.vboard_set_env(faults={"i2c0:0x76": "busy"})
    time.sleep_ms(bme.start() + 5)
    assert not bme.ready()


def test_ctrl_hum_takes_effect_only_with_a_ctrl_meas_write():
    i2c, part = _board()
    w = i2c.writeto_mem
    w(_ADDR, 0xF5, b"\xc0")  # t_sb = 10 ms, filter off (accepted in sleep mode)
    w(_ADDR, 0xF2, b"\x00")  # humidity skipped
    w(_ADDR, 0xF4, b"\x27")  # osrs_t x1, osrs_p x1, normal mode: latches ctrl_hum
    time.sleep_ms(40)
    assert part.raw()[2] == 0x8000
    w(_ADDR, 0xF2, b"\x01")  # humidity x1, not yet in effect
    assert i2c.readfrom_mem(_ADDR, 0xF2, 1) == b"\x01"
    time.sleep_ms(40)
    assert part.raw()[2] == 0x8000, "ctrl_hum applied without a ctrl_meas write"
    w(_ADDR, 0xF4, b"\x27")
    time.sleep_ms(40)
    assert part.raw()[2] != 0x8000
    w(_ADDR, 0xF4, b"\x24")  # sleep


# ------------------------------------------------------------------ skipped channels
def test_channels_turned_off_read_the_skip_marker_and_come_back_none():
    i2c, _ = _board()
    bme = bme280.BME280(i2c, osrs_p=0, osrs_h=0)
    t, p, h = _measure(bme)
    assert abs(t - 2000) <= 1 and p is None and h is None
    adc_t, adc_p, adc_h = bme.read_raw()
    assert adc_p == 0x80000 and adc_h == 0x8000 and adc_t != 0x80000
    bme = bme280.BME280(i2c, osrs_h=0)
    assert _measure(bme)[2] is None


def test_temperature_cannot_be_skipped_and_factors_are_checked():
    i2c, _ = _board()
    for kw in ({"osrs_t": 0}, {"osrs_p": 3}, {"osrs_h": 32}):
        try:
            bme280.BME280(i2c, **kw)
        except ValueError as exc:
            assert list(kw)[0] in str(exc), exc
        else:
            raise AssertionError(kw)


def test_skipped_temperature_reads_the_marker_in_the_registers():
    i2c, part = _board()
    i2c.writeto_mem(_ADDR, 0xF2, b"\x01")
    i2c.writeto_mem(_ADDR, 0xF4, b"\x05")  # osrs_t = 0 (skipped), osrs_p x1, forced
    time.sleep_ms(10)
    assert part.raw()[0] == 0x80000 and part.raw()[1] != 0x80000


def test_reset_behind_the_drivers_back_is_reported_not_zero():
    i2c, _ = _board()
    bme = bme280.BME280(i2c)
    _measure(bme)
    i2c.writeto_mem(_ADDR, 0xE0, b"\xb6")  # soft reset: data registers back to 0x80000
    expect_oserror(bme.read, "0x76", "temperature")


# ------------------------------------------------------------------ register map details
def test_register_map_details():
    i2c, part = _board("datasheet")
    cal = i2c.readfrom_mem(_ADDR, 0x88, 26)
    assert cal[0:6] == b"\x70\x6b\x43\x67\x18\xfc"  # 27504, 26435, -1000 little-endian
    assert cal[25] == 75  # dig_H1 at 0xA1
    assert i2c.readfrom_mem(_ADDR, 0xE1, 7) == b"\x6a\x01\x00\x13\x29\x03\x1e"
    assert i2c.readfrom_mem(_ADDR, 0xD0, 1) == b"\x60"
    assert i2c.readfrom_mem(_ADDR, 0x00, 2) == b"\x00\x00"  # undefined registers read 0
    i2c.writeto_mem(_ADDR, 0xD0, b"\x12")  # read-only: ignored
    assert i2c.readfrom_mem(_ADDR, 0xD0, 1) == b"\x60"
    assert i2c.readfrom_mem(_ADDR, 0xF7, 8) == b"\x80\x00\x00\x80\x00\x00\x80\x00"
    i2c.writeto(_ADDR, b"\xf2\x01\xf4\x25")  # address/data pairs in one write
    assert i2c.readfrom_mem(_ADDR, 0xF2, 3)[0] == 0x01
    time.sleep_ms(10)
    assert part.raw()[2] != 0x8000


# ------------------------------------------------------------------ heap
def test_two_hundred_reads_do_not_grow_the_heap():
    i2c, _ = _board()
    bme = bme280.BME280(i2c)
    machine.vboard_set_env(temperature_c=18.25, humidity_pct=61.5, pressure_pa=99000.0)
    for _ in range(3):
        _measure(bme)
    seen = [0, 0, 0, 0]  # allocated before the baseline
    gc.collect()
    before = gc.mem_free()
    for i in range(200):
        bme.start()
        time.sleep_ms(9)
        while not bme.ready():
            time.sleep_ms(1)
        t, p, h = bme.read()
        assert (t, p, h) == (1825, 99000, 6150) or abs(t - 1825) + abs(p - 99000) \
            + abs(h - 6150) <= 3, (t, p, h)
        if i % 50 == 49:
            gc.collect()
            seen[i // 50] = gc.mem_free()
    gc.collect()
    after = gc.mem_free()
    assert after >= before, (before, seen, after)
    assert min(seen) >= before, (before, seen, after)
