"""Meters end to end, all real parts: the firmware with its meter drivers in the MicroPython unix
port (96 KB heap for the firmware), a real Mosquitto, the real gateway process and its SenML
file sink. What the physical models are set to (pulses a water meter makes, an M-Bus meter's
registers) arrives at the sink as the right SenML values, every reading exactly once and without a gap in the node's sequence numbers: the
meter's total in the pipe is the total on the platform.

Expected values are worked out here from the physical quantities the test sets and the units of
the channel table in docs/wire-format.md, never from the code under test."""

from __future__ import annotations

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

# docs/wire-format.md, channel table: name -> (SenML unit, scale)
UNITS = {"water_volume": ("m3", -3), "water_flow": ("m3/s", -6), "temperature": ("Cel", -2),
         "alarms": (None, 0)}

LITRES_PER_PULSE = 10
MBUS_SERIAL = 55550002


def senml(name: str, value: Fraction | int | None = None):
    """(unit, value) as the gateway must write them: the channel value (in the channel's
    integer unit) times 10^scale."""
    base = name.split(":")[0]
    unit, scale = UNITS[base]
    return unit, (None if value is None else Fraction(value) * Fraction(10) ** scale)


def gateway(path: Path, broker) -> GatewayProcess:
    """The gateway, once it has subscribed: a reading published before that would have no
    subscriber at the broker (on a fresh broker the gateway's session does not exist yet)."""
    return GatewayProcess(path, broker).wait_subscribed()


def node_records(gw: GatewayProcess, node_id: str) -> list[dict]:
    return [r for r in gw.records() if r["node"] == node_id]


def values(gw: GatewayProcess, node_id: str, name: str) -> list:
    """The SenML values of channel `name` ("water_volume", "temperature:1") in seq order."""
    full = f"{node_id}:{name}"
    return [r["v"] for r in sorted(node_records(gw, node_id), key=lambda r: r["seq"])
            if r["n"] == full]


def queued(node: VirtualNode) -> list[int]:
    return [int(m.group(1)) for m in QUEUED.finditer(node.console())]


def errors(node: VirtualNode) -> list[str]:
    """The errors the node logged."""
    return [line for line in node.console().splitlines() if " E " in line]


def debug(node: VirtualNode, gw: GatewayProcess):
    return lambda: (f"--- node console ---\n{node.console()[-4000:]}\n"
                    f"--- gateway log ---\n{gw.log()[-2000:]}")


def assert_exactly_once_without_gaps(gw: GatewayProcess, node: VirtualNode) -> dict[int, set]:
    """Every reading the node queued is in the sink once, seq 0, 1, 2, ... without a gap, each
    SenML record with the unit of its channel. Returns seq -> channel names."""
    recs = node_records(gw, node.node_id)
    dup = Counter((r["seq"], r["n"]) for r in recs)
    assert max(dup.values()) == 1, f"a reading was stored twice: {dup.most_common(3)}"
    by_seq: dict[int, set] = {}
    for r in recs:
        name = r["n"].split(":", 1)[1]
        unit, _ = senml(name)
        assert r.get("u") == unit, r
        assert r["rid"] == f"{node.node_id}/{r['seq']}/{name}", r
        by_seq.setdefault(r["seq"], set()).add(name)
    assert sorted(by_seq) == list(range(len(by_seq))), f"gaps: {sorted(by_seq)}"
    q = queued(node)
    assert len(q) == len(set(q)), "a seq was queued twice"
    assert set(q) <= set(by_seq), f"queued but never delivered: {sorted(set(q) - set(by_seq))}"
    assert gw.counters().get("rejected", 0) == 0, gw.counters()
    return by_seq


# --------------------------------------------------------------------------- water pit, mains
# Two nodes in one water pit, both mains-powered: pit-1 counts the pulses of a water meter
# (reed contacts in quadrature, bouncing 5 ms, a tamper loop); pit-2 reads a wired M-Bus water
# meter. Each meter with the probes that share its node (DS18B20, a Modbus water-quality probe,
# battery voltage): tests/test_node_combinations.py.
def pit_pulse(root: Path, broker) -> VirtualNode:
    board = default_board()
    board["i2c"] = {}
    board["meters"] = [{"a": 25, "b": 26, "tamper": 27}]  # reed contacts that bounce (5 ms)
    cfg = default_config("pit-1", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["sensors"] = [
        {"driver": "pulse", "kind": "water", "pin": 25, "pin_b": 26, "tamper_pin": 27,
         "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 2},
    ]
    return VirtualNode(root, node_id="pit-1", broker=broker, config=cfg,
                       board=board)


def pit_mbus(root: Path, broker) -> VirtualNode:
    board = default_board()
    board["i2c"] = {}
    board["uart"] = {"2": {"tx": 17, "rx": 16, "devices": [
        {"model": "mbus_meter", "address": 5, "serial": MBUS_SERIAL, "medium": "water"}]}}
    cfg = default_config("pit-2", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["uart"] = {"2": {"tx": 17, "rx": 16, "baudrate": 2400, "parity": "even"}}
    cfg["sensors"] = [{"driver": "mbus", "uart": "uart2", "address": 5, "interval_s": 2}]
    return VirtualNode(root, node_id="pit-2", broker=broker, config=cfg,
                       board=board)


def test_water_pit_meters_reach_the_platform_once(tmp_path, broker):
    gw = gateway(tmp_path / "gw", broker)
    pulses = pit_pulse(tmp_path / "pit-1", broker)
    mbus = pit_mbus(tmp_path / "pit-2", broker)

    def world(forward=0, reverse=0):
        pulses.set_environment(meters={"25": {"forward": forward, "reverse": reverse}})

    def meter(volume_l, flow_l_h, flow_c, error_flags=0):
        mbus.set_environment(mbus={str(MBUS_SERIAL): {
            "volume_l": volume_l, "flow_l_h": flow_l_h, "flow_temp_c": flow_c,
            "error_flags": error_flags}})

    def has(node_id, name, value):
        return lambda: value in values(gw, node_id, name)

    def on_fail():
        return debug(pulses, gw)() + "\n--- pit-2 ---\n" + mbus.console()[-2000:]

    world()
    meter(123456, 720, 11.3)
    try:
        pulses.start()
        mbus.start()
        # First readings: nothing counted yet; the M-Bus meter as set.
        wait_for(has("pit-1", "water_volume", 0), 40, "the pulse meter's first total", on_fail)
        wait_for(has("pit-2", "water_volume", 123.456), 20, "the M-Bus total 123456 L", on_fail)
        # 720 L/h = 200 mL/s = 0.0002 m3/s; the flow temperature 11.3 degC
        assert values(gw, "pit-2", "water_flow")[0] == float(senml("water_flow", 200)[1])
        assert values(gw, "pit-2", "temperature")[0] == 11.3

        # 17 pulses forward through the pulse meter while the node runs; the M-Bus meter's
        # register moves on by 987 L, its flow stops, the water cools, it flags an error.
        world(forward=17)
        meter(123456 + 987, 0, 7.5, error_flags=0x10)
        top = float(senml("water_volume", 17 * LITRES_PER_PULSE)[1])
        wait_for(has("pit-1", "water_volume", top), 60, f"the total after 17 pulses ({top} m3)",
                 on_fail)
        wait_for(has("pit-2", "alarms", 8), 20, "the M-Bus meter's sensor-fault bit", on_fail)
        # 2 pulses backwards; the M-Bus meter's error clears.
        world(forward=17, reverse=2)
        meter(123456 + 987, 0, 7.5)
        net = float(senml("water_volume", (17 - 2) * LITRES_PER_PULSE)[1])
        wait_for(lambda: values(gw, "pit-1", "water_volume")[-1:] == [net], 30,
                 f"the total after 2 reverse pulses ({net} m3)", on_fail)
        wait_for(has("pit-2", "alarms", 0), 20, "the M-Bus fault cleared", on_fail)
        wait_for(has("pit-2", "water_volume", 124.443), 20, "the M-Bus total 124443 L", on_fail)
        # everything the nodes queued so far reaches the sink
        for node in (pulses, mbus):
            mark = queued(node)
            wait_for(lambda: set(mark) <= {r["seq"] for r in node_records(gw, node.node_id)},
                     30, f"every reading {node.node_id} queued in the sink", on_fail)
    finally:
        pulses.stop()
        mbus.stop()
        gw.stop()

    # pit-1: each reading is the pulse meter's record, with its channels only.
    by_seq = assert_exactly_once_without_gaps(gw, pulses)
    kinds = {frozenset(n for n in names if n != "water_flow") for names in by_seq.values()}
    assert kinds == {frozenset({"water_volume"}), frozenset({"water_volume", "alarms"})}, kinds
    # The pulse total: only ever up until the backflow, never above what the meter made, and
    # then exactly (forward - reverse) x litres per pulse.
    totals = values(gw, "pit-1", "water_volume")
    peak = totals.index(max(totals))
    assert totals[:peak + 1] == sorted(totals[:peak + 1]), totals
    assert max(totals) == top and totals[-1] == net, totals
    # Backflow (bit 2 of `alarms`) is raised with the reverse pulses; no tamper, no leak.
    assert set(values(gw, "pit-1", "alarms")) == {2}
    # no error at all, MemoryError included: the node keeps about 70 KB of its 96 KB free
    assert not errors(pulses), pulses.console()[-3000:]

    # pit-2: every telegram's current values, and nothing but them (no due-date volume, no
    # tariff register, no backward-flow volume).
    by_seq = assert_exactly_once_without_gaps(gw, mbus)
    assert {frozenset(n - {"alarms"}) for n in by_seq.values()} == \
        {frozenset({"water_volume", "water_flow", "temperature"})}
    assert set(values(gw, "pit-2", "water_volume")) == {123.456, 124.443}
    assert set(values(gw, "pit-2", "water_flow")) == {0.0002, 0}
    assert set(values(gw, "pit-2", "temperature")) == {11.3, 7.5}
    alarms = values(gw, "pit-2", "alarms")
    assert alarms[-1] == 0 and alarms.count(0) == 1 and set(alarms) == {8, 0}, \
        "the fault bit is sent while set and its clearing once"
    assert not errors(mbus), mbus.console()[-3000:]


# --------------------------------------------------------------------------- battery pulse node
def test_battery_pulse_node_wakes_on_pulses_and_bills_each_once(tmp_path, broker):
    """A battery node on a water meter with a pulse output: each wake-up it reads, every second
    wake-up it sends, then it deep-sleeps for its 60 s interval (run 20 times faster). A pulse
    while it sleeps wakes it through contact A (EXT0); the total survives every sleep in RTC
    memory. (With a `battery` entry too: tests/test_node_combinations.py.)"""
    gw = gateway(tmp_path / "gw", broker)
    board = default_board()
    board["i2c"] = {}
    board["meters"] = [{"a": 25, "tamper": 27}]
    cfg = default_config("bat-1", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["power"] = {"mode": "battery", "send_every": 2}
    cfg["sensors"] = [{"driver": "pulse", "kind": "water", "pin": 25, "tamper_pin": 27,
                       "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 60}]
    node = VirtualNode(tmp_path / "bat-1", node_id="bat-1", broker=broker,
                       config=cfg, board=board)
    pulses = 0

    def world():
        node.set_environment(meters={"25": {"forward": pulses}})

    def asleep():
        proc = node.proc
        return proc is not None and proc.poll() == 4

    on_fail = debug(node, gw)
    world()
    try:
        node.start(sleep_scale=0.05)
        wait_for(asleep, 30, "the first deep sleep", on_fail)
        for _ in range(5):
            sleeps = len(node.exits)
            pulses += 1
            world()  # one pulse while the node sleeps
            wait_for(lambda: node.pin_wakes == pulses, 10, f"pulse {pulses} waking the node",
                     on_fail)
            wait_for(lambda: len(node.exits) > sleeps and asleep(), 30,
                     f"the node asleep again after pulse {pulses}", on_fail)
        # No more pulses: the node wakes by its timer, reads the same total and sends it.
        timer_from = len(node.exits)
        wait_for(lambda: len(node.exits) >= timer_from + 2, 30, "two timer wake-ups", on_fail)
        mark = queued(node)
        wait_for(lambda: set(mark) <= {r["seq"] for r in node_records(gw, "bat-1")}, 30,
                 "every queued reading in the sink", on_fail)
    finally:
        node.stop()
        gw.stop()

    assert set(node.exits) == {4}, f"every exit is a deep sleep: {node.exits}"
    assert node.pin_wakes == pulses, "each pulse woke the node"
    wakeups = len(node.exits)
    by_seq = assert_exactly_once_without_gaps(gw, node)
    assert {frozenset(n) for n in by_seq.values()} == {frozenset({"water_volume"})}
    totals = values(gw, "bat-1", "water_volume")
    expect = [float(senml("water_volume", n * LITRES_PER_PULSE)[1]) for n in range(pulses + 1)]
    assert totals == sorted(totals) and sorted(set(totals)) == expect, totals
    assert totals[-1] == expect[-1] == 0.05, "5 pulses x 10 L"
    assert len(totals) >= wakeups, "a reading at every wake-up that ran to its sleep"
    # every wake-up that ran to its sleep logged it; the run `node.stop()` ended may have
    # logged its sleep too, just before it would have exited
    console = node.console()
    logged = console.count("deep sleep for")
    assert logged == wakeups or (logged == wakeups + 1 and
                                 console.rstrip().endswith("deep sleep for 60000 ms")), \
        (logged, wakeups, console[-500:])
    assert (node.flash / "boots.dat").read_text() == "1", "wake-ups are not boots"
    assert not errors(node), node.console()[-3000:]


# --------------------------------------------------------------------------- a failed reading
def test_a_reading_that_fails_loses_no_pulse(tmp_path, broker):
    """The pulse journal cannot be written for a while (a flash fault): the readings in between
    fail and are retried, and every pulse the meter made in the meantime is still in the total
    the platform gets."""
    gw = gateway(tmp_path / "gw", broker)
    board = default_board()
    board["i2c"] = {}
    board["meters"] = [{"a": 25}]
    cfg = default_config("p-1", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["sensors"] = [{"driver": "pulse", "kind": "water", "pin": 25,
                       "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 1}]
    node = VirtualNode(tmp_path / "p-1", node_id="p-1", broker=broker,
                       config=cfg, board=board)
    on_fail = debug(node, gw)

    def pulses(n):
        node.set_environment(meters={"25": {"forward": n}})

    def total(n):
        return lambda: float(senml("water_volume", n * LITRES_PER_PULSE)[1]) in \
            values(gw, "p-1", "water_volume")

    pulses(0)
    try:
        node.start()
        wait_for(total(0), 40, "the first total", on_fail)
        pulses(3)
        wait_for(total(3), 30, "the total after 3 pulses", on_fail)
        # The journal file the meter appends to becomes unwritable (a directory in its place).
        journal = max(node.flash.glob("pulse0?.log"), key=lambda p: p.stat().st_mtime)
        kept = journal.with_suffix(".kept")
        journal.rename(kept)
        journal.mkdir()
        pulses(6)
        wait_for(lambda: node.console().count("pulse@gpio25 failed") >= 2, 30,
                 "readings failing", on_fail)
        journal.rmdir()
        kept.rename(journal)
        wait_for(total(6), 30, "the total with the pulses made while readings failed",
                 on_fail)
    finally:
        node.stop()
        gw.stop()
    assert_exactly_once_without_gaps(gw, node)
    totals = values(gw, "p-1", "water_volume")
    assert totals == sorted(totals) and totals[-1] == 0.06, totals
