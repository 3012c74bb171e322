"""The walking skeleton end to end, all real parts: the firmware in the MicroPython unix port
(96 KB heap) reads the virtual BME280, publishes over a real Mosquitto, and the gateway process
writes SenML to its JSONL sink. The values the test sets in the node's physical environment
arrive as the right SenML values, each reading exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway_support import wait_for
from host_tools.vboard import VirtualNode

pytestmark = pytest.mark.slow

GATEWAY = str(Path(sys.executable).with_name("meterlink"))


def start_gateway(tmp_path: Path, broker) -> tuple[subprocess.Popen, Path, Path]:
    sink = tmp_path / "readings.jsonl"
    stats = tmp_path / "stats.json"
    conf = tmp_path / "gateway.toml"
    conf.write_text(
        f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nclient_id = "gw-e2e"\n'
        f'{broker.gateway_conf()}[sink]\npath = "{sink}"\n[gateway]\nstats_file = "{stats}"\n'
    )
    log = open(tmp_path / "gateway.log", "wb")
    proc = subprocess.Popen([GATEWAY, "gateway", "--config", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    return proc, sink, stats


def read_sink(sink: Path) -> list[dict]:
    if not sink.exists():
        return []
    return [json.loads(line) for line in sink.read_text().splitlines() if line.strip()]


def by_name(records: list[dict], node: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        if r["node"] == node:
            out.setdefault(r["n"].split(":", 1)[1], []).append(r)
    return out


def test_bme280_values_reach_the_sink_exactly_once(tmp_path, broker):
    gw, sink, stats = start_gateway(tmp_path, broker)
    # nodes start once the gateway subscribed: on a fresh broker a reading published before
    # has no subscriber
    wait_for(lambda: json.loads(stats.read_text()).get("subscribed") if stats.exists() else False,
             30, "the gateway's subscription", lambda: (tmp_path / "gateway.log").read_text())
    node = VirtualNode(tmp_path / "node-e2e", node_id="node-e2e", broker=broker, interval_s=1)
    node.set_environment(temperature_c=23.45, humidity_pct=41.5, pressure_pa=98765.0)
    diagnostics = lambda: (f"--- node console ---\n{node.console()[-3000:]}\n--- gateway log ---\n"
                           f"{(tmp_path / 'gateway.log').read_text()[-3000:]}")
    try:
        node.start()
        first = wait_for(lambda: [r for r in read_sink(sink) if r["node"] == "node-e2e"],
                         30, "the first reading in the sink", diagnostics)
        t0 = first[0]["t"]
        assert abs(t0 - time.time()) < 30, "the record time is the node's wall clock"

        recs = by_name(read_sink(sink), "node-e2e")
        assert recs["temperature"][0] == {"n": "node-e2e:temperature", "u": "Cel", "v": 23.45,
                                          "t": t0, "node": "node-e2e", "seq": 0,
                                          "rid": "node-e2e/0/temperature"}, recs
        assert abs(recs["humidity"][0]["v"] - 41.5) <= 0.01 and recs["humidity"][0]["u"] == "%RH"
        assert abs(recs["pressure"][0]["v"] - 98765) <= 1 and recs["pressure"][0]["u"] == "Pa"

        # The environment changes; the next readings follow it.
        node.set_environment(temperature_c=-7.25, humidity_pct=88.0, pressure_pa=102000.0)
        wait_for(lambda: any(r["n"] == "node-e2e:temperature" and r["v"] == -7.25
                             for r in read_sink(sink)), 15, "the new temperature", diagnostics)
        wait_for(lambda: len({r["seq"] for r in read_sink(sink)}) >= 5, 15, "five readings",
                 diagnostics)
    finally:
        node.stop()
        gw.terminate()
        gw.wait(10)

    records = read_sink(sink)
    seqs = Counter((r["node"], r["seq"], r["n"]) for r in records)
    assert max(seqs.values()) == 1, f"a reading was stored twice: {seqs.most_common(3)}"
    per_seq = Counter(r["seq"] for r in records)
    assert set(per_seq.values()) == {3}, f"every reading has its three BME280 channels: {per_seq}"
    assert sorted(per_seq) == list(range(len(per_seq))), "no gaps: seq 0, 1, 2, ..."
    counters = json.loads(stats.read_text())
    assert counters["rejected"] == 0, counters
    assert " E " not in node.console(), node.console()
