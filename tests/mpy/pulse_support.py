# Shared by test_pulse*.py: pulse meters (drivers/pulse.py through the sensors.py adapter)
# against the bouncing reed / quadrature / tamper-loop model (hw/meter.py) and the esp32.PCNT
# model, in the MicroPython unix port with the 96 KB heap. The model's virtual clock drives the driver's clock, so days of
# meter life run in seconds. The truth is the model's own pulse count, never the driver's.
import asyncio
import gc
import os

import machine
from hw import write_json
from hw.meter import PulseMeter  # noqa: F401 - test_pulse*.py import it from here

import config
import cfg_pulse  # noqa: F401 - loaded once: sensors then keeps it (no recompiling)
import sensors

_DIR = "vb_pulse"
_ESP32 = {"board": "esp32-devkitc", "chip": "esp32"}
_C3 = {"board": "esp32c3-devkitm", "chip": "esp32c3"}
_K_WATER, _K_FLOW, _K_GAS, _K_ALARMS, _K_NIGHT = 4, 5, 6, 16, 17


def _rm(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _fresh(board=_ESP32):
    """A new node: no RTC memory, no journal."""
    for f in ("rtc_memory.bin", "reset_cause.json", "env.json"):
        _rm(_DIR + "/" + f)
    for f in ("pulse0a.log", "pulse0b.log", "pulse1a.log", "pulse1b.log"):
        _rm(f)
    return machine.vboard_configure(_DIR, board)


def _spec(**kw):
    entry = {"driver": "pulse", "interval_s": 900}
    entry.update(kw)
    c = config._Checker()
    out = {}
    sensors.validate_hw(c, {"sensors": [entry]}, out)
    assert not c.errors, c.errors
    return out["sensors"][0]


def _errors(*entries):
    c = config._Checker()
    sensors.validate_hw(c, {"sensors": list(entries)}, {})
    return c.errors


def _adapter(spec, model, board=_ESP32):
    hw = sensors.Hardware({}, board)
    hw.ticks_ms = model.ticks_ms
    hw.clock = model.time
    return sensors.create(spec, hw)


def _sample(adapter):
    return asyncio.run(adapter.sample())


def _boot(spec, model, board=_ESP32, cause=None, wake=0):
    """Restarts the chip: reset (cause machine.HARD_RESET) or deep-sleep wake-up; RTC memory
    and flash stay, the GPIO matrix starts over, the meter's contacts stay where they are."""
    gc.collect()
    if cause is not None:
        write_json(_DIR + "/reset_cause.json", {"cause": cause, "wake": wake})
    machine.vboard_configure(_DIR, board)
    model.reattach()
    return _adapter(spec, model, board)


def _water():
    return _spec(kind="water", pin=25, pin_b=26, tamper_pin=27, litres_per_pulse=10,
                 counter="irq")


