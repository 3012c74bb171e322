"""`make demo` as a newcomer runs it: `meterlink demo --duration N` exits 0 with readings from
all six nodes in readings.jsonl (the air-quality station's particulates among them), the
household meter's leak alarm raised, the gas station's methane leak (the gas-leak scenario)
raising its alarm and switching its relay, every node registered with the gateway with where
it stands and whether the public page shows it; and Ctrl-C stops everything with no stray
process."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard_support import table

pytestmark = pytest.mark.slow

METERLINK = str(Path(sys.executable).with_name("meterlink"))


def processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{pid}: {cmdline}")
    return found


NODES = {"park-01", "school-02", "pumpstation-03", "household-04", "airquality-05",
         "gasstation-06"}
# a household's water meter is nobody else's business, a gas station's state neither
PUBLIC = NODES - {"household-04", "gasstation-06"}


def api_nodes(api: str, token_file: str) -> dict[str, dict]:
    token = Path(token_file).read_text().splitlines()[0].strip()
    req = urllib.request.Request(f"{api}/api/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return {n["node"]: n for n in json.loads(resp.read())}


def metres(a: dict, b: dict) -> float:
    """Distance of two WGS 84 points, equirectangular (fine at city scale)."""
    x = math.radians(b["lon"] - a["lon"]) * math.cos(math.radians((a["lat"] + b["lat"]) / 2))
    y = math.radians(b["lat"] - a["lat"])
    return 6_371_000 * math.hypot(x, y)


def fleet_page(browser, api: str, token_file: str) -> dict[str, list[str]]:
    """The dashboard's fleet table as an operator sees it (logged in with the demo's token),
    once it lists every demo node and the household's leak: {node: [cell texts]}."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{api}/login")
    browser.find_element(By.ID, "token").send_keys(Path(token_file).read_text().strip())
    browser.find_element(By.ID, "login").click()

    def rows():
        got = table(browser, "#fleet tbody tr", "node")
        return got if set(got) == NODES and "leak" in got["household-04"][7] else None

    return WebDriverWait(browser, 10).until(lambda d: rows())


def test_demo_with_duration_exits_0_with_every_node(tmp_path, browser):
    out = tmp_path / "demo-out"
    proc = subprocess.Popen([METERLINK, "demo", "--duration", "12", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killer = threading.Timer(90, proc.kill)
    killer.start()
    lines, registry, api, fleet = [], {}, None, {}
    try:
        for line in proc.stdout:  # the registry is asked while the gateway still runs
            lines.append(line)
            m = re.match(r"demo: gateway API on (http://127\.0\.0\.1:\d+) \(bearer token in (\S+);",
                         line)
            if m:
                api = m.groups()
            if line.startswith("demo: registered ") and api:
                registry = api_nodes(*api)
                fleet = fleet_page(browser, *api)
        proc.wait()
    finally:
        killer.cancel()
    stdout = "".join(lines)
    assert proc.returncode == 0, stdout
    assert api, stdout
    records = [json.loads(line) for line in (out / "readings.jsonl").read_text().splitlines()]
    assert {r["node"] for r in records} == NODES
    assert "nodes seen      6 of 6" in stdout and "result          ok" in stdout, stdout
    # a live line per reading, e.g. "08:41:07  school-02       seq=3    temperature 21.73 Cel ..."
    live = [line for line in lines if " seq=" in line]
    readings = {(r["node"], r["seq"]) for r in records}
    assert len(live) == len(readings) > 10
    # the nodes start once the gateway listens: no node's first reading is lost at the broker
    firsts = {node: min(seq for n, seq in readings if n == node) for node in NODES}
    assert set(firsts.values()) == {0}, firsts

    # the household's leak: the node's alarms channel says leak (bit 1), the gateway raised it,
    # the demo said so as it happened and in its summary, and nothing else was raised
    water = [r for r in records if r["node"] == "household-04"]
    assert any(r["n"] == "household-04:water_volume" and r["u"] == "m3" for r in water), water
    assert any(r["n"] == "household-04:alarms" and int(r["v"]) & 1 for r in water), water
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    raised = sorted(e["n"] for e in events if e.get("event") == "alarm" and e.get("vb"))
    assert raised == ["gasstation-06:alarm:gas", "household-04:alarm:leak"], events
    assert "demo: alarm raised: household-04:leak" in stdout, stdout
    assert "demo: alarm raised: gasstation-06:gas" in stdout, stdout
    assert "alarms raised   2: " in stdout, stdout

    # the gas station (the gas-leak scenario: methane past 20 % LEL 7 s in): the reading
    # that raised it carries the methane over the level, the gas bit and the relay on
    gas = [r for r in records if r["node"] == "gasstation-06"]
    by_seq: dict[int, dict] = {}
    for r in gas:
        by_seq.setdefault(r["seq"], {})[r["n"].split(":", 1)[1]] = r
    alarm = [v for v in by_seq.values() if "alarms" in v and int(v["alarms"]["v"]) & 16]
    assert alarm and alarm[0]["methane"]["u"] == "%" and alarm[0]["methane"]["v"] >= 20.0, gas
    assert alarm[0]["relay"]["v"] == 1, gas

    # the air-quality station's particulates reached the sink (SenML: kg/m3), besides its weather
    air = {r["n"].split(":", 1)[1]: r for r in records if r["node"] == "airquality-05"}
    assert {"pm1", "pm2_5", "pm10", "temperature", "humidity", "pressure"} <= set(air), air
    assert all(air[n]["u"] == "kg/m3" and 0 < air[n]["v"] < 1e-6 for n in ("pm1", "pm2_5", "pm10"))

    # registered through the API: a location in one city, a district, the public flag
    assert set(registry) == NODES, registry
    for node_id, row in registry.items():
        assert row["registered"] and row["board"] and row["sensors"], row
        assert row["district"] and row["location"], row
        assert row["public"] == (node_id in PUBLIC), row
    where = [row["location"] for row in registry.values()]
    assert max(metres(a, b) for a in where for b in where) < 3000, where
    assert min(metres(a, b) for a in where for b in where if a is not b) > 100, where
    assert "/public (" in stdout, stdout

    # the operator's fleet page listed every node, the household with its leak
    assert set(fleet) == NODES and fleet["household-04"][7] == "leak", fleet
    assert fleet["airquality-05"][1] == "online", fleet


def test_ctrl_c_stops_everything(tmp_path):
    out = tmp_path / "demo-out"
    # the demo's work folder (broker config, node folders) goes under this test's tmp_path, so
    # the stray-process check sees only this demo, not others running on the machine
    proc = subprocess.Popen([METERLINK, "demo", "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TMPDIR": str(tmp_path)})
    sink = out / "readings.jsonl"

    def nodes_seen() -> set[str]:
        if not sink.exists():
            return set()
        return {json.loads(line)["node"] for line in sink.read_text().splitlines() if line.strip()}

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and nodes_seen() != NODES:
        time.sleep(0.2)
    assert nodes_seen() == NODES, "the demo did not store readings from every node"
    marker = str(out)  # the gateway's config and every node's environment name this folder
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, stdout
    assert "demo summary" in stdout
    time.sleep(0.5)
    stray = [p for p in processes_mentioning(str(tmp_path)) if str(proc.pid) not in p]
    assert not stray, stray
    assert not processes_mentioning(marker), processes_mentioning(marker)
