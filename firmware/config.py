"""The node's configuration: one JSON file on flash (`config.json`), validated at boot.

Every problem is reported with the field's path, the rule and the value found, e.g.
`sensors[0].interval_s must be an integer >= 1: got "10"`, so a technician can fix the file
without reading code. `load()` raises ConfigError listing all problems found.

    {
      "node_id": "node-01",
      "prefix": "m",
      "wifi": {"ssid": "utility-iot", "password": "..."},
      "broker": {"host": "192.168.1.10", "port": 1883, "user": "node-01", "password": "...",
                 "keepalive": 60},
      "i2c": {"0": {"scl": 22, "sda": 21, "freq": 400000}},
      "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 118, "interval_s": 60}]
    }
"""

import json

import sensors


class ConfigError(Exception):
    pass


def _ident_ok(s, maxlen):
    if not isinstance(s, str) or not 1 <= len(s) <= maxlen:
        return False
    for i, c in enumerate(s):
        if not ("a" <= c <= "z" or "0" <= c <= "9" or (i and c in "-_")):
            return False
    return True


class _Checker:
    def __init__(self):
        self.errors = []

    def fail(self, path, rule, value):
        self.errors.append("%s %s: got %s" % (path, rule, json.dumps(value)))

    def get(self, obj, key, path, kind, rule, default=None, required=True, check=None):
        p = path + key if not path else path + "." + key
        if key not in obj:
            if required:
                self.errors.append("%s is required (%s)" % (p, rule))
            return default
        v = obj[key]
        if kind is int and (not isinstance(v, int) or isinstance(v, bool)):
            self.fail(p, rule, v)
            return default
        if kind is str and not isinstance(v, str):
            self.fail(p, rule, v)
            return default
        if kind is dict and not isinstance(v, dict):
            self.fail(p, rule, v)
            return default
        if kind is list and not isinstance(v, list):
            self.fail(p, rule, v)
            return default
        if check is not None and not check(v):
            self.fail(p, rule, v)
            return default
        return v


def validate(cfg):
    """Returns the config with defaults filled in, or raises ConfigError with every problem."""
    c = _Checker()
    if not isinstance(cfg, dict):
        raise ConfigError("config must be a JSON object")
    out = {}
    out["node_id"] = c.get(cfg, "node_id", "", str,
                           "must be 1-32 characters a-z 0-9 - _ starting with a letter or digit",
                           check=lambda v: _ident_ok(v, 32))
    out["prefix"] = c.get(cfg, "prefix", "", str, "must be 1-16 characters a-z 0-9 - _",
                          default="m", required=False, check=lambda v: _ident_ok(v, 16))
    wifi = c.get(cfg, "wifi", "", dict, "must be an object", default={}, required=False)
    out["wifi"] = {
        "ssid": c.get(wifi, "ssid", "wifi", str, "must be a string", default=None, required=False),
        "password": c.get(wifi, "password", "wifi", str, "must be a string", default=None,
                          required=False),
    }
    broker = c.get(cfg, "broker", "", dict, "must be an object", default={})
    out["broker"] = {
        "host": c.get(broker, "host", "broker", str, "must be a host name or address",
                      check=lambda v: len(v) > 0),
        "port": c.get(broker, "port", "broker", int, "must be an integer 1-65535", default=1883,
                      required=False, check=lambda v: 1 <= v <= 65535),
        "user": c.get(broker, "user", "broker", str, "must be a string", required=False),
        "password": c.get(broker, "password", "broker", str, "must be a string", required=False),
        "keepalive": c.get(broker, "keepalive", "broker", int, "must be an integer 5-3600 (s)",
                           default=60, required=False, check=lambda v: 5 <= v <= 3600),
    }
    sensors.validate_hw(c, cfg, out)
    if c.errors:
        raise ConfigError("; ".join(c.errors))
    return out


def load(path="config.json"):
    try:
        with open(path) as f:
            raw = f.read()
    except OSError:
        raise ConfigError("%s: cannot read the file" % path)
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise ConfigError("%s: not valid JSON" % path)
    return validate(cfg)
