"""Config checks of the UART (modbus, mbus, pms5003) driver entries and of the top-level "uart"
section, called by firmware/sensors.py validate_hw() as check(c, entry, path, spec, out) and
dropped from memory after the config is validated (the code is needed only while a config is
checked). One small module per driver family, so a node loads only the checks (and message
strings) of the drivers it has."""

from channels import id_of


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


_KINDS = ("u16", "s16", "u32", "s32", "f32")
_REG_KEYS = ("reg", "fn", "type", "order", "channel", "mul", "div", "mask", "instance", "name")


def _uart(c, s, p, spec, out, example):
    spec["bus"] = c.get(s, "uart", p, str, "must name a configured UART such as \"%s\"" % example,
                        check=lambda v: v[:4] == "uart" and v[4:] in out.get("uart", {}))



def _v_modbus(c, s, p, spec, out):
    _uart(c, s, p, spec, out, "uart2")
    spec["address"] = c.get(s, "address", p, int, "must be a Modbus slave address 1-247",
                            check=lambda v: 1 <= v <= 247)
    spec["timeout_ms"] = c.get(s, "timeout_ms", p, int, "must be an integer 20-5000",
                               default=200, required=False, check=lambda v: 20 <= v <= 5000)
    spec["retries"] = c.get(s, "retries", p, int, "must be an integer 0-5", default=2,
                            required=False, check=lambda v: 0 <= v <= 5)
    profiles = out.get("modbus_profiles") or {}
    if "profile" in s:  # a product's register map, by name: the top-level modbus_profiles
        if "registers" in s:
            c.fail(p, "needs registers or a profile, not both", s["profile"])
        name = c.get(s, "profile", p, str, "must name a profile of modbus_profiles (%s)"
                     % (", ".join(sorted(profiles)) or "none defined"),
                     check=lambda v: v in profiles)
        regs, q = (profiles[name] if name else ()), "modbus_profiles.%s" % name
    else:
        regs = c.get(s, "registers", p, list, "must be a non-empty list of registers (or "
                     "name a profile)", check=lambda v: len(v) > 0)
        q = p
    spec["registers"] = _registers(c, regs or (), q, spec["instance"])


def profiles(c, cfg):
    """The top-level "modbus_profiles": {name: {"registers": [...]}}, each register checked
    once here, under its own path (modbus_profiles.gas_lel.registers[0].reg)."""
    raw = c.get(cfg, "modbus_profiles", "", dict, "must be an object of profile name -> "
                "{\"registers\": [...]}", default={}, required=False)
    out = {}
    for name in raw:
        q = "modbus_profiles." + name
        prof = raw[name]
        if not isinstance(prof, dict) or not isinstance(prof.get("registers"), list) \
                or not prof["registers"]:
            c.fail(q, "must be an object with a non-empty list of registers", prof)
            continue
        c.unknown(prof, ("registers", "product", "manual"), q)
        out[name] = prof["registers"]
    return out


def _registers(c, regs, p, instance):
    """A register map checked: each entry with its defaults, and the maps that cannot be
    read (a 32-bit value past the last register, an error mask on a value that is not a
    16-bit word, two registers for one channel) named by their key."""
    out = []
    seen = {}
    for i, r in enumerate(regs):
        q = "%s.registers[%d]" % (p, i)
        if not isinstance(r, dict):
            c.fail(q, "must be an object", r)
            continue
        c.unknown(r, _REG_KEYS, q)
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
                             check=lambda v: id_of(v) is not None),
            "mul": c.get(r, "mul", q, int, "must be a non-zero integer", default=1,
                         required=False, check=lambda v: v != 0),
            "div": c.get(r, "div", q, int, "must be a positive integer", default=1,
                         required=False, check=lambda v: v > 0),
            "mask": c.get(r, "mask", q, int, "must be an integer 1-65535 (error bits: the "
                          "sensor-fault alarm)", default=None, required=False,
                          check=lambda v: 1 <= v <= 65535),
            "instance": c.get(r, "instance", q, int, "must be an integer 0-15",
                              default=instance, required=False,
                              check=lambda v: 0 <= v <= 15),
        }
        wide = e["type"] not in ("u16", "s16")
        if wide and e["reg"] == 65535:
            c.fail(q + ".reg", "must be 0-65534: a %s value takes two registers" % e["type"],
                   e["reg"])
        if e["mask"] is not None and wide:
            c.fail(q + ".mask", "needs a 16-bit register (type u16 or s16), not %s"
                   % e["type"], e["mask"])
        e["id"] = id_of(e["channel"])
        if e["id"] is not None and e["mask"] is None:
            k = (e["id"], e["instance"])
            if k in seen:
                c.fail(q + ".channel", "is already read from %s (one register per channel "
                       "and instance)" % seen[k], e["channel"])
            seen[k] = q
        out.append(e)
    return out


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
