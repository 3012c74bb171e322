"""`make bench`: how long an over-the-air app update takes, against the bare transport measured
in the same run on the same machine.

The update: the real bundle of the firmware (`meterlink bundle`, every module as .mpy) sent by
the gateway's rollout (gateway/ota.py) to a virtual node (the real firmware in the 32-bit
MicroPython unix port, 96 KB heap) through a local Mosquitto over TLS, reading its sensors
throughout, from `begin` to the node's `done`: every chunk checked (SHA-256) and written to
flash, the whole bundle checked, unpacked, the restart, the new code's TLS connect and its
first reading acknowledged. Three rounds per chunk size, each a newer version.

The baseline: the same bytes in the same number of messages of the same size, sent one at a
time by paho to a paho client on the same broker that answers each (what the transfer's
stop-and-wait costs on the wire, without a node). The ratio says what the node's work adds.

    .venv/bin/python tests/bench/bench_ota.py
"""

from __future__ import annotations

import hashlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from gateway.config import load_config  # noqa: E402
from gateway.ota import Bundle, Rollout  # noqa: E402
from host_tools import bundle as bundles  # noqa: E402
from host_tools.broker import Mosquitto  # noqa: E402
from host_tools.pki import Pki  # noqa: E402
from host_tools.vboard.node import VirtualNode  # noqa: E402

ROUNDS = 3
CHUNKS = (512, 768)


def transport_s(broker: Mosquitto, data: bytes, chunk: int) -> float:
    """Stop-and-wait over the broker: each chunk published QoS 1, answered by an echo client."""
    answered = threading.Event()
    ready = threading.Event()

    def client(name):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        broker.secure(c)
        c.on_subscribe = lambda *a: ready.set()
        c.connect(broker.host, broker.port)
        c.loop_start()
        return c

    echo = client("bench-echo")
    echo.on_message = lambda c, u, m: c.publish("ml/bench/a", cbor2.dumps(
        {"ok": True, "next": cbor2.loads(m.payload)["n"] + 1}), qos=1)
    echo.subscribe("ml/bench/k", 1)
    ready.wait(10)
    ready.clear()
    sender = client("bench-sender")
    for c in (echo, sender):  # as the rollout's client does (gateway/ota.py)
        c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sender.on_message = lambda c, u, m: answered.set()
    sender.subscribe("ml/bench/a", 1)
    ready.wait(10)
    t0 = time.perf_counter()
    for n in range(-(-len(data) // chunk)):
        d = data[n * chunk:(n + 1) * chunk]
        answered.clear()
        sender.publish("ml/bench/k", cbor2.dumps(
            {"cmd": "ota", "op": "chunk", "n": n, "d": d, "h": hashlib.sha256(d).digest(),
             "s": b"12345678", "id": "ota-bench-0"}, canonical=True), qos=1)
        if not answered.wait(10):
            raise RuntimeError("the echo client did not answer")
    t = time.perf_counter() - t0
    for c in (echo, sender):
        c.disconnect()
        c.loop_stop()
    return t


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = Pki(tmp / "pki")
        pki.init("meterlink bench")
        with Mosquitto(tmp / "broker", tls=pki) as broker:
            (tmp / "gw.toml").write_text(
                f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "bench"\n'
                f'{broker.gateway_conf()}[sinks.file]\npath = "{tmp / "r.jsonl"}"\n')
            mqtt_cfg = load_config(tmp / "gw.toml").mqtt
            node = VirtualNode(tmp / "node", node_id="ota-bench", broker=broker, interval_s=5)
            node.start()
            try:
                time.sleep(3)
                step = 0
                rows = []
                for chunk in CHUNKS:
                    ota, bare = [], []
                    for _ in range(ROUNDS):
                        step += 1
                        data = bundles.build("xtensawin", version=f"1.{step}.0")
                        r = Rollout(mqtt_cfg, Bundle.parse(data), ["ota-bench"], chunk=chunk,
                                    ack_timeout=10.0, timeout=600.0)
                        t0 = time.perf_counter()
                        report = r.run()[0]
                        ota.append(time.perf_counter() - t0)
                        if report["state"] != "done":
                            print(f"update failed: {report}\n{node.console()[-3000:]}")
                            return 1
                        bare.append(transport_s(broker, data, chunk))
                    rows.append((chunk, len(data), -(-len(data) // chunk),
                                 statistics.median(ota), statistics.median(bare)))
            finally:
                node.stop()
    print(f"OTA of the firmware bundle to a virtual node over TLS (median of {ROUNDS}, "
          "begin to done, restart and first reading included)")
    print(f"{'chunk':>6} {'bundle':>8} {'chunks':>7} {'update s':>9} {'KB/s':>7} "
          f"{'bare s':>7} {'ratio':>6}")
    for chunk, size, n, t, b in rows:
        print(f"{chunk:>6} {size:>8} {n:>7} {t:>9.2f} {size / 1024 / t:>7.1f} {b:>7.2f} "
              f"{t / b:>6.1f}")
    print("ratio: the update's time over the bare stop-and-wait transfer of the same messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
