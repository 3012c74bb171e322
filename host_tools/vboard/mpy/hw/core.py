"""board.json, env.json and the I2C buses of the virtual board (see the `hw` package)."""

import errno
import os
import time

import hw

DEFAULT_ENV = {"temperature_c": 20.0, "humidity_pct": 50.0, "pressure_pa": 101325.0}
DEFAULT_UNIQUE_ID = "240ac4000001"  # Espressif OUI
# model name in board.json -> (module in this package, class)
MODELS = {"bme280": ("bme280", "BME280"), "sht4x": ("sht4x", "SHT4x"),
          "modbus_slave": ("modbus", "ModbusSlave"), "mbus_meter": ("mbus", "MBusMeter"),
          "pms5003": ("pms5003", "PMS5003")}


class Board:
    """board.json, parsed: chip, unique_id, wifi, I2C buses with their device models, env."""

    def __init__(self, path, spec):
        if not isinstance(spec, dict):
            raise ValueError("board.json: expected an object, got %r" % (spec,))
        self.dir = path
        self.spec = spec
        self.name = spec.get("board", "virtual")
        self.chip = spec.get("chip", "esp32")
        uid = spec.get("unique_id", DEFAULT_UNIQUE_ID)
        try:
            self.unique_id = bytes.fromhex(uid)
        except (TypeError, ValueError):
            self.unique_id = b""
        if len(self.unique_id) != 6:
            raise ValueError("board.json unique_id must be 12 hex digits: got %r" % (uid,))
        self.wifi = spec.get("wifi") or {}
        self.env = Env(self.file("env.json"))
        self.meters = []  # env-driven GPIO parts (hw/meter.py), wired by hw after power-on
        self.i2c = {}
        for key, bus_spec in (spec.get("i2c") or {}).items():
            bus = Bus(int(key), bus_spec.get("scl"), bus_spec.get("sda"))
            self.i2c[bus.id] = bus
            for n, dev in enumerate(bus_spec.get("devices") or ()):
                bus.attach(make_model(dev, "i2c.%s.devices[%d]" % (key, n)))

    def file(self, name):
        """Path of a file in the node folder, or None for a board without a folder."""
        return hw._join(self.dir, name)

    def i2c_bus(self, bus_id, scl, sda):
        """The wires an I2C controller on these pins reaches: the board's bus with that id if
        its pins match (or the caller left them default), else an empty bus."""
        bus = self.i2c.get(bus_id)
        if bus is not None and bus.wired_to(scl, sda):
            return bus
        return Bus(bus_id, scl, sda)

    def soft_i2c_bus(self, scl, sda):
        for bus in self.i2c.values():
            if bus.wired_to(scl, sda):
                return bus
        return Bus(-1, scl, sda)


def make_model(spec, where):
    spec = dict(spec)
    name = spec.pop("model", None)
    if name not in MODELS:
        raise ValueError("board.json %s: unknown model %r (known: %s)"
                         % (where, name, ", ".join(sorted(MODELS))))
    modname, clsname = MODELS[name]
    mod = __import__("hw." + modname, None, None, (clsname,))
    try:
        return getattr(mod, clsname)(**spec)
    except (TypeError, ValueError) as exc:
        raise ValueError("board.json %s (%s): %s" % (where, name, exc))


# ---------------------------------------------------------------------------------- env
class Env:
    """env.json, re-read only when the file changed (inode, size, mtime)."""

    def __init__(self, path):
        self.path = path
        self.version = 0  # bumps on every change a model could see
        self._stamp = 0  # 0: never looked
        self.apply({})

    def apply(self, data):
        if not isinstance(data, dict):
            raise ValueError("virtual board: env.json must be an object, got %r" % (data,))
        for key in DEFAULT_ENV:
            v = data.get(key)
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError("virtual board: env.json %s must be a number, got %r" % (key, v))
        faults = data.get("faults") or {}
        if not isinstance(faults, dict):
            raise ValueError("virtual board: env.json faults must be an object, got %r" % (faults,))
        self.data = data
        self.faults = faults
        self.version += 1

    def invalidate(self):
        self._stamp = 0

    def refresh(self):
        """Re-reads the file if it changed; True when it did."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
            stamp = (st[1], st[6], st[8])
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.apply((hw.read_json(self.path) if stamp else None) or {})
        return True

    def get(self, key):
        v = self.data.get(key)
        return DEFAULT_ENV.get(key) if v is None else v

    def fault(self, key):
        """The fault injected for `key` ("i2c0:0x76", "wifi", ...), or None."""
        self.refresh()
        if not self.faults:
            return None
        return self.faults.get(key)


# ---------------------------------------------------------------------------------- I2C
class I2CDevice:
    """Base of I2C device models. A transfer addresses the part once (the bus checks the ACK,
    faults included), then calls i2c_write() with the buffers of the write phase (one byte
    stream) and/or i2c_read() with the buffer to fill after a (repeated) start."""

    def __init__(self, address):
        self.address = address
        self.bus = None

    def i2c_write(self, bufs):
        pass

    def i2c_read(self, buf):
        for i in range(len(buf)):
            buf[i] = 0xFF  # nothing driving SDA: the pull-ups read as 1s

    def fault(self):
        """This part's injected fault from env.json, or None."""
        e = hw.env()
        e.refresh()
        if not e.faults or self.bus is None:
            return None
        return e.faults.get("i2c%d:0x%02x" % (self.bus.id, self.address))


class Bus:
    """The two wires and the parts on them."""

    def __init__(self, bus_id, scl=None, sda=None):
        self.id = bus_id
        self.scl = scl
        self.sda = sda
        self.devices = {}

    def wired_to(self, scl, sda):
        return (scl is None or self.scl is None or scl == self.scl) and \
            (sda is None or self.sda is None or sda == self.sda)

    def attach(self, model):
        if model.address in self.devices:
            raise ValueError("two parts at 0x%02x on I2C bus %d" % (model.address, self.id))
        self.devices[model.address] = model
        model.bus = self
        return model

    def select(self, addr):
        """The part that ACKs `addr`, or OSError as the ESP32 port raises it (ENODEV on a
        NACK, ETIMEDOUT on a bus timeout)."""
        hw.wdt_poll()
        e = hw.env()
        e.refresh()
        if e.faults:
            if e.faults.get("i2c%d" % self.id) == "timeout":
                raise OSError(errno.ETIMEDOUT)
            if e.faults.get("i2c%d" % self.id) == "hang":
                while True:  # a wedged peripheral driver: the call never returns
                    time.sleep_ms(50)
                    hw.wdt_poll()
            f = e.faults.get("i2c%d:0x%02x" % (self.id, addr))
            if f == "timeout":
                raise OSError(errno.ETIMEDOUT)
            if f == "absent":
                raise OSError(errno.ENODEV)
        dev = self.devices.get(addr)
        if dev is None:
            raise OSError(errno.ENODEV)
        return dev
