"""Config checks of the I2C (bme280, sht4x) driver entries, called by firmware/sensors.py
validate_hw() as check(c, entry, path, spec, out) and dropped from memory after the config is
validated (the code is needed only while a config is checked). One small module per driver
family, so a node loads only the checks (and message strings) of the drivers it has."""


def check(c, s, p, spec, out):
    globals()["_v_" + spec["driver"]](c, s, p, spec, out)


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
