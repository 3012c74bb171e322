"""Config checks of the analog, RSSI and 1-Wire (battery, pressure, current_loop, rssi, ds18b20)
driver entries, called by firmware/sensors.py validate_hw() as check(c, entry, path, spec, out)
and dropped from memory after the config is validated (the code is needed only while a config
is checked). One small module per driver family, so a node loads only the checks (and message
strings) of the drivers it has."""

from channels import id_of


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


def _gpio(c, s, key, p, required=True):
    return c.get(s, key, p, int, "must be a GPIO number 0-48", required=required,
                 check=lambda v: 0 <= v <= 48)


def _ints(v):
    return all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _cal_ok(v):
    try:
        (v1, p1), (v2, p2) = v
    except (TypeError, ValueError):
        return False
    return _ints((v1, p1, v2, p2)) and v1 != v2


def _divider(c, s, p, default):
    return c.get(s, "divider", p, list, "must be [r_top, r_bottom] in ohm (r_bottom > 0)",
                 default=default, required=False,
                 check=lambda v: len(v) == 2 and _ints(v) and v[0] >= 0 and v[1] > 0)


def _samples(c, s, p, spec):
    spec["samples"] = c.get(s, "samples", p, int, "must be an integer 1-64", default=16,
                            required=False, check=lambda v: 1 <= v <= 64)


def _v_analog(c, s, p, spec, out):
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "adc%s" % spec["pin"]
    spec["divider"] = _divider(c, s, p, [100000, 100000] if spec["driver"] == "battery"
                               else [10000, 10000])
    _samples(c, s, p, spec)
    if spec["driver"] == "pressure":
        spec["cal"] = c.get(s, "cal", p, list,
                            "must be two [mV, hPa] points with different mV, e.g. "
                            "[[500, 0], [4500, 10000]]", default=[[500, 0], [4500, 10000]],
                            required=False, check=_cal_ok)


# ADC1 per chip (board.json "chip"): first and last GPIO, and the full scale at 11 dB in mV
# (ESP-IDF's figures). A node without a board.json, or with another chip, is taken for an ESP32.
_ADC1 = {"esp32": (32, 39, 2450), "esp32s3": (1, 10, 3100), "esp32c3": (0, 4, 2500)}


def _chip():
    import json

    try:
        with open("board.json") as f:
            chip = json.load(f)["chip"]
        if chip in _ADC1:
            return chip
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return "esp32"



def _v_current_loop(c, s, p, spec, out):
    chip = _chip()
    lo, hi, full_mv = _ADC1[chip]
    spec["pin"] = c.get(s, "pin", p, int, "must be an ADC1 GPIO %d-%d (%s)" % (lo, hi, chip),
                        check=lambda v: lo <= v <= hi)
    spec["bus"] = "adc%s" % spec["pin"]
    rs = spec["shunt_ohm"] = c.get(s, "shunt_ohm", p, int, "must be an integer 10-1000 (ohm)",
                                   check=lambda v: 10 <= v <= 1000)
    spec["divider"] = _divider(c, s, p, None)
    _samples(c, s, p, spec)
    spec["range"] = c.get(s, "range", p, list, "must be two different integers [value at "
                          "4 mA, value at 20 mA] in the channel's unit",
                          check=lambda v: len(v) == 2 and _ints(v) and v[0] != v[1])
    spec["channel"] = c.get(s, "channel", p, str, "must be a channel name of the channel "
                            "table (docs/wire-format.md)",
                            check=lambda v: id_of(v) is not None)
    spec["id"] = id_of(spec["channel"]) if spec["channel"] else None
    if rs and (spec["divider"] is not None or "divider" not in s):  # else already failed
        rt, rb = spec["divider"] or (0, 0)
        mv = 21 * rs * rb // (rs + rt + rb) if rb else 21 * rs  # at the pin at 21 mA
        if mv > full_mv:
            c.fail(p + ".shunt_ohm", "must put 21 mA at or under the %s ADC's %d mV full "
                   "scale (or add a divider), not %d mV" % (chip, full_mv, mv), rs)


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
