"""`make demo` as a newcomer runs it: `meterlink demo --duration N` exits 0 with readings from
all three nodes in readings.jsonl, and Ctrl-C stops everything with no stray process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_demo_with_duration_exits_0_with_three_nodes(tmp_path):
    out = tmp_path / "demo-out"
    proc = subprocess.run([METERLINK, "demo", "--duration", "12", "--out", str(out)],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "readings.jsonl").read_text().splitlines()]
    assert {r["node"] for r in records} == {"park-01", "school-02", "pumpstation-03"}
    assert "nodes seen      3 of 3" in proc.stdout
    assert "alarms raised   0" in proc.stdout and "result          ok" in proc.stdout
    assert re.search(r"demo: gateway API on http://127\.0\.0\.1:\d+ ", proc.stdout), proc.stdout
    # a live line per reading, e.g. "08:41:07  school-02       seq=3    temperature 21.73 Cel ..."
    live = [line for line in proc.stdout.splitlines() if " seq=" in line]
    readings = {(r["node"], r["seq"]) for r in records}
    assert len(live) == len(readings) > 6


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
    while time.monotonic() < deadline and len(nodes_seen()) < 3:
        time.sleep(0.2)
    assert len(nodes_seen()) == 3, "the demo did not store readings from three nodes"
    marker = str(out)  # the gateway's config and every node's environment name this folder
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, stdout
    assert "demo summary" in stdout
    time.sleep(0.5)
    stray = [p for p in processes_mentioning(str(tmp_path)) if str(proc.pid) not in p]
    assert not stray, stray
    assert not processes_mentioning(marker), processes_mentioning(marker)
