"""The virtual board on a pty speaks the MicroPython REPL as an ESP32 does (pyexec.c of 1.25):
raw REPL framing, raw-paste with flow control, Ctrl-C, soft and hard resets, and the real
`mpremote` working against it end to end."""

from __future__ import annotations

import hashlib
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from host_tools import toolchain
from host_tools.vboard.pty_repl import PtyBoard

MPREMOTE = str(Path(sys.executable).with_name("mpremote"))
RAW = b"raw REPL; CTRL-B to exit\r\n>"


@pytest.fixture
def board(tmp_path):
    with PtyBoard(tmp_path / "node") as b:
        assert b.wait_ready()
        yield b


@pytest.fixture
def port(board):
    s = serial.Serial(board.port, 115200, timeout=5)
    yield s
    s.close()


def read_until(s: serial.Serial, ending: bytes, timeout: float = 5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(ending):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {ending!r} in {data[-300:]!r}")
        data += s.read(1)
    return data


def enter_raw(s: serial.Serial) -> None:
    s.write(b"\r\x03")
    time.sleep(0.1)
    s.reset_input_buffer()
    s.write(b"\r\x01")
    read_until(s, RAW)


def test_raw_repl_frames_output_and_errors_exactly_like_the_device(port):
    enter_raw(port)
    port.write(b"print(6 * 7)\x04")
    assert read_until(port, b">") == b"OK42\r\n\x04\x04>"
    port.write(b"1/0\x04")
    assert read_until(port, b"\x04>") == (
        b"OK\x04Traceback (most recent call last):\r\n"
        b"  File \"<stdin>\", line 1, in <module>\r\n"
        b"ZeroDivisionError: divide by zero\r\n\x04>")
    port.write(b"\x02")  # Ctrl-B: friendly REPL with its banner
    out = read_until(port, b">>> ")
    assert b"MicroPython v1.25.0" in out and out.startswith(b"\r\n")


def test_raw_paste_negotiates_a_window_and_flow_controls(port):
    enter_raw(port)
    port.write(b"\x05B\x01")  # an unknown request letter is refused
    assert read_until(port, b">") == b"R\x00>"
    code = b"x = 0\n" + b"x += 1\n" * 150 + b"print(x)\n"  # ~1 KB: eight windows
    port.write(b"\x05A\x01")
    assert port.read(2) == b"R\x01"
    window = struct.unpack("<H", port.read(2))[0]
    assert window == 128
    remain, sent, grants = window, 0, 0
    while sent < len(code):
        while remain == 0 or port.in_waiting:
            b = port.read(1)
            assert b == b"\x01", b
            remain += window
            grants += 1
        chunk = code[sent:sent + remain]
        port.write(chunk)
        sent += len(chunk)
        remain -= len(chunk)
    port.write(b"\x04")
    out = read_until(port, b"\x04>")
    late = len(out) - len(out.lstrip(b"\x01"))  # grants the loop above had no need to read
    assert out[late:] == b"\x04150\r\n\x04\x04>"
    # the second window offered at the start, then one per window the device consumed
    assert grants + late == 1 + len(code) // window


def test_raw_paste_output_after_end_of_data(port):
    enter_raw(port)
    port.write(b"\x05A\x01")
    assert port.read(5) == b"R\x01\x80\x00\x01"
    port.write(b"print('pasted')\x04")
    assert read_until(port, b">") == b"\x04pasted\r\n\x04\x04>"


def test_ctrl_c_interrupts_running_code_and_the_board_stays_usable(port):
    enter_raw(port)
    port.write(b"while True:\n    pass\n\x04")
    assert port.read(2) == b"OK"
    time.sleep(0.3)
    port.write(b"\x03")
    out = read_until(port, b"\x04>")
    assert out.startswith(b"\x04Traceback") and b"KeyboardInterrupt" in out
    port.write(b"print('alive')\x04")
    assert read_until(port, b">") == b"OKalive\r\n\x04\x04>"


def test_ctrl_c_in_the_middle_of_a_garbage_collection_leaves_the_heap_usable(tmp_path):
    # Ctrl-C is SIGINT to the unix port. Raised from inside the signal handler (the port's
    # standard variant) it could cut a garbage collection short and leave the heap locked for
    # good; the virtual board's build raises it between bytecodes, as an ESP32 does.
    # The script prints "." inside its try before each round of collections, and each Ctrl-C
    # waits for it: every interrupt lands inside the try (an interrupt in the except clause
    # would end the script, which says nothing about the heap), most of them in a collection.
    script = tmp_path / "collect.py"
    script.write_text(
        "import gc, sys\nn = 0\nwhile n < 300:\n    try:\n        sys.stdout.write('.')\n"
        "        while True:\n            x = [[n] * 8 for _ in range(20)]\n"
        "            gc.collect()\n    except KeyboardInterrupt:\n        n += 1\n"
        "x = bytearray(1000)\nprint('usable', n)\n")
    proc = subprocess.Popen([toolchain.micropython(), "-X", "heapsize=96K", str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    rng = random.Random(300)
    sent = 0
    while sent < 300 and proc.stdout.read(1) == b".":
        time.sleep(rng.uniform(0.001, 0.004))  # into the collections
        proc.send_signal(signal.SIGINT)
        sent += 1
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0 and "usable 300" in out, f"after {sent} Ctrl-C: {out[-500:]}"


def test_soft_reset_restarts_micropython_runs_boot_and_main_and_ctrl_c_stops_main(board, port):
    (board.flash / "boot.py").write_text("print('boot ran')\n")
    (board.flash / "main.py").write_text(
        "import time\nprint('main ran')\nwhile True:\n    time.sleep_ms(50)\n")
    enter_raw(port)
    port.write(b"a = 1\x04")
    read_until(port, b">")
    boots = board.boots
    port.write(b"\x04")  # Ctrl-D on an empty raw line: soft reset, stays raw: boot.py only
    out = read_until(port, RAW)
    assert out == b"OK\r\nMPY: soft reboot\r\nboot ran\r\n" + RAW
    assert board.boots == boots + 1  # a new MicroPython process: a fresh heap
    port.write(b"print(a)\x04")
    assert b"NameError" in read_until(port, b"\x04>")
    port.write(b"\x02")
    read_until(port, b">>> ")
    port.write(b"\x04")  # friendly mode soft reset: boot.py, then main.py
    out = read_until(port, b"main ran\r\n")
    assert out.endswith(b"\r\nMPY: soft reboot\r\nboot ran\r\nmain ran\r\n")
    port.write(b"\x03")
    out = read_until(port, b">>> ")
    assert b"KeyboardInterrupt" in out and b"Type \"help()\"" in out


def test_friendly_repl_echoes_and_prints_expression_values(port):
    port.write(b"\x03")
    time.sleep(0.3)
    port.reset_input_buffer()
    port.write(b"21 * 2\r")
    assert read_until(port, b">>> ").endswith(b"21 * 2\r\n42\r\n>>> ")
    port.write(b"for i in range(2):\r  print(i)\r\r")
    assert read_until(port, b">>> ").endswith(b"0\r\n1\r\n>>> ")


def test_machine_reset_is_a_hard_reset_that_boots_into_main(board, port):
    (board.flash / "main.py").write_text("print('main after reset')\n")
    enter_raw(port)
    boots = board.boots
    port.write(b"import machine\nmachine.reset()\x04")
    read_until(port, b"main after reset\r\n", timeout=10)
    assert board.boots == boots + 1


def test_code_runs_in_a_96k_heap_plus_what_the_board_models_take(board, port):
    # as VirtualNode runs the node: 96 KB for the firmware, plus the measured allowance for
    # the virtual board's own objects (C code and peripherals on a device)
    from host_tools.vboard.node import vboard_allowance

    allowance = vboard_allowance(board.root / "board.json")
    assert 0 < allowance < 32 * 1024 and board.heap_bytes() == 96 * 1024 + allowance
    enter_raw(port)
    port.write(b"import gc\nprint(gc.mem_free() + gc.mem_alloc())\x04")
    out = read_until(port, b">")
    total = int(out[2:].split(b"\r\n")[0])
    assert 90 * 1024 + allowance < total <= 96 * 1024 + allowance


def _mpremote(board, *args):
    done = subprocess.run([MPREMOTE, "connect", board.port, *args], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr.decode() + done.stdout.decode()
    return done.stdout.decode()


@pytest.mark.slow
def test_real_mpremote_exec_fs_and_soft_reset(board, tmp_path):
    assert _mpremote(board, "exec", "print(1 + 1)").strip() == "2"
    data = bytes(range(256)) * 40  # 10 KB, binary
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    _mpremote(board, "fs", "cp", str(src), ":blob.bin")
    assert (board.flash / "blob.bin").read_bytes() == data
    assert "blob.bin" in _mpremote(board, "fs", "ls")
    assert hashlib.sha256(data).hexdigest() in _mpremote(board, "fs", "sha256sum", ":blob.bin")
    (board.flash / "note.txt").write_text("on the node\n")
    assert "on the node" in _mpremote(board, "fs", "cat", ":note.txt")
    back = tmp_path / "back.bin"
    _mpremote(board, "fs", "cp", ":blob.bin", str(back))
    assert back.read_bytes() == data
    _mpremote(board, "fs", "rm", ":blob.bin")
    assert not (board.flash / "blob.bin").exists()
    boots = board.boots
    _mpremote(board, "soft-reset")
    assert board.boots > boots
