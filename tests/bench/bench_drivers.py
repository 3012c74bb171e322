"""`make bench`: heap each driver costs a node, against the BME280 driver measured in the same
run, and the heap left by a node with four different sensors (pulse meter, BME280, DS18B20,
Modbus probe) inside the firmware's 96 KB; for both forms of the firmware: the meterlink image
(frozen into the 32-bit unix-port build, as `make image` freezes it) and the .mpy files
mpy-cross makes for xtensawin (on the stock build).

Each scenario is a fresh process that sets up the virtual board and its part models first,
then imports the runtime (`config`, `node`, `sensors`), validates the config, creates the
adapters and takes one reading from each, with gc.collect() between steps. The process gets a
larger heap so the virtual board's own objects do not count: the figures are the firmware's
(runtime + drivers), compared with its 96 KB budget. A running node needs more (the MQTT
session, the queue, buffers): bench_node_heap.py measures that.

    .venv/bin/python tests/bench/bench_drivers.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from host_tools import firmware_build, toolchain  # noqa: E402

SCRIPT = r"""
import gc, json, asyncio, machine
from hw.modbus import ModbusSlave
from hw.onewire import DS18B20 as Probe
import hw.onewire, hw.uart
machine.vboard_configure("vb", {"i2c": {"0": {"scl": 22, "sda": 21, "devices": [
    {"model": "bme280", "address": 118}]}}})
hw.onewire.attach(4, Probe(serial=7, temp_c=12.5))
hw.uart.attach(2, ModbusSlave(address=1))
gc.collect(); free0 = gc.mem_free()
import config, node, sensors
gc.collect(); free1 = gc.mem_free()
cfg = config.validate({"node_id": "n1", "broker": {"host": "127.0.0.1"},
    "i2c": {"0": {"scl": 22, "sda": 21}}, "uart": {"2": {"tx": 17, "rx": 16}},
    "sensors": SENSORS})
hw = sensors.Hardware(cfg, {"pcnt_units": 8})
adapters = [sensors.create(s, hw) for s in cfg["sensors"]]
for a in adapters:
    asyncio.run(a.sample())
gc.collect(); free2 = gc.mem_free()
print(json.dumps({"runtime": free0 - free1, "drivers": free1 - free2, "free": free2,
                  "heap": free0}))
"""

BUDGET = 96 * 1024
SENSORS = {
    "bme280": [{"driver": "bme280", "bus": "i2c0"}],
    "pulse": [{"driver": "pulse", "pin": 25, "pin_b": 26, "tamper_pin": 27,
               "litres_per_pulse": 10}],
    "ds18b20": [{"driver": "ds18b20", "pin": 4}],
    "modbus": [{"driver": "modbus", "uart": "uart2", "address": 1, "registers": [
        {"reg": 0, "fn": 4, "channel": "ph"}, {"reg": 1, "fn": 4, "channel": "turbidity"}]}],
    "battery": [{"driver": "battery", "pin": 35}],
}
MIXED = SENSORS["pulse"] + SENSORS["bme280"] + SENSORS["ds18b20"] + SENSORS["modbus"]


def measure(sensors: list[dict], build: Path | None) -> dict:
    """`build`: the .mpy files on the stock build, or None for the image build's frozen code."""
    with tempfile.TemporaryDirectory() as cwd:
        path = ".frozen" if build is None else f"{build}:.frozen"
        env = {"MICROPYPATH": path, "PATH": "/usr/bin:/bin"}
        script = SCRIPT.replace("SENSORS})", json.dumps(sensors) + "})")
        if any(s["driver"] == "battery" for s in sensors):
            script = script.replace("gc.collect(); free0",
                                    'machine.vboard_set_env(adc_mv={"35": 1900})\n'
                                    "gc.collect(); free0")
        form = "image" if build is None else "stock"
        proc = subprocess.run([toolchain.micropython(form), "-X", "heapsize=256K", "-c", script],
                              cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode:
            raise SystemExit(f"scenario {sensors} failed:\n{proc.stdout}{proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def report(form: str, build: Path | None) -> None:
    kb = 1024
    base = measure(SENSORS["bme280"], build)
    print(f"driver heap on a node, {form} (live heap after gc, one reading each)")
    print(f"  runtime (config, node, sensors)   {base['runtime'] / kb:6.1f} KB")
    print(f"  {'driver':32s}  {'heap':>7s}  ratio to bme280")
    for name, sensors in SENSORS.items():
        r = base if name == "bme280" else measure(sensors, build)
        ratio = r["drivers"] / base["drivers"]
        print(f"  {name:32s}  {r['drivers'] / kb:5.1f} KB  {ratio:.2f}")
    mixed = measure(MIXED, build)
    used = mixed["runtime"] + mixed["drivers"]
    print(f"  4 sensors (pulse, bme280, ds18b20, modbus): drivers "
          f"{mixed['drivers'] / kb:.1f} KB; runtime + drivers {used / kb:.1f} KB of the "
          f"{BUDGET / kb:.0f} KB budget (ratio {used / BUDGET:.2f}, "
          f"{(BUDGET - used) / kb:.1f} KB left for buffers and the MQTT session)")


def main() -> None:
    report("meterlink image (frozen)", None)
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "fw"
        firmware_build.build("xtensawin", build)
        report(".mpy form (xtensawin .mpy files, stock image)", build)


if __name__ == "__main__":
    main()
