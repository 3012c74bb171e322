"""Meters end to end, all real parts: the firmware with its meter drivers in the MicroPython unix
port (96 KB heap for the firmware), a real Mosquitto, the real gateway process and its SenML
file sink. What the physical models are set to (pulses the meter made, an M-Bus meter's
register, a probe's temperature, a battery's voltage) arrives at the sink as the right SenML
values, every reading exactly once and without a gap in the node's sequence numbers: the
meter's total in the pipe is the total on the platform.

Expected values are worked out here from the physical quantities the test sets and the units of
the channel table in docs/wire-format.md, never from the code under test."""

from __future__ import annotations

import re
from collections import Counter
from fractions import Fraction

import pytest

from gateway_support import GatewayProcess, wait_for
from host_tools.vboard import VirtualNode
from host_tools.vboard.node import default_board, default_config

pytestmark = pytest.mark.slow

QUEUED = re.compile(r" I queue: queued seq=(\d+) ")

# docs/wire-format.md, channel table: name -> (SenML unit, scale)
UNITS = {"water_volume": ("m3", -3), "water_flow": ("m3/s", -6), "temperature": ("Cel", -2),
         "alarms": (None, 0), "battery_voltage": ("V", -3)}

LITRES_PER_PULSE = 10
MBUS_SERIAL = 55550002


def crc8_maxim(data: bytes) -> int:
    """Dallas/Maxim CRC-8 (x^8 + x^5 + x^4 + 1, reflected), application note 27."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def ds18b20_rom(serial: int) -> str:
    body = bytes([0x28]) + serial.to_bytes(6, "little")
    return (body + bytes([crc8_maxim(body)])).hex()


def senml(name: str, value: Fraction | int | None = None):
    """(unit, value) as the gateway must write them: the channel value (in the channel's
    integer unit) times 10^scale."""
    base = name.split(":")[0]
    unit, scale = UNITS[base]
    return unit, (None if value is None else Fraction(value) * Fraction(10) ** scale)


def node_records(gw: GatewayProcess, node_id: str) -> list[dict]:
    return [r for r in gw.records() if r["node"] == node_id]


def values(gw: GatewayProcess, node_id: str, name: str) -> list:
    """The SenML values of channel `name` ("water_volume", "temperature:1") in seq order."""
    full = f"{node_id}:{name}"
    return [r["v"] for r in sorted(node_records(gw, node_id), key=lambda r: r["seq"])
            if r["n"] == full]


def queued(node: VirtualNode) -> list[int]:
    return [int(m.group(1)) for m in QUEUED.finditer(node.console())]


def errors(node: VirtualNode, but: str | None = None) -> list[str]:
    """The errors the node logged (all, or all but those naming `but`)."""
    return [line for line in node.console().splitlines()
            if " E " in line and (but is None or but not in line)]


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


# --------------------------------------------------------------------------- a failed reading
def test_a_reading_that_fails_loses_no_pulse(tmp_path, broker):
    """The pulse journal cannot be written for a while (a flash fault): the readings in between
    fail and are retried, and every pulse the meter made in the meantime is still in the total
    the platform gets."""
    gw = GatewayProcess(tmp_path / "gw", broker)
    board = default_board()
    board["i2c"] = {}
    board["meters"] = [{"a": 25}]
    cfg = default_config("p-1", broker.host, broker.port)
    cfg.pop("i2c")
    cfg["time"] = {"ntp": ""}
    cfg["sensors"] = [{"driver": "pulse", "kind": "water", "pin": 25,
                       "litres_per_pulse": LITRES_PER_PULSE, "interval_s": 1}]
    node = VirtualNode(tmp_path / "p-1", node_id="p-1", broker=(broker.host, broker.port),
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
