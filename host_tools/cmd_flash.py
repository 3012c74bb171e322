"""`meterlink flash`: writes MicroPython (or any ESP32 image) to a node with esptool.

    meterlink flash --board esp32-devkitc [--erase]         the image `make image` built
    meterlink flash --board esp32-devkitc --firmware ESP32_GENERIC-v1.25.0.bin [--erase]

Without --firmware it writes the meterlink image of the board, the firmware frozen in, that
`make image BOARD=<board>` left in build/image/<board>/firmware.bin (host_tools/image.py
builds it, `firmware_build.image_bin` finds it); with it, any image, such as MicroPython's own
from micropython.org (the firmware then goes on as .mpy files, `meterlink deploy`).

Runs esptool (the pinned release, as `python -m esptool`) with the chip and flash offset of
the board file:

    esptool --chip esp32 --port PORT --baud 460800 write-flash [--erase-all] 0x1000 FILE.bin

esptool prints its own progress and checks the written data against a hash computed by the
chip (every write-flash is verified). Before that, the image is checked here: an ESP32 image
starts with 0xE9 and names its chip in its extended header (byte 12), so a file built for
another chip is refused before anything is erased. After flashing, the board resets into
MicroPython; `meterlink deploy` and `meterlink provision` come next.

A meterlink image is written the same way: its firmware.bin spans the bootloader, the partition
table and the first app slot, and the 0xFF it holds between them clears otadata, so the node
boots that slot whichever one ran before.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

from host_tools import device, firmware_build
from host_tools.device import say
from meterlink_common import EXIT_INPUT, UserError

HELP = ("write the board's image (`make image`) or a MicroPython .bin to the node with esptool "
        "(chip and offset from the board file)")
BAUD = 460800
IMAGE_MAGIC = 0xE9
# esptool's chip ids (image extended header, byte 12)
CHIP_IDS = {0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2", 13: "esp32c6",
            16: "esp32h2"}


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, metavar="NAME", help="board file in boards/")
    parser.add_argument("--firmware", type=Path, metavar="FILE.bin",
                        help="the image to write (default: build/image/BOARD/firmware.bin, made "
                             "by `make image BOARD=BOARD`; or MicroPython's ESP32_GENERIC*.bin)")
    parser.add_argument("--erase", action="store_true",
                        help="erase the whole flash first (removes the node's files and config)")
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")
    parser.add_argument("--baud", type=int, default=BAUD, help=f"default {BAUD}")


def image_chip(path: Path) -> str:
    """The chip an ESP image is built for; UserError when it is not an ESP image."""
    try:
        head = path.read_bytes()[:16]
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}", exit_code=EXIT_INPUT) from exc
    if len(head) < 16 or head[0] != IMAGE_MAGIC:
        got = f"0x{head[0]:02x}" if head else "an empty file"
        raise UserError(f"{path} is not an ESP32 firmware image (it starts with {got}, an image "
                        f"starts with 0xe9): download the .bin for your board from "
                        f"micropython.org/download", exit_code=EXIT_INPUT)
    chip_id = head[12] | head[13] << 8
    return CHIP_IDS.get(chip_id, f"chip id {chip_id}")


def esptool_argv(board: device.Board, port: str, firmware: Path, *, erase: bool,
                 baud: int = BAUD) -> list[str]:
    argv = ["--chip", board.chip, "--port", port, "--baud", str(baud), "write-flash"]
    if erase:
        argv.append("--erase-all")
    return argv + [f"0x{board.flash_offset:x}", str(firmware)]


def esptool_failure(port: str, board: device.Board, output: str) -> UserError:
    """The technician's one line for what esptool printed when it failed."""
    m = re.search(r"This chip is (\S+), not (\S+)\.", output)  # esptool/loader.py
    if m:
        return UserError(device.ERR_WRONG_CHIP.format(
            port=port, found=m.group(1).replace("-", ""), board=board.path.name,
            expected=board.chip.upper()))
    if "Permission denied" in output:
        return UserError(device.ERR_PERMISSION.format(port=port))
    if "exclusively lock" in output or "Resource temporarily unavailable" in output:
        return UserError(device.ERR_BUSY.format(port=port))
    return UserError("esptool could not flash the board (its output is above): hold the "
                     "board's BOOT button while esptool connects, or try --baud 115200")


def default_firmware(board: device.Board) -> Path:
    """The board's meterlink image from `make image`; UserError naming the fix when absent."""
    try:
        return firmware_build.image_bin(board)
    except FileNotFoundError as exc:
        raise UserError(f"no image for {board.name}: {exc.filename} does not exist; build it "
                        f"with `make image BOARD={board.name}` (docs/board-bringup.md), or pass "
                        f"--firmware FILE.bin") from exc


def run(args: argparse.Namespace) -> int:
    board = device.load_board(args.board)
    firmware = args.firmware or default_firmware(board)
    chip = image_chip(firmware)
    if chip != board.chip:
        raise UserError(f"wrong chip: {firmware} is built for {chip.upper()} but board file "
                        f"{board.path.name} is for {board.chip.upper()}: download the image "
                        f"for this chip, or use the right board file", exit_code=EXIT_INPUT)
    port = device.pick_port(args.port)
    device.open_serial(port).close()  # missing, permission, busy: the technician's message
    argv = esptool_argv(board, port, firmware, erase=args.erase, baud=args.baud)
    say("esptool " + " ".join(argv))
    proc = subprocess.Popen([sys.executable, "-m", "esptool", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    tail = b""
    while chunk := proc.stdout.read1(4096):  # esptool's own progress, as it comes
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        tail = (tail + chunk)[-8192:]
    if proc.wait() != 0:
        raise esptool_failure(port, board, tail.decode(errors="replace"))
    say(f"flashed {firmware.name} to {port} at 0x{board.flash_offset:x} (verified by "
        f"esptool); next: meterlink deploy --board {board.name}")
    return 0
