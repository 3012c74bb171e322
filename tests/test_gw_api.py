"""The gateway's HTTP API, registry, status ingest and downlink, with the real gateway process,
a real Mosquitto, and a scripted node (a paho client answering on `a` per docs/wire-format.md).
"""

import subprocess
import sys
import threading
from pathlib import Path

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway_support import GatewayProcess
from gateway_support import wait_for as _wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

METERLINK = str(Path(sys.executable).with_name("meterlink"))


def wait_for(what, predicate, timeout=15.0):
    return _wait_for(predicate, timeout, what)


class ScriptedNode:
    """Answers `c` and `k` like the firmware: one ack on `a` per request."""

    def __init__(self, broker, node_id: str) -> None:
        self.node_id = node_id
        self.received: list[tuple[str, dict, bool]] = []
        self.client = broker.secure(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=node_id,
                                                protocol=mqtt.MQTTv311))
        self.client.will_set(f"m/{node_id}/s", cbor2.dumps({"on": False}), qos=1, retain=True)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(f"m/{node_id}/c", 1), (f"m/{node_id}/k", 1)])
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        req = cbor2.loads(message.payload)
        kind = message.topic.rsplit("/", 1)[1]
        self.received.append((kind, req, bool(message.retain)))
        if kind == "c":
            ok = "bad" not in req["patch"]
            ack = {"id": req["id"], "cmd": "config", "ok": ok, "cv": req["v"] if ok else 1}
            if not ok:
                ack["err"] = "bad is not a known key"
        else:
            ack = {"id": req["id"], "cmd": req["cmd"], "ok": True}
            if req["cmd"] == "interval":
                ack["iv"] = req["s"]
        client.publish(f"m/{self.node_id}/a", cbor2.dumps(ack, canonical=True), qos=1)

    def status(self, **fields) -> None:
        info = self.client.publish(f"m/{self.node_id}/s", cbor2.dumps(fields, canonical=True),
                                   qos=1, retain=True)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def send(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([METERLINK, "gateway", "send", "--config", str(gw.conf), *args],
                          capture_output=True, text=True, timeout=30)


def test_registry_status_downlink_and_operations_endpoints(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker, "gw-api", gateway_extra="offline_grace_s = 0\n")
    node = None
    try:
        wait_for("the API", lambda: gw.counters().get("subscribed") and gw.counters()
                 .get("api_port"))
        assert gw.api("/healthz") == (200, {"ok": True})
        assert gw.api("/readyz") == (200, {"ready": True})

        reg = {"board": "esp32-devkitc", "sensors": [{"driver": "bme280", "bus": "i2c0"}],
               "interval_s": 60, "group": "roof"}
        status, row = gw.api("/api/nodes/n1", "PUT", reg)
        assert status == 201 and row["registered"] and row["group"] == "roof"
        assert gw.api("/api/nodes/n1", "PUT", reg)[0] == 200
        assert gw.api("/api/nodes/n2", "PUT", {**reg, "interval_s": 30})[0] == 201
        assert gw.api("/api/nodes/n3", "PUT", {**reg, "interval_s": 0}) == (
            400, {"error": "interval_s: Input should be greater than or equal to 1 (got 0)"})
        assert gw.api("/api/nodes/Bad!", "PUT", reg)[0] == 400
        assert gw.api("/api/nodes/nope")[0] == 404

        node = ScriptedNode(broker, "n1")
        node.status(on=True, fw="1.4.0", boot=7, iv=60, q=0, qd=0, bat=3700, rssi=-61)
        row = wait_for("the status in the registry",
                       lambda: (r := gw.api("/api/nodes/n1")[1]).get("fw") and r)
        assert (row["state"], row["fw"], row["boot"], row["battery_mv"], row["rssi"]) == \
            ("online", "1.4.0", 7, 3700, -61)

        # a command to one node, from the command line: acknowledged ok with its result
        out = send(gw, "n1", "cmd", "interval", "s=120", "--timeout", "10")
        assert out.returncode == 0, out.stderr + out.stdout
        assert "ok" in out.stdout and "iv=120" in out.stdout
        assert node.received[-1][0] == "k" and node.received[-1][1]["s"] == 120

        # a config update to a group: n1 acknowledges, n2 never answers (timeout), exit 1
        out = send(gw, "--group", "roof", "config", '{"sensors": [{"interval_s": 30}]}',
                   "--version", "2", "--timeout", "2")
        assert out.returncode == 1
        lines = out.stdout.splitlines()
        assert any(line.startswith("n1") and " ok" in line for line in lines), out.stdout
        assert any(line.startswith("n2") and "timeout" in line for line in lines), out.stdout
        kind, req, _ = node.received[-1]
        assert kind == "c" and req["v"] == 2 and req["patch"] == {"sensors": [{"interval_s": 30}]}

        # a rejected config is reported with the node's reason
        out = send(gw, "n1", "config", '{"bad": 1}', "--version", "3", "--timeout", "10")
        assert out.returncode == 1 and "failed: bad is not a known key" in out.stdout

        # the same through the HTTP API; the ack is recorded by the daemon
        status, result = gw.api("/api/send", "POST", {"node": "n1", "cmd": "diag",
                                                      "timeout_s": 10})
        assert status == 200 and result["ok"] and result["results"][0]["result"] == "ok"
        assert gw.api("/api/send", "POST", {"node": "n1", "cmd": "explode"}) == (
            400, {"error": "unknown command 'explode' (known: read, interval, flush, reboot, "
                           "diag, time, cred, replay)"})

        # the Last Will: offline, and the offline alarm raised once
        node.status(on=False)
        wait_for("offline", lambda: gw.api("/api/nodes/n1")[1]["state"] == "offline")
        alarms = gw.api("/api/alarms")[1]
        assert [(a["node"], a["alarm"]) for a in alarms] == [("n1", "offline")]
        metrics = gw.api("/metrics")[1]
        for name in ("received_total", "accepted_records_total", "duplicates_total",
                     "rejected_by_reason_total", "outbox_items", "sink_backlog{",
                     "sink_backlog_age_seconds{", "sink_latency_seconds_count{",
                     "sink_errors_total", 'alarms_active{alarm="offline"} 1',
                     'nodes{state="offline"} 1', "status_messages_total 2"):
            assert f"meterlink_gateway_{name}" in metrics, name
        assert gw.api("/api/quarantine") == (200, [])
    finally:
        if node is not None:
            node.close()
        gw.stop()
    assert "Traceback" not in gw.log()


def test_every_endpoint_but_healthz_wants_the_bearer_token(tmp_path, broker):
    gw = GatewayProcess(tmp_path / "gw", broker, "gw-auth")
    try:
        wait_for("the API", lambda: gw.counters().get("subscribed") and gw.counters()
                 .get("api_port"))
        token_file = tmp_path / "gw" / "api-token"
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"  # made by the gateway
        assert len(gw.token) >= 40
        assert gw.api("/healthz", token=None) == (200, {"ok": True})  # for load balancers
        for method, path, body in (("GET", "/readyz", None), ("GET", "/metrics", None),
                                   ("GET", "/api/nodes", None), ("GET", "/api/alarms", None),
                                   ("PUT", "/api/nodes/n1", {"board": "b", "sensors": [],
                                                             "interval_s": 60}),
                                   ("POST", "/api/send", {"node": "n1", "cmd": "diag"})):
            for token in (None, "wrong-token", gw.token[:-1]):
                status, reply = gw.api(path, method, body, token=token)
                assert status == 401, (method, path, token, status)
                assert "bearer token is required" in reply["error"]
        assert gw.api("/api/nodes/n1")[0] == 404  # the refused PUT registered nothing
        assert gw.api("/readyz")[0] == 200 and gw.api("/api/nodes")[0] == 200
    finally:
        gw.stop()
    # the same token after a restart: the file is kept
    first = gw.token
    gw.stats.unlink()
    gw.start()
    try:
        wait_for("the API again", lambda: gw.counters().get("api_port"))
        assert gw.token == first and gw.api("/api/nodes")[0] == 200
    finally:
        gw.stop()
    assert "event=api_unauthorized" in gw.log()


def test_the_node_list_comes_a_page_at_a_time_and_filters(tmp_path):
    """GET /api/nodes answers `limit` nodes by id and a Link rel="next" while there may be
    more; following the links gives every node once. Filters: group, district, state."""
    import json
    import re
    import urllib.request

    from gateway.config import parse_config
    from gateway.daemon import Gateway
    from gateway.webapp import ApiServer

    gw = Gateway(parse_config({"sinks": {"file": {}}, "api": {"port": 0, "token": "t0ken"}},
                              base_dir=tmp_path))
    gw.open_storage()
    with gw.box.transaction():
        for i in range(25):
            gw.box.nodes.register(f"n{i:02d}", board="esp32-devkitc", sensors=[],
                                  interval_s=60, group="pumps" if i % 5 == 0 else None,
                                  district="Oost" if i < 10 else "Centrum")
    gw.handle_message("m/n07/s", cbor2.dumps({"on": False}), received_at=1.0)
    server = ApiServer(gw)
    server.start()
    try:
        def get(path: str):
            req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}",
                                         headers={"Authorization": "Bearer t0ken"})
            with urllib.request.urlopen(req, timeout=10) as reply:
                return json.loads(reply.read()), reply.headers.get("Link")

        seen, path, pages = [], "/api/nodes?limit=10", 0
        while path:
            rows, link = get(path)
            seen += [r["node"] for r in rows]
            pages += 1
            path = re.match(r'<([^>]+)>; rel="next"', link).group(1) if link else None
        assert seen == [f"n{i:02d}" for i in range(25)] and pages == 3
        assert get("/api/nodes?limit=10&after=n19")[0][0]["node"] == "n20"
        assert [r["node"] for r in get("/api/nodes?group=pumps")[0]] == [
            "n00", "n05", "n10", "n15", "n20"]
        rows, link = get("/api/nodes?district=Oost&limit=5")
        assert [r["node"] for r in rows] == ["n00", "n01", "n02", "n03", "n04"]
        assert link == '</api/nodes?district=Oost&limit=5&after=n04>; rel="next"'
        assert [r["node"] for r in get("/api/nodes?state=offline")[0]] == ["n07"]
        assert get("/api/nodes")[1] is None and len(get("/api/nodes")[0]) == 25
    finally:
        server.stop()
        gw.box.close()
