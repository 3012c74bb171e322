"""`meterlink vboard`: a virtual board on a serial port, for trying the technician commands
without hardware (and for the tests that drive them).

    meterlink vboard [--dir vboard] [--chip esp32] [--image meterlink|stock]
    /dev/pts/7                                    <- printed first, then the board's console
    meterlink deploy --board esp32-devkitc --port /dev/pts/7     (in another terminal)

The board is the virtual board (`host_tools/vboard`: an ESP32 with a BME280 on I2C bus 0)
running the MicroPython unix port behind a pty that speaks the REPL like a real USB-serial
port (see `host_tools/vboard/pty_repl.py`). Its flash is `DIR/flash/`: empty on a new board,
like a node fresh from `meterlink flash`. `--image meterlink` (the default) is a board flashed
with the meterlink image (the firmware frozen in: `meterlink deploy` adds boot.py and
main.py), `--image stock` one flashed with a stock MicroPython image (`meterlink deploy`
copies the firmware as .mpy files). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from host_tools.device import say
from host_tools.vboard.node import default_board

HELP = "run a virtual board on a pty (prints the port) to try the tools without hardware"
CHIPS = ("esp32", "esp32s3", "esp32c3")
IMAGES = {"meterlink": "image", "stock": "mpy"}  # --image -> the firmware's form


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=Path("vboard"),
                        help="the board's folder: flash/, board.json, env.json (default: vboard)")
    parser.add_argument("--chip", choices=CHIPS, default=None,
                        help="chip of a new board (default: esp32; an existing board keeps its own)")
    parser.add_argument("--image", choices=IMAGES, default="meterlink",
                        help="what the board was flashed with: the meterlink image (firmware "
                             "frozen in; default) or a stock MicroPython image")
    parser.add_argument("--duration", type=float, default=0, metavar="S",
                        help="stop after S seconds (default: run until Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    from host_tools.vboard import running
    from host_tools.vboard.pty_repl import PtyBoard

    board = default_board(chip=args.chip) if args.chip else None
    with PtyBoard(args.dir, board=board, form=IMAGES[args.image]) as vb, \
            running.announce(vb.port, vb.chip, args.image, args.dir):
        say(vb.port)
        say(f"virtual {vb.chip} board ({args.image} image) in {args.dir}/ on {vb.port}; console in "
            f"{args.dir}/console.log; Ctrl-C stops it")
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    return 0
