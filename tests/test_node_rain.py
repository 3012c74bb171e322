"""A rain gauge end to end, all real parts: the firmware with the pulse driver's rain gauge in
the MicroPython unix port (96 KB heap for the firmware), a real Mosquitto, the real gateway
process and its SenML file sink. The tipping-bucket model (hw/meter.py RainGauge: a reed that
closes once per tip and bounces) makes the tips the test asks for; what reaches the platform
is the gauge's total and, reading by reading, the rain that fell in between, summing to it.

Expected values are worked out here from the tips the test makes, the gauge's 0.2 mm per tip
and the units of the channel table in docs/wire-format.md (rain_total and rainfall in m at
scale -6, rain_intensity in m/s at scale -9), never from the code under test."""

from __future__ import annotations

import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from gateway_support import GatewayProcess, wait_for
from host_tools.vboard import VirtualNode
from host_tools.vboard.node import default_board, default_config

pytestmark = pytest.mark.slow

QUEUED = re.compile(r" I queue: queued seq=(\d+) ")
ACKED = re.compile(r" I pub: seq=\d+\.\.(\d+) acked")
UM_PER_TIP = 200  # 0.2 mm of rain per tip
RAIN = ("rain_total", "rainfall", "rain_intensity")
UNITS = {"rain_total": "m", "rainfall": "m", "rain_intensity": "m/s"}


def metres(tips: int) -> float:
    """The SenML value of `tips` tips of rain: tips x um per tip x 10^-6 m."""
    return float(Fraction(tips * UM_PER_TIP) * Fraction(10) ** -6)


def gauge_node(root: Path, broker) -> VirtualNode:
    """A battery node on a tipping-bucket gauge: it wakes, reads, sends every second wake-up
    and deep-sleeps its interval; a tip while it sleeps wakes it (the reed on EXT0)."""
    board = default_board()
    board["i2c"] = {}
    board["meters"] = [{"a": 25, "model": "rain_gauge"}]  # reed, closed ~100 ms per tip
    cfg = default_config("rain-1", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["power"] = {"mode": "battery", "send_every": 2}
    cfg["sensors"] = [{"driver": "pulse", "kind": "rain", "pin": 25, "um_per_tip": UM_PER_TIP,
                       "interval_s": 60}]
    return VirtualNode(root, node_id="rain-1", broker=broker, config=cfg, board=board)


def test_a_rain_storms_total_at_the_sink_equals_the_tips_made(tmp_path, broker):
    """Three bursts of tips over many wake-ups (each reading in a boot of its own, after a deep
    sleep), the node's power cut while it sleeps between the second and the third: the last
    rain_total at the sink is all the tips made, the rainfall values sum to exactly that, and
    every reading arrives once, carrying all three rain channels."""
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    node = gauge_node(tmp_path / "rain-1", broker)
    tips = 0

    def storm(n):
        nonlocal tips
        tips += n
        node.set_environment(meters={"25": {"forward": tips}})

    def made():
        got = json.loads((node.root / "meters.json").read_text())
        return got["25"]["forward"]

    def records():
        return [r for r in gw.records() if r["node"] == "rain-1"]

    def series(name):
        return [r["v"] for r in sorted(records(), key=lambda r: r["seq"])
                if r["n"] == f"rain-1:{name}"]

    def asleep():
        proc = node.proc
        return proc is not None and proc.poll() == 4

    def queued():
        return [int(m.group(1)) for m in QUEUED.finditer(node.console())]

    def on_fail():
        return (f"--- node console ---\n{node.console()[-4000:]}\n"
                f"--- gateway log ---\n{gw.log()[-2000:]}")

    def all_acked():
        acked = [int(m.group(1)) for m in ACKED.finditer(node.console())]
        return acked and max(queued()) <= max(acked)

    def falls_asleep(what, condition=lambda: True):
        """Waits for the node to go to sleep anew with `condition` true: what the test does
        next happens early in a sleep, never while a wake-up is under way."""
        n = len(node.exits)
        wait_for(lambda: len(node.exits) > n and asleep() and condition(), 30, what, on_fail)

    def reported():
        wait_for(lambda: made() == tips, 30, f"the gauge making {tips} tips", on_fail)
        wait_for(lambda: metres(tips) in series("rain_total"), 30,
                 f"rain_total {metres(tips)} m at the sink", on_fail)

    storm(0)
    try:
        node.start(sleep_scale=0.03)  # a 60 s sleep takes 1.8 s
        wait_for(asleep, 30, "the first deep sleep", on_fail)
        storm(5)  # the first tip wakes the node; the rest fall while it is awake or asleep
        reported()
        storm(4)
        reported()
        falls_asleep("the next deep sleep")
        node.kill(power_cut=True)  # the battery pulled while the node sleeps: RTC memory lost
        storm(3)
        node.start(sleep_scale=0.03)
        reported()
        # the node off while it sleeps with every reading it queued acknowledged by the broker;
        # the gateway delivers them all to the sink
        falls_asleep("a sleep after a send", all_acked)
        node.stop()
        wait_for(lambda: set(queued()) <= {r["seq"] for r in records()}, 30,
                 "every queued reading in the sink", on_fail)
    finally:
        node.stop()
        gw.stop()

    assert made() == tips == 12
    # every reading once, nothing rejected, no error on the node (MemoryError included)
    recs = records()
    dup = Counter((r["seq"], r["n"]) for r in recs)
    assert max(dup.values()) == 1, f"a reading was stored twice: {dup.most_common(3)}"
    assert gw.counters().get("rejected", 0) == 0, gw.counters()
    by_seq: dict[int, dict] = {}
    for r in recs:
        name = r["n"].split(":", 1)[1]
        assert r.get("u") == UNITS[name], r
        by_seq.setdefault(r["seq"], {})[name] = r["v"]
    q = queued()
    assert len(q) == len(set(q)) and set(q) == set(by_seq), (sorted(q), sorted(by_seq))
    seqs = sorted(by_seq)
    jumps = [b for a, b in zip(seqs, seqs[1:]) if b != a + 1]
    assert len(jumps) <= 1, f"a gap other than the power cut's: {seqs}"
    assert not [line for line in node.console().splitlines() if " E " in line], \
        node.console()[-3000:]

    # each reading carries all three; the total only grows, ending at every tip made
    readings = [by_seq[s] for s in seqs]
    assert all(set(r) == set(RAIN) for r in readings), readings
    totals = [r["rain_total"] for r in readings]
    assert totals == sorted(totals) and totals[0] == 0 and totals[-1] == metres(tips), totals
    # the rain between readings sums exactly to the total (exact decimals, not float sums),
    # and each reading's rainfall is the change of the total since the one before it
    fall = [Fraction(repr(r["rainfall"])) for r in readings]
    assert sum(fall) == Fraction(tips * UM_PER_TIP, 10 ** 6), fall
    steps = [Fraction(repr(b)) - Fraction(repr(a)) for a, b in zip([0.0] + totals, totals)]
    assert fall == steps, (fall, steps)
    assert all(f % Fraction(UM_PER_TIP, 10 ** 6) == 0 for f in fall), "whole tips only"
    # a mean rate over a positive time: zero exactly when no rain fell in between
    assert all((r["rain_intensity"] > 0) == (r["rainfall"] > 0) for r in readings), readings
    assert sum(1 for f in fall if f) >= 3, "the rain came in several readings"
