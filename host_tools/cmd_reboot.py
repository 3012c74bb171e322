"""`meterlink reboot`: resets the node on the serial port, as a technician's restart.

    meterlink reboot [--port PORT]

A reset the technician asks for is not a failure: before the reset the node's count of boots
that crashed before it was healthy is cleared, so the node starts normally, out of safe mode
too (the `reboot` downlink command does the same from the gateway). Then `machine.reset()`:
the whole chip restarts, as the board's EN/RESET button does, and runs boot.py and main.py.
The node's queue, counters on flash and configuration stay.
"""

from __future__ import annotations

import argparse

from host_tools import device
from host_tools.device import Device, DeviceError, say

HELP = "reset the node (clears the crash count that leads to safe mode); it starts again"

_CLEAR = """\
try:
    import rtcstate
    print(rtcstate.RtcState().clear_crashes())
except ImportError:
    print(-1)
"""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")


def run(args: argparse.Namespace) -> int:
    port = device.pick_port(args.port)
    with Device(port, soft_reset=False) as dev:
        try:
            cleared = int(dev.exec(_CLEAR).strip() or 0)
        except (DeviceError, ValueError):
            cleared = -1  # no firmware, or no heap to ask: reset all the same
        dev.hard_reset()
    if cleared > 0:
        say(f"node on {port}: reset; the count of {cleared} crashed boot(s) was cleared: it "
            f"starts normally (out of safe mode)")
    else:
        say(f"node on {port}: reset; it starts again (`meterlink status` shows it running)")
    return 0
