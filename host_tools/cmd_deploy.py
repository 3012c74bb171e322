"""`meterlink deploy`: puts the firmware on a node over its USB serial port.

    meterlink deploy --board esp32-devkitc [--port /dev/ttyUSB0] [--dry-run]

What goes on the node depends on the image it was flashed with, which deploy asks the node:

- the **meterlink image** (`make image`, `meterlink flash`): the firmware is frozen into it and
  runs from flash. Only `boot.py` and `main.py` go on the filesystem; a copy of a frozen
  module found there (an earlier deploy's .mpy) is removed, since it would take the frozen
  one's place and load its code into the heap. Changing the firmware itself means a new image.
- a **stock MicroPython image**: `firmware/` and `drivers/` compiled with mpy-cross for the
  board's architecture (cached by content in .cache/firmware/); a driver that another board
  file lists in `drivers` but this one does not is left off the node. Their bytecode loads
  into the heap, which bounds what such a node can carry (docs/node-memory.md).

1. stops the node (Ctrl-C, soft reset into the raw REPL: a clean heap, main.py not running),
   checks the chip against the board file, asks whether the image has the firmware frozen in,
   and asks for the SHA-256 of every file it has under the names concerned (hashlib on the
   device: nothing is read back over the wire);
2. copies only the files whose hash differs: each is written to `NAME.new`, its hash checked
   on the device, then renamed over the old one, so a cut cable or a power loss mid-copy leaves
   the old file whole (such halves are removed by the next deploy); modules that an earlier
   deploy put there and this one no longer has are removed (the list is kept on the device in
   `.deploy.json`), and so is the state of an over-the-air app update (`app.json`, which
   would run the update's slot instead of what was deployed); nothing else is ever deleted:
   config.json, the queue and counters stay;
3. soft-resets the node: boot.py, main.py, the node runs the new firmware.

`--dry-run` stops after step 1 and lists what would change. Exit status 0 when the node has
exactly the built firmware.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

from host_tools import device, firmware_build
from host_tools.device import Device, DeviceError, no_space, prepare_files, say, write_file
from meterlink_common import UserError

HELP = "compile the firmware for a board and copy what changed to the node (--dry-run lists it)"
MANIFEST = ".deploy.json"
# An app update received over the air (docs/ota.md) runs from a slot in preference to the
# firmware; a deploy removes what selects it, so the node runs what was deployed.
OTA_STATE = ("app.json", "ota.json", "ota.bin", "ota.bad")

# deploy's own helpers on the node, next to device.FILE_HELPERS (_h, _clean, _free): the
# manifest's text, and the frozen firmware's version (None: a stock image)
_DEPLOY_HELPERS = """\
def _man():
    try:
        with open('%(manifest)s') as f:
            return f.read()
    except OSError:
        return ''
def _image():
    import sys
    p = sys.path[:]
    sys.path[:] = ['.frozen']
    try:
        from node import FIRMWARE_VERSION
        return FIRMWARE_VERSION
    except ImportError:
        return None
    finally:
        sys.path[:] = p
"""


def _remote_state(dev: Device, names: list[str]) -> tuple[list, str, int]:
    """(sha256 hex or None per name, the manifest text, free bytes) from the node (after
    _prepare(dev))."""
    return dev.eval(f"([_h(n) for n in {names!r}], _man(), _free())")


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, metavar="NAME",
                        help="board file in boards/ (esp32-devkitc, esp32s3-devkitc, ...)")
    parser.add_argument("--port", metavar="PORT",
                        help="serial port (default: the only USB serial port connected)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list what would be copied and removed; change nothing")
    parser.add_argument("--no-reset", action="store_true",
                        help="leave the node stopped at the REPL afterwards")


def firmware_files(board: device.Board) -> dict[str, bytes]:
    """Device file name -> contents of the .mpy build for this board (firmware_build), with
    mpy-cross's failure as the technician's error."""
    try:
        return firmware_build.mpy_files(board)
    except Exception as exc:  # CalledProcessError from mpy-cross, naming the file
        detail = getattr(exc, "stderr", "") or str(exc)
        raise UserError(f"mpy-cross failed for {board.mpy_arch}: {detail.strip()}") from exc


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _prepare(dev: Device) -> None:
    """Defines the helpers write_file and the listings use on the node (once per session)."""
    prepare_files(dev, _DEPLOY_HELPERS % {"manifest": MANIFEST})


def run(args: argparse.Namespace) -> int:
    board = device.load_board(args.board)
    port = device.pick_port(args.port)
    started = time.monotonic()
    with Device(port, soft_reset=True) as dev:
        dev.check_chip(board)
        try:
            _prepare(dev)
            image = dev.eval("_image()")  # the frozen firmware's version; None: a stock image
        except DeviceError as exc:
            raise UserError(f"the node could not say which image it runs: {exc}") from exc
        files = firmware_build.image_files() if image else firmware_files(board)
        names = sorted(files)
        extra = [n for n in firmware_build.frozen_copies() if n not in files] if image else []
        try:
            remote, manifest, free = _remote_state(dev, names + extra)
        except DeviceError as exc:
            raise UserError(f"the node could not list its files: {exc}") from exc
        try:
            previous = set(json.loads(manifest)) if manifest else set()
        except ValueError:
            previous = set()
        remote, shadows = remote[:len(names)], [n for n, h in zip(extra, remote[len(names):]) if h]
        changed = [n for n, h in zip(names, remote) if h != _sha(files[n])]
        stale = sorted((previous | set(shadows)) - set(names))
        need = sum(len(files[n]) for n in changed)
        size = sum(len(v) for v in files.values())
        if image:
            say(f"{board.name} ({board.chip}) on {port}: the meterlink image, firmware {image} "
                f"frozen in; boot.py and main.py on its filesystem")
            local = firmware_build.firmware_version()
            if image != local:
                say(f"  note: this checkout's firmware is {local}: to put it on the node, "
                    f"`make image BOARD={board.name}` and `meterlink flash --board {board.name}`")
        else:
            say(f"{board.name} ({board.chip}, {board.mpy_arch}) on {port}: a stock MicroPython "
                f"image; the firmware as .mpy files")
        say(f"  {len(names)} files, {size} bytes; {len(changed)} to copy ({need} bytes), "
            f"{len(stale)} to remove")
        for n in changed:
            state = "new" if remote[names.index(n)] is None else "changed"
            say(f"  {'would copy' if args.dry_run else 'copy'} {n} ({len(files[n])} bytes, {state})")
        for n in stale:
            why = " (a copy of a frozen module)" if n in shadows else ""
            say(f"  {'would remove' if args.dry_run else 'remove'} {n}{why}")
        ota = dev.eval(f"[n for n in {OTA_STATE!r} if n in __import__('os').listdir()]")
        for n in ota:
            say(f"  {'would remove' if args.dry_run else 'remove'} {n} (over-the-air update "
                f"state: the deployed firmware runs instead)")
        if args.dry_run:
            return 0
        if need > free:
            raise UserError(device.ERR_NO_SPACE.format(
                detail=f"{need} bytes to copy, {free} free", port=port))
        tty = sys.stdout.isatty()
        # halves an interrupted deploy left (those of files copied now are overwritten)
        dev.exec(f"_clean({[n for n in names if n not in changed]!r})")
        for n in changed:
            try:
                write_file(dev, n, files[n], tty)
            except DeviceError as exc:
                if no_space(exc):
                    dev.exec(f"import os\ntry:\n os.remove({n + '.new'!r})\nexcept OSError:\n pass")
                    raise UserError(device.ERR_NO_SPACE.format(
                        detail=f"writing {n} failed (ENOSPC)", port=port)) from exc
                raise UserError(f"copying {n} failed on the node: {exc}") from exc
            if tty:
                sys.stdout.write("\r" + " " * 60 + "\r")
            say(f"  ok {n} sha256 {_sha(files[n])[:16]}")
        for n in stale + ota:
            dev.exec(f"import os\ntry:\n os.remove({n!r})\nexcept OSError:\n pass")
        dev.exec(f"with open({MANIFEST!r}, 'w') as _m:\n _m.write({json.dumps(names)!r})")
        # verify: every file of the build is on the node with the right hash, no frozen copy
        final, _, _ = _remote_state(dev, names + shadows)
        bad = [n for n, h in zip(names, final) if h != _sha(files[n])]
        bad += [n for n, h in zip(shadows, final[len(names):]) if h is not None]
        if bad:
            raise UserError(f"verification failed for {', '.join(bad)}: deploy again")
        say(f"verified {len(names)} files in {time.monotonic() - started:.1f} s"
            + ("" if args.no_reset else "; soft reset: the node starts the new firmware"))
        if not args.no_reset:
            dev.run_main()
    return 0
