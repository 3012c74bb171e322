"""`meterlink monitor`: the node's serial console, with timestamps and errors highlighted.

    meterlink monitor [--port PORT] [--log FILE] [--duration S]

    09:41:07.215  12034 I sensor: bme280@i2c0:0x76 seq=42 {1: 2153, 2: 4523, 3: 101325}
    09:41:09.880  14702 E mqtt: connect failed (OSError(113,)); retry in 2000 ms   <- red

Each line the node prints gets the laptop's time in front. The node's log lines
(`<uptime ms> <level> <tag>: <message>`, firmware/log.py) are coloured by level on a terminal:
E red, W yellow; tracebacks are red too. The node keeps running: monitor only listens (use
`mpremote connect PORT repl` to type at the REPL). `--log FILE` appends the same lines to FILE.
Ctrl-C ends it.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from host_tools import device

HELP = "show the node's console with timestamps; errors highlighted"
LOG_LINE = re.compile(r"^\s*\d+ ([IWED]) [^:\s]+: ")
RED, YELLOW, RESET = "\x1b[31m", "\x1b[33m", "\x1b[0m"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")
    parser.add_argument("--log", type=Path, metavar="FILE", help="also append the lines to FILE")
    parser.add_argument("--duration", type=float, default=0, metavar="S",
                        help="stop after S seconds (default: until Ctrl-C)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")


def level(line: str) -> str:
    """'E', 'W', 'I', 'D' for a log line; 'E' for a traceback's lines; '' otherwise."""
    m = LOG_LINE.match(line)
    if m:
        return m.group(1)
    if line.startswith(("Traceback (most recent call last)", "  File \"")) or \
            re.match(r"^[A-Z][A-Za-z]*Error: ", line):
        return "E"
    return ""


def render(line: str, stamp: str, color: bool) -> str:
    lv = level(line)
    text = f"{stamp}  {line}"
    if color and lv == "E":
        return RED + text + RESET
    if color and lv == "W":
        return YELLOW + text + RESET
    return text


def run(args: argparse.Namespace) -> int:
    port = device.pick_port(args.port)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    ser = device.open_serial(port, timeout=0.2)
    log = open(args.log, "a", encoding="utf-8") if args.log else None
    deadline = time.monotonic() + args.duration if args.duration else None
    buf = b""
    counts = {"E": 0, "W": 0}
    try:
        sys.stderr.write(f"monitor {port} (Ctrl-C to stop)\n")
        while deadline is None or time.monotonic() < deadline:
            chunk = ser.read(4096)
            if not chunk:
                continue
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
                stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
                lv = level(line)
                if lv in counts:
                    counts[lv] += 1
                sys.stdout.write(render(line, stamp, color) + "\n")
                sys.stdout.flush()
                if log:
                    log.write(f"{stamp}  {line}\n")
                    log.flush()
    finally:
        ser.close()
        if log:
            log.close()
        sys.stderr.write(f"monitor: {counts['E']} error line(s), {counts['W']} warning(s)\n")
    return 0
