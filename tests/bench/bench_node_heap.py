"""`make bench`: the lowest free heap of every sensor combination a city deploys on one node,
against the firmware's 96 KB budget, for the two forms of the firmware measured in the same
run: the meterlink image (the firmware frozen in: only live objects in the heap) and a stock
MicroPython image with the firmware as .mpy files (their bytecode in the heap too). Both talk
TLS with client certificates, as deployed; the image form once more over plain MQTT gives what
the TLS session costs the MicroPython heap (mbedTLS's own buffers are C memory: ESP-IDF's heap
on a device).

Each combination runs 1000 cycles (mains: read every sensor, queue, publish until acknowledged;
battery: wake-ups) against a real Mosquitto in the 32-bit unix-port build; tests/bench/
node_combos.py says how. Targets: 40 KB free in the image form, 16 KB in the .mpy form.

    .venv/bin/python tests/bench/bench_node_heap.py [CYCLES]
"""

import sys
import tempfile
from pathlib import Path

from node_combos import BUDGET, BY_NAME, run

TARGET_KB = {"image": 40, "mpy": 16}

cycles = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
kb = 1024


def measure(form: str, tls: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        results, _, _ = run(list(BY_NAME), cycles=cycles, form=form, workdir=Path(tmp),
                            gateway=False, tls=tls)
    return results


print(f"node heap: lowest free heap after gc over {cycles} cycles, firmware budget "
      f"{BUDGET // kb} KB (the virtual board's own objects measured apart and added)")
print(f"  {'combination':<22} {'form':<5} {'link':<4} {'free at lowest':>14}  {'headroom':>8}  target")
runs = {(form, True): measure(form, True) for form in ("image", "mpy")}
runs[("image", False)] = measure("image", False)
for (form, tls), results in runs.items():
    for name, r in results.items():
        ok = "ok" if r.low >= TARGET_KB[form] * kb else "UNDER TARGET"
        print(f"  {name:<22} {form:<5} {'tls' if tls else 'tcp':<4} {r.low / kb:11.1f} KB  "
              f"{r.low / BUDGET:8.2f}  >= {TARGET_KB[form]} KB {ok}")
for (form, tls), results in runs.items():
    r = min(results.values(), key=lambda r: r.low)
    print(f"  least free, {form} form over {'TLS' if tls else 'plain MQTT'}: {r.name} "
          f"{r.low / kb:.1f} KB (ratio {r.low / BUDGET:.2f} of the budget)")
cost = [runs[("image", False)][n].low - runs[("image", True)][n].low for n in BY_NAME]
print(f"  the TLS session's cost to the MicroPython heap (image form, plain minus TLS): "
      f"{min(cost) / kb:.1f}-{max(cost) / kb:.1f} KB")
