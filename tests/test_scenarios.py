"""Rehearsal scenarios (`meterlink simulate --scenario`, host_tools/scenarios/) and the gateway's
early-warning rules they rehearse, end to end through a real Mosquitto and the real gateway
process: a pipe burst played by a virtual pump station (the real firmware reading its
pressure transducer on the virtual ADC) raises the rate-of-change rule exactly once; a
district whose main leaks between the district meter and the customers' meters shows the
loss in its water balance.

Expected values are the physical quantities the tests set and the SenML units of the channel
table (docs/wire-format.md), never the code under test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import cbor2
import pytest

from gateway.channels import default_table
from gateway_support import GatewayProcess, publish, wait_for
from host_tools import cmd_provision, scenarios
from meterlink_common import UserError

MELINK = str(Path(sys.executable).with_name("meterlink"))
KEY = {ch.name: ch.id for ch in default_table()}


@pytest.mark.parametrize("name", scenarios.names())
def test_each_scenario_gives_its_stations_configs_the_firmware_accepts(name):
    sc = scenarios.load(name)
    assert sc.title and sc.timeline and sc.duration_s >= max(c.at + c.ramp_s for c in sc.timeline)
    for node_id in sc.nodes:
        board, config = sc.hardware(node_id, "192.0.2.1", 1883)
        out = cmd_provision.validate(config)  # firmware/config.py's rules, in MicroPython
        assert out["node_id"] == node_id and out["sensors"]
        for t in (0.0, sc.duration_s / 2, sc.duration_s):
            assert sc.environment(node_id, t)


def test_quantities_hold_and_ramp_linearly():
    sc = scenarios.load("pipe-burst")  # 4.0 bar, from 8 s to 2.2 bar over 8 s
    bar = [sc.quantities("ps-03", t)["pressure_bar"] for t in (0, 7.9, 8, 12, 16, 30)]
    assert bar == pytest.approx([4.0, 4.0, 4.0, 3.1, 2.2, 2.2])
    # the transducer: 0.5-4.5 V for 0-10 bar behind a 10k/10k divider, so 3.1 bar is
    # (500 + 3.1 * 400) / 2 mV at the pin
    assert sc.environment("ps-03", 12)["adc_mv"]["34"] == pytest.approx(870.0)


@pytest.mark.parametrize("change, message", [
    ({"duration_s": 0}, "duration_s must be a number of seconds > 0: got 0"),
    ({"nodes": {"x": {"station": "boiler"}}},
     "nodes.x.station must be one of gas, pressure, level, rain, noise: got 'boiler'"),
    ({"timeline": [{"at": 5, "node": "gs-01", "set": {"methane": 30}}]},
     "timeline[0].set.methane is not a quantity of a gas station (methane_lel, gas_fault): "
     "got 30"),
    ({"timeline": [{"at": 500, "node": "gs-01", "set": {"methane_lel": 30}}]},
     "timeline[0].at must be a time in seconds 0-55: got 500"),
    ({"timeline": [{"at": 5, "node": "gs-02", "set": {"methane_lel": 30}}]},
     "timeline[0].node must be a node of the scenario (gs-01): got 'gs-02'"),
    ({"speed": 2}, "speed is not a scenario key"),
])
def test_a_bad_scenario_is_one_line_naming_the_key(tmp_path, change, message):
    raw = {"title": "t", "duration_s": 55, "nodes": {"gs-01": {"station": "gas"}},
           "timeline": [{"at": 2, "node": "gs-01", "set": {"methane_lel": 26.0}}], **change}
    with pytest.raises(UserError) as err:
        scenarios.parse(raw, "bad", "bad.toml")
    assert f"bad.toml: {message}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_pipe_burst_scenario_raises_the_rate_rule_exactly_once(tmp_path, broker):
    sc = scenarios.load("pipe-burst")
    gw = GatewayProcess(tmp_path / "gw", broker, extra=sc.rules).wait_subscribed()
    sim = subprocess.run([MELINK, "simulate", "--scenario", "pipe-burst", "--broker",
                          f"{broker.host}:{broker.port}", "--pki", str(broker.tls.root),
                          "--dir", str(tmp_path / "sim")],
                         capture_output=True, text=True, timeout=sc.duration_s + 60)
    try:
        assert sim.returncode == 0, sim.stdout + sim.stderr
        assert "ps-03: pressure_bar -> 2.2 over 8 s" in sim.stdout, sim.stdout
        assert "[rules.burst-ps3]" in sim.stdout  # the rules it rehearses, printed first
        time.sleep(1.0)  # the last readings' way through the gateway
        pressure = sorted((r["seq"], r["v"]) for r in gw.records()
                          if r["n"] == "ps-03:water_pressure")
        assert pressure, gw.log()[-2000:]
        # before the burst 4 bar, at the end 2.2 bar (hPa resolution of the channel, in Pa;
        # the ADC's noise moves a reading by a few hPa)
        assert abs(pressure[0][1] - 400_000) <= 1_000 and abs(pressure[-1][1] - 220_000) <= 1_000
        assert [s for s, _ in pressure] == list(range(len(pressure)))  # once each, no gap
        (raised,) = gw.events("rule:burst-ps3")  # raised once, never again
        assert raised["node"] == "ps-03" and raised["vb"] is True
        assert raised["vs"].startswith("pipe burst at pump station 3: water_pressure dropped")
        assert raised["readings"][0]["v"] >= 390_000 and raised["readings"][-1]["v"] <= 240_000
    finally:
        gw.stop()


@pytest.mark.slow
def test_a_district_with_a_leaking_main_shows_the_loss_in_its_water_balance(tmp_path, broker):
    """A district meter and three customers' meters send their totals every 15 minutes for
    three hours (messages as the nodes send them, with their times, through the broker); in
    the third hour the main leaks 200 L between the district meter and the customers."""
    rule = ('[rules.balance-centrum]\nkind = "balance"\nchannel = "water_volume"\n'
            'meter = "dm-centrum"\ndistrict = "Centrum"\nloss_percent = 10\nwait = "1m"\n')
    gw = GatewayProcess(tmp_path / "gw", broker, extra=rule).wait_subscribed()
    try:
        wait_for(lambda: gw.counters().get("api_port"), 30, "the API", gw.log)
        for node in ("dm-centrum", "c1", "c2", "c3"):
            status, _ = gw.api(f"/api/nodes/{node}", "PUT", {
                "board": "esp32-devkitc", "sensors": [], "interval_s": 900,
                "district": "Centrum"})
            assert status == 201
        t0 = (int(time.time()) // 3600 - 4) * 3600  # four hours ago, a full hour
        use = {"c1": 30, "c2": 50, "c3": 20}  # litres per 15 minutes each
        totals = {"dm-centrum": 1_000_000, "c1": 5_000, "c2": 9_000, "c3": 2_000}
        messages = []
        for step in range(13):  # t0 .. t0 + 3 h
            if step:
                for node, litres in use.items():
                    totals[node] += litres
                totals["dm-centrum"] += sum(use.values()) + (50 if step > 8 else 0)
            for node, total in totals.items():
                messages.append((f"m/{node}/r", cbor2.dumps(
                    [1, step, t0 + 900 * step, {KEY["water_volume"]: total}])))
        time.sleep(1.5)  # the registrations reach the rules (within a second)
        publish(broker, messages)
        wait_for(lambda: gw.events("rule:balance-centrum"), 30, "the balance alarm",
                 lambda: gw.log()[-3000:])
        time.sleep(1.5)  # anything more would have arrived by now
        (raised,) = gw.events("rule:balance-centrum")
        # hours 1 and 2: 400 L in, 400 L used; hour 3: 600 L in, 400 L used: 200 L lost
        assert raised["node"] == "dm-centrum" and raised["vb"] is True
        assert raised["vs"].endswith(f"hour from {t0 + 7200}: 0.6 m3 in, 0.4 m3 through 3 "
                                     "meters, 0.2 m3 (33.3333%) unaccounted"), raised["vs"]
        assert [r["v"] for r in raised["readings"]] == [0.6, 0.4]
        stored = Counter((r["node"], r["seq"]) for r in gw.records())
        assert len(stored) == 52 and max(stored.values()) == 1
    finally:
        gw.stop()
