"""The sensor combinations a city deploys on one node, run for real and measured: heap at its
lowest point, and every reading at the gateway's sink.

Each combination is a virtual board (the parts on its buses, register/byte-level models) and
the node's config.json for them, as a technician would write it from docs/drivers.md. `run()`
starts them against a real Mosquitto over TLS with client certificates (as deployed,
docs/security.md) and the real gateway (file sink), in the meterlink image
form (the firmware frozen into the 32-bit unix-port build) or the .mpy form (a stock build,
the firmware as .mpy files), each in the firmware's 96 KB heap, for N cycles:

- mains nodes: one cycle is a reading of every sensor (queued on flash), then publishing until
  the broker acknowledged everything queued. The node's own tasks run (its publisher with the
  MQTT session, the downlink handler, the watchdog); the readings are driven back to back
  instead of on their interval timers, so 1000 cycles take minutes, not hours.
- battery nodes: one cycle is one real wake-up, process and all: boot, read every sensor,
  every `send_every`-th wake-up connect and send, deep sleep (the virtual board restarts the
  process, 1000 times faster than the node asked).

The heap: a sampler task collects garbage and reads the free heap every 5 ms and at the end of
every cycle; the lowest figure over the run is the node's lowest free heap after gc, the figure
docs/node-memory.md and `make bench` report. The sampler and the cycle driver are compiled from
source inside the node's heap (about 1.5 KB), so the figures are a little worse than a device's.

    .venv/bin/python tests/bench/node_combos.py [CYCLES] [image|mpy] [NAME ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gateway_support import GatewayProcess, wait_for  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402
from host_tools.pki import Pki  # noqa: E402
from host_tools.vboard.node import VirtualNode, default_config  # noqa: E402

BUDGET = 96 * 1024  # the firmware's heap (-X heapsize=96K, the virtual board's allowance added)
LITRES_PER_PULSE = 10
# The pulse meter model makes at most one pulse each time the firmware touches the hardware,
# at least once a second (the watchdog feed): 16 pulses are made well inside a run of 250
# mains cycles (the suite's; 30 s and more), so the last reading has them all.
MAINS_PULSES = 16

# --------------------------------------------------------------------------- what the parts measure
DS18B20_C = 11.25  # a 1/16 degC step, so the reading is exact: 1125
WATER = {"ph": 7.25, "turbidity_ntu": 0.82, "conductivity_us_cm": 540, "chlorine_mg_l": 0.35,
         "water_temperature_c": 12.5}
MBUS_SERIAL = 55550002
MBUS = {"volume_l": 123456, "flow_l_h": 540, "flow_temp_c": 11.3, "error_flags": 0}
BATTERY_PIN_MV = 1800  # 3.6 V cell through 100k/100k
PRESSURE_PIN_MV = 1250  # 2.5 V from the transducer through 10k/10k: 5 bar on a 0-10 bar part


@dataclass
class Combination:
    """A node's parts and config. `channels`: one (required, optional) pair of SenML channel
    names per sensor entry, as the records of that sensor must carry them. `exact`: channel ->
    the value the sink must show in every record (from the physical quantity, by the channel
    table's units)."""
    name: str
    what: str
    board: dict
    sensors: list
    env: dict
    channels: list
    battery: bool = False
    uart: dict = field(default_factory=dict)
    i2c: dict = field(default_factory=dict)
    exact: dict = field(default_factory=dict)
    # GPIO -> forward pulses the meter makes, once the node counts (mains: after the first
    # cycle; battery: while the node sleeps after its first wake-up, each pulse waking it)
    pulses: dict = field(default_factory=dict)


def _board(**parts) -> dict:
    b = {"board": "esp32-devkitc", "chip": "esp32", "unique_id": "240ac4c0ffee",
         "wifi": {"ssid": "meterlink-lab", "rssi": -61}}
    b.update(parts)
    return b


PULSE_WATER = {"driver": "pulse", "kind": "water", "pin": 25, "pin_b": 26, "tamper_pin": 27,
               "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 900}
PULSE_WATER_CH = ({"water_volume"}, {"water_flow", "alarms"})
PROBE = [{"model": "ds18b20", "serial": 7, "temp_c": DS18B20_C, "conv_ms": 20}]
DS18B20 = {"driver": "ds18b20", "pin": 4, "index": 0, "interval_s": 900}
MODBUS_WQ = {"driver": "modbus", "uart": "uart2", "address": 1, "interval_s": 900, "registers": [
    {"reg": 0, "fn": 4, "channel": "ph"},
    {"reg": 1, "fn": 4, "channel": "turbidity"},
    {"reg": 2, "fn": 4, "channel": "conductivity"},
    {"reg": 3, "fn": 4, "channel": "free_chlorine"},
    {"reg": 4, "fn": 4, "type": "s16", "channel": "temperature", "instance": 1}]}
MODBUS_WQ_CH = ({"ph", "turbidity", "conductivity", "free_chlorine", "temperature:1"}, set())
# in SenML units, by the channel table: conductivity S/m (540 uS/cm), free_chlorine kg/m3
MODBUS_WQ_EXACT = {"ph": 7.25, "turbidity": 0.82, "conductivity": 0.054,
                   "free_chlorine": 0.00035, "temperature:1": 12.5}
MBUS_METER = {"driver": "mbus", "uart": "uart2", "address": 5, "interval_s": 900}
MBUS_CH = ({"water_volume"}, {"water_flow", "temperature", "alarms"})
# M-Bus at 9600 baud (EN 13757-2 allows 300-38400; most meters take 2400 and 9600): the
# meter's answer takes 80 ms instead of 330, for cycle time only
MBUS_LINE = {"tx": 17, "rx": 16, "baudrate": 9600, "parity": "even"}
MODBUS_LINE = {"tx": 17, "rx": 16, "baudrate": 9600}
BATTERY = {"driver": "battery", "pin": 35, "divider": [100000, 100000], "interval_s": 900}


def _uart2(*devices):
    return {"2": {"tx": 17, "rx": 16, "devices": list(devices)}}


COMBINATIONS = [
    Combination(
        "pulse-ds18b20", "pulse water meter + DS18B20",
        _board(meters=[{"a": 25, "b": 26, "tamper": 27}], onewire={"4": {"devices": PROBE}}),
        [PULSE_WATER, DS18B20], {"ds18b20": {}},
        [PULSE_WATER_CH, ({"temperature"}, set())],
        exact={"temperature": DS18B20_C}, pulses={"25": MAINS_PULSES}),
    Combination(
        "pulse-modbus", "pulse water meter + Modbus water-quality probe",
        _board(meters=[{"a": 25, "b": 26, "tamper": 27}],
               uart=_uart2({"model": "modbus_slave", "address": 1, "profile": "water_quality"})),
        [PULSE_WATER, MODBUS_WQ], dict(WATER), [PULSE_WATER_CH, MODBUS_WQ_CH],
        uart={"2": MODBUS_LINE}, exact=MODBUS_WQ_EXACT, pulses={"25": MAINS_PULSES}),
    Combination(
        "pulse-ds18b20-modbus", "pulse water meter + DS18B20 + Modbus water-quality probe",
        _board(meters=[{"a": 25, "b": 26, "tamper": 27}], onewire={"4": {"devices": PROBE}},
               uart=_uart2({"model": "modbus_slave", "address": 1, "profile": "water_quality"})),
        [PULSE_WATER, DS18B20, MODBUS_WQ], dict(WATER),
        [PULSE_WATER_CH, ({"temperature"}, set()), MODBUS_WQ_CH],
        uart={"2": MODBUS_LINE}, exact=dict(MODBUS_WQ_EXACT, temperature=DS18B20_C),
        pulses={"25": MAINS_PULSES}),
    Combination(
        "mbus-ds18b20", "M-Bus water meter + DS18B20",
        _board(onewire={"4": {"devices": PROBE}},
               uart=_uart2({"model": "mbus_meter", "address": 5, "serial": MBUS_SERIAL,
                            "medium": "water", "baudrate": 9600})),
        [MBUS_METER, dict(DS18B20, instance=1)], {"mbus": {str(MBUS_SERIAL): MBUS}},
        [MBUS_CH, ({"temperature:1"}, set())], uart={"2": MBUS_LINE},
        exact={"temperature:1": DS18B20_C, "water_volume": 123.456, "temperature": 11.3}),
    Combination(
        "mbus-modbus", "M-Bus water meter + Modbus water-quality probe",
        _board(uart={"2": {"tx": 17, "rx": 16, "devices": [
            {"model": "mbus_meter", "address": 5, "serial": MBUS_SERIAL, "medium": "water",
             "baudrate": 9600}]},
            "1": {"tx": 18, "rx": 19, "devices": [
                {"model": "modbus_slave", "address": 1, "profile": "water_quality"}]}}),
        [MBUS_METER, dict(MODBUS_WQ, uart="uart1")],
        dict(WATER, mbus={str(MBUS_SERIAL): MBUS}), [MBUS_CH, MODBUS_WQ_CH],
        uart={"2": MBUS_LINE, "1": {"tx": 18, "rx": 19, "baudrate": 9600}},
        exact=dict(MODBUS_WQ_EXACT, water_volume=123.456, temperature=11.3)),
    Combination(
        "battery-pulse", "battery pulse water meter + battery voltage",
        _board(meters=[{"a": 25, "b": 26, "tamper": 27}]),
        [PULSE_WATER, BATTERY], {"adc_mv": {"35": BATTERY_PIN_MV}},
        [PULSE_WATER_CH, ({"battery_voltage"}, set())], battery=True, pulses={"25": 40}),
    Combination(
        "gas-battery", "battery gas pulse meter with tamper loop + battery voltage",
        _board(meters=[{"a": 25, "tamper": 27}]),
        [{"driver": "pulse", "kind": "gas", "pin": 25, "tamper_pin": 27,
          "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 900}, BATTERY],
        {"adc_mv": {"35": BATTERY_PIN_MV}},
        [({"gas_volume"}, {"alarms"}), ({"battery_voltage"}, set())], battery=True,
        pulses={"25": 40}),
    Combination(
        "environment", "environment station: BME280 + PMS5003 + SHT4x + analog pressure",
        _board(i2c={"0": {"scl": 22, "sda": 21, "devices": [{"model": "bme280", "address": 0x76},
                                                             {"model": "sht4x", "address": 0x44}]}},
               uart=_uart2({"model": "pms5003"})),
        [{"driver": "bme280", "bus": "i2c0", "address": 0x76, "interval_s": 900},
         {"driver": "pms5003", "uart": "uart2", "interval_s": 900, "sleep": False},
         {"driver": "sht4x", "bus": "i2c0", "address": 0x44, "interval_s": 900, "instance": 1},
         {"driver": "pressure", "pin": 34, "interval_s": 900}],
        {"pm1_ug_m3": 4, "pm2_5_ug_m3": 9, "pm10_ug_m3": 14, "adc_mv": {"34": PRESSURE_PIN_MV}},
        [({"temperature", "humidity", "pressure"}, set()), ({"pm1", "pm2_5", "pm10"}, set()),
         ({"temperature:1", "humidity:1"}, set()), ({"water_pressure"}, set())],
        uart={"2": MODBUS_LINE}, i2c={"0": {"scl": 22, "sda": 21}},
        exact={"pm1": 4e-9, "pm2_5": 9e-9, "pm10": 14e-9}),  # ug/m3 as kg/m3
]
BY_NAME = {c.name: c for c in COMBINATIONS}

# --------------------------------------------------------------------------- inside the node
# The sampler: the lowest free heap after gc, every 5 ms and at each cycle's end.
_SAMPLER = """
import gc, asyncio
_low = [1 << 30]
def _mark():
    gc.collect()
    f = gc.mem_free()
    if f < _low[0]:
        _low[0] = f
async def _sampler():
    while True:
        _mark()
        await asyncio.sleep_ms(5)
"""

# Mains: the node's own tasks, and CYCLES readings of every sensor driven back to back.
MAINS = _SAMPLER + """
import sys
import bootinfo
boot = bootinfo.start()
del sys.modules["bootinfo"]
import node
n = node.Node(boot)

async def _drained():
    while len(n.q) or n.inflight or not n.client.connected:
        await asyncio.sleep_ms(2)

async def _main():
    asyncio.create_task(_sampler())
    asyncio.create_task(n.watchdog())
    asyncio.create_task(n.downlink())
    asyncio.create_task(n.publisher())
    for i in range(CYCLES):
        await n.read_all()
        if i == 0 and PULSES:  # the meter turns once the node counts its pulses
            import machine
            machine.vboard_set_env(meters=PULSES)
        _mark()
        await _drained()
        _mark()
    print("RESULT", gc.mem_alloc() + gc.mem_free(), _low[0], n.sent, len(n.q),
          sum(n.errors.values()))

asyncio.run(_main())
"""

# Battery: the real boot and wake-up (main.py, power.run) with the sampler beside it; each
# wake-up prints its lowest point just before the deep sleep ends the process.
BATTERY_WAKE = _SAMPLER + """
import machine, power
_run = power.run
async def _with_sampler(n):
    asyncio.create_task(_sampler())
    await _run(n)
power.run = _with_sampler
_deepsleep = machine.deepsleep
def _sleep(ms=None):
    _mark()
    print("HEAPLOW", gc.mem_alloc() + gc.mem_free(), _low[0])
    _deepsleep(ms)
machine.deepsleep = _sleep
import boot
import main
"""


def config(c: Combination, node_id: str, broker, cycles: int) -> dict:
    cfg = default_config(node_id, broker.host, broker.port)
    cfg.pop("i2c")
    if c.i2c:
        cfg["i2c"] = c.i2c
    if c.uart:
        cfg["uart"] = c.uart
    cfg["time"] = {"ntp": ""}
    cfg["sensors"] = [dict(s) for s in c.sensors]
    if c.battery:
        cfg["power"] = {"mode": "battery", "send_every": 5}
        for s in cfg["sensors"]:
            s["interval_s"] = 60
    # the queue holds everything a battery node gathers between sends, and a mains node's
    # cycle: its size is the config's default, as installed
    return cfg


@dataclass
class Result:
    name: str
    form: str
    cycles: int
    heap_total: int = 0  # what gc reports for the firmware's 96 KB (+ allowance)
    allowance: int = 0  # the virtual board's own objects, measured separately
    low: int = 0  # lowest free heap after gc over the run
    sent: int = 0
    queued: int = 0
    sensor_errors: int = 0
    wakeups: int = 0
    seconds: float = 0.0
    node: VirtualNode | None = None
    output: str = ""
    started: float = 0.0  # time.monotonic() at start
    thread: threading.Thread | None = None  # mains: the process; battery: the meter's turn

    @property
    def free_kb(self) -> float:
        return self.low / 1024

    def line(self) -> str:
        return (f"{self.name:<22} {self.form:<5} {self.free_kb:6.1f} KB free at lowest "
                f"(headroom {self.low / BUDGET:.2f} of 96 KB)  {self.cycles} cycles")


def start(c: Combination, root: Path, broker, *, cycles: int, form: str) -> Result:
    """Starts the combination's node (a thread waits for mains; battery runs on its own)."""
    node_id = f"{c.name}-{form}"
    vn = VirtualNode(root / node_id, node_id=node_id, broker=broker,
                     config=config(c, node_id, broker, cycles), board=c.board, form=form)
    meters = {gpio: {"forward": n} for gpio, n in c.pulses.items()}
    vn.set_environment(**c.env)
    r = Result(c.name, form, cycles, node=vn, allowance=vn.allowance(), started=time.monotonic())
    if c.battery:
        cmd = vn.command()
        cmd[-1] = BATTERY_WAKE
        vn.command = lambda: cmd  # every wake-up runs main.py with the sampler beside it

        def turn_meter():
            wait_for(lambda: "HEAPLOW" in vn.console(), 120, f"{c.name}'s first wake-up",
                     lambda: vn.console()[-3000:])
            vn.set_environment(**c.env, meters=meters)
        vn.start(sleep_scale=0.001)
        if meters:
            r.thread = threading.Thread(target=turn_meter, daemon=True)
            r.thread.start()
    else:
        cmd = vn.command()
        cmd[-1] = MAINS.replace("CYCLES", str(cycles)).replace("PULSES", repr(meters))

        def mains():
            out = subprocess.run(cmd, cwd=vn.flash, env=vn.environ(), capture_output=True,
                                 text=True, timeout=1800)
            r.output = out.stdout + out.stderr
            vn.console_path.write_text(r.output)
        r.thread = threading.Thread(target=mains, daemon=True)
        r.thread.start()
    return r


def finish(c: Combination, r: Result, timeout: float) -> Result:
    vn = r.node
    if c.battery:
        wait_for(lambda: vn.console().count("HEAPLOW") >= r.cycles, timeout,
                 f"{r.cycles} wake-ups of {c.name} ({r.form})", lambda: vn.console()[-3000:])
        vn.stop()
        lows = [line.split() for line in vn.console().splitlines() if line.startswith("HEAPLOW")]
        r.wakeups = len(lows)
        r.heap_total = int(lows[0][1])
        r.low = min(int(x[2]) for x in lows)
        r.sensor_errors = vn.console().count(" E sensor:")
        r.output = vn.console()
    else:
        r.thread.join(timeout)
        for line in r.output.splitlines():
            if line.startswith("RESULT "):
                total, low, sent, queued, errors = map(int, line.split()[1:])
                r.heap_total, r.low, r.sent, r.queued, r.sensor_errors = \
                    total, low, sent, queued, errors
                break
        else:
            raise AssertionError(f"{c.name} ({r.form}) did not finish:\n{r.output[-3000:]}")
    r.seconds = time.monotonic() - r.started
    return r


def pulses_made(vn: VirtualNode, gpio: str = "25") -> int:
    """Forward minus reverse pulses the node's pulse meter has made (its meters.json)."""
    made = json.loads((vn.root / "meters.json").read_text())[gpio]
    return made["forward"] - made["reverse"]


def run(names: list[str], *, cycles: int, form: str, workdir: Path, gateway: bool = True,
        timeout: float = 1800, tls: bool = True) -> tuple[dict[str, Result], GatewayProcess | None, object]:
    """Runs the combinations at once against one broker and gateway in `workdir`; returns their
    results, the gateway (stopped) and the broker's context manager (stopped). With `tls` (as
    deployed) the broker wants TLS and a client certificate from every node and the gateway."""
    pki = None
    if tls:
        pki = Pki(workdir / "pki")
        pki.init("combinations fleet")
    with Mosquitto(workdir / "broker", tls=pki, require_certificate=tls) as broker:
        gw = GatewayProcess(workdir / "gw", broker).wait_subscribed() if gateway else None
        try:
            running = {n: start(BY_NAME[n], workdir, broker, cycles=cycles, form=form)
                       for n in names}
            results = {n: finish(BY_NAME[n], r, timeout) for n, r in running.items()}
            if gw is not None:  # everything acknowledged by the broker reaches the sink
                time.sleep(1.0)
        finally:
            if gw is not None:
                gw.stop()
            for r in locals().get("running", {}).values():
                r.node.stop()
    return results, gw, broker


def main(argv: list[str]) -> None:
    cycles = int(argv[0]) if argv else 1000
    form = argv[1] if len(argv) > 1 else "image"
    names = argv[2:] or list(BY_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        results, _, _ = run(names, cycles=cycles, form=form, workdir=Path(tmp), gateway=False)
    for r in results.values():
        print(r.line(), f"({r.seconds:.0f} s, errors {r.sensor_errors})")
    print(json.dumps({n: r.low for n, r in results.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
