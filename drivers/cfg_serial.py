"""Config checks of the UART (modbus, mbus, pms5003) driver entries and of the top-level "uart"
section, called by firmware/sensors.py validate_hw() as check(c, entry, path, spec, out) and
dropped from memory after the config is validated (the code is needed only while a config is
checked). One small module per driver family, so a node loads only the checks (and message
strings) of the drivers it has."""


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


_KINDS = ("u16", "s16", "u32", "s32", "f32")


def _uart(c, s, p, spec, out, example):
    spec["bus"] = c.get(s, "uart", p, str, "must name a configured UART such as \"%s\"" % example,
                        check=lambda v: v[:4] == "uart" and v[4:] in out.get("uart", {}))


def _channel_id(name):
    import channels

    v = getattr(channels, str(name).upper(), None)
    return v if isinstance(v, int) and 1 <= v <= 63 else None


def _v_modbus(c, s, p, spec, out):
    _uart(c, s, p, spec, out, "uart2")
    spec["address"] = c.get(s, "address", p, int, "must be a Modbus slave address 1-247",
                            check=lambda v: 1 <= v <= 247)
    spec["timeout_ms"] = c.get(s, "timeout_ms", p, int, "must be an integer 20-5000",
                               default=200, required=False, check=lambda v: 20 <= v <= 5000)
    spec["retries"] = c.get(s, "retries", p, int, "must be an integer 0-5", default=2,
                            required=False, check=lambda v: 0 <= v <= 5)
    regs = c.get(s, "registers", p, list, "must be a non-empty list of registers",
                 check=lambda v: len(v) > 0)
    spec["registers"] = []
    for i, r in enumerate(regs or ()):
        q = "%s.registers[%d]" % (p, i)
        if not isinstance(r, dict):
            c.fail(q, "must be an object", r)
            continue
        e = {
            "reg": c.get(r, "reg", q, int, "must be a register address 0-65535",
                         check=lambda v: 0 <= v <= 65535),
            "fn": c.get(r, "fn", q, int, "must be 3 (holding) or 4 (input)", default=3,
                        required=False, check=lambda v: v in (3, 4)),
            "type": c.get(r, "type", q, str, "must be one of " + ", ".join(_KINDS),
                          default="u16", required=False, check=lambda v: v in _KINDS),
            "order": c.get(r, "order", q, str, "must be hl or lh", default="hl",
                           required=False, check=lambda v: v in ("hl", "lh")),
            "channel": c.get(r, "channel", q, str, "must be a channel name of the channel "
                             "table (docs/wire-format.md)",
                             check=lambda v: _channel_id(v) is not None),
            "mul": c.get(r, "mul", q, int, "must be a non-zero integer", default=1,
                         required=False, check=lambda v: v != 0),
            "div": c.get(r, "div", q, int, "must be a positive integer", default=1,
                         required=False, check=lambda v: v > 0),
            "mask": c.get(r, "mask", q, int, "must be an integer 1-65535 (error bits: the "
                          "sensor-fault alarm)", default=None, required=False,
                          check=lambda v: 1 <= v <= 65535),
            "instance": c.get(r, "instance", q, int, "must be an integer 0-15",
                              default=spec["instance"], required=False,
                              check=lambda v: 0 <= v <= 15),
        }
        e["id"] = _channel_id(e["channel"])
        spec["registers"].append(e)


def _v_mbus(c, s, p, spec, out):
    _uart(c, s, p, spec, out, "uart2")
    spec["address"] = c.get(s, "address", p, int, "must be a primary address 1-250 (or 254: "
                            "the only meter on the line)", default=None, required=False,
                            check=lambda v: 1 <= v <= 250 or v == 254)
    spec["secondary"] = c.get(s, "secondary", p, str, "must be the meter's 8-digit ID",
                              default=None, required=False,
                              check=lambda v: len(v) == 8 and v.isdigit())
    if (spec["address"] is None) == (spec["secondary"] is None):
        c.fail(p, "needs exactly one of address (primary) or secondary (the 8-digit ID)",
               {"address": spec["address"], "secondary": spec["secondary"]})
    spec["timeout_ms"] = c.get(s, "timeout_ms", p, int, "must be an integer 100-5000",
                               default=500, required=False, check=lambda v: 100 <= v <= 5000)


def _v_pms5003(c, s, p, spec, out):
    _uart(c, s, p, spec, out, "uart1")
    spec["warmup_ms"] = c.get(s, "warmup_ms", p, int, "must be an integer 0-60000 (the "
                              "datasheet's fan warm-up is 30000)", default=30000,
                              required=False, check=lambda v: 0 <= v <= 60000)
    spec["sleep"] = c.get(s, "sleep", p, bool, "must be true or false (fan off between "
                          "readings)", default=True, required=False,
                          check=lambda v: isinstance(v, bool))
    if spec["interval_s"] and spec["interval_s"] * 1000 <= spec["warmup_ms"] and spec["sleep"]:
        c.fail(p + ".interval_s", "must be longer than warmup_ms when the fan sleeps between "
               "readings", spec["interval_s"])


def uart_buses(c, cfg, out):
    """The top-level "uart" section: UART id "1" / "2" -> pins and line settings."""
    uarts = c.get(cfg, "uart", "", dict, "must be an object of UART id -> settings",
                  default={}, required=False)
    for uid in uarts:
        p = "uart." + uid
        u = uarts[uid]
        if uid not in ("1", "2") or not isinstance(u, dict):
            c.fail(p, "must be UART \"1\" or \"2\" (0 is the console) with its settings", u)
            continue
        out["uart"][uid] = {
            "tx": c.get(u, "tx", p, int, "must be a GPIO number 0-48",
                        check=lambda v: 0 <= v <= 48),
            "rx": c.get(u, "rx", p, int, "must be a GPIO number 0-48",
                        check=lambda v: 0 <= v <= 48),
            "baudrate": c.get(u, "baudrate", p, int, "must be 300-115200", default=9600,
                              required=False, check=lambda v: 300 <= v <= 115200),
            "parity": c.get(u, "parity", p, str, "must be none, even or odd", default="none",
                            required=False, check=lambda v: v in ("none", "even", "odd")),
            "stop": c.get(u, "stop", p, int, "must be 1 or 2", default=1, required=False,
                          check=lambda v: v in (1, 2)),
            "de": c.get(u, "de", p, int, "must be the RS-485 driver-enable GPIO 0-48",
                        default=None, required=False, check=lambda v: 0 <= v <= 48),
        }
