"""The virtual board on a serial port: a pty that speaks the MicroPython REPL like an ESP32's
USB-UART, backed by a MicroPython unix-port process running in the node's flash folder.

    board = PtyBoard(tmp / "node-01").start()
    print(board.port)               # /dev/pts/7: `mpremote connect /dev/pts/7 fs ls`
    ...
    board.stop()

Why a bridge: the unix port's own REPL has no raw REPL (Ctrl-A), which is what `mpremote`,
`meterlink deploy` and every other tool speak. So this module implements the device side of
the protocol exactly as MicroPython 1.25's `shared/runtime/pyexec.c` does, byte for byte,
and hands the code to run to a persistent MicroPython process (`mpy/repl_agent.py`, frozen
into the build so it takes none of the node's heap, fed one request at a time over a pipe). The terminal sees what it sees on a real board:

- friendly REPL: banner, `>>> ` prompt with echo and backspace, `... ` continuation lines,
  Ctrl-A raw REPL, Ctrl-B banner, Ctrl-C cancel/interrupt, Ctrl-D soft reset;
- raw REPL: `raw REPL; CTRL-B to exit\\r\\n>`; code, Ctrl-D; `OK`, output, `\\x04`, error
  text, `\\x04`, `>`; Ctrl-D on an empty line: `OK\\r\\n` then a soft reset;
- raw-paste: `\\x05A\\x01` -> `R\\x01`, a 128-byte window (2 bytes, little endian) and `\\x01`
  for each further window the host may send; the host's Ctrl-D is acknowledged with `\\x04`,
  then the output and error framed as in the raw REPL; `\\x05` + another letter -> `R\\x00`;
- soft reset: `MPY: soft reboot\\r\\n`, the MicroPython process is restarted (a fresh heap, all
  modules reloaded), `boot.py` runs, then `main.py` only in friendly-REPL mode and only when
  boot.py finished without an exception or Ctrl-C, as on the ESP32 port; a `SystemExit` from
  the code soft-resets too;
- Ctrl-C while code runs (main.py's node loop, or a raw-REPL exec) raises KeyboardInterrupt in
  it (SIGINT to the process);
- the process ending on its own (`machine.reset()`, `machine.deepsleep()`, a crash) is a hard
  reset: the board boots again (after the requested sleep, capped), in friendly mode;
- printed `\\n` becomes `\\r\\n` (the port's cooked console output); output that nobody reads is
  dropped once 64 KB are pending, like a UART with nothing attached.

Not modelled: the flash filesystem's size (the flash folder is a host directory, so
`os.statvfs` reports the host disk; an ENOSPC from the host is reported as on the device), file
sizes in `os.ilistdir` (the unix port gives 3-tuples, so `mpremote fs ls` shows 0), the
ROM bootloader's boot messages, baud rates and DTR/RTS resets (esptool cannot talk to it).

The heap is what `VirtualNode` gives the node: 96 KB plus the measured allowance for the
virtual board's own models (`vboard_allowance`), so the firmware started by main.py runs here
as it runs there.

The board runs one of the two images `VirtualNode` knows (`form`): "image", the meterlink
image with the firmware frozen in (the default: what `make image` builds and `meterlink flash`
writes), or "mpy", a stock MicroPython image whose firmware comes as .mpy files.

The node's folder is the one `VirtualNode` uses (flash/, board.json, env.json); the flash
folder starts empty unless the caller fills it (a board fresh from `esptool`: the image and
nothing else), and `meterlink deploy` puts boot.py and main.py there (and, on a stock image,
the firmware's .mpy files). `console.log` in the folder
gets a copy of everything the board printed.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import struct
import subprocess
import termios
import threading
import time
import tty
from pathlib import Path

from host_tools import process, toolchain
from host_tools.vboard import bootloader
from host_tools.vboard.node import (DEFAULT_HEAP, FORMS, config_adc_pins, default_board,
                                   heap_size, vboard_allowance)
from meterlink_common import write_json_atomic

AGENT = "import repl_agent"  # frozen: host_tools/vboard/mpy/repl_agent.py
RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"MPY: soft reboot\r\n"
SOFT_RESET_CAUSE = 5  # machine.SOFT_RESET
PASTE_WINDOW = 128  # MICROPY_REPL_STDIN_BUFFER_MAX / 2, as on the ESP32 port
MAX_PENDING_OUT = 64 * 1024
MAX_SLEEP_S = 5.0  # a deep sleep longer than this is cut short: the pty board is for tools

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5


def banner(chip: str) -> bytes:
    name = chip.upper()
    return (f"MicroPython v{toolchain.MICROPYTHON_VERSION} on 2025-04-15; Generic {name} module "
            f"with {name}\r\nType \"help()\" for more information.\r\n").encode()


def _own_frame_dropped(tb: bytes) -> bytes:
    """The traceback without the agent's frames (`-c "import repl_agent"` and the loop that
    calls exec): a device's traceback starts at the code it was given."""
    head = b"Traceback (most recent call last):\n"
    if not tb.startswith(head):
        return tb
    lines = tb[len(head):].split(b"\n")
    if len(lines) > 1 and lines[0] == b'  File "<stdin>", line 1, in <module>' \
            and lines[1].startswith(b'  File "repl_agent.py"'):
        lines.pop(0)
    while lines and lines[0].startswith(b'  File "repl_agent.py"'):
        lines.pop(0)
    return head + b"\n".join(lines)


class PtyBoard:
    """One virtual board behind a pty. Thread-safe to start and stop; everything else runs on
    its own I/O thread."""

    def __init__(self, root: str | Path, *, board: dict | None = None,
                 heap: str = DEFAULT_HEAP, form: str = "image") -> None:
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}: got {form!r}")
        self.form = form
        self.root = Path(root)
        self.flash = self.root / "flash"
        self.flash.mkdir(parents=True, exist_ok=True)
        if board is not None or not (self.root / "board.json").exists():
            write_json_atomic(self.root / "board.json", board or default_board())
        if not (self.root / "env.json").exists():
            write_json_atomic(self.root / "env.json", {})
        bootloader.prepare(self.root, form)
        self.heap = heap
        self.chip = json.loads((self.root / "board.json").read_text()).get("chip", "esp32")
        self.port = ""
        self.boots = 0
        self._master = self._slave = -1
        self._proc: subprocess.Popen | None = None
        self._ctl = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._out = bytearray()
        self._console = None
        # REPL state (I/O thread only)
        self._raw = False
        self._line = bytearray()
        self._cont: list[bytes] = []  # friendly REPL: lines of a compound statement so far
        self._paste: bytearray | None = None
        self._paste_left = 0
        self._esc = 0
        self._busy: str | None = None  # what runs: boot, main, raw, paste, friendly
        self._queue: list[tuple[str, bytes, bytes]] = []  # (origin, kind, payload) to run next
        self._pending_in = bytearray()  # what the terminal typed while code was running
        self._ctl_buf = bytearray()
        self._started = False  # the agent began running the current request
        self._want_interrupt = False  # Ctrl-C arrived before it began
        self._idle = threading.Event()  # at a prompt with nothing running or queued
        self._sleep_until = 0.0
        self._spawned_at = 0.0

    def __repr__(self) -> str:
        return f"PtyBoard({str(self.root)!r}, port={self.port!r})"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "PtyBoard":
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._console = open(self.root / "console.log", "ab", buffering=0)
        self._sel.register(self._master, selectors.EVENT_READ, "tty")
        self._boot(power_on=True)
        self._thread = threading.Thread(target=self._loop, name=f"pty-board {self.port}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._kill()
        for fd in (self._master, self._slave):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        if self._console is not None:
            self._console.close()
            self._console = None

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Waits until the board finished booting (boot.py, main.py if it ends) and sits at a
        prompt; False on timeout (main.py still running, for one)."""
        return self._idle.wait(timeout)

    def __enter__(self) -> "PtyBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def environ(self) -> dict[str, str]:
        # '' first: modules on the flash root win over frozen ones, as sys.path does on the
        # device ('', '.frozen', '/lib').
        return {"PATH": "/usr/bin:/bin", "MICROPYPATH": ":.frozen:lib",
                "VBOARD_DIR": str(self.root)}

    def heap_bytes(self) -> int:
        """The node's heap plus what the virtual board's own models take (as `VirtualNode`
        runs it; the REPL agent is frozen and takes none)."""
        return heap_size(self.heap) + vboard_allowance(self.root / "board.json",
                                                       config_adc_pins(self.flash), self.form)

    def _spawn(self) -> None:
        ctl_r, ctl_w = os.pipe()
        bootloader.start(self.root)  # the ESP-IDF bootloader picks the app partition
        self._proc = subprocess.Popen(
            [toolchain.micropython(FORMS[self.form]), "-X", f"heapsize={self.heap_bytes()}",
             "-c", AGENT],
            cwd=self.flash, env={**self.environ(), "REPL_CTL_FD": str(ctl_w)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            pass_fds=(ctl_w,), start_new_session=True)
        os.close(ctl_w)
        self._ctl = ctl_r
        os.set_blocking(self._proc.stdout.fileno(), False)
        os.set_blocking(ctl_r, False)
        self._sel.register(self._proc.stdout, selectors.EVENT_READ, "stdout")
        self._sel.register(ctl_r, selectors.EVENT_READ, "ctl")
        self._ctl_buf.clear()
        self._spawned_at = time.monotonic()
        self.boots += 1

    def _kill(self) -> None:
        if self._proc is None:
            return
        for f in (self._proc.stdout, self._ctl):
            try:
                self._sel.unregister(f)
            except (KeyError, ValueError):
                pass
        process.stop(self._proc, 2.0)
        if self._proc.stdin:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._proc.stdout.close()
        os.close(self._ctl)
        self._proc = None
        self._ctl = -1
        self._busy = None
        self._queue.clear()

    def _boot(self, *, power_on: bool = False) -> None:
        """(Re)starts the process: boot.py, then main.py in friendly mode, then the REPL."""
        self._kill()
        if power_on:
            self._raw = False
        self._line.clear()
        self._cont.clear()
        self._paste = None
        self._spawn()
        self._queue.append(("boot", b"f", b"boot.py"))
        if not self._raw:
            self._queue.append(("main", b"f", b"main.py"))
        self._next()

    # ------------------------------------------------------------------ output
    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._console is not None:
            self._console.write(data)
        self._out += data
        if len(self._out) > MAX_PENDING_OUT:
            del self._out[:len(self._out) - MAX_PENDING_OUT]
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
            del self._out[:n]
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0)
        self._sel.modify(self._master, want, "tty")

    def _prompt(self) -> None:
        self._write(b">" if self._raw else (b"... " if self._cont else b">>> "))

    # ------------------------------------------------------------------ running code
    def _run(self, origin: str, kind: bytes, payload: bytes) -> None:
        self._queue.append((origin, kind, payload))
        self._next()

    def _next(self) -> None:
        if self._busy or not self._queue or self._proc is None:
            return
        origin, kind, payload = self._queue.pop(0)
        self._busy = origin
        self._started = self._want_interrupt = False
        self._idle.clear()
        try:
            self._proc.stdin.write(kind + str(len(payload)).encode() + b"\n" + payload)
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the process died; its exit is handled by the loop

    def _interrupt(self) -> None:
        if self._proc is None or self._busy is None:
            return
        if self._busy == "boot":  # the ESP32 port skips main.py when boot.py did not finish
            self._queue = [q for q in self._queue if q[0] != "main"]
        if not self._started:  # still reading the request: deliver when it starts
            self._want_interrupt = True
            return
        try:
            os.kill(self._proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def _on_stdout(self) -> None:
        if self._proc is None:
            return
        while True:
            try:
                data = os.read(self._proc.stdout.fileno(), 65536)
            except (BlockingIOError, ValueError, OSError):
                return
            if not data:
                return
            self._write(data.replace(b"\n", b"\r\n"))

    def _on_ctl(self) -> None:
        try:
            data = os.read(self._ctl, 65536)
        except BlockingIOError:
            return
        if not data:
            return
        if b"\x05" in data:
            self._started = True
            data = data.replace(b"\x05", b"")
            if self._want_interrupt:
                self._want_interrupt = False
                self._interrupt()
        self._ctl_buf += data
        while True:
            end = self._ctl_buf.find(b"\x04")
            if end < 0 or end + 1 >= len(self._ctl_buf):
                return
            err = _own_frame_dropped(bytes(self._ctl_buf[:end])).replace(b"\n", b"\r\n")
            status = self._ctl_buf[end + 1:end + 2]
            del self._ctl_buf[:end + 2]
            self._on_stdout()  # everything printed before the answer is in the pipe already
            self._finished(err, status)

    def _finished(self, err: bytes, status: bytes) -> None:
        origin, self._busy = self._busy, None
        if origin in ("raw", "paste"):
            self._write(b"\x04" + err + b"\x04")
        else:
            self._write(err)
        if status == b"2":  # SystemExit: soft reset
            self._soft_reset()
            return
        if origin == "boot":
            if status != b"0":  # boot.py raised: main.py is skipped, as on the ESP32 port
                self._queue = [q for q in self._queue if q[0] != "main"]
                if not self._raw:
                    self._write(banner(self.chip))
                    self._prompt()
            if self._raw:
                self._write(RAW_BANNER)
                self._prompt()
            self._next()
        elif origin == "main":
            self._write(banner(self.chip))
            self._prompt()
        elif origin in ("raw", "paste", "friendly"):
            self._prompt()
        if self._busy is None and not self._queue:
            self._idle.set()
        pending, self._pending_in = bytes(self._pending_in), bytearray()
        if pending:
            self._feed(pending)

    def _soft_reset(self) -> None:
        self._write(SOFT_REBOOT)
        # the next process is the same chip after a soft reset: machine.reset_cause() says so
        write_json_atomic(self.root / "reset_cause.json", {"cause": SOFT_RESET_CAUSE, "wake": 0})
        self._boot()

    def _on_exit(self) -> None:
        """The process ended by itself: machine.reset(), deepsleep() or a crash."""
        rc = self._proc.wait()
        self._on_stdout()
        self._kill()
        if rc == 4:  # deep sleep: wake up after the requested time
            try:
                ms = json.loads((self.root / "deepsleep.json").read_text()).get("ms")
            except (OSError, ValueError):
                ms = None
            delay = MAX_SLEEP_S if ms is None else min(ms / 1000, MAX_SLEEP_S)
            self._sleep_until = time.monotonic() + delay
            return
        if rc not in (3, 5):
            self._write(f"\r\n[virtual board: MicroPython exited with {rc}; rebooting]\r\n".encode())
            if time.monotonic() - self._spawned_at < 1.0:  # crashing at boot: do not spin
                self._sleep_until = time.monotonic() + 1.0
                return
        if rc == 5:
            self._soft_reset()
        else:
            self._boot(power_on=True)

    # ------------------------------------------------------------------ input
    def _feed(self, data: bytes) -> None:
        for c in data:
            if self._busy is not None:
                if c == CTRL_C:
                    self._interrupt()
                else:
                    self._pending_in.append(c)
                continue
            if self._paste is not None:
                self._paste_char(c)
            elif self._raw:
                self._raw_char(c)
            else:
                self._friendly_char(c)

    def _raw_char(self, c: int) -> None:
        line = self._line
        if c == CTRL_A:
            if len(line) == 2 and line[0] == CTRL_E:
                letter = line[1]
                line.clear()
                if letter == ord("A"):
                    self._start_paste()
                else:  # a request this device does not know
                    self._write(b"R\x00")
                    self._prompt()
                return
            line.clear()
            self._write(RAW_BANNER)
            self._prompt()
        elif c == CTRL_B:
            line.clear()
            self._raw = False
            self._write(b"\r\n" + banner(self.chip))
            self._prompt()
        elif c == CTRL_C:
            line.clear()
        elif c == CTRL_D:
            self._write(b"OK")
            if not line:
                self._write(b"\r\n")
                self._soft_reset()
                return
            code = bytes(line)
            line.clear()
            self._run("raw", b"x", code)
        else:
            line.append(c)

    def _start_paste(self) -> None:
        self._write(b"R\x01" + struct.pack("<H", PASTE_WINDOW) + b"\x01")
        self._paste = bytearray()
        self._paste_left = PASTE_WINDOW

    def _paste_char(self, c: int) -> None:
        if c in (CTRL_C, CTRL_D):
            code, self._paste = bytes(self._paste), None
            self._write(b"\x04")  # end of data acknowledged
            if c == CTRL_C:
                self._write(b"\x04Traceback (most recent call last):\r\n"
                            b"KeyboardInterrupt: \r\n\x04")
                self._prompt()
                return
            self._run("paste", b"x", code)
            return
        self._paste.append(c)
        self._paste_left -= 1
        if self._paste_left == 0:
            self._write(b"\x01")
            self._paste_left = PASTE_WINDOW

    def _friendly_char(self, c: int) -> None:
        if self._esc:  # skip terminal escape sequences (arrow keys): ESC [ ... final byte
            if self._esc == 1:
                self._esc = 2 if c == ord("[") else 0
            elif 0x40 <= c <= 0x7E:
                self._esc = 0
            return
        line = self._line
        if c == 0x1B:
            self._esc = 1
        elif c == CTRL_A:
            line.clear()
            self._cont.clear()
            self._raw = True
            self._write(b"\r\n" + RAW_BANNER)
            self._prompt()
        elif c == CTRL_B:
            line.clear()
            self._cont.clear()
            self._write(b"\r\n" + banner(self.chip))
            self._prompt()
        elif c == CTRL_C:
            line.clear()
            self._cont.clear()
            self._write(b"\r\n")
            self._prompt()
        elif c == CTRL_D:
            if not line and not self._cont:
                self._write(b"\r\n")
                self._soft_reset()
        elif c in (0x08, 0x7F):
            if line:
                line.pop()
                self._write(b"\x08 \x08")
        elif c == ord("\r"):
            self._write(b"\r\n")
            self._enter_line()
        elif c == ord("\n"):
            pass
        elif c >= 0x20:
            line.append(c)
            self._write(bytes([c]))

    def _enter_line(self) -> None:
        text = bytes(self._line)
        self._line.clear()
        if self._cont:
            if text.strip():
                self._cont.append(text)
                self._prompt()
                return
            code = b"\n".join(self._cont) + b"\n"
            self._cont.clear()
            self._run("friendly", b"s", code)
            return
        if not text.strip():
            self._prompt()
            return
        if text.rstrip().endswith(b":"):
            self._cont.append(text)
            self._prompt()
            return
        self._run("friendly", b"s", text + b"\n")

    # ------------------------------------------------------------------ the I/O thread
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._turn()
            except Exception as exc:  # a bug here must not leave a dead port behind
                if self._console is not None:
                    self._console.write(f"\r\n[virtual board: bridge error {exc!r}]\r\n".encode())
                time.sleep(0.1)

    def _turn(self) -> None:
        """One pass of the I/O thread: the ports that are ready, a finished sleep, an exit."""
        if self._sleep_until and time.monotonic() >= self._sleep_until:
            self._sleep_until = 0.0
            self._boot(power_on=True)
        for key, events in self._sel.select(0.1):
            if key.data == "tty":
                if events & selectors.EVENT_WRITE:
                    self._flush()
                if events & selectors.EVENT_READ:
                    try:
                        data = os.read(self._master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError:  # EIO: no terminal attached
                        data = b""
                    if data:
                        self._feed(data)
            elif key.data == "stdout" and self._proc is not None:
                self._on_stdout()
            elif key.data == "ctl" and self._proc is not None:
                self._on_ctl()
        if self._proc is not None and self._proc.poll() is not None:
            self._on_ctl()
            if self._proc is not None and self._proc.poll() is not None:
                self._on_exit()

