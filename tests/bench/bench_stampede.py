"""`make bench`: the broker's load at the top of the interval from 10 000 meters, with the send
spread (each node sends at its own slot in the interval, firmware/clock.py) and without it
(every node sends its reading when it takes it, on the interval's boundary).

`meterlink loadgen`'s fleet (host_tools/cmd_loadgen.py: the firmware's slot functions, many
nodes per MQTT connection, QoS 1) publishes on a private Mosquitto; a subscriber to `m/+/r`
counts the messages the broker delivers in each second of one interval. Printed per run: the
peak second, the mean over the interval, and peak/mean (1.0 is a flat load; without the spread
it is about the interval over the seconds the burst takes). The interval is 20 s here, so a
run takes a minute: the spread's arithmetic is the same for an hour (docs/node-runtime.md,
"When a node sends").

    .venv/bin/python tests/bench/bench_stampede.py [NODES] [INTERVAL_S]
"""

from __future__ import annotations

import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from host_tools.broker import Mosquitto  # noqa: E402
from host_tools.cmd_loadgen import Fleet  # noqa: E402


class Counter:
    """Messages the broker delivered on m/+/r, per second of arrival."""

    def __init__(self, broker: Mosquitto) -> None:
        self.per_second: collections.Counter[int] = collections.Counter()
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter",
                                  protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe("m/+/r", qos=0)
        self.client.loop_start()
        time.sleep(0.5)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.per_second[int(time.time())] += 1

    def window(self, start: int, seconds: int) -> list[int]:
        with self.lock:
            return [self.per_second.get(s, 0) for s in range(start, start + seconds)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def one_run(broker: Mosquitto, counter: Counter, nodes: int, interval: int, spread: int,
            prefix: str) -> tuple[int, float, int]:
    """(peak messages/s, mean messages/s, messages) over one interval of readings."""
    fleet = Fleet(broker.host, broker.port, nodes=nodes, interval_s=interval, spread_s=spread,
                  per_connection=500, prefix=prefix)
    try:
        now = int(time.time())
        boundary = now - now % interval + interval
        fleet.run(interval)  # the readings of the next boundary: one interval's worth
        fleet.drain()
        time.sleep(2)  # the last deliveries
        counts = counter.window(boundary, interval + 2)
    finally:
        fleet.close()
    total = sum(counts)
    return max(counts), total / interval, total


def main() -> None:
    nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    interval = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker", persistence=False).start()
        counter = Counter(broker)
        try:
            print(f"{nodes} meters, a reading every {interval} s, QoS 1, one Mosquitto; "
                  "messages the broker delivered per second over one interval:")
            results = {}
            for name, spread, prefix in (("without spread", 0, "burst"),
                                         ("with spread", interval, "spread")):
                peak, mean, total = one_run(broker, counter, nodes, interval, spread, prefix)
                results[name] = peak / mean
                print(f"  {name:<15} peak {peak:6d}/s  mean {mean:7.1f}/s  "
                      f"peak/mean {peak / mean:5.2f}  ({total} messages)")
            print(f"  the spread lowers the peak {results['without spread'] / results['with spread']:.1f}x "
                  f"(target: peak/mean near 1 with the spread)")
        finally:
            counter.close()
            broker.stop()


if __name__ == "__main__":
    main()
