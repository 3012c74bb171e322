"""Validation of every driver's `sensors[i]` config entry (firmware/sensors.py calls
validate(); the rules and messages are documented per driver in docs/drivers.md).

This module (and drivercfg_serial.py for the UART drivers) is needed only while a
configuration is checked (at boot and for a config update); sensors.validate_hw() removes them
from sys.modules afterwards, so their code does not stay on the node's heap next to the
drivers that run. Two modules, not one, so neither is large to load.
"""

_MAX_PULSE = 2  # RTC memory slots for pulse meters (bytes 64..255)


def validate(c, s, p, spec, out):
    if spec["driver"] in ("modbus", "mbus", "pms5003"):
        import drivercfg_serial

        drivercfg_serial.validate(c, s, p, spec, out)
    else:
        globals()["_v_" + spec["driver"]](c, s, p, spec, out)


def _gpio(c, s, key, p, required=True):
    return c.get(s, key, p, int, "must be a GPIO number 0-48", required=required,
                 check=lambda v: 0 <= v <= 48)


def _i2c(c, s, p, spec, out, rule, default, check):
    spec["bus"] = c.get(s, "bus", p, str, "must name a configured bus such as \"i2c0\"",
                        check=lambda v: v[3:] in out.get("i2c", {}) and v[:3] == "i2c")
    spec["address"] = c.get(s, "address", p, int, rule, default=default, required=False,
                            check=check)


def _v_bme280(c, s, p, spec, out):
    _i2c(c, s, p, spec, out, "must be an I2C address 0x08-0x77", 0x76,
         lambda v: 0x08 <= v <= 0x77)


def _v_sht4x(c, s, p, spec, out):
    _i2c(c, s, p, spec, out, "must be 0x44, 0x45 or 0x46 (SHT4x-A, -B, -C)", 0x44,
         lambda v: v in (0x44, 0x45, 0x46))


def _v_pulse(c, s, p, spec, out):
    spec["kind"] = c.get(s, "kind", p, str, "must be water or gas", default="water",
                         required=False, check=lambda v: v in ("water", "gas"))
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "gpio%s" % spec["pin"]  # the label: pulse@gpio25
    spec["pin_b"] = _gpio(c, s, "pin_b", p, required=False)
    spec["tamper_pin"] = _gpio(c, s, "tamper_pin", p, required=False)
    spec["litres_per_pulse"] = c.get(
        s, "litres_per_pulse", p, int, "must be an integer 1-100000 (gas: 10 for 0.01 m3)",
        default=1, required=False, check=lambda v: 1 <= v <= 100000)
    spec["debounce_ms"] = c.get(s, "debounce_ms", p, int, "must be an integer 0-1000",
                                default=10, required=False, check=lambda v: 0 <= v <= 1000)
    spec["counter"] = c.get(s, "counter", p, str, "must be auto, irq or pcnt", default="auto",
                            required=False, check=lambda v: v in ("auto", "irq", "pcnt"))
    if spec["interval_s"] and spec["interval_s"] > 3600:
        c.fail(p + ".interval_s", "must be at most 3600 for a pulse meter (hourly leak "
               "bookkeeping)", spec["interval_s"])
    if spec["kind"] == "gas" and spec["pin_b"] is not None:
        c.fail(p + ".pin_b", "is for water meters (backflow); a gas meter has one contact",
               spec["pin_b"])
    if spec["counter"] == "pcnt" and spec["debounce_ms"]:
        c.fail(p + ".counter", "pcnt cannot debounce contacts (its filter stops at 12.8 us); "
               "use irq, or debounce_ms 0 for an electronic output", "pcnt")
    pins = [spec[k] for k in ("pin", "pin_b", "tamper_pin") if spec[k] is not None]
    if len(set(pins)) != len(pins):
        c.fail(p, "pin, pin_b and tamper_pin must be different GPIOs", pins)
    slot = sum(1 for o in out["sensors"] if o.get("driver") == "pulse")
    if slot >= _MAX_PULSE:
        c.fail(p + ".driver", "pulse: at most %d pulse meters per node (RTC memory slots)"
               % _MAX_PULSE, "pulse")
    spec["slot"] = slot


def _cal_ok(v):
    try:
        (v1, p1), (v2, p2) = v
    except (TypeError, ValueError):
        return False
    return all(isinstance(x, int) and not isinstance(x, bool) for x in (v1, p1, v2, p2)) \
        and v1 != v2


def _v_analog(c, s, p, spec, out):
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "adc%s" % spec["pin"]
    spec["divider"] = c.get(
        s, "divider", p, list, "must be [r_top, r_bottom] in ohm (r_bottom > 0)",
        default=[100000, 100000] if spec["driver"] == "battery" else [10000, 10000],
        required=False, check=lambda v: len(v) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v) and v[1] > 0)
    spec["samples"] = c.get(s, "samples", p, int, "must be an integer 1-64", default=16,
                            required=False, check=lambda v: 1 <= v <= 64)
    if spec["driver"] == "pressure":
        spec["cal"] = c.get(s, "cal", p, list,
                            "must be two [mV, hPa] points with different mV, e.g. "
                            "[[500, 0], [4500, 10000]]", default=[[500, 0], [4500, 10000]],
                            required=False, check=_cal_ok)


_v_battery = _v_pressure = _v_analog


def _v_rssi(c, s, p, spec, out):
    spec["bus"] = "wlan"


def _rom_ok(v):
    try:
        rom = bytes.fromhex(v)
    except ValueError:
        return False
    if len(rom) != 8 or rom[0] != 0x28:
        return False
    crc = 0  # Maxim CRC-8 of the first 7 bytes
    for b in rom[:7]:
        for _ in range(8):
            mix = (crc ^ b) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            b >>= 1
    return crc == rom[7]


def _v_ds18b20(c, s, p, spec, out):
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "ow%s" % spec["pin"]
    spec["rom"] = c.get(s, "rom", p, str, "must be the probe's ROM as 16 hex digits, family "
                        "28 first (e.g. \"28ff4a1c0a00005e\")", default=None, required=False,
                        check=_rom_ok)
    spec["index"] = c.get(s, "index", p, int, "must be an integer 0-15 (the probe's place in "
                          "the ROM-sorted search result)", default=0, required=False,
                          check=lambda v: 0 <= v <= 15)
