"""`make bench`: what TLS costs, each figure against plain MQTT measured in the same run on the
same machine.

1. Handshake: the node's MQTT connect (firmware/mqtt.py on mbedTLS, in the 32-bit MicroPython
   unix port: TCP, the TLS handshake with the broker's EC P-256 certificate checked against
   the fleet CA, CONNECT/CONNACK) against the same connect in plain TCP, to one Mosquitto with
   a TLS and a plain listener; and the same for the gateway's paho client (CPython, OpenSSL).
   The median of 20 connects each. On an ESP32 the handshake's elliptic-curve arithmetic runs
   on a 240 MHz core, so its absolute time is longer there; the ratio says what TLS adds.
2. Steady state: the gateway's sustained ingest (QoS 1 publish -> committed in the outbox, as
   bench_gateway.py measures it, 50 000 messages) from a Mosquitto with a TLS listener against
   one with a plain listener, in five paired rounds; the median of the rounds' ratios.

    .venv/bin/python tests/bench/bench_tls.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from bench_gateway import MESSAGES, ROUNDS, gateway_rate  # noqa: E402
from gateway.logfmt import configure_logging  # noqa: E402
from host_tools import toolchain  # noqa: E402
from host_tools.broker import Mosquitto, free_port  # noqa: E402
from host_tools.pki import Pki  # noqa: E402

CONNECTS = 20

NODE_CONNECTS = """
import asyncio, time, mqtt
HOST, TLS_PORT, PLAIN_PORT, CA, N = %r, %d, %d, %r, %d
with open(CA, "rb") as f:
    ctx = mqtt.tls_context(f.read())

async def connect_ms(port, ssl):
    c = mqtt.MQTTClient("hs-%%d" %% port, HOST, port, keepalive=10, ssl=ssl)
    t0 = time.ticks_us()
    await c.connect()
    t = time.ticks_diff(time.ticks_us(), t0)
    await c.disconnect()
    return t / 1000

async def main():
    for i in range(N):
        print("T", await connect_ms(TLS_PORT, ctx), await connect_ms(PLAIN_PORT, None))

asyncio.run(main())
"""


def node_connects(broker: Mosquitto, plain_port: int) -> tuple[list[float], list[float]]:
    script = NODE_CONNECTS % (broker.host, broker.port, plain_port, str(broker.tls.ca_der),
                              CONNECTS)
    out = subprocess.run([toolchain.micropython(), "-X", "heapsize=96K", "-c", script],
                         env={"MICROPYPATH": toolchain.micropypath()}, capture_output=True,
                         text=True, timeout=300)
    rows = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("T ")]
    if len(rows) != CONNECTS:
        raise RuntimeError(f"node connects failed:\n{out.stdout}{out.stderr}")
    return [float(r[0]) for r in rows], [float(r[1]) for r in rows]


def paho_connect_ms(broker: Mosquitto, port: int, tls: bool) -> float:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hs-paho-{port}",
                    protocol=mqtt.MQTTv311)
    if tls:
        c.tls_set(ca_certs=str(broker.tls.ca_crt))
    t0 = time.perf_counter()
    c.connect(broker.host, port)
    while not c.is_connected():  # the CONNACK, read by the loop
        c.loop(timeout=0.01)
    t = (time.perf_counter() - t0) * 1000
    c.disconnect()
    return t


def main() -> int:
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = Pki(work / "pki")
        pki.init("bench fleet")
        plain_port = free_port()
        with Mosquitto(work / "broker", tls=pki,
                       extra_conf=f"listener {plain_port} 127.0.0.1\n") as broker:
            tls_ms, plain_ms = node_connects(broker, plain_port)
            paho_tls = [paho_connect_ms(broker, broker.port, True) for _ in range(CONNECTS)]
            paho_plain = [paho_connect_ms(broker, plain_port, False) for _ in range(CONNECTS)]
        print(f"TLS handshake (MQTT connect to CONNACK, median of {CONNECTS}; EC P-256, TLS 1.2)")
        for who, t, p in (("node (MicroPython, mbedTLS)", tls_ms, plain_ms),
                          ("gateway (paho, OpenSSL)", paho_tls, paho_plain)):
            mt, mp = statistics.median(t), statistics.median(p)
            print(f"  {who:<28} TLS {mt:7.1f} ms   plain {mp:6.1f} ms   ratio {mt / mp:5.1f}")

        ratios = []
        with Mosquitto(work / "tls-broker", tls=pki) as tls_broker, \
                Mosquitto(work / "plain-broker") as plain_broker:
            for i in range(ROUNDS):
                for d in (f"plain{i}", f"tls{i}"):
                    (work / d).mkdir()
                plain, _ = gateway_rate(plain_broker, work / f"plain{i}", MESSAGES)
                secure, _ = gateway_rate(tls_broker, work / f"tls{i}", MESSAGES)
                ratios.append(secure / plain)
                print(f"  round {i + 1}: plain {plain:8.0f} msg/s   TLS {secure:8.0f} msg/s   "
                      f"ratio {secure / plain:.2f}")
        print(f"gateway ingest over TLS ({MESSAGES} QoS 1 messages, {ROUNDS} paired rounds): "
              f"median ratio {statistics.median(ratios):.2f} of plain MQTT")
        print(json.dumps({"node_tls_ms": statistics.median(tls_ms),
                          "node_plain_ms": statistics.median(plain_ms),
                          "ingest_ratio": statistics.median(ratios)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
