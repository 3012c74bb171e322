"""`make bench`: wire-format size and speed, each against a baseline measured in the same run.

- payload bytes of one 8-channel reading and of a 10-record batch (the device encoder's output,
  run in the MicroPython unix port) against a Tasmota-style JSON message of the same values;
- device encode time per reading in MicroPython against `json.dumps` of the same values there;
- gateway decode + SenML resolve per message against `json.loads` of the JSON message.

Ratios < 1 mean meterlink is smaller / faster than the baseline.
"""

from __future__ import annotations

import json
import subprocess
import time

from gateway.channels import load_table
from gateway.wire import decode_reading, resolve
from host_tools import toolchain

ROOT = toolchain.ROOT
VECTORS = ROOT / "tests" / "vectors"

# What a Tasmota-style firmware publishes for the same eight values (one telemetry message).
TASMOTA_STYLE = {
    "Time": "2025-11-21T08:00:00",
    "BME280": {"Temperature": 21.53, "Humidity": 45.23, "DewPoint": 8.9, "Pressure": 1013.25},
    "Water": {"Total": 1234.567, "Flow": 0.278, "Pressure": 3.12},
    "Battery": {"Voltage": 3.712},
    "Wifi": {"RSSI": -67},
    "PressureUnit": "hPa",
    "TempUnit": "C",
}

MPY_BENCH = r"""
import json, time, cbor, wire
recs = [(1763712000, {1: 2153, 2: 4523, 3: 101325, 4: 1234567, 5: 278, 7: 3712, 8: -67, 15: 3120})]
batch = [(1763712000 + 60 * i, {1: 2153 + 3 * i, 2: 4523 - 5 * i, 3: 101325 + 2 * i, 4: 1234567 + 17 * i,
          5: 278, 7: 3712, 8: -67 + (i & 1), 15: 3120 - (i & 1)}) for i in range(10)]
doc = %s
enc = cbor.Encoder(512)
wire.encode_reading(enc, 1042, recs)
one = len(enc.view())
wire.encode_reading(enc, 5000, batch)
ten = len(enc.view())
N = 2000
t0 = time.ticks_us()
for i in range(N):
    wire.encode_reading(enc, i, recs)
t_cbor = time.ticks_diff(time.ticks_us(), t0)
t0 = time.ticks_us()
for i in range(N):
    s = json.dumps(doc)
t_json = time.ticks_diff(time.ticks_us(), t0)
print(json.dumps({"one": one, "ten": ten, "json": len(json.dumps(doc)), "us_cbor": t_cbor / N, "us_json": t_json / N}))
"""


def device_side() -> dict:
    out = subprocess.run(
        [toolchain.micropython(), "-X", "heapsize=96K", "-c", MPY_BENCH % json.dumps(TASMOTA_STYLE)],
        env={"MICROPYPATH": toolchain.micropypath()}, capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def per_call(fn, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    table = load_table()
    payload = bytes.fromhex(json.loads((VECTORS / "reading-8ch.json").read_text())["hex"])
    text = json.dumps(TASMOTA_STYLE, separators=(",", ":")).encode()
    dev = device_side()
    print("meterlink bench (ratio = meterlink / baseline; lower is better)")
    print(f"  8-channel reading      {dev['one']:5d} B   Tasmota-style JSON {len(text):4d} B   "
          f"ratio {dev['one'] / len(text):.2f}   (budget 48 B)")
    print(f"  10-record batch        {dev['ten'] / 10:7.1f} B/record            "
          f"ratio {dev['ten'] / 10 / len(text):.2f}   (budget 34 B/record)")
    print(f"  device encode (mpy)    {dev['us_cbor']:7.1f} us  json.dumps {dev['us_json']:7.1f} us    "
          f"ratio {dev['us_cbor'] / dev['us_json']:.2f}")
    t_ours = per_call(lambda: resolve("node-01", decode_reading(payload, table), table,
                                      received_at=1763712000), 3000)
    t_json = per_call(lambda: json.loads(text), 3000)
    print(f"  gateway decode+resolve {t_ours * 1e6:7.1f} us  json.loads {t_json * 1e6:7.1f} us    "
          f"ratio {t_ours / t_json:.2f}   ({1 / t_ours:,.0f} msg/s on one core)")


if __name__ == "__main__":
    main()
