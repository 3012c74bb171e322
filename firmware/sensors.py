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
                               it for every adapter that has it, then sleeps or resets)

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

Driver modules are imported when the first adapter of their kind is created, so a node pays
heap only for the drivers it uses.
"""

import channels

# Every `driver` name accepted in `sensors[i].driver`.
DRIVERS = ("bme280", "pulse")
_MAX_PULSE = 2  # RTC memory slots for pulse meters (bytes 64..255)


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
        elif spec["driver"] == "pulse":
            _validate_pulse(c, s, p, spec, out)
        out["sensors"].append(spec)


def _gpio(c, s, key, p, required=True):
    return c.get(s, key, p, int, "must be a GPIO number 0-48", required=required,
                 check=lambda v: 0 <= v <= 48)


def _validate_pulse(c, s, p, spec, out):
    spec["kind"] = c.get(s, "kind", p, str, "must be water or gas", default="water",
                         required=False, check=lambda v: v in ("water", "gas"))
    spec["pin"] = _gpio(c, s, "pin", p)
    spec["bus"] = "gpio%s" % spec["pin"]  # the label: pulse@gpio25
    spec["pin_b"] = _gpio(c, s, "pin_b", p, required=False)
    spec["tamper_pin"] = _gpio(c, s, "tamper_pin", p, required=False)
    spec["litres_per_pulse"] = c.get(
        s, "litres_per_pulse", p, int, "must be an integer 1-100000 (gas: 10 for 0.01 m3)",
        default=1, required=False, check=lambda v: 1 <= v <= 100000)
    spec["debounce_ms"] = c.get(s, "debounce_ms", p, int, "must be an integer 0-1000",
                                default=10, required=False, check=lambda v: 0 <= v <= 1000)
    spec["counter"] = c.get(s, "counter", p, str, "must be auto, irq or pcnt", default="auto",
                            required=False, check=lambda v: v in ("auto", "irq", "pcnt"))
    if spec["interval_s"] and spec["interval_s"] > 3600:
        c.fail(p + ".interval_s", "must be at most 3600 for a pulse meter (hourly leak "
               "bookkeeping)", spec["interval_s"])
    if spec["kind"] == "gas" and spec["pin_b"] is not None:
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


class PulseSensor:
    def __init__(self, spec, hw):
        import pulse

        counter = spec["counter"]
        if counter == "auto":
            counter = "pcnt" if hw.board_info().get("pcnt_units", 0) > spec["slot"] * 2 + 1 \
                and not spec["debounce_ms"] else "irq"
        if counter == "pcnt":
            import esp32

            if not hasattr(esp32, "PCNT"):
                raise OSError("pulse@gpio%d: counter pcnt: this chip has no PCNT" % spec["pin"])
        self.counter = counter
        self.label = "pulse@gpio%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        self.meter = pulse.PulseMeter(
            kind=spec["kind"], pin_a=spec["pin"], pin_b=spec["pin_b"],
            tamper_pin=spec["tamper_pin"], litres_per_pulse=spec["litres_per_pulse"],
            debounce_ms=spec["debounce_ms"], counter=counter, slot=spec["slot"],
            ticks_ms=hw.ticks_ms, clock=hw.clock)
        inst = spec["instance"]
        water = spec["kind"] == "water"
        self.k_total = channels.key(channels.WATER_VOLUME if water else channels.GAS_VOLUME, inst)
        self.k_flow = channels.key(channels.WATER_FLOW, inst) if water else None
        self.k_night = channels.key(channels.NIGHT_FLOW, inst) if water else None
        self.k_alarms = channels.key(channels.ALARMS, inst)

    async def sample(self):
        m = self.meter
        alarms = m.poll(report=True)  # journals a changed total before it is reported
        values = {self.k_total: m.total_l}
        if self.k_flow is not None:
            flow = m.flow_ml_s()
            if flow is not None:
                values[self.k_flow] = flow
            night = m.night_flow_ul_s()
            if night is not None:
                values[self.k_night] = night
        if alarms or alarms != m.last_alarms:
            values[self.k_alarms] = alarms
        m.last_alarms = alarms
        return values

    def wake_pins(self):
        return self.meter.wake_pins()

    def save(self):
        self.meter.save()


def arm_wake(pins):
    """Arms deep-sleep wake-up for (gpio, level) pairs from adapters' wake_pins(): the first
    pair on ext0 (one pin, either level), pairs with level 1 on ext1 (any high). On the
    ESP32-C3 (no ext0/ext1) through Pin.irq(wake=DEEPSLEEP) on GPIO 0-5."""
    import machine

    if not pins:
        return
    try:
        import esp32

        esp32.wake_on_ext0(machine.Pin(pins[0][0]), pins[0][1])
        high = [machine.Pin(g) for g, lvl in pins[1:] if lvl]
        if high:
            esp32.wake_on_ext1(high, esp32.WAKEUP_ANY_HIGH)
    except (AttributeError, ValueError):
        for g, lvl in pins:
            machine.Pin(g).irq(trigger=machine.Pin.WAKE_HIGH if lvl else machine.Pin.WAKE_LOW,
                               wake=machine.DEEPSLEEP)


def label(spec):
    """The sensor's label from its spec alone (before the part was ever reached)."""
    if "address" in spec:
        return "%s@%s:0x%02x" % (spec["driver"], spec["bus"], spec["address"])
    return "%s@%s" % (spec["driver"], spec.get("bus", "-"))


def create(spec, hw):
    if spec["driver"] == "bme280":
        return Bme280Sensor(spec, hw)
    if spec["driver"] == "pulse":
        return PulseSensor(spec, hw)
    raise ValueError("no adapter for driver %s" % spec["driver"])
