"""`machine` of the MicroPython ESP32 port (1.25), for the unix port running the firmware on a
virtual board. Same names, signatures, constants and errors as on the device, so firmware
written against docs.micropython.org/en/latest/esp32/quickref.html runs unchanged.

The hardware comes from the node folder `$VBOARD_DIR` (see the `hw` package for the files):
board.json (chip, unique_id, I2C buses and the parts on them, Wi-Fi) is read on first use;
env.json is the physical world the parts measure. Without $VBOARD_DIR or board.json the board
is empty (no I2C parts, default Wi-Fi), and tests build one in code:

    machine.vboard_configure(path=None, board=None)  a fresh board (power-on): node folder
                                                     (created if missing) and/or a
                                                     board.json-shaped dict; returns it
    machine.vboard_attach(bus_id, model)             put a part model on an I2C bus
    machine.vboard_set_env(temperature_c=..., ...)   change the world (rewrites env.json)
    machine.vboard()                                 the board: .i2c[bus].devices[addr], ...
    machine.vboard_drive(pin, level)                 drive a GPIO from outside (None: release);
                                                     fires Pin.irq handlers on the edge

Process exits (how the launcher tells what the node did; ESP32 behaviour in brackets):

    exit code 3   machine.reset()        [esp_restart: next boot reset_cause() == HARD_RESET]
    exit code 4   machine.deepsleep(ms)  [next boot: DEEPSLEEP_RESET, wake_reason() TIMER_WAKE]
                  after writing $VBOARD_DIR/deepsleep.json {"ms": ms or null, "ext0": ...,
                  "ext1": ...}; the launcher sleeps, then starts the node again
    exit code 5   machine.soft_reset()   [raises SystemExit, as sys.exit() does on the device;
                                          next boot: SOFT_RESET]

reset() and deepsleep() end the process at once (libc _exit): no finally blocks, as on the
chip. Before that they write $VBOARD_DIR/reset_cause.json {"cause": n, "wake": n}, which the
next boot consumes (at import, or at vboard_configure); no file means PWRON_RESET, so a
process the launcher killed comes back as a power-on. The launcher may rewrite "wake" before
restarting (e.g. EXT0_WAKE when it woke the node by a pin).
"""

# Modelled: Pin (IN/OUT/OPEN_DRAIN, pulls, value/on/off/toggle, irq delivered as a soft IRQ
# through micropython.schedule like the port, wake=), I2C and SoftI2C (scan, readfrom*,
# writeto*, writevto, *_mem with addrsize; NACK -> OSError(ENODEV), timeout ->
# OSError(ETIMEDOUT)), unique_id, reset_cause, wake_reason, reset, soft_reset, deepsleep,
# lightsleep/sleep, freq, idle, disable_irq/enable_irq, and (loaded on first use, hw/rtc.py)
# WDT and RTC. A WDT not fed within its timeout resets the chip (exit 3, WDT_RESET) the next
# time the firmware touches the hardware.
#
# ADC (hw/adc.py, loaded on first use): ADC1 pins, calibrated read_uv(), voltages from env.json.
#
# UART (hw/uart.py, loaded on first use): serial lines with device models, real line timing.
#
# Timer (hw/timer.py, loaded on first use): hardware timers with soft-IRQ callbacks, due in
# real time and run when the firmware next touches the hardware.
#
# Not modelled: PWM, SPI, TouchPad, Signal, time_pulse_us, and the bit-level
# primitives start/stop/readinto/write, which raise OSError on SoftI2C as on the hardware I2C.
#
# Heap: on the chip these modules are C code in flash. The toolchain freezes them into the
# unix-port build so they take no heap here either; loaded from source (MICROPYPATH) their
# bytecode sits on the node's heap, so they stay small, load rarely used parts lazily and keep
# details in comments (a docstring costs heap while a module compiles, a comment does not).

import sys
import time

import hw
import hw.pin
from hw import attach as vboard_attach  # noqa: F401
from hw import board as vboard
from hw import set_env as vboard_set_env  # noqa: F401
from hw.i2c import I2C, SoftI2C  # noqa: F401
from hw.pin import Pin, drive as vboard_drive  # noqa: F401

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
SLEEP = 2
DEEPSLEEP = 4
PIN_WAKE = 2
EXT0_WAKE = 2
EXT1_WAKE = 3
TIMER_WAKE = 4
TOUCHPAD_WAKE = 5
ULP_WAKE = 6

_boot = {"cause": PWRON_RESET, "wake": 0}
_freq = [160000000]


def vboard_configure(path=None, board=None):
    return hw.configure(path, board)


def __getattr__(name):
    if name in ("RTC", "WDT"):
        import hw.rtc

        return getattr(hw.rtc, name)
    if name == "ADC":
        from hw.adc import ADC

        return ADC
    if name == "UART":
        from hw.uart import UART

        return UART
    if name == "Timer":
        from hw.timer import Timer

        return Timer
    raise AttributeError(name)


def _consume_reset_cause(path):
    if path is not None:
        cause = hw.read_json(path + "/reset_cause.json")
        if cause is not None:
            hw.remove(path + "/reset_cause.json")
            _boot["cause"] = cause.get("cause", PWRON_RESET)
            _boot["wake"] = cause.get("wake", 0)
            return
    _boot["cause"] = PWRON_RESET
    _boot["wake"] = 0


def _power_on(b):
    _consume_reset_cause(b.dir)
    hw.pin.power_on()
    _freq[0] = 160000000
    for m in ("hw.rtc", "hw.timer"):
        if m in sys.modules:
            sys.modules[m].power_on()


hw.on_configure(_power_on)
_consume_reset_cause(hw.vboard_path())


# ---------------------------------------------------------------------------------- system
def unique_id():
    return vboard().unique_id


def reset_cause():
    return _boot["cause"]


def wake_reason():
    return _boot["wake"]


def freq(hz=None):
    if hz is None:
        return _freq[0]
    top = 160 if vboard().chip in ("esp32c3", "esp32c6") else 240
    if hz // 1000000 not in (20, 40, 80, 160, 240) or hz % 1000000 or hz // 1000000 > top:
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq[0] = hz


def idle():
    hw.wdt_poll()
    time.sleep_ms(1)


def lightsleep(time_ms=None):
    """Sleeps time_ms; no light-sleep wake sources are simulated, so no time returns at once."""
    if time_ms is not None:
        time.sleep_ms(time_ms)


sleep = lightsleep


def _leave(cause, wake=0):
    b = vboard()
    if b.dir is not None:
        hw.write_json(b.file("reset_cause.json"), {"cause": cause, "wake": wake})


def _exit(code):
    # At once, like a reset: nothing of the firmware runs after it (no finally, no except).
    # _vboard is our builds' C module (host_tools/toolchain/unix_cmodules); elsewhere,
    # SystemExit is the nearest thing.
    try:
        import _vboard

        _vboard.hard_exit(code)
    except ImportError:
        pass
    sys.exit(code)


def reset():
    _leave(HARD_RESET)
    _exit(3)


def soft_reset():
    _leave(SOFT_RESET)
    raise SystemExit(5)


def deepsleep(time_ms=None):
    b = vboard()
    if b.dir is not None:
        hw.write_json(b.file("deepsleep.json"),
                      {"ms": time_ms, "ext0": hw.wake.get("ext0"), "ext1": hw.wake.get("ext1")})
    _leave(DEEPSLEEP_RESET, TIMER_WAKE if time_ms is not None else 0)
    _exit(4)


def disable_irq():
    irq = hw.pin._irq
    irq["off"] += 1
    return irq["off"] - 1


def enable_irq(state=0):
    irq = hw.pin._irq
    irq["off"] = state
    if not state:
        deferred, irq["deferred"] = irq["deferred"], []
        for handler, pin in deferred:
            hw.pin.schedule(handler, pin)
