# The SHT4x driver (drivers/sht4x.py) and its adapter against the command-level model
# (hw/sht4x.py), in the MicroPython unix port with the 96 KB heap.
import asyncio
import os
import time

import machine

import config
import cfg_i2c  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import sensors
import sht4x
from driver_support import expect_oserror

_DIR = "vb_sht4x"


def _board(address=0x44, faults=None):
    try:
        os.remove(_DIR + "/env.json")
    except OSError:
        pass
    b = machine.vboard_configure(_DIR, {"i2c": {"0": {"scl": 22, "sda": 21, "devices": [
        {"model": "sht4x", "address": address}]}}})
    if faults:
        machine.vboard_set_env(faults=faults)
    return machine.I2C(0, scl=machine.Pin(22), sda=machine.Pin(21)), b


def test_crc_of_beef_is_0x92_as_in_the_datasheet():
    assert sht4x.crc8(b"\xbe\xef") == 0x92


def test_reads_the_environment_in_scaled_integers():
    i2c, _ = _board()
    machine.vboard_set_env(temperature_c=21.53, humidity_pct=45.23)
    dev = sht4x.SHT4x(i2c)
    assert dev.serial == 0x0F3A5C21
    time.sleep_ms(dev.start())
    t, rh = dev.read()
    # one raw LSB is 0.0027 degC / 0.0019 %RH: the round trip lands on the 0.01 step
    assert (t, rh) == (2153, 4523), (t, rh)
    machine.vboard_set_env(temperature_c=-12.5, humidity_pct=101.0)
    time.sleep_ms(dev.start())
    assert dev.read() == (-1250, 10000)  # RH clamped to 100 % as the datasheet advises


def test_datasheet_conversion_end_points():
    # datasheet 4.6: T = -45 + 175 * S_T / 65535, RH = -6 + 125 * S_RH / 65535 (clamped 0..100)
    i2c, b = _board()
    part = b.i2c[0].devices[0x44]
    dev = sht4x.SHT4x(i2c)
    for raw, want in (((0, 0), (-4500, 0)),  # -45.00 degC, -6 %RH clamped to 0
                      ((65535, 65535), (13000, 10000)),  # 130.00 degC, 119 %RH clamped
                      ((0x6666, 0x8000), (2500, 5650))):  # 25.00 degC, 56.50 %RH
        part.forced = raw
        time.sleep_ms(dev.start())
        assert dev.read() == want, (raw, want)


def test_missing_part_early_read_bad_crc_and_stuck_conversion_are_errors():
    i2c, _ = _board()
    expect_oserror(lambda: sht4x.SHT4x(i2c, address=0x45), "SHT4x not found at 0x45")
    dev = sht4x.SHT4x(i2c)
    dev.start()
    expect_oserror(dev.read, "SHT4x at 0x44: no result")  # read before the 8.3 ms conversion
    machine.vboard_set_env(faults={"i2c0:0x44": "crc"})
    time.sleep_ms(dev.start())
    expect_oserror(dev.read, "CRC error in the first word", "expected 0x")
    machine.vboard_set_env(faults={"i2c0:0x44": "busy"})
    time.sleep_ms(dev.start())
    expect_oserror(dev.read, "no result")
    machine.vboard_set_env(faults={"i2c0": "timeout"})
    expect_oserror(dev.start)


def test_adapter_gives_channel_values_and_errors():
    i2c, _ = _board(0x45)
    machine.vboard_set_env(temperature_c=5.0, humidity_pct=80.0)
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, {"i2c": {"0": {"scl": 22, "sda": 21}}, "sensors": [
        {"driver": "sht4x", "bus": "i2c0", "address": 0x45, "instance": 1}]}, out)
    assert not c.errors, c.errors
    a = sensors.create(out["sensors"][0], sensors.Hardware(out))
    assert a.label == "sht4x@i2c0:0x45"
    v = asyncio.run(a.sample())
    assert v == {65: 500, 66: 8000}, v
    machine.vboard_set_env(faults={"i2c0:0x45": "crc"})
    try:
        asyncio.run(a.sample())
    except OSError as exc:
        assert "CRC error" in str(exc)
    else:
        raise AssertionError("bad CRC gave a value")
    c = config._Checker()
    sensors.validate_hw(c, {"i2c": {"0": {"scl": 22, "sda": 21}}, "sensors": [
        {"driver": "sht4x", "bus": "i2c0", "address": 0x40}]}, {})
    assert "sensors[0].address must be 0x44, 0x45 or 0x46 (SHT4x-A, -B, -C): got 64" in \
        c.errors[0], c.errors
