"""The node's configuration: one JSON file on flash (`config.json`), validated at boot.

Every problem is reported with the field's path, the rule and the value found, e.g.
`sensors[0].interval_s must be an integer >= 1: got "10"`, so a technician can fix the file
without reading code. `load()` raises ConfigError listing all problems found.

    {
      "node_id": "node-01",
      "prefix": "m",
      "wifi": {"ssid": "utility-iot", "password": "..."},
      "broker": {"host": "192.168.1.10", "port": 8883, "user": "node-01", "password": "...",
                 "keepalive": 60, "tls": {"ca": "ca.der", "server_name": "mqtt.example.org"}},
      "i2c": {"0": {"scl": 22, "sda": 21, "freq": 400000}},
      "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 118, "interval_s": 60}],
      "power": {"mode": "mains"},
      "queue": {"max_kb": 64},
      "time": {"ntp": "pool.ntp.org"}
    }

Runtime sections (all optional, defaults shown in `validate`): `power` (mode mains/battery,
send_every, awake_max_s), `queue` (max_kb of flash for unsent readings), `send` (spread_s: the
part of the interval the node's send slot lies in; max_msgs_s: the drain rate of a backlog),
`time` (NTP server),
`watchdog_s`, `safe_mode_after` (crash boots before safe mode), `version` (set by the gateway's
configuration updates). Unknown keys are errors. The hardware part (buses, `sensors`) is
checked by `sensors.validate_hw`.

Last good configuration: `load_with_fallback()` returns the config in use and, when
`config.json` is unreadable or invalid, falls back to `config.good.json` (the last
configuration the node connected with) and says why; the node reports that reason in its
status (`cfg_err`) instead of refusing to start.
"""

import json

import sensors


class ConfigError(Exception):
    pass


def _file_name(v):
    return isinstance(v, str) and 1 <= len(v) <= 32 and "/" not in v


def _tls(c, broker):
    """broker.tls: {"ca": file, "server_name": name, "cert": file, "key": file} -> the same
    with defaults (server_name None: the host), or None for plain MQTT. Files are on the
    node's filesystem, DER (meterlink provision writes them)."""
    t = c.get(broker, "tls", "broker", dict, "must be an object (ca, server_name, cert, key)",
              default=None, required=False)
    if t is None:
        return None
    c.unknown(t, ("ca", "server_name", "cert", "key"), "broker.tls")
    rule = "must be a file name on the node (1-32 characters, no /)"
    out = {"ca": c.get(t, "ca", "broker.tls", str, "must name the CA certificate file: " + rule,
                       check=_file_name),
           "server_name": c.get(t, "server_name", "broker.tls", str,
                                "must be the host name in the broker's certificate",
                                required=False, check=lambda v: 0 < len(v) <= 253),
           "cert": c.get(t, "cert", "broker.tls", str, rule, required=False, check=_file_name),
           "key": c.get(t, "key", "broker.tls", str, rule, required=False, check=_file_name)}
    if (out["cert"] is None) != (out["key"] is None):
        c.fail("broker.tls", "needs both cert and key, or neither", t)
    return out


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

    def unknown(self, obj, allowed, path):
        """Every key of `obj` not in `allowed` is an error (a typo must not pass silently)."""
        for k in obj:
            if k not in allowed:
                self.errors.append("%s is not a known setting (known: %s)" % (
                    path + "." + k if path else k, ", ".join(allowed)))

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


_TOP = ("node_id", "prefix", "version", "wifi", "broker", "power", "queue", "send", "time",
        "watchdog_s", "safe_mode_after", "i2c", "sensors", "modbus_profiles", "relay")
MAX_FILE = 8192


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
    out["version"] = c.get(cfg, "version", "", int, "must be an integer >= 0", default=0,
                           required=False, check=lambda v: v >= 0)
    wifi = c.get(cfg, "wifi", "", dict, "must be an object", default={}, required=False)
    c.unknown(wifi, ("ssid", "password", "timeout_s"), "wifi")
    out["wifi"] = {
        "ssid": c.get(wifi, "ssid", "wifi", str, "must be a string", default=None, required=False),
        "password": c.get(wifi, "password", "wifi", str, "must be a string", default=None,
                          required=False),
        "timeout_s": c.get(wifi, "timeout_s", "wifi", int, "must be an integer 1-120 (s)",
                           default=15, required=False, check=lambda v: 1 <= v <= 120),
    }
    broker = c.get(cfg, "broker", "", dict, "must be an object", default={})
    c.unknown(broker, ("host", "port", "user", "password", "keepalive", "tls", "fallback"),
              "broker")
    tls = _tls(c, broker)
    out["broker"] = {
        "host": c.get(broker, "host", "broker", str, "must be a host name or address",
                      check=lambda v: len(v) > 0),
        "port": c.get(broker, "port", "broker", int, "must be an integer 1-65535",
                      default=8883 if tls else 1883, required=False,
                      check=lambda v: 1 <= v <= 65535),
        "tls": tls,
        "user": c.get(broker, "user", "broker", str, "must be a string", required=False),
        "password": c.get(broker, "password", "broker", str, "must be a string", required=False),
        "keepalive": c.get(broker, "keepalive", "broker", int, "must be an integer 5-3600 (s)",
                           default=60, required=False, check=lambda v: 5 <= v <= 3600),
        # the other servers of a broker cluster, tried in turn when one cannot be reached
        "fallback": [],
    }
    fb = c.get(broker, "fallback", "broker", list, "must be a list of up to 4 \"host\" or "
               "\"host:port\" (the cluster's other servers)", default=[], required=False,
               check=lambda v: len(v) <= 4)
    for i, hp in enumerate(fb or ()):
        host, _, port = hp.rpartition(":") if isinstance(hp, str) and ":" in hp else (hp, "", "")
        if not isinstance(host, str) or not 0 < len(host) <= 253 or \
                (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
            c.fail("broker.fallback[%d]" % i, "must be \"host\" or \"host:port\"", hp)
            continue
        out["broker"]["fallback"].append((host, int(port) if port else out["broker"]["port"]))
    power = c.get(cfg, "power", "", dict, "must be an object", default={}, required=False)
    c.unknown(power, ("mode", "send_every", "awake_max_s"), "power")
    out["power"] = {
        "mode": c.get(power, "mode", "power", str, "must be \"mains\" or \"battery\"",
                      default="mains", required=False, check=lambda v: v in ("mains", "battery")),
        "send_every": c.get(power, "send_every", "power", int,
                            "must be an integer 1-1000 (wake-ups per connection)", default=1,
                            required=False, check=lambda v: 1 <= v <= 1000),
        "awake_max_s": c.get(power, "awake_max_s", "power", int, "must be an integer 5-600 (s)",
                             default=60, required=False, check=lambda v: 5 <= v <= 600),
    }
    queue = c.get(cfg, "queue", "", dict, "must be an object", default={}, required=False)
    c.unknown(queue, ("max_kb",), "queue")
    out["queue"] = {
        "max_kb": c.get(queue, "max_kb", "queue", int, "must be an integer 2-4096 (KiB of flash)",
                        default=64, required=False, check=lambda v: 2 <= v <= 4096),
    }
    send = c.get(cfg, "send", "", dict, "must be an object", default={}, required=False)
    c.unknown(send, ("spread_s", "max_msgs_s"), "send")
    out["send"] = {
        "spread_s": c.get(send, "spread_s", "send", int, "must be an integer 0-3600 (s; 0: send "
                          "each reading when taken)", default=None, required=False,
                          check=lambda v: 0 <= v <= 3600),
        "max_msgs_s": c.get(send, "max_msgs_s", "send", int, "must be an integer 1-50 "
                            "(messages a second while a backlog drains)", default=4,
                            required=False, check=lambda v: 1 <= v <= 50),
    }
    tm = c.get(cfg, "time", "", dict, "must be an object", default={}, required=False)
    c.unknown(tm, ("ntp", "ntp_port"), "time")
    out["time"] = {
        "ntp": c.get(tm, "ntp", "time", str, "must be a host name, or \"\" for no NTP",
                     default="pool.ntp.org", required=False),
        "ntp_port": c.get(tm, "ntp_port", "time", int, "must be an integer 1-65535", default=123,
                          required=False, check=lambda v: 1 <= v <= 65535),
    }
    out["watchdog_s"] = c.get(cfg, "watchdog_s", "", int,
                              "must be an integer 0 (off) or 2-600 (s)", default=60,
                              required=False, check=lambda v: v == 0 or 2 <= v <= 600)
    out["safe_mode_after"] = c.get(cfg, "safe_mode_after", "", int,
                                   "must be an integer 2-20 (crash boots in a row)", default=3,
                                   required=False, check=lambda v: 2 <= v <= 20)
    sensors.validate_hw(c, cfg, out)
    # the hardware sections are whatever validate_hw recognised and copied to `out`
    c.unknown(cfg, list(_TOP) + [k for k in out if k not in _TOP], "")
    if c.errors:
        raise ConfigError("; ".join(c.errors))
    return out


def read_raw(path="config.json"):
    """The parsed JSON of a config file (not validated), or ConfigError."""
    try:
        with open(path) as f:
            raw = f.read(MAX_FILE + 1)
    except OSError:
        raise ConfigError("%s: cannot read the file" % path)
    except UnicodeError:  # a corrupted file: fall back, never stop the boot
        raise ConfigError("%s: not UTF-8 text" % path)
    if len(raw) > MAX_FILE:
        raise ConfigError("%s: larger than %d bytes" % (path, MAX_FILE))
    try:
        return json.loads(raw)
    except ValueError:
        raise ConfigError("%s: not valid JSON" % path)
    except RuntimeError:  # the recursion limit
        raise ConfigError("%s: nested too deeply" % path)


def _checked(raw, path):
    """validate(raw), with a structure too deep for the interpreter as a ConfigError."""
    try:
        return validate(raw)
    except RuntimeError:
        raise ConfigError("%s: nested too deeply" % path)


def load(path="config.json"):
    return _checked(read_raw(path), path)


def load_with_fallback(path="config.json", good="config.good.json"):
    """(raw, validated, problem): the config to run. `problem` is None, or why `path` was not
    used and the last good one was. Raises ConfigError when neither is usable."""
    try:
        raw = read_raw(path)
        return raw, _checked(raw, path), None
    except ConfigError as exc:
        problem = str(exc)
    try:
        raw = read_raw(good)
        cfg = _checked(raw, good)
    except ConfigError:
        raise ConfigError(problem)
    return raw, cfg, "%s rejected (%s); running the last good configuration (version %d)" % (
        path, problem, cfg["version"])
