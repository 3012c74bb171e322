"""`meterlink loadgen`: simulated meters in the real wire format on the firmware's schedule, into
a real Mosquitto and the real gateway process: every reading it published is stored once, each
on the interval's boundary (the reading's time; the send slot does not move it), from meters
whose send offsets (the CRC-32 of the id modulo the spread, docs/node-runtime.md) cover the
whole interval. The per-second load it makes: tests/bench/bench_stampede.py."""

from __future__ import annotations

import zlib
from collections import Counter

import pytest

from gateway_support import GatewayProcess, wait_for
from host_tools import cli

pytestmark = pytest.mark.slow


def test_loadgen_readings_reach_the_gateway_once_on_the_boundaries(tmp_path, broker, capsys):
    gw = GatewayProcess(tmp_path / "gw", broker).wait_subscribed()
    try:
        rc = cli.main(["loadgen", "--nodes", "60", "--per-connection", "25", "--interval", "3",
                       "--duration", "7", "--prefix", "lg", "--pki", str(broker.tls.root),
                       "--broker", f"{broker.host}:{broker.port}"])
        out = capsys.readouterr().out
        assert rc == 0, out
        published = int(out.split("done: ")[1].split()[0])
        assert published >= 120  # 60 meters, two or three boundaries in 7 s
        wait_for(lambda: len(gw.readings()) == published, 30, "every reading stored", gw.log)
        recs = [r for r in gw.records() if r["n"].endswith(":water_volume")]
        assert max(Counter((r["node"], r["seq"]) for r in recs).values()) == 1
        assert {r["node"] for r in recs} == {f"lg-{i:06d}" for i in range(1, 61)}
        assert all(r["t"] % 3 == 0 and r["u"] == "m3" for r in recs)
        # each meter's offset in the 3 s interval: CRC-32 of its id mod 3; all three occur
        assert {zlib.crc32(n.encode()) % 3 for n in {r["node"] for r in recs}} == {0, 1, 2}
    finally:
        gw.stop()


def test_loadgen_rejects_a_bad_spread(capsys):
    assert cli.main(["loadgen", "--broker", "127.0.0.1:1883", "--spread", "5000"]) == 2
    assert "--spread must be 0-3600 s: got 5000" in capsys.readouterr().err
