"""The errors a technician meets on site, each triggered for real and answered with one line
that names the fix: no port, permission denied, port busy, not a MicroPython device, device
in safe mode (and firmware without diagnostics). Wrong chip and out of flash space are in
test_cli_deploy.py and test_cli_flash.py."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import serial
import serial.tools.list_ports

from host_tools import cli, device
from host_tools.device import ERR_BUSY, ERR_NO_PORT, ERR_NOT_MICROPYTHON
from host_tools.vboard.pty_repl import PtyBoard

ROOT = device.toolchain.ROOT


@pytest.fixture
def board(tmp_path):
    """A board as micropython.org's stock image leaves it: MicroPython and no firmware."""
    with PtyBoard(tmp_path / "node", form="mpy") as b:
        assert b.wait_ready()
        yield b


def usb(dev, vid, pid, serial_number=None):
    """What pyserial's list_ports reports for a USB-serial adapter (the hardware is mocked:
    there is no USB device on a test machine)."""
    return SimpleNamespace(device=dev, vid=vid, pid=pid, serial_number=serial_number,
                           product=None, description="n/a")


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_no_port_found(monkeypatch, capsys):
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
    for command in (["status"], ["deploy", "--board", "esp32-devkitc"], ["ports"]):
        rc, out, err = run(capsys, *command)
        assert rc == 1
        assert err == f"meterlink: {ERR_NO_PORT}\n"


def test_the_only_esp32_bridge_is_picked_and_listed(monkeypatch, capsys):
    ports = [usb("/dev/ttyACM3", 0x2341, 0x0043), usb("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001")]
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: ports)
    assert device.pick_port(None) == "/dev/ttyUSB0"
    rc, out, err = run(capsys, "ports")
    assert rc == 0
    assert out.splitlines()[0] == ("/dev/ttyUSB0  10c4:ea60  CP210x (ESP32-DevKitC and most ESP32 "
                                   "boards)  serial 0001")
    assert "default port: /dev/ttyUSB0" in out
    for (vid, pid), name in device.USB_BRIDGES.items():
        assert device.bridge_name(vid, pid) == name
    assert "CH9102" in device.bridge_name(0x1A86, 0x55D4)
    assert "USB-JTAG" in device.bridge_name(0x303A, 0x1001)
    two = ports + [usb("/dev/ttyUSB1", 0x1A86, 0x7523)]
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: two)
    rc, out, err = run(capsys, "status")
    assert rc == 1 and "several serial ports found" in err and "--port" in err


def test_permission_denied_names_the_dialout_group(board):
    # root may open anything: run the command as `nobody`, with Debian's python3 (the venv's
    # interpreter lives under /root) and the venv's packages
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    done = subprocess.run(
        ["/usr/bin/python3", "-m", "host_tools.cli", "status", "--port", board.port],
        user=65534, group=65534, extra_groups=[], capture_output=True, text=True, cwd="/",
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": f"{ROOT}:{site}"},
        timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"meterlink: permission denied on {board.port}: add yourself to the "
                           f"dialout group (`sudo usermod -aG dialout $USER`, then log out and "
                           f"back in)\n")


def test_port_busy(board, capsys):
    holder = serial.Serial(board.port, exclusive=True)  # a serial monitor left open
    try:
        rc, out, err = run(capsys, "status", "--port", board.port)
    finally:
        holder.close()
    assert rc == 1
    assert err == "meterlink: " + ERR_BUSY.format(port=board.port) + "\n"
    rc, out, err = run(capsys, "deploy", "--board", "esp32-devkitc", "--port", "/dev/nonexistent")
    assert rc == 1 and "/dev/nonexistent does not exist" in err


def test_a_port_let_go_a_moment_later_is_not_busy(board, capsys):
    # another tool still closing the port (or a process it forked, before that process started
    # its own program) holds the lock for a moment: the command waits for it instead of failing
    holder = serial.Serial(board.port, exclusive=True)
    threading.Timer(0.5, holder.close).start()
    rc, out, err = run(capsys, "status", "--port", board.port, "--no-resume")
    # the command reached the node's REPL: a fresh board has no firmware to ask
    assert err.startswith("meterlink: the node has no firmware"), err


def test_not_a_micropython_device(monkeypatch, capsys):
    # a serial port whose other end never answers with a REPL (other firmware, bootloader)
    master, slave = os.openpty()
    name = os.ttyname(slave)
    try:
        monkeypatch.setattr(device, "REPL_TIMEOUT", 1.0)
        rc, out, err = run(capsys, "status", "--port", name)
    finally:
        os.close(master)
        os.close(slave)
    assert rc == 1
    assert err == "meterlink: " + ERR_NOT_MICROPYTHON.format(port=name) + "\n"
    assert out == "", "nothing but the error (field trial: a stray b'' on stdout)"


SAFE_NODE = '''\
# The documented diagnostics of a node in safe mode (docs/wire-format.md, Status).
def diagnostics():
    return {"fw": "0.3.0", "boot": 7, "rst": "panic", "on": True, "q": 3, "qd": 0, "seq": 120,
            "heap": 41000, "safe": "3 boots in a row crashed before the node was healthy",
            "last": {}}
'''


def test_device_in_safe_mode(board, capsys):
    (board.flash / "node.py").write_text(SAFE_NODE)
    rc, out, err = run(capsys, "status", "--port", board.port)
    assert rc == 1
    assert "SAFE MODE" in out and "3 boots in a row crashed" in out and "free heap (bytes)" in out
    assert err.endswith("meterlink: the node is in safe mode (3 boots in a row crashed before the "
                   "node was healthy): it stopped its sensors after crashing at boot; see why "
                   "with `meterlink monitor`, fix it (`meterlink deploy`, `meterlink "
                   "provision`), then reboot it\n")
    rc, out, err = run(capsys, "check", "--port", board.port)
    assert rc == 1 and "the node is in safe mode (3 boots" in err


def test_firmware_without_diagnostics(board, capsys):
    rc, out, err = run(capsys, "status", "--port", board.port)  # MicroPython only, as flashed
    assert rc == 1 and "the node has no firmware" in err and "meterlink deploy" in err
    (board.flash / "node.py").write_text("def main():\n    pass\n")
    rc, out, err = run(capsys, "status", "--port", board.port)
    assert rc == 1
    assert err == "meterlink: " + device.ERR_NO_DIAGNOSTICS + "\n"


def start_vboard(folder):
    """`meterlink vboard` as a technician starts it; returns (process, port)."""
    from gateway_support import MELINK
    proc = subprocess.Popen([MELINK, "vboard", "--dir", str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    assert port.startswith("/dev/"), (port, proc.stderr.read() if proc.poll() else "")
    return proc, port


def test_ports_lists_the_running_virtual_boards(monkeypatch, capsys, tmp_path):
    """Field trial: the virtual board's error messages sent the user to `meterlink ports`,
    which did not list it. It is listed while it runs, never picked without --port, and gone
    once it stopped, also after a SIGKILL left its entry behind."""
    monkeypatch.setattr(serial.tools.list_ports, "comports", lambda: [])
    proc, port = start_vboard(tmp_path / "vb")
    try:
        rc, out, err = run(capsys, "ports")
        assert rc == 0, err
        line = out.splitlines()[0]
        assert line.startswith(f"{port}  virtual    esp32 virtual board (meterlink image) in "
                               f"{tmp_path / 'vb'}  pid {proc.pid}"), out
        assert f"default port: none; a virtual board is used with --port {port}" in out
        rc, out, err = run(capsys, "status")
        assert rc == 1
        assert err == (f"meterlink: {ERR_NO_PORT}; a virtual board runs on {port}: give --port "
                       f"{port} to use it\n")
    finally:
        proc.terminate()
        proc.wait(30)
    rc, out, err = run(capsys, "ports")
    assert (rc, err) == (1, f"meterlink: {ERR_NO_PORT}\n")

    proc, port = start_vboard(tmp_path / "vb2")
    proc.kill()
    proc.wait(30)
    rc, out, err = run(capsys, "ports")
    assert (rc, err) == (1, f"meterlink: {ERR_NO_PORT}\n"), out
    assert not list(Path(os.environ["METERLINK_RUNTIME_DIR"]).glob("*.json"))
