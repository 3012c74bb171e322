# The PMS5003 driver (drivers/pms5003.py) and its adapter against the serial model
# (hw/pms5003.py) on the virtual board's UART, in the MicroPython unix port, 96 KB heap.
import asyncio
import os
import time

import machine
from hw.pms5003 import PMS5003 as Model
from hw.uart import attach

import config
import cfg_serial  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import pms5003
import sensors
from driver_support import adapter, expect_oserror

_DIR = "vb_pms"
_UART = {"1": {"tx": 17, "rx": 18, "baudrate": 9600}}


def _board(warmup_ms=300):
    try:
        os.remove(_DIR + "/env.json")
    except OSError:
        pass
    machine.vboard_configure(_DIR, {"chip": "esp32s3"})
    return attach(1, Model(warmup_ms=warmup_ms))


def _adapter(entry):
    return adapter(entry, {"driver": "pms5003", "uart": "uart1", "interval_s": 60, "warmup_ms": 300}, uart=_UART)


_err = expect_oserror


def test_passive_read_after_warm_up_then_sleep():
    m = _board()
    machine.vboard_set_env(pm1_ug_m3=9, pm2_5_ug_m3=21, pm10_ug_m3=33)
    a = _adapter({})
    t0 = time.ticks_ms()
    assert asyncio.run(a.sample()) == {9: 9, 10: 21, 11: 33}
    assert time.ticks_diff(time.ticks_ms(), t0) >= 300  # waited out the fan's warm-up
    assert not m.active and m.asleep and m.reads == 1  # passive mode, fan off again


def test_reading_during_warm_up_is_what_the_waiting_avoids():
    # the control: read at once after waking and the values are low
    _board(warmup_ms=5000)
    machine.vboard_set_env(pm2_5_ug_m3=30)
    dev = pms5003.PMS5003(machine.UART(1, 9600))
    asyncio.run(dev.wake())
    assert asyncio.run(dev.read())[1] == 10


def test_checksum_length_and_silence_are_errors():
    _board(warmup_ms=0)
    a = _adapter({"warmup_ms": 0})
    machine.vboard_set_env(faults={"uart1": "noise"})
    _err(lambda: asyncio.run(a.sample()), "pms5003@uart1", "check code")
    machine.vboard_set_env(faults={"pms5003": "length"})
    _err(lambda: asyncio.run(a.sample()), "frame length 30, expected 28")
    machine.vboard_set_env(faults={"uart1": "dead"})
    _err(lambda: asyncio.run(a.sample()), "no frame within")
    machine.vboard_set_env(faults={})
    assert asyncio.run(a.sample()) == {9: 8, 10: 12, 11: 15}


def test_interval_must_outlast_the_warm_up():
    c = config._Checker()
    sensors.validate_hw(c, {"uart": _UART, "sensors": [
        {"driver": "pms5003", "uart": "uart1", "interval_s": 20}]}, {})
    assert any("sensors[0].interval_s must be longer than warmup_ms" in e for e in c.errors), \
        c.errors
