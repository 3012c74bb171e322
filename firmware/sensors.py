"""Sensors: the hardware part of the node's configuration and the adapters from drivers to
channel values. `config.py` and `node.py` use only the contract below, so a new driver is a
change to this module and `drivers/`, never to the runtime.

Contract:

    validate_hw(c, cfg, out)   checks the bus sections and `sensors` of a raw config dict and
                               fills `out` with them, defaults applied; every problem goes to
                               `c.fail(path, rule, value)` / `c.get(...)` (config._Checker),
                               e.g. "sensors[0].address must be an I2C address 0x08-0x77: got 7"
    Hardware(cfg, board)       opens buses lazily: hw.i2c("i2c0"); `board` is board.json
    create(spec, hw)           the adapter for one validated `sensors[i]` entry

An adapter has
    label                      "driver@bus:address", used in logs, status `err` and `diag`
    interval_s                 its reading interval
    async sample()             -> {channel key: scaled int}; raises OSError/ValueError with a
                               clear message when the part cannot be read (never a 0 value)
and optionally
    wake_pins()                GPIOs that must wake the node from deep sleep (pulse inputs)
    save()                     persists state before a deep sleep or a reset

Driver modules are imported when the first adapter of their kind is created, so a node pays
heap only for the drivers it uses.
"""

import channels

# Every `driver` name accepted in `sensors[i].driver`.
DRIVERS = ("bme280",)


def _bus_names(out):
    return ["i2c" + b for b in out.get("i2c", {})]


def validate_hw(c, cfg, out):
    buses = c.get(cfg, "i2c", "", dict, "must be an object of bus id -> pins", default={},
                  required=False)
    out["i2c"] = {}
    for bid in buses:
        p = "i2c." + bid
        b = buses[bid]
        if bid not in ("0", "1") or not isinstance(b, dict):
            c.fail(p, "must be bus \"0\" or \"1\" with an object of pins", b)
            continue
        out["i2c"][bid] = {
            "scl": c.get(b, "scl", p, int, "must be a GPIO number 0-48",
                         check=lambda v: 0 <= v <= 48),
            "sda": c.get(b, "sda", p, int, "must be a GPIO number 0-48",
                         check=lambda v: 0 <= v <= 48),
            "freq": c.get(b, "freq", p, int, "must be an integer 10000-1000000 (Hz)",
                          default=400000, required=False, check=lambda v: 10000 <= v <= 1000000),
        }
    sensors = c.get(cfg, "sensors", "", list, "must be a list", default=[], required=False)
    out["sensors"] = []
    for i, s in enumerate(sensors):
        p = "sensors[%d]" % i
        if not isinstance(s, dict):
            c.fail(p, "must be an object", s)
            continue
        spec = {
            "driver": c.get(s, "driver", p, str, "must be one of " + ", ".join(DRIVERS),
                            check=lambda v: v in DRIVERS),
            "interval_s": c.get(s, "interval_s", p, int, "must be an integer 1-86400",
                                default=60, required=False, check=lambda v: 1 <= v <= 86400),
            "instance": c.get(s, "instance", p, int, "must be an integer 0-15", default=0,
                              required=False, check=lambda v: 0 <= v <= 15),
        }
        if spec["driver"] == "bme280":
            spec["bus"] = c.get(s, "bus", p, str, "must name a configured bus such as \"i2c0\"",
                                check=lambda v: v in _bus_names(out))
            spec["address"] = c.get(s, "address", p, int, "must be an I2C address 0x08-0x77",
                                    default=0x76, required=False,
                                    check=lambda v: 0x08 <= v <= 0x77)
        out["sensors"].append(spec)


class Hardware:
    """The node's buses, opened on first use and shared by the sensors on them."""

    def __init__(self, cfg, board=None):
        self.cfg = cfg
        self.board = board or {}
        self._open = {}

    def i2c(self, name):
        bus = self._open.get(name)
        if bus is None:
            import machine

            pins = self.cfg["i2c"][name[3:]]
            bus = machine.I2C(int(name[3:]), scl=machine.Pin(pins["scl"]),
                              sda=machine.Pin(pins["sda"]), freq=pins["freq"])
            self._open[name] = bus
        return bus


class Bme280Sensor:
    def __init__(self, spec, hw):
        import asyncio
        import bme280

        self._sleep_ms = asyncio.sleep_ms
        self.label = "bme280@%s:0x%02x" % (spec["bus"], spec["address"])
        self.interval_s = spec["interval_s"]
        self.dev = bme280.BME280(hw.i2c(spec["bus"]), address=spec["address"])
        inst = spec["instance"]
        self.keys = (channels.key(channels.TEMPERATURE, inst),
                     channels.key(channels.PRESSURE, inst),
                     channels.key(channels.HUMIDITY, inst))

    async def sample(self):
        await self._sleep_ms(self.dev.start())
        values = {}
        for k, v in zip(self.keys, self.dev.read()):
            if v is not None:
                values[k] = v
        return values


def label(spec):
    """The sensor's label from its spec alone (before the part was ever reached)."""
    if "address" in spec:
        return "%s@%s:0x%02x" % (spec["driver"], spec["bus"], spec["address"])
    return "%s@%s" % (spec["driver"], spec.get("bus", "-"))


def create(spec, hw):
    if spec["driver"] == "bme280":
        return Bme280Sensor(spec, hw)
    raise ValueError("no adapter for driver %s" % spec["driver"])
