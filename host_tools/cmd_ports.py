"""`meterlink ports`: the serial ports a node can be on, with a guess of the USB-serial bridge.

    $ meterlink ports
    /dev/ttyUSB0  10c4:ea60  CP210x (ESP32-DevKitC and most ESP32 boards)  serial 0001
    /dev/ttyACM0  303a:1001  Espressif USB-JTAG/serial (ESP32-S3 / ESP32-C3 native USB)
    /dev/pts/7    virtual    esp32 virtual board (meterlink image) in /home/tech/vboard  pid 4242

Only USB ports are listed (built-in /dev/ttyS* are never a node), then the virtual boards
`meterlink vboard` runs on this machine. Known ESP32 bridges come first; when exactly one is
connected, every other command uses it without `--port`. A virtual board is never picked by
itself: a command reaches it only with `--port`, so nothing meant for a real node lands on it.
"""

from __future__ import annotations

import argparse

from host_tools import device
from host_tools.device import say
from host_tools.vboard import running
from meterlink_common import UserError

HELP = "list USB serial ports with the USB-serial bridge (CP210x, CH34x, FTDI, ESP32 USB)"


def build_parser(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> int:
    ports = device.list_ports()
    boards = running.running()
    if not ports and not boards:
        raise UserError(device.ERR_NO_PORT)
    for p in ports:
        guess = device.bridge_name(p.vid, p.pid) or (p.product or p.description or "unknown USB device")
        serial_no = f"  serial {p.serial_number}" if p.serial_number else ""
        say(f"{p.device}  {p.vid:04x}:{p.pid:04x}  {guess}{serial_no}")
    for b in boards:
        say(f"{b.port}  virtual    {b.chip} virtual board ({b.image} image) in {b.dir}  "
            f"pid {b.pid}")
    if not ports:
        say(f"default port: none; a virtual board is used with --port {boards[0].port}")
        return 0
    try:
        say(f"default port: {device.pick_port(None)}")
    except UserError:
        say("several ports: give --port to the other commands")
    return 0
