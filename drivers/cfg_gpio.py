"""Config checks of the analog, RSSI and 1-Wire (battery, pressure, rssi, ds18b20) driver entries,
called by firmware/sensors.py validate_hw() as check(c, entry, path, spec, out) and dropped from
memory after the config is validated (the code is needed only while a config is checked). One
small module per driver family, so a node loads only the checks (and message strings) of the
drivers it has."""


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


def _gpio(c, s, key, p, required=True):
    return c.get(s, key, p, int, "must be a GPIO number 0-48", required=required,
                 check=lambda v: 0 <= v <= 48)


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
