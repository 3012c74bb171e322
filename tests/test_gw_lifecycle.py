"""Retiring a node, putting it back in service, deleting one registered by mistake: a real
gateway process on a real Mosquitto, changed through `meterlink gateway node` and the API.

Field trial: there was no way to take a replaced meter out of the fleet; its alarms stayed
open and whatever its old id still sent was counted.
"""

from __future__ import annotations

import json
import subprocess
import time

import cbor2
import pytest

from gateway_support import MELINK, GatewayProcess, publish, wait_for

pytestmark = pytest.mark.slow


def reading(node: str, seq: int, **extra: int) -> tuple[str, bytes]:
    values = {1: 2000 + seq, **{int(k[1:]): v for k, v in extra.items()}}
    return f"m/{node}/r", cbor2.dumps([1, seq, int(time.time()), values])


def melink_node(gw: GatewayProcess, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([MELINK, "gateway", "node", "--config", str(gw.conf), *words],
                          capture_output=True, text=True, timeout=60)


def count(gw: GatewayProcess, node: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for r in gw.records():
        if r["node"] == node and r["n"].endswith(":temperature"):
            out[r["seq"]] = out.get(r["seq"], 0) + 1
    return out


def events(gw: GatewayProcess) -> list[tuple[str, bool, str]]:
    path = gw.dir / "events.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [(e["n"], e["vb"], e.get("vs", "")) for e in map(json.loads, lines)]


def test_a_retired_node_leaves_the_fleet_and_counts_nothing_until_reinstated(tmp_path, broker):
    with GatewayProcess(tmp_path / "gw", broker, gateway_extra="offline_grace_s = 0\n") as gw:
        gw.wait_subscribed()
        # n1 reports a leak (alarms channel, key 16, bit 1)
        publish(broker, [reading("n1", 1), reading("n1", 2, k16=1), reading("n2", 1)])
        wait_for(lambda: count(gw, "n1") == {1: 1, 2: 1} and count(gw, "n2") == {1: 1}, 30,
                 "the first readings")
        wait_for(lambda: ("n1:alarm:leak", True, "alarms channel = 1") in events(gw), 10,
                 "the leak alarm")

        done = melink_node(gw, "retire", "n1", "--note", "meter replaced, see work order 88")
        assert (done.returncode, done.stdout) == \
            (0, "n1: retired (meter replaced, see work order 88)\n"), done.stderr
        assert melink_node(gw, "retire", "n1").stdout == \
            "n1: was retired already (meter replaced, see work order 88)\n"
        wait_for(lambda: ("n1:alarm:leak", False, "node retired") in events(gw), 10,
                 "the leak alarm cleared by the retirement")
        status, nodes = gw.api("/api/nodes")
        assert status == 200 and [n["node"] for n in nodes] == ["n2"]
        status, nodes = gw.api("/api/nodes?retired=true")
        retired = {n["node"]: n for n in nodes}["n1"]
        assert retired["state"] == "retired" and retired["retired_at"] > 0
        assert retired["retired_note"] == "meter replaced, see work order 88"
        assert gw.api("/api/alarms")[1] == []

        # its old id keeps talking: a new reading, an old one again, its Last Will
        publish(broker, [reading("n1", 3), reading("n1", 2), ("m/n1/s", cbor2.dumps({"on": False})),
                         reading("n2", 2)])
        wait_for(lambda: count(gw, "n2") == {1: 1, 2: 1}, 30, "n2's reading behind them")
        wait_for(lambda: gw.counters().get("retired_ignored") == 1, 10, "the status counted")
        status, rows = gw.api("/api/quarantine?reason=retired")
        assert status == 200 and len(rows) == 2
        assert {cbor2.loads(bytes.fromhex(r["payload"]))[1] for r in rows} == {2, 3}
        assert all("node 'n1' is retired" in r["detail"] for r in rows)
        assert gw.counters()["rejected_by_reason"]["retired"] == 2
        assert count(gw, "n1") == {1: 1, 2: 1}
        assert gw.api("/api/alarms")[1] == [], "no offline alarm for a retired node"

        # retirement survives a restart
        gw.stop()
        (gw.dir / "stats.json").unlink()
        gw.start()
        wait_for(lambda: gw.log().count("event=subscribed") == 2 and
                 gw.counters().get("api_port"), 30, "the gateway back")
        publish(broker, [reading("n1", 4)])
        wait_for(lambda: len(gw.api("/api/quarantine?reason=retired")[1]) == 3, 30,
                 "n1's reading quarantined after the restart")

        status, row = gw.api("/api/nodes/n1/reinstate", "POST")
        assert status == 200 and row["changed"] is True and row["retired_at"] is None
        # back in service: new readings count, an old one is a duplicate (dedup state kept)
        publish(broker, [reading("n1", 5), reading("n1", 2)])
        wait_for(lambda: 5 in count(gw, "n1") and gw.counters().get("duplicates") == 1, 30,
                 "n1's new reading stored and its old one counted a duplicate")
        assert count(gw, "n1") == {1: 1, 2: 1, 5: 1}
        assert [n["node"] for n in gw.api("/api/nodes")[1]] == ["n1", "n2"]


def test_only_a_node_that_never_sent_a_reading_can_be_deleted(tmp_path, broker):
    with GatewayProcess(tmp_path / "gw", broker) as gw:
        gw.wait_subscribed()
        publish(broker, [reading("n1", 1)])
        wait_for(lambda: count(gw, "n1") == {1: 1}, 30, "n1's reading")
        done = melink_node(gw, "delete", "n1")
        assert done.returncode == 1
        assert done.stderr == ("meterlink: gateway node delete n1: node 'n1' has sent readings "
                               "(seq 1-1): retire it instead, which keeps what stops a "
                               "reading from being counted twice\n")
        assert gw.api("/api/nodes/n1")[0] == 200

        # registered by mistake (provision with a wrong id): never heard of, deleted
        status, _ = gw.api("/api/nodes/n1x", "PUT", {"board": "esp32-devkitc", "sensors": [],
                                                     "interval_s": 60})
        assert status == 201
        done = melink_node(gw, "delete", "n1x")
        assert (done.returncode, done.stdout) == (0, "n1x: deleted\n"), done.stderr
        assert gw.api("/api/nodes/n1x")[0] == 404
        assert gw.api("/api/nodes/nope", "DELETE") == (404, {"error": "node 'nope' is not known"})
        assert gw.api("/api/nodes/nope/retire", "POST")[0] == 404
        assert gw.api("/api/nodes/n1/retire", "POST", {"reason": "x"}) == \
            (400, {"error": "reason: Extra inputs are not permitted (got 'x')"})
        assert gw.api("/api/nodes?retired=maybe")[0] == 400
