"""Runs the MicroPython-side unit tests (tests/mpy/test_*.py) in the real MicroPython unix port,
with the firmware, drivers and virtual-board modules as a node with the meterlink image has
them (frozen into the 32-bit build: code outside the heap), inside the 96 KB heap budget of a
small ESP32."""

import subprocess
from pathlib import Path

import pytest

from host_tools import toolchain

MPY_TESTS = Path(__file__).parent / "mpy"
MODULES = sorted(p.stem for p in MPY_TESTS.glob("test_*.py"))
HEAP = "96K"


@pytest.mark.parametrize("module", MODULES)
def test_micropython_module(module, tmp_path):
    env = {"MICROPYPATH": toolchain.micropypath(MPY_TESTS),
           "PATH": "/usr/bin:/bin",
           "METERLINK_ROOT": str(toolchain.ROOT)}
    proc = subprocess.run(
        [toolchain.micropython(), "-X", f"heapsize={HEAP}", str(MPY_TESTS / "run.py"), module],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"MicroPython tests in {module} failed:\n{out}"
    assert " 0 failed" in out, out
