"""Virtual board core: the board description (board.json), the physical environment
(env.json), the I2C buses and the device models on them. `machine`, `network` and `esp32` are
thin ESP32-port faces on top of this; the files and the in-process API are described below."""

# A node's folder (`$VBOARD_DIR`, the parent of its flash folder) holds:
#
#     board.json        the hardware, read once per boot (first use):
#                       {"board": "esp32-devkitc", "chip": "esp32", "unique_id": "a1b2c3d4e5f6",
#                        "i2c": {"0": {"scl": 22, "sda": 21,
#                                      "devices": [{"model": "bme280", "address": 118}]}},
#                        "wifi": {"ssid": "meterlink-lab", "rssi": -61}}
#                       chip: esp32 | esp32s2 | esp32s3 | esp32c3 | esp32c6 (default esp32).
#                       unique_id: 12 hex digits (default 240ac4000001). A device entry is
#                       {"model": name, "address": int, ...}; the other keys go to the model's
#                       constructor (bme280: "calibration": "datasheet" or a dict of dig_*).
#                       wifi: ssid (absent: any ssid connects), key (absent: any key works),
#                       rssi (dBm, default -60), channel (default 6), connect_ms (default 200).
#                       I2C models: bme280, sht4x (hw/sht4x.py).
#                       "uart": {"2": {"tx": 17, "rx": 16, "devices": [{"model": "modbus_slave",
#                        "address": 1, "profile": "water_quality"}]}}: serial lines (hw/uart.py);
#                       models modbus_slave (hw/modbus.py), mbus_meter (hw/mbus.py), pms5003
#                       (hw/pms5003.py), each with its line settings.
#                       "onewire": {"4": {"devices": [{"model": "ds18b20", "serial": 1,
#                        "temp_c": 12.5}]}}: 1-Wire buses by GPIO (hw/onewire.py).
#     env.json          the physical world, rewritten by the launcher at any time (temp + rename):
#                       {"temperature_c": 21.5, "humidity_pct": 45.0, "pressure_pa": 101325.0,
#                        "rssi_dbm": -70, "faults": {"i2c0:0x76": "absent"}}
#                       Missing file or key: 20.0 C, 50.0 %RH, 101325 Pa, no faults.
#                       Faults: "i2c<bus>:0x<addr>" -> "absent" (the part NACKs: ENODEV) or
#                       "timeout" (the transfer times out: ETIMEDOUT); "i2c<bus>" -> "timeout"
#                       (bus held low) or "hang" (the driver call never returns: a wedged
#                       peripheral, for watchdog tests); "wifi" -> "down" (the access point is
#                       gone); models add
#                       their own (bme280: "busy", the conversion never finishes).
#                       More keys: "adc_mv": {"<gpio>": mV at the pin} (hw/adc.py); "ph",
#                       "turbidity_ntu", "conductivity_us_cm", "chlorine_mg_l",
#                       "water_temperature_c", "flow_m3_h", "total_l", "flow_error" (Modbus
#                       probes); "mbus": {"<serial>": {"volume_l": ..., ...}} (M-Bus meters);
#                       "ds18b20": {"<rom hex>": degC}; "pm1_ug_m3", "pm2_5_ug_m3",
#                       "pm10_ug_m3" (PMS5003). Faults: "adc<gpio>": "open"; "uart<id>":
#                       "noise" | "dead", "uart<id>:<address>": "absent" | "late";
#                       "mbus:<serial>": "checksum" | "length" | "short"; "pms5003":
#                       "length"; "onewire<gpio>": "short" | "open",
#                       "onewire<gpio>:<rom hex>": "absent" | "crc" | "por"; "i2c<bus>:0x<addr>"
#                       "crc" | "busy" (sht4x). Each model's module has the details.
#     rtc_memory.bin    RTC slow memory (machine.RTC().memory()); survives every restart of the
#                       process like RTC memory survives deep sleep and resets; the launcher
#                       deletes it to model a power cycle.
#     rtc.json          RTC offset from the host clock, set by machine.RTC().datetime(tuple).
#     nvs.json          esp32.NVS contents (committed values only).
#     reset_cause.json  {"cause": machine.*_RESET, "wake": machine.*_WAKE}: written by the process
#                       as it resets or sleeps, consumed by the next boot (absent: power-on).
#     deepsleep.json    {"ms": int or null, "ext0": ..., "ext1": ...}: written by deepsleep().
#     meters.json       {"25": {"forward": n, "reverse": n}}: the pulses each pulse meter made.
#     relay.json        [[level, host time ms], ...]: every change of the coil of the relay
#                       module of board.json "relay": {"pin": 26} (hw/pin.py relay()).
#
# "meters" in board.json: [{"a": 25, "b": 26, "tamper": 27}], pulse meters on GPIOs driven by
# env.json "meters": {"25": {"forward": n, "reverse": n, "tamper": false}} (hw/meter.py
# EnvMeter), made in real time whenever the firmware touches the hardware (hw.tick()).
#
# Changes to env.json are detected with os.stat (inode, size, mtime): the file is read again
# only when one of them changed, and models refresh it at most once per measurement trigger.
# A rewrite by temp + rename always gets a new inode, so same-second rewrites are seen.
#
# In-process boards (tests; the functions are re-exported by `machine`):
#
#     import machine
#     machine.vboard_configure("vb", {"i2c": {"0": {"scl": 22, "sda": 21, "devices": [
#         {"model": "bme280", "address": 0x76}]}}})      # folder "vb" (created), board in code
#     machine.vboard_set_env(temperature_c=-12.5)          # rewrites vb/env.json atomically
#     bme = machine.vboard().i2c[0].devices[0x76]         # the model, for register-level checks
#     machine.vboard_attach(0, SomeModel(0x40))           # add a part to a bus
#
# vboard_configure(None) with no board goes back to $VBOARD_DIR (or the empty default board).
#
# GPIO-level parts are models a test holds in-process (they drive pins through
# hw.pin.drive(gpio, level); after a vboard_configure(), which resets the GPIO matrix, call
# their reattach()):
#
#     from hw.meter import PulseMeter      # reed / quadrature pulse meter with bounce and a
#     m = PulseMeter(a=25, b=26, tamper=27)  # tamper loop, on its own virtual clock
#     m.run(10); m.run(2, reverse=True); m.tamper(True); m.step_ms(3600000)
#
# esp32.PCNT (hw/pcnt.py) counts edges of a pad as hw.pin.drive() changes it.
#
# (Documentation is in comments: loaded from source instead of frozen, these modules compile
# on the node's heap, where a docstring costs memory and a comment does not.)

import json
import os

# Wake-up sources armed by esp32.wake_on_*() and Pin.irq(wake=...): read by machine.deepsleep().
wake = {}

_board = None
_hooks = []


# The watchdog (hw/rtc.py WDT) is checked whenever the firmware touches the hardware: a driver
# stuck in a bus call, a loop polling a pin or the Wi-Fi. (A thread would check it in real time
# but the unix port's threads and Ctrl-C from a REPL do not mix reliably.)
wdt = None


def wdt_poll():
    w = wdt
    if w is not None and w.expired():
        w.bite()
    tick()


def tick():
    """The GPIO-level parts driven by env.json (board.json "meters", hw/meter.py) catch up, and
    the machine.Timer callbacks that are due are scheduled (hw/timer.py)."""
    import sys

    if "hw.timer" in sys.modules:
        sys.modules["hw.timer"].poll()
    b = _board
    if b is not None and b.meters:
        for m in b.meters:
            m.tick()


def _wire(b):
    if b.spec.get("meters"):
        from hw.meter import env_meters

        b.meters = env_meters(b)
    if b.spec.get("relay"):
        from hw.pin import relay

        relay(b)


def vboard_path():
    """The node's folder: the one given to configure(), else $VBOARD_DIR, else None."""
    if _board is not None:
        return _board.dir
    return os.getenv("VBOARD_DIR") or None


def board():
    """The current board, loaded from $VBOARD_DIR/board.json on first use."""
    global _board
    if _board is None:
        from hw.core import Board

        path = os.getenv("VBOARD_DIR") or None
        _board = Board(path, read_json(_join(path, "board.json")) or {})
        _wire(_board)
    return _board


def env():
    return board().env


def configure(path=None, spec=None):
    """Starts a fresh board (a power-on): `path` is the node folder (None: $VBOARD_DIR), `spec`
    a board.json-shaped dict used instead of the file. Per-board state in machine/network/esp32
    (pins, Wi-Fi, NVS, reset cause) is reset through the hooks they registered."""
    global _board
    from hw.core import Board

    if path is None:
        path = os.getenv("VBOARD_DIR") or None
    elif not _exists(path):
        os.mkdir(path)
    if spec is None:
        spec = read_json(_join(path, "board.json")) or {}
    _board = None  # a board that fails to load leaves none behind
    b = _board = Board(path, spec)
    wake.clear()
    for fn in _hooks:
        fn(b)
    _wire(b)
    return b


def on_configure(fn):
    """Registers fn(board) to run at every new board (a module's power-on reset)."""
    _hooks.append(fn)


def attach(bus_id, model):
    """Puts a device model on I2C bus `bus_id` (created, with any pins, if the board has none)."""
    b = board()
    bus = b.i2c.get(bus_id)
    if bus is None:
        from hw.core import Bus

        bus = b.i2c[bus_id] = Bus(bus_id)
    bus.attach(model)
    return model


def set_env(**values):
    """Updates the environment (merged into env.json, written atomically, like the launcher)."""
    e = env()
    e.refresh()
    data = dict(e.data)
    data.update(values)
    if e.path is None:
        e.apply(data)
    else:
        write_json(e.path, data)
        e.invalidate()


# ---------------------------------------------------------------------------------- files
def _join(path, name):
    return None if path is None else path + "/" + name


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read_json(path):
    """The parsed file, or None if it does not exist. A malformed file raises ValueError
    naming it: the launcher wrote something wrong and the node should say so at once."""
    if path is None:
        return None
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError("virtual board: %s is not valid JSON" % path)


def write_json(path, obj):
    """Writes atomically (temp file + rename), as the launcher does."""
    write_file(path, json.dumps(obj))


def write_file(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb" if isinstance(data, (bytes, bytearray)) else "w") as f:
        f.write(data)
    os.rename(tmp, path)


def remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


