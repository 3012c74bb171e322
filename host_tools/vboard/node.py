"""Runs a virtual node: the real `firmware/` and `drivers/` in the MicroPython unix port, with
the virtual board's hardware modules (`host_tools/vboard/mpy`, frozen into the build) standing
in for the ESP32's. The node runs what a device runs, in a 96 KB heap, in one of two forms:

- "image" (the default): the meterlink image, the firmware frozen into the 32-bit unix-port
  build by the manifest the ESP32 image uses (boards/manifest.py), and boot.py and main.py on
  the node's filesystem, as `meterlink deploy` leaves a node flashed with that image;
- "mpy": a stock MicroPython build with the firmware as the .mpy files mpy-cross makes for the
  board's architecture (what `meterlink deploy` copies to a node with a stock image); their
  bytecode is loaded into the heap.

Both come from where a device's come from, host_tools/firmware_build.py (`image_files()`,
`compiled(arch)`), so a virtual node runs the files a real one is given.

The heap: the firmware gets 96 KB of MicroPython heap, like a small ESP32. The virtual board's
own objects (the `machine`/`network` modules and the sensor models, which are C code and
peripherals on a device and take nothing from its MicroPython heap) are frozen into our build
but still allocate on the unix port's heap; `vboard_allowance()` measures exactly how much for
the node's board.json, in a separate probe process, and the node runs with
`-X heapsize=<96 KB + that allowance>`. What the firmware allocates stays bounded by 96 KB; the
node logs its free heap, which is the firmware's headroom.

A node lives in one folder:

    <root>/flash/         the node's filesystem (cwd of the process): config.json, seq.dat, ...
    <root>/board.json     the hardware: chip, I2C buses and the parts on them
    <root>/env.json       the physical environment the parts measure (rewritten atomically)
    <root>/console.log    everything the node printed (its serial console)

    node = VirtualNode(tmp / "node-01", node_id="node-01", broker=("127.0.0.1", 1883))
    node.set_environment(temperature_c=21.5, humidity_pct=40.0, pressure_pa=101325)
    node.start()
    ...
    node.stop()
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from host_tools import firmware_build, process, toolchain
from host_tools.vboard import bootloader
from meterlink_common import write_json_atomic

DEFAULT_HEAP = "96K"
FORMS = {"image": "image", "mpy": "stock"}  # firmware form -> unix-port build it runs on


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None

_PROBE = """
import gc
gc.collect()
before = gc.mem_free()
import machine, network, esp32, hw
b = hw.board()
machine.RTC().memory()
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect(b.wifi.get("ssid") or "probe", b.wifi.get("key") or "")
import time
while not w.isconnected():
    time.sleep_ms(20)
w.status("rssi")
for bus in b.spec.get("i2c", {}):
    machine.I2C(int(bus)).scan()
if b.spec.get("uart"):
    import hw.uart
    for bus in b.spec["uart"]:
        hw.uart.bus(int(bus))
if b.spec.get("onewire"):
    import hw.onewire
    for bus in b.spec["onewire"]:
        hw.onewire.bus(int(bus))
for pin in ADC_PINS:
    try:
        machine.ADC(machine.Pin(pin), atten=3).read_uv()
    except ValueError:  # not an ADC pin: the node's config check says so
        pass
gc.collect()
print("ALLOWANCE", before - gc.mem_free())
"""


def heap_size(text: str) -> int:
    """A heap size as `-X heapsize=` takes it ("96K", "1M", "98304"), in bytes."""
    text = text.strip().upper()
    if text.endswith("K"):
        return int(text[:-1]) * 1024
    if text.endswith("M"):
        return int(text[:-1]) * 1024 * 1024
    return int(text)


_allowances: dict[str, int] = {}


def vboard_allowance(board_json: Path, adc_pins: tuple[int, ...] = (), form: str = "image") -> int:
    """Bytes of unix-port heap the virtual board itself uses for this board (see above) and
    the ADC pins the node reads, rounded up to 256 bytes, in the build of `form`; measured
    once per board description and process."""
    key = Path(board_json).read_text() + repr(tuple(adc_pins)) + form
    if key not in _allowances:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "board.json").write_text(Path(board_json).read_text())
            (Path(tmp) / "flash").mkdir()
            probe = f"ADC_PINS = {tuple(adc_pins)!r}\n" + _PROBE
            out = subprocess.run(
                [toolchain.micropython(FORMS[form]), "-X", "heapsize=1M", "-c", probe],
                cwd=Path(tmp) / "flash", capture_output=True, text=True, timeout=60,
                env={"PATH": "/usr/bin:/bin", "MICROPYPATH": ".frozen", "VBOARD_DIR": tmp})
        for line in out.stdout.splitlines():
            if line.startswith("ALLOWANCE "):
                _allowances[key] = (int(line.split()[1]) + 255) // 256 * 256
                break
        else:
            raise RuntimeError(f"virtual board probe failed:\n{out.stdout}{out.stderr}")
    return _allowances[key]


def config_adc_pins(flash: Path) -> tuple[int, ...]:
    """The ADC pins the config.json in `flash` reads (for vboard_allowance: their ADC objects
    are C objects on a device)."""
    cfg = read_json(Path(flash) / "config.json") or {}
    return tuple(sorted({s["pin"] for s in cfg.get("sensors") or ()
                         if isinstance(s, dict) and s.get("driver") in ("battery", "pressure")
                         and isinstance(s.get("pin"), int)}))


BOOT = "import boot\nimport main\n"


def default_board(*, chip: str = "esp32", bme280_address: int = 0x76) -> dict:
    """An ESP32-DevKitC with a BME280 on I2C bus 0 (SCL 22, SDA 21)."""
    return {
        "board": "esp32-devkitc",
        "chip": chip,
        "unique_id": os.urandom(6).hex(),
        "i2c": {"0": {"scl": 22, "sda": 21, "devices": [{"model": "bme280", "address": bme280_address}]}},
        "wifi": {"ssid": "meterlink-lab", "rssi": -61},
    }


def default_config(node_id: str, host: str, port: int, *, interval_s: int = 10,
                   prefix: str = "m", tls: dict | None = None) -> dict:
    """`tls`: the broker.tls section (Mosquitto.node_tls()), None for plain MQTT."""
    broker = {"host": host, "port": port, "keepalive": 30}
    if tls:
        broker["tls"] = tls
    return {
        "node_id": node_id,
        "prefix": prefix,
        "wifi": {"ssid": "meterlink-lab", "password": "lab-only"},
        "broker": broker,
        "i2c": {"0": {"scl": 22, "sda": 21}},
        "sensors": [{"driver": "bme280", "bus": "i2c0", "address": 0x76, "interval_s": interval_s}],
    }


class VirtualNode:
    """One virtual ESP32 running the real firmware."""

    def __init__(self, root: str | Path, *, node_id: str, broker,
                 interval_s: int = 10, config: dict | None = None, board: dict | None = None,
                 heap: str = DEFAULT_HEAP, form: str = "image",
                 files: dict[str, bytes] | None = None) -> None:
        """`broker`: (host, port), or a `host_tools.broker.Mosquitto`, whose TLS settings and
        files (CA, the node's certificate) the node then gets unless `config` has its own
        broker.tls; `files`: more files for the node's filesystem."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}: got {form!r}")
        self.form = form
        self.root = Path(root)
        self.node_id = node_id
        self.flash = self.root / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        self.heap = heap
        self.proc: subprocess.Popen | None = None
        self._console = None
        self._lock = threading.Lock()
        self._stopping = False
        self._supervisor: threading.Thread | None = None
        self.exits: list[int] = []
        self.pin_wakes = 0  # deep sleeps ended by a meter pulse (see _pulse_woke)
        files = dict(files or {})
        if isinstance(broker, tuple):
            host, port = broker
        else:  # a Mosquitto: connect to it as a node provisioned for it would, TLS included
            host, port = broker.host, broker.port
        cfg = config or default_config(node_id, host, port, interval_s=interval_s)
        if not isinstance(broker, tuple) and broker.node_tls(node_id) \
                and "tls" not in cfg["broker"]:
            cfg = dict(cfg, broker=dict(cfg["broker"], tls=broker.node_tls(node_id)))
            files.update(broker.node_files(node_id))
        write_json_atomic(self.flash / "config.json", cfg)
        for name, data in files.items():
            (self.flash / name).write_bytes(data)
        if not (self.root / "board.json").exists() or board is not None:
            write_json_atomic(self.root / "board.json", board or default_board())
        bootloader.prepare(self.root, form)
        if not (self.flash / "board.json").exists():  # what `meterlink provision` writes
            spec = json.loads((self.root / "board.json").read_text())
            write_json_atomic(self.flash / "board.json",
                              {"name": spec.get("board", "esp32-devkitc"),
                               "chip": spec.get("chip", "esp32")})
        if not (self.root / "env.json").exists():
            self.set_environment()

    def __repr__(self) -> str:
        return f"VirtualNode({self.node_id!r}, running={self.running})"

    @property
    def console_path(self) -> Path:
        return self.root / "console.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def set_environment(self, *, temperature_c: float = 20.0, humidity_pct: float = 50.0,
                        pressure_pa: float = 101325.0, **extra) -> None:
        """What the node's sensors measure from now on (the models re-read it on each
        measurement)."""
        env = {"temperature_c": temperature_c, "humidity_pct": humidity_pct,
               "pressure_pa": pressure_pa, **extra}
        write_json_atomic(self.root / "env.json", env)

    def firmware_dir(self) -> Path:
        """The .mpy form's firmware: firmware/ + drivers/ compiled with mpy-cross for the
        board's architecture (cached by content), boot.py and main.py as source."""
        return firmware_build.compiled(self.arch)

    @property
    def arch(self) -> str:
        board = json.loads((self.root / "board.json").read_text())
        return "rv32imc" if board.get("chip") == "esp32c3" else "xtensawin"

    def allowance(self) -> int:
        """The virtual board's own heap for this node (see vboard_allowance)."""
        return vboard_allowance(self.root / "board.json", self.adc_pins(), self.form)

    def command(self) -> list[str]:
        heap = heap_size(self.heap) + self.allowance()
        return [toolchain.micropython(FORMS[self.form]), "-X", f"heapsize={heap}", "-c", BOOT]

    def adc_pins(self) -> tuple[int, ...]:
        return config_adc_pins(self.flash)

    def environ(self) -> dict[str, str]:
        """The image form finds boot.py and main.py on the filesystem (the process's working
        directory: a device's sys.path starts with it) and the rest frozen; the .mpy form
        finds everything in the compiled firmware."""
        if self.form == "image":
            path = ":.frozen"
            for name, data in firmware_build.image_files().items():
                if not (self.flash / name).exists() or (self.flash / name).read_bytes() != data:
                    (self.flash / name).write_bytes(data)
        else:
            path = f"{self.firmware_dir()}:.frozen"
        return {"PATH": "/usr/bin:/bin", "MICROPYPATH": path, "VBOARD_DIR": str(self.root)}

    def start(self, *, restart_on_reset: bool = True, sleep_scale: float = 1.0) -> "VirtualNode":
        """Powers the node on. Like a device, it starts again by itself after machine.reset()
        (exit 3), soft_reset() (exit 5) and deepsleep() (exit 4, after the sleep time times
        `sleep_scale`, or at once when a pulse meter on its EXT0 wake pin pulses), unless
        `restart_on_reset` is False. Every exit status is appended to `exits`."""
        if self.running:
            return self
        self._console = open(self.console_path, "ab", buffering=0)
        self._stopping = False
        self._spawn()
        if restart_on_reset:
            self._supervisor = threading.Thread(target=self._supervise, args=(sleep_scale,),
                                                daemon=True)
            self._supervisor.start()
        return self

    def _spawn(self) -> None:
        bootloader.start(self.root)  # the ESP-IDF bootloader picks the app partition
        self.proc = subprocess.Popen(
            self.command(), cwd=self.flash, env=self.environ(),
            stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _supervise(self, sleep_scale: float) -> None:
        while not self._stopping:
            proc = self.proc
            if proc is None:
                return
            rc = proc.wait()
            if self._stopping:
                return
            self.exits.append(rc)
            if rc == 4:
                sleep = read_json(self.root / "deepsleep.json") or {}
                ms = sleep.get("ms") or 0
                deadline = time.monotonic() + ms / 1000 * sleep_scale
                # a pulse before the timer ran out wakes it by the pin, even at the last moment
                while not self._stopping and not self._pulse_woke(sleep) \
                        and time.monotonic() < deadline:
                    time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            elif rc not in (3, 5):
                return  # crashed to the REPL or killed: stays down, like a device would
            with self._lock:
                if self._stopping:
                    return
                self._spawn()

    def _pulse_woke(self, sleep: dict) -> bool:
        """While the node sleeps, the pulse meter on the contact armed for EXT0 wake-up (level
        0: the contact closing) makes its next pulse, if env.json asks for more than it made
        (meters.json; see hw/meter.py EnvMeter): the pulse is counted as made and wakes the
        node, whose next boot's wake_reason() is EXT0_WAKE. Counted in `pin_wakes`."""
        ext0 = sleep.get("ext0") or {}
        key = str(ext0.get("pin"))
        made = read_json(self.root / "meters.json") or {}
        if key not in made or ext0.get("level") != 0:
            return False
        want = ((read_json(self.root / "env.json") or {}).get("meters") or {}).get(key) or {}
        count = made[key]
        if want.get("forward", 0) > count["forward"]:
            count["forward"] += 1
        elif want.get("reverse", 0) > count["reverse"]:
            count["reverse"] += 1
        else:
            return False
        write_json_atomic(self.root / "meters.json", made)
        cause = read_json(self.root / "reset_cause.json") or {"cause": 4}
        write_json_atomic(self.root / "reset_cause.json", dict(cause, wake=2))  # EXT0_WAKE
        self.pin_wakes += 1
        return True

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stops the node like pulling its power (SIGTERM, then SIGKILL)."""
        rc = None
        with self._lock:
            self._stopping = True
            proc, self.proc = self.proc, None
        if proc is not None:
            rc = process.stop(proc, timeout)
        sup = self._supervisor
        if sup is not None and sup is not threading.current_thread():
            sup.join(timeout)
        self._supervisor = None
        if self._console is not None:
            self._console.close()
            self._console = None
        return rc

    def kill(self, *, power_cut: bool = True) -> None:
        """SIGKILL: the process dies at whatever instruction it was on, and the node stays off
        until start(). With `power_cut` (the default) RTC memory is lost too, as when a device
        loses power; without it, the kill models a crash that keeps RTC memory."""
        with self._lock:
            self._stopping = True
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        self.stop()
        if power_cut:
            (self.root / "rtc_memory.bin").unlink(missing_ok=True)

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> "VirtualNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
