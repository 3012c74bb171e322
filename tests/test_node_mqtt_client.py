"""The node's own MQTT client (firmware/mqtt.py) in the MicroPython unix port against a real
Mosquitto over TLS: QoS 1 publish acknowledged, subscription delivery, refusal reasons, and a
dead broker failing fast instead of blocking the scheduler."""

from __future__ import annotations

import json
import subprocess
import threading

import paho.mqtt.client as paho

from host_tools import toolchain
from host_tools.broker import Mosquitto

SCRIPT = r"""
import asyncio, json, mqtt, time
HOST, PORT, USER, PASSWORD, CA = %r, %d, %r, %r, %r
got = []

async def main():
    ssl = None
    if CA:
        with open(CA, "rb") as f:
            ssl = mqtt.tls_context(f.read())
    c = mqtt.MQTTClient("mp-test", HOST, PORT, user=USER, password=PASSWORD, keepalive=10,
                        timeout_ms=3000, ssl=ssl)
    c.on_message = lambda topic, payload, retained: got.append((topic, payload.decode()))
    try:
        await c.connect()
    except mqtt.MQTTError as exc:
        print(json.dumps({"refused": str(exc)}))
        return
    except OSError as exc:
        print(json.dumps({"oserror": exc.errno}))
        return
    await c.subscribe("t/down", qos=1)
    print(json.dumps({"subscribed": True}))
    pid = await c.publish("t/up", b"\x84\x01\x00\x00\xa1\x01\x01", qos=1)
    print(json.dumps({"acked": pid}))
    t0 = time.ticks_ms()
    while not got and time.ticks_diff(time.ticks_ms(), t0) < 5000:
        await asyncio.sleep_ms(20)
    print(json.dumps({"got": got}))
    await c.disconnect()

asyncio.run(main())
"""


def run_node_script(host, port, user=None, password=None, timeout=20, ca=None) -> list[dict]:
    """`ca`: the CA's DER file, for a broker that speaks TLS."""
    proc = subprocess.run(
        [toolchain.micropython(), "-X", "heapsize=96K", "-c",
         SCRIPT % (host, port, user, password, ca and str(ca))],
        env={"MICROPYPATH": toolchain.micropypath()}, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_publish_is_acked_and_subscription_delivers(broker):
    received = []
    ready = threading.Event()
    peer = broker.secure(paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="peer"))
    peer.on_connect = lambda c, u, f, rc, p: (c.subscribe("t/up", qos=1), ready.set())
    peer.on_message = lambda c, u, m: received.append((m.topic, m.payload, m.qos))
    peer.connect(broker.host, broker.port)
    peer.loop_start()
    try:
        assert ready.wait(5)

        def send_down_when_subscribed():
            # retained, so it reaches the node whenever its subscription lands
            peer.publish("t/down", b"hello node", qos=1, retain=True)

        send_down_when_subscribed()
        out = run_node_script(broker.host, broker.port, ca=broker.tls.ca_der)
    finally:
        peer.loop_stop()
        peer.disconnect()
    assert {"subscribed": True} in out
    assert any("acked" in o and o["acked"] >= 1 for o in out), out
    assert {"got": [["t/down", "hello node"]]} in out, out
    assert ("t/up", b"\x84\x01\x00\x00\xa1\x01\x01", 1) in received


def test_bad_credentials_are_refused_with_the_reason(tmp_path, pki):
    pw = tmp_path / "passwd"
    pw.write_text("")  # no users at all
    with Mosquitto(tmp_path / "b", anonymous=False, extra_conf=f"password_file {pw}\n",
                   tls=pki) as b:
        out = run_node_script(b.host, b.port, user="node-01", password="wrong", ca=pki.ca_der)
    assert out == [{"refused": "connection refused: not authorized"}] or \
        out == [{"refused": "connection refused: bad user name or password"}], out


def test_no_broker_fails_fast_with_oserror(tmp_path):
    from host_tools.broker import free_port

    out = run_node_script("127.0.0.1", free_port(), timeout=10)
    assert len(out) == 1 and "oserror" in out[0], out
