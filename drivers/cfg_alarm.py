"""Config checks of a sensor's `alarm` (a threshold the node watches itself) and of the
top-level `relay` (an output the alarms switch), called by firmware/sensors.py validate_hw()
and dropped from memory after the config is checked, like the cfg_* modules of the drivers.

    "sensors": [{"driver": "modbus", "profile": "gas_lel", ..., "poll_s": 1,
                 "alarm": {"channel": "methane", "above": 200, "clear": 150, "kind": "gas"}}],
    "relay": {"pin": 26, "on": ["gas"], "active": 1}

Levels are in the channel's wire unit (methane in 0.1 % LEL: 200 is 20 % LEL). An alarm is
raised at `above` (or at `below`) and cleared past `clear` (default: the level itself), so a
value that wavers around the level does not flap. `kind` is the bit it sets in the `alarms`
channel: gas 16, flood 32. The relay follows the alarms listed in `on`; a sensor fault is
never one of them (a detector that stops answering must not shut a supply by itself).
"""

from channels import id_of

KINDS = {"gas": 16, "flood": 32}


def sensor(c, s, p, spec):
    """spec["alarm"] = (key, sign, level, clear, bit) or None; spec["poll_s"]."""
    a = c.get(s, "alarm", p, dict, "must be an object (channel, above or below, clear, kind)",
              default=None, required=False)
    spec["poll_s"] = c.get(s, "poll_s", p, int, "must be an integer 1-3600 (s): how often the "
                           "alarm is watched", default=1, required=False,
                           check=lambda v: 1 <= v <= 3600)
    spec["alarm"] = None
    if a is None:
        if "poll_s" in s:
            c.fail(p + ".poll_s", "needs an alarm to watch", s["poll_s"])
        return
    q = p + ".alarm"
    c.unknown(a, ("channel", "above", "below", "clear", "kind"), q)
    name = c.get(a, "channel", q, str, "must be a channel name of the channel table "
                 "(docs/wire-format.md)",
                 check=lambda v: id_of(v) is not None and v != "alarms")
    kind = c.get(a, "kind", q, str, "must be one of " + ", ".join(sorted(KINDS))
                 + " (the alarm bit it sets)", check=lambda v: v in KINDS)
    above = c.get(a, "above", q, int, "must be an integer (the channel's wire unit)",
                  default=None, required=False)
    below = c.get(a, "below", q, int, "must be an integer (the channel's wire unit)",
                  default=None, required=False)
    if ("above" in a) == ("below" in a):
        c.fail(q, "needs exactly one of above or below", a)
        return
    if above is None and below is None:  # a bad value: reported above
        return
    sign, level = (1, above) if above is not None else (-1, below)
    clear = c.get(a, "clear", q, int, "must be an integer %s %s (the level the alarm clears "
                  "at)" % ("<=" if sign > 0 else ">=", level), default=level, required=False,
                  check=lambda v: sign * v <= sign * level)
    if name is None or kind is None or clear is None:
        return
    spec["alarm"] = (id_of(name) + 64 * spec["instance"], sign, level, clear, KINDS[kind])


def relay(c, cfg):
    """The top-level "relay": {"pin", "on", "active"} -> (pin, alarm bits, active level)."""
    r = c.get(cfg, "relay", "", dict, "must be an object (pin, on, active)", default=None,
              required=False)
    if r is None:
        return None
    c.unknown(r, ("pin", "on", "active"), "relay")
    pin = c.get(r, "pin", "relay", int, "must be a GPIO number 0-48",
                check=lambda v: 0 <= v <= 48)
    on = c.get(r, "on", "relay", list, "must list the alarms that switch it on: "
               + " and/or ".join(sorted(KINDS)) + " (never a sensor fault)",
               check=lambda v: len(v) > 0 and all(k in KINDS for k in v))
    active = c.get(r, "active", "relay", int, "must be 1 (the output is high when on) or 0",
                   default=1, required=False, check=lambda v: v in (0, 1))
    if pin is None or on is None or active is None:
        return None
    bits = 0
    for k in on:
        bits |= KINDS[k]
    return (pin, bits, active)
