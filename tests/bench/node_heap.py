"""The node runtime's heap, measured: the real firmware (.mpy for xtensawin) with four BME280s
runs N full cycles (read every sensor, queue the readings on flash, publish them to a real
Mosquitto and wait for the PUBACKs) in the unix port with the firmware's 96 KB heap (plus the
virtual board's own measured allowance, see host_tools/vboard/node.py).

    .venv/bin/python tests/bench/node_heap.py [CYCLES]

Used by `make bench` (bench_node_heap.py) and by tests/test_node_heap.py."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from host_tools import toolchain  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402
from host_tools.vboard.node import VirtualNode, vboard_allowance  # noqa: E402

SCRIPT = """
import gc, sys, asyncio
import bootinfo
boot = bootinfo.start()
del sys.modules["bootinfo"]
import node
gc.collect()
start_free = gc.mem_free()
n = node.Node(boot)
peak = [0, 10**9]

def mark():
    a = gc.mem_alloc()
    if a > peak[0]:
        peak[0] = a
    gc.collect()
    if gc.mem_free() < peak[1]:
        peak[1] = gc.mem_free()

async def main():
    await n.connect()
    for i in range(CYCLES):
        await n.read_all()
        mark()
        await n.pump()
        mark()
    print("RESULT", gc.mem_alloc() + gc.mem_free(), start_free, peak[0], peak[1], n.sent,
          len(n.q), sum(n.errors.values()))

asyncio.run(main())
"""


def run(cycles: int = 1000, sensors: int = 4) -> dict:
    from test_node_runtime import fast_node  # the four-BME280 node of the runtime tests

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Mosquitto(tmp / "broker") as broker:
            vn: VirtualNode = fast_node(tmp / "node", "heap-01", broker, entries=sensors)
            allowance = vboard_allowance(vn.root / "board.json")
            cmd = vn.command()
            cmd[-1] = SCRIPT.replace("CYCLES", str(cycles))
            out = subprocess.run(cmd, cwd=vn.flash, env=vn.environ(), capture_output=True,
                                 text=True, timeout=600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            total, start_free, peak, min_free, sent, queued, errors = map(int, line.split()[1:])
            return {"cycles": cycles, "sensors": sensors, "heap_total": total,
                    "vboard_allowance": allowance, "firmware_budget": total - allowance,
                    "free_at_start": start_free, "min_free_after_gc": min_free,
                    "firmware_live_peak": total - allowance - min_free,
                    "sent": sent, "queued": queued, "sensor_errors": errors}
    raise RuntimeError("the node did not finish:\n" + out.stdout[-3000:] + out.stderr[-3000:])


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 1000), indent=1))
