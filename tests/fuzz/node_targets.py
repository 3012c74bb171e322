# Fuzz targets for the node's decoders, in the subset of Python that both CPython and the
# MicroPython unix port run: the fuzzer (tests/fuzz/run.py) calls them under CPython with the
# shims of node_shim.py; tests/test_fuzz_corpus.py replays the corpus through the very same
# functions under the real MicroPython interpreter (tests/fuzz/mpy_replay.py), which is the
# verdict.
#
#     setup(workdir)            once per process: chdir to a scratch folder, build the fakes
#     TARGETS[name](data)       one input; returns None, or raises on a contract violation
#
# Each target documents its contract: the exceptions that are the code's own rejections are
# caught here; anything else (IndexError, TypeError, KeyError, RuntimeError, UnicodeError, a
# MemoryError from a tiny input, an AssertionError from an output check, HangError) escapes
# and is a finding. Output checks: channel values are ints (never bool, float or str) below
# 2^53 (the gateway rejects the whole message otherwise, docs/wire-format.md), acks are maps
# the node's own CBOR encoder can send.
#
# The clock and the scheduler are the environment, not the code under test: every driver's
# `time` and `asyncio` are swapped for a virtual clock whose sleeps return at once (advancing
# it), so a coroutine runs to its end with one send(None) and a timeout costs nothing.

import binascii
import hashlib
import json
import os
import sys

import bootinfo
import cbor
import cfg_gpio  # noqa: F401 - kept loaded: sensors.validate_hw drops only what it loaded
import cfg_i2c  # noqa: F401
import cfg_pulse  # noqa: F401
import cfg_serial  # noqa: F401
import clock
import config
import downlink
import ds18b20
import log
import mbus
import mbusparse  # noqa: F401 - mbus imports it at its top
import modbus
import ota  # downlink imports it per `ota` command and unloads it after: see node_downlink
import pms5003

LIMIT = 1 << 53  # |value| a reading may carry (gateway/wire.py VALUE_LIMIT)


class HangError(Exception):
    """The code under test went on past any sensible bound (a loop an input keeps going)."""


def check(ok, what):
    if not ok:
        raise AssertionError(what)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_values(values, who):
    """A sensor adapter's sample(): {channel key: scaled int}."""
    check(isinstance(values, dict), "%s: sample() returned %r, not a dict" % (who, values))
    for k in values:
        v = values[k]
        check(_is_int(k) and 1 <= k < 1024, "%s: channel key %r" % (who, k))
        check(_is_int(v), "%s: channel %d value %r is a %s, not an int"
              % (who, k, v, type(v).__name__))
        check(-LIMIT < v < LIMIT, "%s: channel %d value %d is out of the wire range "
              "(|v| < 2^53): the gateway would reject the whole message" % (who, k, v))


def run(coro):
    """Runs a coroutine that never really waits (virtual clock) to its end."""
    try:
        coro.send(None)
    except StopIteration as exc:
        return exc.value
    raise HangError("the coroutine yielded to a scheduler: a real sleep slipped through")


# ---- the environment ----------------------------------------------------------------------

class VirtualTime:
    """`time` for the drivers: ticks in ms that move only when a driver sleeps."""

    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now

    def ticks_us(self):
        return self.now * 1000

    def ticks_add(self, t, delta):
        return t + delta

    def ticks_diff(self, a, b):
        return a - b

    def time(self):
        return 1763712000 + self.now // 1000


class VirtualAsyncio:
    """`asyncio` for the drivers: sleeps advance the virtual clock and return at once."""

    def __init__(self, vt):
        self.vt = vt
        self.sleeps = 0

    async def sleep_ms(self, ms):
        self.sleeps += 1
        if self.sleeps > 100000:
            raise HangError("over 100000 sleeps for one input")
        self.vt.now += ms

    async def sleep(self, s):
        await self.sleep_ms(int(s * 1000))


VT = VirtualTime()
VA = VirtualAsyncio(VT)


def _reset_clock():
    VT.now = 0
    VA.sleeps = 0


class FakeUart:
    """A UART whose far end answers each request that `respond(request)` accepts with `answer`
    (all of it readable at once, as after the line went quiet)."""

    def __init__(self, answer, respond):
        self.answer = answer
        self.respond = respond
        self.rx = b""
        self.pos = 0
        self.requests = 0

    def any(self):
        return len(self.rx) - self.pos

    def read(self, n=None):
        end = len(self.rx) if n is None else min(len(self.rx), self.pos + n)
        out = self.rx[self.pos:end]
        self.pos = end
        return out or None

    def readinto(self, buf, n=None):
        n = len(buf) if n is None else min(n, len(buf))
        k = min(n, len(self.rx) - self.pos)
        buf[0:k] = self.rx[self.pos:self.pos + k]
        self.pos += k
        return k

    def write(self, data):
        self.requests += 1
        if self.requests > 1000:
            raise HangError("over 1000 requests for one input")
        if self.respond(bytes(data)):
            self.rx = self.answer
            self.pos = 0
        return len(data)

    def txdone(self):
        return True


class FakeHw:
    def __init__(self, uart=None, ow=None):
        self._uart = uart
        self._ow = ow

    def uart(self, name):
        return self._uart, 9600, None

    def onewire(self, pin, driver):
        return driver(self._ow, "ow%d" % pin)

    def board_info(self):
        return {"chip": "esp32"}


def _quiet_log(level, tag, msg, args):
    # the console line is formatted as on the node, and dropped
    if args:
        msg = msg % args
    return "%s %s: %s" % (level, tag, msg)


# ---- node_config: config.json -> config.load_with_fallback() -------------------------------

GOOD = {
    "node_id": "fz-01",
    "broker": {"host": "127.0.0.1", "port": 1883},
    "i2c": {"0": {"scl": 22, "sda": 21}},
    "uart": {"2": {"tx": 17, "rx": 16}},
    "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 118, "interval_s": 60},
                {"driver": "modbus", "uart": "uart2", "address": 1,
                 "registers": [{"reg": 0, "fn": 4, "channel": "ph"}]}],
}
GOOD_TLS = dict(GOOD)
GOOD_TLS["broker"] = {"host": "mqtt.example.org", "port": 8883, "tls": {"ca": "ca.der"}}
_GOOD_TEXT = json.dumps(GOOD)


def _write(name, data):
    with open(name, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)


def node_config(data):
    """Contract: `config.load_with_fallback()` with a valid config.good.json beside the fuzzed
    config.json never raises (the node always boots: the file's problem or the fallback) and
    returns (raw, validated dict, problem); config.load() raises only ConfigError."""
    _write("config.json", data)
    try:
        cfg = config.load("config.json")
    except config.ConfigError:
        cfg = None
    if cfg is not None:
        check(isinstance(cfg, dict) and isinstance(cfg.get("sensors"), list),
              "config.load returned %r" % (cfg,))
    raw, cfg2, problem = config.load_with_fallback("config.json", "config.good.json")
    check(isinstance(cfg2, dict) and isinstance(cfg2.get("node_id"), str),
          "load_with_fallback returned %r" % (cfg2,))
    check((problem is None) == (cfg is not None),
          "load() and load_with_fallback() disagree: %r / %r" % (cfg, problem))
    check(problem is None or isinstance(problem, str), "problem %r" % (problem,))


# ---- node_downlink: a c/k message -> downlink.handle() (-> the boot's _config_next) ---------

class FakeRtc:
    def __init__(self):
        self.clock_src = 0
        self.clock_offset = 0
        self.clock_at = 0
        self.crash_boots = 0

    def save(self):
        pass

    def clear_crashes(self):
        self.crash_boots = 0


class FakeEvent:
    def set(self):
        pass


class FakeClient:
    connected = False

    async def close(self):
        pass


class FakeNode:
    topic_c = "m/fz-01/c"
    topic_k = "m/fz-01/k"
    firmware = "0.3.0"  # Node.firmware: the image's version (status.firmware_version)

    def __init__(self, flags):
        raw = json.loads(json.dumps(GOOD_TLS if flags & 2 else GOOD))
        self.raw = raw
        self.cfg = config.validate(raw)
        self.sensors = [[spec, "s%d" % i, None, None, 0]
                        for i, spec in enumerate(self.cfg["sensors"])]
        self.rejected = 0
        self.safe = "3 boots in a row crashed" if flags & 4 else None
        self.app_trial = bool(flags & 16)
        self.app = {"run": "app0", "v": "0.4.0", "trial": 0} if flags & 16 else None
        self.q = [1, 2, 3]
        self.flush = False
        self.wake = FakeEvent()
        self.rtc = FakeRtc()
        self.client = FakeClient()
        self.hw = FakeHw()
        self.trial = None
        self.restart_after_ack = False
        self.acks = []
        self.restarts = []

    async def ack(self, body):
        check(isinstance(body, dict), "ack body %r" % (body,))
        check(isinstance(body.get("ok"), bool), "ack without a boolean ok: %r" % (body,))
        check(isinstance(body.get("cmd"), str), "ack without a cmd: %r" % (body,))
        check(body["ok"] or isinstance(body.get("err"), str), "failed ack without err: %r"
              % (body,))
        cbor.encode(body)  # what node.ack() sends: must encode
        self.acks.append(body)

    async def restart(self, why="reboot"):
        self.restarts.append(why)

    async def read_all(self):
        return 42

    def interval(self):
        return min([s[0]["interval_s"] for s in self.sensors] or [0])

    def diagnostics(self):
        return {"on": True, "fw": "0.3.0", "boot": 3, "q": 3, "qd": 0, "seq": 42,
                "heap": 40000, "rejected": self.rejected, "clock": clock.source(),
                "last": {}}


# an app bundle (host_tools/bundle.py's layout) and the state of its transfer with every chunk
# but the last on flash: a fuzzed `chunk` message can finish it (bit 3 of the flags byte)
_BUNDLE_CS = 64


def _bundle():
    files = [["x.mpy", 70]]
    header = cbor.encode({"v": "0.4.0", "chips": ["esp32"], "mpy": [6, 3], "files": files})
    return b"MLB1" + len(header).to_bytes(4, "big") + header + bytes(range(70))


BUNDLE = _bundle()
BUNDLE_SHA = hashlib.sha256(BUNDLE).digest()
_BUNDLE_CHUNKS = (len(BUNDLE) + _BUNDLE_CS - 1) // _BUNDLE_CS
_KEEP = ("config.json", "config.good.json", "ca.der")


def _clean():
    for name in os.listdir("."):
        if name in _KEEP:
            continue
        try:
            os.remove(name)
        except OSError:  # a slot folder
            for inner in os.listdir(name):
                os.remove(name + "/" + inner)
            os.rmdir(name)


def _ota_in_progress():
    st = {"sha": binascii.hexlify(BUNDLE_SHA).decode(), "size": len(BUNDLE), "cs": _BUNDLE_CS,
          "v": "0.4.0", "n": _BUNDLE_CHUNKS - 1, "dl": 300, "id": None, "part": None}
    _write("ota.bin", BUNDLE[:(_BUNDLE_CHUNKS - 1) * _BUNDLE_CS])
    _write("ota.json", json.dumps(st))


def node_downlink(data):
    """Input: one flags byte, then the payload. Flags: bit 0 the `k` topic (else `c`), bit 1
    the node uses TLS, bit 2 safe mode, bit 3 an app update transfer with all but its last
    chunk received, bit 4 an app update on trial.

    Contract: `downlink.handle()` never raises (node.py logs a raise as a bug and the gateway
    never gets an answer); every answer is a map with cmd, ok (and err when not ok) that
    cbor.encode() takes. A config update it stores is then checked by the boot's
    bootinfo._config_next(), which never raises and leaves ack.pending with a boolean ok."""
    if not data:
        return
    flags = data[0]
    sys.modules["ota"] = ota  # as loaded (instrumented, under the fuzzer), not compiled again
    _clean()
    _write("config.json", _GOOD_TEXT)  # the interval command and an installed update rewrite it
    _write("config.good.json", _GOOD_TEXT)
    if flags & 8:
        _ota_in_progress()
    node = FakeNode(flags)
    clock.init(node.rtc)
    topic = node.topic_k if flags & 1 else node.topic_c
    run(downlink.handle(node, topic, bytes(data[1:])))
    check(len(node.acks) <= 1, "%d acks for one message" % len(node.acks))
    try:
        os.stat("config.next.json")
    except OSError:
        return
    bootinfo._config_next(config)
    with open("ack.pending") as f:
        ack = json.loads(f.read())
    check(isinstance(ack, dict) and isinstance(ack.get("ok"), bool),
          "ack.pending after the boot's check: %r" % (ack,))


# ---- mbus: the meter's RSP_UD answer -> MBus link layer + mbusparse + the adapter ----------

def _mbus_respond(req):
    return len(req) == 5 and req[0] == 0x10 and req[1] & 0xDF == 0x5B  # REQ_UD2


def mbus_frame(data):
    """Input: the bytes on the line after REQ_UD2 (a long frame 68 L L 68 ... CS 16).

    Contract: MBusSensor.sample() (the link layer's checks, mbusparse.parse, the value
    scaling) raises only OSError (MBusError is one); the telegram it keeps in `last` has the
    documented shape; values are ints below 2^53."""
    _reset_clock()
    uart = FakeUart(bytes(data), _mbus_respond)
    spec = {"interval_s": 60, "bus": "uart2", "timeout_ms": 500, "address": 5,
            "secondary": None, "instance": 0}
    sensor = mbus.MBusSensor(spec, FakeHw(uart))
    sensor.bus._retries = 0
    sensor._ready = True  # SND_NKE answered
    try:
        values = run(sensor.sample())
    except OSError:
        return
    t = sensor.last
    check(isinstance(t, dict), "telegram %r" % (t,))
    check(_is_int(t["id"]) and 0 <= t["id"] <= 99999999, "id %r" % (t["id"],))
    check(isinstance(t["manufacturer"], str) and len(t["manufacturer"]) == 3,
          "manufacturer %r" % (t["manufacturer"],))
    for name in ("version", "medium", "access", "status", "address"):
        check(_is_int(t[name]) and 0 <= t[name] <= 255, "%s %r" % (name, t[name]))
    for rec in t["records"]:
        check(isinstance(rec, tuple) and len(rec) == 8, "record %r" % (rec,))
        unit, exp, value, storage, tariff, subunit, fn, vifes = rec
        check(isinstance(unit, str) and _is_int(exp), "record %r" % (rec,))
        check(value is None or isinstance(value, (int, float, str, tuple)), "value %r" % (value,))
        check(isinstance(value, float) or not isinstance(value, bool), "value %r" % (value,))
        for v in (storage, tariff, subunit, fn):
            check(_is_int(v) and v >= 0, "record %r" % (rec,))
        check(isinstance(vifes, tuple), "record %r" % (rec,))
    for p in t["problems"]:
        check(isinstance(p, tuple) and len(p) == 3 and _is_int(p[0]) and isinstance(p[2], str),
              "problem %r" % (p,))
    check_values(values, "mbus")


# ---- modbus: a slave's answer -> ModbusRTU._transact + decode + the adapter -----------------

# register maps a node's config can hold (drivers/cfg_serial.py's output), one per input
_MODBUS_MAPS = (
    {"reg": 0, "fn": 4, "type": "u16", "order": "hl", "channel": "ph", "id": 12},
    {"reg": 4, "fn": 4, "type": "s16", "order": "hl", "channel": "temperature", "id": 1},
    {"reg": 2, "fn": 3, "type": "u32", "order": "hl", "channel": "water_volume", "id": 4},
    {"reg": 2, "fn": 3, "type": "s32", "order": "lh", "channel": "water_volume", "id": 4},
    {"reg": 0, "fn": 3, "type": "f32", "order": "hl", "channel": "water_flow", "id": 5,
     "mul": 1000000, "div": 3600},
    {"reg": 0, "fn": 4, "type": "f32", "order": "lh", "channel": "water_pressure", "id": 15},
    {"reg": 4, "fn": 3, "type": "u16", "order": "hl", "channel": "alarms", "id": 16, "mask": 1},
    {"reg": 6, "fn": 4, "type": "f32", "order": "hl", "channel": "alarms", "id": 16,
     "mask": 0x8000},
    {"reg": 8, "fn": 3, "type": "s32", "order": "hl", "channel": "conductivity", "id": 13,
     "mul": -7, "div": 3},
    {"reg": 1, "fn": 4, "type": "u32", "order": "lh", "channel": "heat_energy", "id": 19,
     "mul": 3600, "div": 1},
)


def _modbus_respond(req):
    return len(req) == 8


def modbus_answer(data):
    """Input: one byte choosing the register map (of _MODBUS_MAPS), then the bytes the slave
    sends back to the read request (address 1).

    Contract: ModbusSensor.sample() raises only OSError (ModbusError is one); values are
    ints below 2^53."""
    if not data:
        return
    _reset_clock()
    reg = {"mul": 1, "div": 1, "mask": None, "instance": 0}
    reg.update(_MODBUS_MAPS[data[0] % len(_MODBUS_MAPS)])
    uart = FakeUart(bytes(data[1:]), _modbus_respond)
    spec = {"bus": "uart2", "address": 1, "interval_s": 60, "timeout_ms": 200, "retries": 0,
            "registers": [reg]}
    sensor = modbus.ModbusSensor(spec, FakeHw(uart))
    try:
        values = run(sensor.sample())
    except OSError:
        return
    check_values(values, "modbus %s" % reg["type"])


# ---- pms5003: the sensor's answer to a passive read -> PMS5003.read + the adapter ----------

def _pms_respond(req):
    return len(req) == 7 and req[2] == 0xE2  # passive-mode read


def pms5003_frame(data):
    """Input: the bytes the sensor sends after the read command (a 32-byte frame 42 4D ...).

    Contract: PMS5003Sensor.sample() raises only OSError; values are three ints 0-65535."""
    _reset_clock()
    uart = FakeUart(bytes(data), _pms_respond)
    spec = {"bus": "uart1", "interval_s": 60, "warmup_ms": 0, "sleep": False, "instance": 0}
    sensor = pms5003.PMS5003Sensor(spec, FakeHw(uart))
    try:
        values = run(sensor.sample())
    except OSError:
        return
    check_values(values, "pms5003")
    check(len(values) == 3 and all(0 <= v <= 65535 for v in values.values()),
          "pms5003 values %r" % (values,))


# ---- ds18b20: what the 1-Wire line answers -> ROM search + conversion + scratchpad ---------

class FakeOneWire:
    """The line as a bit stream (LSB first), repeated for as long as it is read: presence
    after a reset is a 0 bit, a read slot one bit, a byte eight. An empty stream is an open
    line (no presence, all ones). A line that keeps answering forever (stuck low, a faulty
    probe) must not keep the driver reading it forever: over 100 resets is a hang (a search
    pass per probe; a node reads at most 16 per bus)."""

    def __init__(self, data):
        self.data = bytes(data)
        self.bits = 8 * len(self.data)
        self.at = 0
        self.resets = 0

    def _bit(self):
        if not self.bits:
            return 1
        i = self.at % self.bits
        self.at += 1
        return (self.data[i >> 3] >> (i & 7)) & 1

    def reset(self):
        self.resets += 1
        if self.resets > 100:
            raise HangError("over 100 bus resets for one input: the ROM search does not end")
        return self._bit() == 0

    def readbit(self):
        return self._bit()

    def readbyte(self):
        v = 0
        for i in range(8):
            v |= self._bit() << i
        return v

    def readinto(self, buf):
        for i in range(len(buf)):
            buf[i] = self.readbyte()

    def writebit(self, b):
        pass

    def writebyte(self, b):
        pass

    def write(self, buf):
        pass


def ds18b20_line(data):
    """Input: the 1-Wire line's answers (see FakeOneWire).

    Contract: creating the adapter (the ROM search) and sample() (conversion, scratchpad, its
    CRC) raise only OSError; the value is an int within the 16-bit range of the part
    (-204800..204793 in 0.01 degC), and the search ends."""
    _reset_clock()
    ds18b20.ticks_ms = VT.ticks_ms
    ds18b20.ticks_diff = VT.ticks_diff
    spec = {"interval_s": 60, "pin": 4, "rom": None, "index": 0, "instance": 0}
    try:
        sensor = ds18b20.DS18B20Sensor(spec, FakeHw(ow=FakeOneWire(data)))
        sensor._sleep_ms = VA.sleep_ms
        values = run(sensor.sample())
    except OSError:
        return
    check_values(values, "ds18b20")
    v = values[1]
    check(-204800 <= v <= 204793, "ds18b20 value %d" % v)


# ---- registry ------------------------------------------------------------------------------

TARGETS = {
    "node_config": node_config,
    "node_downlink": node_downlink,
    "mbus": mbus_frame,
    "modbus": modbus_answer,
    "pms5003": pms5003_frame,
    "ds18b20": ds18b20_line,
}


def setup(workdir):
    """Once per process: work in `workdir` (files the targets write), quiet the console log,
    give the drivers the virtual clock."""
    os.chdir(workdir)
    _write("config.good.json", _GOOD_TEXT)
    _write("config.json", _GOOD_TEXT)
    _write("ca.der", b"\x30\x03\x02\x01\x00")
    log._emit = _quiet_log
    clock.time = VT  # time.time(): an int, as on the node (CPython's is a float)
    for mod in (mbus, modbus, pms5003):
        mod.time = VT
        mod.asyncio = VA
