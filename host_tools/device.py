"""A node on a serial port, for the technician commands: finding the port, the board files,
a REPL session that runs code on the device, and files written to it safely.

    port = pick_port(args.port)               # --port, or the only USB serial port there is
    with Device(port) as dev:                 # raw REPL; the node's main loop is interrupted
        dev.exec("import os")
        print(dev.eval("os.listdir()"))
        prepare_files(dev)
        write_file(dev, "config.json", data)  # all of it or, after a cut cable, the old file

The session is mpremote's own `SerialTransport` (the same code `mpremote` runs, so what
works here works with `mpremote` by hand and the other way round); this module adds the
technician's errors. Every failure a technician meets on site becomes one `UserError` line
that says what is wrong and how to fix it (the `ERR_*` texts below); tests assert them.
"""

from __future__ import annotations

import ast
import base64
import contextlib
import errno
import hashlib
import io
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import serial
import serial.tools.list_ports

from host_tools import toolchain
from meterlink_common import EXIT_INPUT, UserError

BOARDS_DIR = toolchain.ROOT / "boards"
MODBUS_PROFILES = BOARDS_DIR / "modbus" / "profiles.json"  # product register maps by name
REPL_TIMEOUT = 5.0  # seconds for a board to show its raw REPL prompt
# A port is locked (exclusive open) for a moment after another program let it go, or while a
# process forked by one that had it open has not yet started its own program: "busy" is
# reported only when it stays locked this long.
OPEN_RETRY_S = 2.0

# USB-serial bridges on ESP32 boards: (vid, pid) -> what it is
USB_BRIDGES: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "CP210x (ESP32-DevKitC and most ESP32 boards)",
    (0x1A86, 0x7523): "CH340 (low-cost ESP32 boards)",
    (0x1A86, 0x55D4): "CH9102 (newer ESP32 boards)",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6015): "FTDI FT231X",
    (0x303A, 0x1001): "Espressif USB-JTAG/serial (ESP32-S3 / ESP32-C3 native USB)",
}

ERR_NO_PORT = ("no serial port found: plug the node in with a data USB cable (charge-only "
               "cables have no data lines) and check `meterlink ports`")
ERR_MANY_PORTS = "several serial ports found ({ports}): choose one with --port"
ERR_PORT_MISSING = "{port} does not exist: check the cable and `meterlink ports`"
ERR_PERMISSION = ("permission denied on {port}: add yourself to the dialout group "
                  "(`sudo usermod -aG dialout $USER`, then log out and back in)")
ERR_BUSY = ("{port} is busy: another program has it open (mpremote, a serial monitor, "
            "`meterlink monitor`, an IDE); close it and try again")
ERR_NOT_MICROPYTHON = ("no MicroPython REPL on {port}: the board runs other firmware or sits "
                       "in its bootloader; install MicroPython with `meterlink flash --board "
                       "NAME` (the image `make image` built, or --firmware FILE.bin), then "
                       "press the board's EN/RESET button")
ERR_WRONG_CHIP = ("wrong chip: {port} is an {found} but board file {board} is for an "
                  "{expected}; use the board file for this node (`meterlink ports` and "
                  "boards/*.json)")
ERR_SAFE_MODE = ("the node is in safe mode ({reason}): it stopped its sensors after crashing "
                 "at boot; see why with `meterlink monitor`, fix it (`meterlink deploy`, "
                 "`meterlink provision`), then reboot it")
ERR_NO_SPACE = ("out of flash space on the node: {detail}; remove old files (`mpremote "
                "connect {port} fs ls`, `fs rm`) or erase and re-flash it (`meterlink flash "
                "--erase`)")
ERR_NO_DIAGNOSTICS = ("the node's firmware has no diagnostics (node.diagnostics() is missing): "
                      "update it with `meterlink deploy --board NAME`")


# ------------------------------------------------------------------------------ boards
@dataclass(frozen=True)
class Board:
    name: str
    chip: str
    mpy_arch: str
    flash_offset: int
    drivers: tuple[str, ...] | None
    path: Path
    raw: dict

    @property
    def esptool_chip(self) -> str:
        return self.chip


def load_board(name: str) -> Board:
    """boards/NAME.json (or a path to a board file)."""
    path = Path(name) if name.endswith(".json") else BOARDS_DIR / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in BOARDS_DIR.glob("*.json")))
        raise UserError(f"no board file {name!r}: the boards are {known}", exit_code=EXIT_INPUT)
    try:
        raw = json.loads(path.read_text())
        offset = raw["flash_offset"]
        return Board(
            name=raw.get("name", path.stem), chip=raw["chip"], mpy_arch=raw["mpy_arch"],
            flash_offset=int(offset, 0) if isinstance(offset, str) else int(offset),
            drivers=tuple(raw["drivers"]) if "drivers" in raw else None, path=path, raw=raw)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"board file {path} is invalid: {exc!r} (needs chip, mpy_arch, "
                        f"flash_offset)", exit_code=EXIT_INPUT) from exc


# ------------------------------------------------------------------------------ ports
def bridge_name(vid: int | None, pid: int | None) -> str:
    if vid is None or pid is None:
        return ""
    return USB_BRIDGES.get((vid, pid), "")


def list_ports() -> list:
    """The serial ports that can be a node: USB ones (with a VID/PID), ESP32 bridges first."""
    ports = [p for p in serial.tools.list_ports.comports() if p.vid is not None]
    return sorted(ports, key=lambda p: (not bridge_name(p.vid, p.pid), p.device))


def pick_port(port: str | None) -> str:
    """--port as given, else the only USB serial port on the machine."""
    if port:
        return port
    ports = list_ports()
    if not ports:
        from host_tools.vboard.running import running
        boards = running()
        if boards:
            raise UserError(ERR_NO_PORT + "; a virtual board runs on "
                            + ", ".join(b.port for b in boards)
                            + f": give --port {boards[0].port} to use it")
        raise UserError(ERR_NO_PORT)
    known = [p for p in ports if bridge_name(p.vid, p.pid)]
    if len(known) == 1:
        return known[0].device
    if len(ports) == 1:
        return ports[0].device
    raise UserError(ERR_MANY_PORTS.format(ports=", ".join(p.device for p in ports)))


def open_serial(port: str, baudrate: int = 115200, timeout: float | None = 1.0) -> serial.Serial:
    """Opens the port exclusively, or raises the technician's error for what went wrong."""
    try:
        return serial.Serial(port, baudrate, timeout=timeout, exclusive=True)
    except serial.SerialException as exc:
        raise port_error(port, exc) from exc


def port_error(port: str, exc: OSError) -> UserError:
    code = exc.errno
    text = str(exc)
    if code == errno.ENOENT or "No such file" in text:
        return UserError(ERR_PORT_MISSING.format(port=port))
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return UserError(ERR_PERMISSION.format(port=port))
    if code in (errno.EAGAIN, errno.EBUSY) or "exclusively lock" in text or "busy" in text:
        return UserError(ERR_BUSY.format(port=port))
    return UserError(f"cannot open {port}: {text}")


# ------------------------------------------------------------------------------ REPL session
# The stopped runtime closed as node.run() would close it, so that node.run(boot) can start a
# new one with the same boot (Device.resume_node). Small pieces, each compiled on the node by
# itself: the node's heap is busy and fragmented while the runtime is stopped.
#  1. is a runtime there (main.py built it) to resume?
#  2. its asyncio tasks dropped with their loop, so nothing of it runs any more;
#  3. its sensor state saved and its queue closed (Node.shutdown), its MQTT link closed;
#  4. the old tasks that closing the link woke are dropped again (or the old publisher would
#     run beside the new one); its fields let go, so that anything still pointing at it (a
#     stale word on the C stack: the GC scans it conservatively) keeps only its shell; the
#     RTC memory read back as a reset reads it, so the sequence continues without a gap.
_RESUME_PREPARE = (
    "import node\n_ml_n = getattr(node, '_current', None)\n"
    "print(_ml_n is not None and getattr(_ml_n, 'boot', None) is not None)\n",
    "import asyncio\nasyncio.new_event_loop()\n_ml_boot = _ml_n.boot\nnode._current = None\n",
    "for _ml_f in (_ml_n.shutdown, _ml_n.client.close):\n"
    "    try:\n        asyncio.run(_ml_f())\n"
    "    except Exception as e:\n        print('resume:', repr(e))\n",
    "asyncio.new_event_loop()\nfor _ml_f in list(_ml_n.__dict__):\n"
    "    setattr(_ml_n, _ml_f, None)\n_ml_n = _ml_f = None\n"
    "import gc, rtcstate\ngc.collect()\n_ml_boot.rtc = rtcstate.RtcState()\nprint('READY')\n",
)


class DeviceError(UserError):
    """Code run on the device raised; `.output` is its traceback text."""

    def __init__(self, output: str) -> None:
        self.output = output
        last = output.strip().splitlines()[-1] if output.strip() else "error"
        super().__init__(f"the node answered with an error: {last}")


def _quiet():
    """mpremote prints what it read (`b''` for nothing) to stdout when it cannot enter the raw
    REPL; our own error says what happened, so that goes nowhere."""
    return contextlib.redirect_stdout(io.StringIO())


class Device:
    """A raw-REPL session with a node. Entering it stops whatever the node runs (Ctrl-C);
    `soft_reset=True` also restarts MicroPython first (a clean heap, boot.py only), which is
    what a deployment wants; `status` keeps the node's state (False)."""

    def __init__(self, port: str, *, soft_reset: bool = False,
                 timeout: float | None = None) -> None:
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        deadline = time.monotonic() + OPEN_RETRY_S
        while True:
            try:
                self.transport = SerialTransport(port, baudrate=115200)
                break
            except TransportError as exc:
                # mpremote says only "failed to access": open it again for the precise reason
                try:
                    open_serial(port).close()
                except UserError as reason:
                    if reason.args[0] != ERR_BUSY.format(port=port) \
                            or time.monotonic() >= deadline:
                        raise
                if time.monotonic() >= deadline:
                    raise UserError(ERR_BUSY.format(port=port)) from exc
                time.sleep(0.05)  # locked a moment ago and free now, or still locked: again
        try:
            with _quiet():
                self.transport.enter_raw_repl(soft_reset=soft_reset,
                                              timeout_overall=timeout or REPL_TIMEOUT)
        except TransportError as exc:
            self.transport.close()
            raise UserError(ERR_NOT_MICROPYTHON.format(port=port)) from exc
        except OSError as exc:
            self.transport.close()
            raise port_error(port, exc) from exc

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            try:
                if self.transport.in_raw_repl:
                    self.transport.exit_raw_repl()
            except OSError:
                pass
            self.transport.close()
            self.transport = None

    def exec(self, code: str | bytes, timeout: float = 30.0) -> str:
        from mpremote.transport import TransportError

        for attempt in (1, 2):
            try:
                out, err = self.transport.exec_raw(code, timeout=timeout)
                break
            except TransportError as exc:
                # A node caught mid-boot (its runtime restarting) can miss the first Ctrl-C:
                # interrupt it once more and enter the raw REPL again before giving up.
                if attempt == 1 and "raw repl" in str(exc):
                    try:
                        with _quiet():
                            self.transport.enter_raw_repl(soft_reset=False,
                                                          timeout_overall=REPL_TIMEOUT)
                        continue
                    except (TransportError, OSError):
                        pass
                raise UserError(f"the node on {self.port} stopped answering ({exc}): check "
                                f"the cable, then press the board's EN/RESET button") from exc
        if err:
            raise DeviceError(err.decode(errors="replace"))
        return out.decode(errors="replace")

    def eval(self, expr: str, timeout: float = 30.0):
        text = self.exec(f"print(repr({expr}))", timeout=timeout).strip()
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise UserError(f"unexpected answer from the node: {text[:200]!r}") from exc

    def chip(self) -> str:
        """The chip, from what MicroPython reports (`sys.implementation._machine` ends
        `with ESP32S3`);
        a virtual board reports the chip of its board.json."""
        text = self.eval(
            "(lambda m: __import__('machine').vboard().chip if m.startswith('linux') else m)"
            "(__import__('sys').implementation._machine)")
        t = text.lower().replace("-", "")
        for chip in ("esp32s3", "esp32s2", "esp32c3", "esp32c6", "esp32"):
            if t.endswith(chip) or t.endswith("with " + chip):
                return chip
        return t

    def check_chip(self, board: Board) -> None:
        found = self.chip()
        if found != board.chip:
            raise UserError(ERR_WRONG_CHIP.format(port=self.port, found=found.upper(),
                                                  board=board.path.name,
                                                  expected=board.chip.upper()))

    def resume_node(self) -> bool:
        """Starts the stopped node again without a reboot, when there is one to resume.

        Ctrl-C left the node's runtime (`node._current`, built by main.py from its
        `bootinfo.start()`) stopped in the REPL. This closes it the way the runtime does at
        the end (sensor state saved, queue closed) and drops its MQTT connection, then runs
        `node.run(boot)` with the same boot from the friendly REPL, where main.py runs it: the
        boot count, reset cause and crash-boot count are untouched; what the runtime counts
        since it started (`up`, `sent`, failed readings, the last readings) starts again.
        Returns False when no runtime was running (the caller soft-resets instead)."""
        if not self.stop_runtime():
            return False
        self.start_runtime()
        return True

    def stop_runtime(self) -> bool:
        """The first half of `resume_node`: the stopped runtime closed and its heap freed;
        False when none was running."""
        try:
            if self.exec(_RESUME_PREPARE[0]).strip() != "True":
                return False
            out = "".join(self.exec(piece, timeout=30) for piece in _RESUME_PREPARE[1:])
        except DeviceError as exc:
            if "MemoryError" not in exc.output:
                raise
            return False  # no heap even for this: the caller resets the node instead
        return out.strip().endswith("READY")

    def start_runtime(self) -> None:
        """The second half: `node.run(boot)` typed at the friendly REPL; the session ends
        with the node running."""
        self.transport.exit_raw_repl()
        self.transport.read_until(1, b">>> ", timeout=5)
        self.transport.serial.write(b"node.run(_ml_boot)\r")
        self.transport.serial.flush()
        self.transport.read_until(1, b"node.run(_ml_boot)\r\n", timeout=5)

    def hard_reset(self) -> None:
        """`machine.reset()` from the raw REPL, without waiting for an answer: the node resets
        at once (as the board's EN button does) and the session ends."""
        self.transport.exec_raw_no_follow("import machine\nmachine.reset()")
        self.transport.in_raw_repl = False  # the chip reset: it is in no REPL mode now
        self.close()

    def run_main(self) -> None:
        """Leaves the REPL with a soft reset in friendly mode: boot.py, then main.py (the
        node runs again)."""
        self.transport.exit_raw_repl()
        self.transport.serial.write(b"\x04")
        self.transport.serial.flush()


# ------------------------------------------------------------------------------ files on the node
# What write_file and the listings use on the node, defined once per session (prepare_files):
# _h(p) a file's SHA-256 in hex (None when there is none), _clean(names) removes the NAME.new
# halves a cut copy left, _free() the filesystem's free bytes.
FILE_HELPERS = """\
import os, hashlib, binascii
def _h(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h = hashlib.sha256()
    b = bytearray(512)
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        h.update(m[:n])
    f.close()
    return binascii.hexlify(h.digest()).decode()
def _clean(names):
    for n in names:
        try:
            os.remove(n + '.new')
        except OSError:
            pass
def _free():
    try:
        s = os.statvfs('/')
    except (AttributeError, OSError):
        s = os.statvfs('.')
    return s[0] * s[4]
"""
CHUNK = 2048  # bytes per exec: 2.7 KB of base64 source, well inside a 96 KB heap


def prepare_files(dev: Device, more: str = "") -> None:
    """Defines FILE_HELPERS on the node, and the caller's own helpers `more` in the same exec
    (once per session, before write_file)."""
    dev.exec(FILE_HELPERS + more)


def write_file(dev: Device, name: str, data: bytes, tty: bool = False) -> None:
    """Writes one file to the node: NAME.new, its SHA-256 checked on the node, renamed over
    NAME (a cut cable leaves the old file whole). After prepare_files(dev); `tty` shows a
    progress bar."""
    tmp = name + ".new"
    dev.exec(f"import binascii, os\n_f = open({tmp!r}, 'wb')")
    done = 0
    for i in range(0, len(data), CHUNK):
        chunk = base64.b64encode(data[i:i + CHUNK]).decode()
        dev.exec(f"_f.write(binascii.a2b_base64({chunk!r}))")
        done = min(i + CHUNK, len(data))
        _progress(name, done, len(data), tty)
    dev.exec("_f.close()\ndel _f")
    got = dev.eval(f"_h({tmp!r})")
    want = hashlib.sha256(data).hexdigest()
    if got != want:
        raise UserError(f"{name}: the copy on the node does not match (sha256 {got}, expected "
                        f"{want}): check the cable and deploy again")
    # littlefs renames over a file; FAT needs the old one removed first
    dev.exec(f"try:\n os.rename({tmp!r}, {name!r})\nexcept OSError:\n os.remove({name!r})\n"
             f" os.rename({tmp!r}, {name!r})")


def no_space(exc: DeviceError) -> bool:
    """Whether the node's error is OSError ENOSPC: `OSError: [Errno 28] ENOSPC` on the ESP32
    port, `OSError: 28` on unix."""
    return re.search(r"OSError: (\[Errno )?28\b|ENOSPC", exc.output) is not None


def _progress(name: str, done: int, total: int, tty: bool) -> None:
    if not tty:
        return
    width = 24
    fill = width * done // max(total, 1)
    sys.stdout.write(f"\r  {name:<20} [{'#' * fill}{'-' * (width - fill)}] {done * 100 // max(total, 1):3d}%")
    sys.stdout.flush()


def say(text: str = "", *, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()
