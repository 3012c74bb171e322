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
    wake_pins()                ((gpio, level), ...): the inputs that must wake the node from deep
                               sleep and the level that wakes it (it changes: a pulse contact
                               asks for the opposite of its current state); arm them with
                               arm_wake(pairs) below, after save()
    save()                     persists state before a deep sleep or a reset (the runtime calls
                               it for every adapter that has it, then sleeps or resets); an
                               adapter with save() is kept when a sample fails (the others are
                               created again), so what it counted meanwhile is not lost

Helpers for the runtime:
    arm_wake(pairs)            arms deep-sleep wake-up for the pairs of every adapter (ext0 for
                               the first pair, ext1 any-high for level-1 pairs; Pin.irq(wake=)
                               on the ESP32-C3)
    Hardware.board_info()      the board file (boards/<name>.json installed as `board.json` on
                               the node's filesystem; {} without one): the pulse driver reads
                               `pcnt_units` from it to choose PCNT or pin interrupts
    Hardware.ticks_ms, .clock  None (time.ticks_ms / time.time) or a hardware model's virtual
                               clock in tests

RTC memory (machine.RTC().memory()): bytes 0..63 are the runtime's (firmware/rtcstate.py),
bytes 64..255 the drivers': pulse meters use 96-byte slots at 64 and 160 (`slot` 0 and 1, given
by validate_hw in the order of the pulse sensors; at most two per node). Every writer keeps the
other bytes as they are. Driver flash files: `pulse<slot>a.log`, `pulse<slot>b.log`.

Each driver's config entry is checked by a small module in drivers/ (cfg_i2c, cfg_pulse,
cfg_gpio, cfg_serial: _CHECKS) that validate_hw() imports and drops again, since its code is
needed only while a config is checked. Each driver module ends with create(spec, hw) and its
adapter class: drivers/bme280.py, sht4x.py, pulsenode.py (pulse), analog.py (battery, pressure,
rssi), ds18b20.py, modbus.py, mbus.py, pms5003.py; an extra module per adapter would cost about
1.5 KB of heap each. A driver module is imported when its first adapter is created, so a node
pays heap only for the drivers it uses. Adding a driver: its name in DRIVERS, _CHECKS and
_ADAPTERS, a _v_<name>() in its cfg_ module, create() in its driver module.
"""


# Every `driver` name accepted in `sensors[i].driver`.
DRIVERS = ("bme280", "pulse", "sht4x", "battery", "pressure", "rssi", "modbus", "ds18b20",
           "mbus", "pms5003", "current_loop")
# driver -> module in drivers/ with its check(c, entry, path, spec, out) for the config
_CHECKS = {"bme280": "cfg_i2c", "sht4x": "cfg_i2c", "pulse": "cfg_pulse", "battery": "cfg_gpio",
           "pressure": "cfg_gpio", "rssi": "cfg_gpio", "ds18b20": "cfg_gpio",
           "current_loop": "cfg_gpio",
           "modbus": "cfg_serial", "mbus": "cfg_serial", "pms5003": "cfg_serial"}
# driver -> module in drivers/ with its create(spec, hw)
_ADAPTERS = {"bme280": "bme280", "sht4x": "sht4x", "pulse": "pulsenode", "battery": "analog",
             "pressure": "analog", "rssi": "analog", "current_loop": "analog",
             "modbus": "modbus", "ds18b20": "ds18b20",
             "mbus": "mbus", "pms5003": "pms5003"}


def _adapters(driver):
    return __import__(_ADAPTERS[driver])


def validate_hw(c, cfg, out):
    import sys

    kept = [m for m in sys.modules if m[:4] == "cfg_"]  # loaded by someone else (tests): kept
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
    out["uart"] = {}
    if "uart" in cfg:  # UART lines are checked with the UART drivers' config checks
        __import__("cfg_serial").uart_buses(c, cfg, out)
    if "modbus_profiles" in cfg:  # product register maps, named by modbus sensors
        out["modbus_profiles"] = __import__("cfg_serial").profiles(c, cfg)
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
        if spec["driver"] is not None:
            __import__(_CHECKS[spec["driver"]]).check(c, s, p, spec, out)
        if "alarm" in s or "poll_s" in s:  # a threshold the node watches (drivers/cfg_alarm.py)
            __import__("cfg_alarm").sensor(c, s, p, spec)
        out["sensors"].append(spec)
    out.pop("modbus_profiles", None)  # copied into the sensors that name them
    out["relay"] = __import__("cfg_alarm").relay(c, cfg) if "relay" in cfg else None
    for m in tuple(_CHECKS.values()) + ("cfg_alarm",):  # needed only while checking: free
        if m not in kept:
            sys.modules.pop(m, None)


class Hardware:
    """The node's buses, opened on first use and shared by the sensors on them."""

    # Clocks the drivers use (tests put a hardware model's virtual clock here).
    ticks_ms = None  # None: time.ticks_ms
    clock = None  # None: time.time

    def __init__(self, cfg, board=None):
        self.cfg = cfg
        self.board = board
        self._open = {}

    def board_info(self):
        """The board file (boards/<name>.json, installed on the node as board.json), or {}."""
        if self.board is None:
            import json

            try:
                with open("board.json") as f:
                    self.board = json.load(f)
            except (OSError, ValueError):
                self.board = {}
        return self.board

    def uart(self, name):
        """(machine.UART, baud rate, driver-enable Pin or None) for "uart1" / "uart2"."""
        got = self._open.get(name)
        if got is None:
            import machine

            u = self.cfg["uart"][name[4:]]
            parity = {"none": None, "even": 0, "odd": 1}[u["parity"]]
            uart = machine.UART(int(name[4:]), baudrate=u["baudrate"], bits=8, parity=parity,
                                stop=u["stop"], tx=u["tx"], rx=u["rx"], timeout=0)
            de = None
            if u["de"] is not None:
                de = machine.Pin(u["de"], machine.Pin.OUT, value=0)
            got = self._open[name] = (uart, u["baudrate"], de)
        return got

    def onewire(self, pin, driver):
        """One `driver(onewire.OneWire(pin), name)` per 1-Wire GPIO, shared by its probes."""
        name = "ow%d" % pin
        got = self._open.get(name)
        if got is None:
            import machine
            import onewire

            got = self._open[name] = driver(onewire.OneWire(machine.Pin(pin)), name)
        return got

    def i2c(self, name):
        bus = self._open.get(name)
        if bus is None:
            import machine

            pins = self.cfg["i2c"][name[3:]]
            bus = machine.I2C(int(name[3:]), scl=machine.Pin(pins["scl"]),
                              sda=machine.Pin(pins["sda"]), freq=pins["freq"])
            self._open[name] = bus
        return bus


def arm_wake(pins):
    """Arms deep-sleep wake-up for (gpio, level) pairs from adapters' wake_pins(): the first
    pair on ext0 (one pin, either level), pairs with level 1 on ext1 (any high). On the
    ESP32-C3 (no ext0/ext1) through Pin.irq(wake=DEEPSLEEP) on GPIO 0-5."""
    if pins:
        __import__("pulsenode").arm_wake(pins)


def label(spec):
    """The sensor's label from its spec alone (before the part was ever reached); the same
    string as the adapter's `label`: bme280@i2c0:0x76, modbus@uart2:1, mbus@uart2:55550002,
    ds18b20@ow4:28a5000000000095 (or ds18b20@ow4:#1 by index), pulse@gpio25, battery@adc35."""
    d, bus = spec["driver"], spec.get("bus", "-")
    if d in ("bme280", "sht4x"):
        return "%s@%s:0x%02x" % (d, bus, spec["address"])
    if d == "ds18b20":
        return "%s@%s:%s" % (d, bus, spec["rom"] or "#%d" % spec["index"])
    if d == "mbus":
        return "%s@%s:%s" % (d, bus, spec["secondary"] or spec["address"])
    if d == "modbus":
        return "%s@%s:%d" % (d, bus, spec["address"])
    return "%s@%s" % (d, bus)


def create(spec, hw):
    return _adapters(spec["driver"]).create(spec, hw)
