"""The whole node runtime with four sensors runs 1000 full cycles (read, queue on flash,
publish, PUBACK) inside the firmware's 96 KB heap: no MemoryError, nothing lost, and the peak
it measured is printed (pytest -s) and checked against the budget."""

import pytest

from bench.node_heap import run

pytestmark = pytest.mark.slow


def test_four_sensors_1000_cycles_in_96k():
    r = run(1000, 4)
    print("node heap:", r)
    assert r["firmware_budget"] <= 96 * 1024, "the firmware must not get more than 96 KB"
    assert r["sent"] == 4000 and r["queued"] == 0 and r["sensor_errors"] == 0, r
    assert 0 < r["firmware_live_peak"] < r["firmware_budget"], r
