"""`esp32` of the MicroPython ESP32 port (1.25) for the virtual board. Kept small: what the
firmware uses."""

# - wake_on_ext0(pin, level), wake_on_ext1(pins, level), wake_on_touch(b), wake_on_ulp(b):
#   stored (the `hw` package's wake table) and written into deepsleep.json by
#   machine.deepsleep(), so the launcher knows which pin would wake the node.
# - raw_temperature() (original ESP32: degrees Fahrenheit, raw) and mcu_temperature() (S2, S3,
#   C3, C6: degrees C): the die temperature, env.json "mcu_temperature_c" or the ambient
#   temperature_c + 20. Each raises AttributeError on a chip that lacks it, as the port does
#   not define it there.
# - NVS(namespace): set_i32/get_i32/set_blob/get_blob/erase_key/commit with the port's errors
#   (OSError(-0x1102, "ESP_ERR_NVS_NOT_FOUND"), ...). Values are visible at once to the running
#   program; only commit() writes them to $VBOARD_DIR/nvs.json, so a reset before commit()
#   loses them, which is the guarantee ESP-IDF documents.
#   NVS and Partition live in hw/flash.py, loaded on first use.
# - PCNT (hw/pcnt.py, loaded on first use): the pulse counter units, edges counted as the pad
#   changes; absent (AttributeError) on the ESP32-C3, which has no PCNT peripheral.
# - Partition: the partition table of the image on the board (the meterlink image's two OTA
#   slots, or a stock image's single app), readblocks/writeblocks/ioctl on NOR-flash
#   semantics, get_next_update(), set_boot() with the image checks of ESP-IDF and the
#   bootloader's rollback, mark_app_valid_cancel_rollback() (hw/flash.py has the details).
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

import hw

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
HEAP_DATA = 4
HEAP_EXEC = 1

_ESP32_RTC_PINS = (0, 2, 4, 12, 13, 14, 15, 25, 26, 27, 32, 33, 34, 35, 36, 37, 38, 39)


def _pin(pin):
    import machine

    n = machine.Pin(pin)._id
    chip = hw.board().chip
    ok = n in _ESP32_RTC_PINS if chip == "esp32" else n <= 21
    if not ok:
        raise ValueError("invalid pin")
    return n


def wake_on_ext0(pin=None, level=None):
    if hw.wake.get("touch"):
        raise ValueError("no resources")
    old = hw.wake.get("ext0") or {}
    level = old.get("level", 0) if level is None else (1 if level else 0)
    hw.wake["ext0"] = None if pin is None else {"pin": _pin(pin), "level": level}


def wake_on_ext1(pins=None, level=None):
    old = hw.wake.get("ext1") or {}
    level = old.get("level", 0) if level is None else (1 if level else 0)
    pins = old.get("pins", []) if pins is None else sorted(_pin(p) for p in pins)
    hw.wake["ext1"] = {"pins": pins, "level": level}


def wake_on_touch(wake):
    if hw.wake.get("ext0"):
        raise ValueError("no resources")
    hw.wake["touch"] = bool(wake)


def wake_on_ulp(wake):
    if hw.wake.get("ext0"):
        raise ValueError("no resources")
    hw.wake["ulp"] = bool(wake)


def gpio_deep_sleep_hold(enable):
    hw.wake["hold"] = bool(enable)


def _die_c():
    e = hw.env()
    e.refresh()
    c = e.data.get("mcu_temperature_c")
    return e.get("temperature_c") + 20 if c is None else c


def raw_temperature():
    if hw.board().chip != "esp32":
        raise AttributeError("'module' object has no attribute 'raw_temperature'")
    return int(_die_c() * 9 / 5 + 32)


def mcu_temperature():
    if hw.board().chip == "esp32":
        raise AttributeError("'module' object has no attribute 'mcu_temperature'")
    return int(_die_c() + 0.5)


def __getattr__(name):
    if name in ("NVS", "Partition"):
        import hw.flash

        return getattr(hw.flash, name)
    if name == "PCNT":
        from hw.pcnt import PCNT, available

        if available():
            return PCNT
    raise AttributeError(name)
