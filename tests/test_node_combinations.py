"""Every sensor combination a city deploys on one node runs end to end inside the firmware's
96 KB, in the form a device runs (the meterlink image: the firmware frozen into the 32-bit
unix-port build), with at least 40 KB of heap free at its lowest point: room for TLS and
over-the-air updates to come.

All eight run at once (tests/bench/node_combos.py describes the combinations and how a cycle
is driven): the nodes -> a real Mosquitto -> the real gateway -> its SenML file sink. Every
reading the nodes queued arrives exactly once, each with the channels of the sensor that took
it, and the values the parts were set to. Expected values come from the physical quantities
and the channel table's units (docs/wire-format.md), never from the code under test."""

from __future__ import annotations

import subprocess
from collections import Counter

import pytest

from bench import node_combos
from bench.node_combos import BY_NAME, LITRES_PER_PULSE
from host_tools import toolchain

# one run of all eight (module fixture) takes 1-2 minutes on 2 cores: above the suite's default
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# mains: readings of every sensor then publish; battery: wake-ups. 250 here keeps the suite in
# its budget; `make bench` (tests/bench/bench_node_heap.py) runs the same eight for 1000 and
# prints each one's lowest free heap, to show the heap does not creep over a long run.
CYCLES = 250
MIN_FREE = 40 * 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("combinations")
    results, gw, _ = node_combos.run(list(BY_NAME), cycles=CYCLES, form="image", workdir=workdir)
    for r in results.values():
        print(r.line(), f"({r.seconds:.0f} s)")
    return results, gw


def by_seq(gw, node_id: str) -> dict[int, dict[str, float]]:
    """seq -> {channel: value} of the node's records at the sink; no (seq, channel) twice."""
    recs = [r for r in gw.records() if r["node"] == node_id]
    twice = [k for k, n in Counter((r["seq"], r["n"]) for r in recs).items() if n > 1]
    assert not twice, f"{node_id}: stored twice: {twice[:5]}"
    out: dict[int, dict[str, float]] = {}
    for r in recs:
        out.setdefault(r["seq"], {})[r["n"].split(":", 1)[1]] = r["v"]
    return out


def test_the_nodes_run_a_32_bit_build_with_the_firmware_frozen_in():
    # object sizes as on the ESP32: a 32-bit MicroPython, where small ints stop at 2**30
    probe = "import sys; sys.path[:] = ['.frozen']; import node; print(sys.maxsize)"
    out = subprocess.run([toolchain.micropython("image"), "-c", probe], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == str(2**31 - 1), out.stdout + out.stderr


@pytest.mark.parametrize("name", list(BY_NAME))
def test_combination_keeps_40k_free_in_96k(run, name):
    results, _ = run
    r = results[name]
    assert r.heap_total - r.allowance <= node_combos.BUDGET, "the firmware gets no more than 96 KB"
    assert r.low >= MIN_FREE, (f"{BY_NAME[name].what}: {r.low} bytes free at the lowest point, "
                               f"under {MIN_FREE}\n{r.output[-3000:]}")
    assert r.sensor_errors == 0, r.output[-3000:]
    if BY_NAME[name].battery:
        assert r.wakeups >= CYCLES
    else:
        assert r.sent == CYCLES * len(BY_NAME[name].sensors) and r.queued == 0, r


@pytest.mark.parametrize("name", list(BY_NAME))
def test_combination_delivers_every_reading_once_with_its_channels(run, name):
    results, gw = run
    c, r = BY_NAME[name], results[name]
    got = by_seq(gw, r.node.node_id)
    k = len(c.sensors)
    seqs = sorted(got)
    assert seqs == list(range(len(seqs))), f"gaps in {name}: {seqs[:20]}..."
    if c.battery:
        # the readings since the last send wait on flash for the next one: at most
        # send_every wake-ups' worth
        assert len(seqs) >= (r.wakeups - 5) * k, (len(seqs), r.wakeups)
    else:
        assert len(seqs) == r.sent == CYCLES * k
    for seq, values in got.items():
        # each cycle reads the sensors in config order, none failed: seq says which sensor
        required, optional = c.channels[seq % k]
        names = set(values)
        assert required <= names <= required | optional, (name, seq, names)
        for channel, want in c.exact.items():
            if channel in values:
                assert values[channel] == pytest.approx(want, abs=1e-9), (name, seq, channel)
    volumes = [got[s][ch] for s in seqs for ch in ("water_volume", "gas_volume")
               if ch in got[s] and c.channels[s % k][0] & {"water_volume", "gas_volume"}]
    if c.pulses:
        assert volumes == sorted(volumes), f"{name}: a meter total went down: {volumes[:20]}"
        made = node_combos.pulses_made(r.node) * LITRES_PER_PULSE / 1000
        if c.battery:  # readings taken since the last send are still on the node's flash
            assert 0 < volumes[-1] <= made, (volumes[-1], made)
        else:  # the meter made its pulses in the first cycles; the last reading has them all
            assert made == c.pulses["25"] * LITRES_PER_PULSE / 1000, \
                f"{name}: the meter made {made} m3 of its pulses only: the run was too short"
            assert volumes[-1] == pytest.approx(made), \
                f"{name}: the last total at the sink is the meter's pulses x {LITRES_PER_PULSE} L"
    if "battery_voltage" in c.channels[-1][0]:
        volts = {got[s]["battery_voltage"] for s in seqs if "battery_voltage" in got[s]}
        # 1.8 V at the pin through 100k/100k: 3.6 V, within the ADC's calibrated error
        assert all(abs(v - 3.6) <= 0.036 for v in volts), volts
