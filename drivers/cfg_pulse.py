"""Config checks of the pulse driver entries, called by firmware/sensors.py validate_hw() as
check(c, entry, path, spec, out) and dropped from memory after the config is validated (the code
is needed only while a config is checked). One small module per driver family, so a node loads
only the checks (and their message strings) of the drivers it has."""


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


_MAX_PULSE = 2  # RTC memory slots for pulse meters (bytes 64..255)


def _gpio(c, s, key, p, required=True):
    return c.get(s, key, p, int, "must be a GPIO number 0-48", required=required,
                 check=lambda v: 0 <= v <= 48)


def _v_pulse(c, s, p, spec, out):
    kind = spec["kind"] = c.get(s, "kind", p, str, "must be water, gas or rain",
                                default="water", required=False,
                                check=lambda v: v in ("water", "gas", "rain"))
    rain = kind == "rain"
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "gpio%s" % spec["pin"]  # the label: pulse@gpio25
    spec["pin_b"] = spec["tamper_pin"] = spec["litres_per_pulse"] = spec["um_per_tip"] = None
    if rain:
        for k in ("pin_b", "tamper_pin", "litres_per_pulse"):
            if k in s:
                c.fail(p + "." + k, "is for water and gas meters; a rain gauge has one "
                       "contact and um_per_tip", s[k])
        spec["um_per_tip"] = c.get(s, "um_per_tip", p, int, "must be an integer 1-10000 (um "
                                   "of rain per tip: 200 for 0.2 mm)",
                                   check=lambda v: 1 <= v <= 10000)
    else:
        spec["pin_b"] = _gpio(c, s, "pin_b", p, required=False)
        spec["tamper_pin"] = _gpio(c, s, "tamper_pin", p, required=False)
        spec["litres_per_pulse"] = c.get(
            s, "litres_per_pulse", p, int, "must be an integer 1-100000 (gas: 10 for 0.01 m3)",
            default=1, required=False, check=lambda v: 1 <= v <= 100000)
        if "um_per_tip" in s:
            c.fail(p + ".um_per_tip", "is for rain gauges (kind rain)", s["um_per_tip"])
        if spec["interval_s"] and spec["interval_s"] > 3600:
            c.fail(p + ".interval_s", "must be at most 3600 for a pulse meter (hourly leak "
                   "bookkeeping)", spec["interval_s"])
    # rain: 50 ms (drivers/pulse.py, "Rain gauges": the reed bounces for a few ms, a bucket
    # tips 0.7 s apart at the fastest)
    spec["debounce_ms"] = c.get(s, "debounce_ms", p, int, "must be an integer 0-1000",
                                default=50 if rain else 10, required=False,
                                check=lambda v: 0 <= v <= 1000)
    spec["counter"] = c.get(s, "counter", p, str, "must be auto, irq or pcnt", default="auto",
                            required=False, check=lambda v: v in ("auto", "irq", "pcnt"))
    if kind == "gas" and spec["pin_b"] is not None:
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
