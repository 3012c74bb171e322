"""`make image`: the node's MicroPython image for one board, with the firmware frozen in.

    make image BOARD=esp32-devkitc          (or the IDF board folder's name: METERLINK_ESP32)
    python -m host_tools.image --board esp32-devkitc --out build/image      (what make runs)

The board file names its board definition for MicroPython's ESP32 port, `boards/idf/<NAME>/`
(`"idf_board"`), and this runs the port's own build for it, out of tree:

    make -C $MICROPY_DIR/ports/esp32 BOARD=<NAME> BOARD_DIR=<abs boards/idf/NAME>
         BUILD=<abs build/idf/NAME>

(ESP-IDF's idf.py, then the port's makeimg.py), and copies into OUT/<board>/:

    firmware.bin     bootloader + partition table + app, written at the board's flash_offset;
                     `meterlink flash --board <board>` writes it from there
    micropython.bin  the app alone: what an OTA update writes into the slot not running

then prints their sizes against the app slot of the board's partitions.csv. (ESP-IDF's own
size check already stops the build when the app does not fit.)

What the build needs is checked first. Anything missing is one line on stderr,
`meterlink image: ...`, naming what to install or set; exit status 1 (2 for an unknown board):

    ESP-IDF      v5.2, v5.3 or v5.4 (what MicroPython 1.25 supports, ports/esp32/README.md;
                 v5.2.2 recommended: MicroPython's CI builds 1.25.0 with it) in $IDF_PATH, its
                 environment set up (`. $IDF_PATH/export.sh`: idf.py on PATH)
    MicroPython  a v1.25.0 source with its submodules in $MICROPY_DIR. The Debian source the
                 unix port is built from (.cache/) will not do: it lacks lib/micropython-lib,
                 from which the port's manifest requires onewire and the others it freezes.

`--check` stops after the checks: the Makefile runs it first, so that a missing piece is
reported as that one line rather than followed by make's own error line.

The ESP-IDF build folder is kept between runs (a rebuild compiles what changed). ESP-IDF reads
sdkconfig fragments only when it creates the folder's sdkconfig, so the folder is started
afresh when a fragment of the board definition changed since, or it was configured for
another checkout or another MicroPython source.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from host_tools import device, toolchain
from host_tools.device import say
from meterlink_common import EXIT_INPUT, UserError

PROG = "meterlink image"
IDF_BOARDS_DIR = device.BOARDS_DIR / "idf"
IMAGE_DIR = toolchain.ROOT / "build" / "image"  # `meterlink flash` looks here by default
BUILD_DIR = toolchain.ROOT / "build" / "idf"  # ESP-IDF build folders, one per IDF board
BOARD_FILES = ("mpconfigboard.cmake", "mpconfigboard.h", "sdkconfig.board", "manifest.py",
               "partitions.csv")
# what ESP-IDF reads only when it creates a build folder's sdkconfig
CONFIG_INPUTS = ("mpconfigboard.cmake", "sdkconfig.board")
IMAGE_FILES = ("firmware.bin", "micropython.bin")

MP_VERSION = toolchain.MICROPYTHON_VERSION
IDF_SUPPORTED = ((5, 2), (5, 3), (5, 4))  # MicroPython 1.25: ports/esp32/README.md
IDF_RECOMMENDED = "v5.2.2"
IDF_VERSION_H = Path("components/esp_common/include/esp_idf_version.h")
DOCS = 'see docs/board-bringup.md, "Building the node image"'
MP_CLONE = (f"git clone -b v{MP_VERSION} https://github.com/micropython/micropython; "
            f"make -C micropython/mpy-cross; make -C micropython/ports/esp32 submodules")
# the submodules the ESP32 build uses; `make submodules` in ports/esp32 fetches them
MP_SUBMODULES = ("lib/micropython-lib", "lib/berkeley-db-1.xx", "lib/tinyusb")
# A make that runs this passes its own command line down in these; the port's make must not
# inherit them (BOARD=esp32-devkitc would override the port's BOARD).
MAKE_ENV = ("MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL")


def image_path(board_name: str, out: Path | None = None) -> Path:
    """Where `make image` puts a board's firmware.bin (OUT defaults to IMAGE_DIR)."""
    return (out or IMAGE_DIR) / board_name / "firmware.bin"


# ------------------------------------------------------------------------------ checks
def find_board(name: str) -> tuple[device.Board, Path]:
    """The board file named `name` (or whose "idf_board" is `name`) and its IDF board folder."""
    boards = {p.stem: device.load_board(p.stem) for p in sorted(device.BOARDS_DIR.glob("*.json"))}
    by_idf = {b.raw["idf_board"]: b for b in boards.values() if "idf_board" in b.raw}
    board = boards.get(name) or by_idf.get(name)
    if board is None:
        known = (f"the boards are {', '.join(boards)} (or their IDF board folders "
                 f"{', '.join(sorted(by_idf))})")
        what = f"no board {name!r}" if name else "BOARD is not set (make image BOARD=NAME)"
        raise UserError(f"{what}: {known}", exit_code=EXIT_INPUT)
    if "idf_board" not in board.raw:
        raise UserError(f"board file {board.path.name} names no board definition for the ESP32 "
                        f'port ("idf_board")', hint=DOCS, exit_code=EXIT_INPUT)
    folder = IDF_BOARDS_DIR / board.raw["idf_board"]
    missing = [f for f in BOARD_FILES if not (folder / f).is_file()]
    if missing:
        raise UserError(f"the board definition {folder} lacks {', '.join(missing)}",
                        hint=DOCS, exit_code=EXIT_INPUT)
    return board, folder


def _define(path: Path, name: str) -> int | None:
    """The integer a C header #defines as `name`, or None."""
    try:
        m = re.search(rf"^#define\s+{name}\s+(\d+)", path.read_text(errors="replace"), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def idf_version(idf: Path) -> tuple[int, int, int] | None:
    parts = [_define(idf / IDF_VERSION_H, f"ESP_IDF_VERSION_{p}")
             for p in ("MAJOR", "MINOR", "PATCH")]
    return None if None in parts else tuple(parts)


def micropython_version(mp: Path) -> str | None:
    parts = [_define(mp / "py" / "mpconfig.h", f"MICROPY_VERSION_{p}")
             for p in ("MAJOR", "MINOR", "MICRO")]
    return None if None in parts else ".".join(map(str, parts))


def check_idf(env: dict[str, str]) -> Path:
    """$IDF_PATH, checked to be a release MicroPython supports, with idf.py on PATH."""
    install = (f"install ESP-IDF {IDF_RECOMMENDED} (MicroPython {MP_VERSION} supports v5.2-v5.4) "
               f"and run `. $IDF_PATH/export.sh`")
    path = env.get("IDF_PATH")
    if not path:
        raise UserError(f"ESP-IDF not found (IDF_PATH is not set): {install}", hint=DOCS)
    idf = Path(path)
    version = idf_version(idf)
    if version is None:
        raise UserError(f"IDF_PATH={path} is not an ESP-IDF (no {IDF_VERSION_H}): {install}",
                        hint=DOCS)
    got = "v" + ".".join(map(str, version))
    if version[:2] not in IDF_SUPPORTED:
        raise UserError(f"ESP-IDF {got} in IDF_PATH={path}: MicroPython {MP_VERSION} supports "
                        f"v5.2, v5.3 and v5.4; install {IDF_RECOMMENDED}", hint=DOCS)
    if not shutil.which("idf.py", path=env.get("PATH")):
        raise UserError(f"idf.py is not on PATH: run `. {path}/export.sh` in this shell first "
                        f"(ESP-IDF {got})")
    return idf


def check_micropython(env: dict[str, str]) -> Path:
    """$MICROPY_DIR, checked to be the pinned MicroPython release with its submodules."""
    clone = f"`{MP_CLONE}`, then set MICROPY_DIR to the micropython folder"
    path = env.get("MICROPY_DIR")
    if not path:
        raise UserError(f"MicroPython {MP_VERSION} source not found (MICROPY_DIR is not set): "
                        f"{clone}", hint=DOCS)
    mp = Path(path)
    version = micropython_version(mp)
    if version is None or not (mp / "ports" / "esp32" / "Makefile").is_file():
        raise UserError(f"MICROPY_DIR={path} is not a MicroPython source (no py/mpconfig.h or "
                        f"ports/esp32/Makefile): {clone}", hint=DOCS)
    if version != MP_VERSION:
        raise UserError(f"MICROPY_DIR={path} is MicroPython {version}, the project pins "
                        f"{MP_VERSION} (host_tools/toolchain/versions.env): `git -C {path} "
                        f"checkout v{MP_VERSION}`, then `make -C {path}/ports/esp32 submodules`")
    empty = [s for s in MP_SUBMODULES if not (mp / s).is_dir() or not any((mp / s).iterdir())]
    if empty:
        fix = (f"run `make -C {path}/ports/esp32 submodules`" if (mp / ".git").exists() else
               f"it is no git checkout, so it cannot fetch them: {clone}")
        raise UserError(f"MICROPY_DIR={path} lacks the submodules {', '.join(empty)}: {fix}",
                        hint=DOCS)
    return mp


# ------------------------------------------------------------------------------ partitions
@dataclass(frozen=True)
class Partition:
    name: str
    type: str
    subtype: str
    offset: int
    size: int


def _number(text: str) -> int:
    """A partition table number: 0x..., decimal, or with a K or M suffix (as ESP-IDF reads)."""
    scale = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    return int(text[:-1] if scale > 1 else text, 0) * scale


def read_partitions(csv: Path) -> list[Partition]:
    """The rows of a partition table CSV whose offsets are all written out (ours are)."""
    rows = []
    for line in csv.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            f = [x.strip() for x in (line + ",,,,").split(",")]
            rows.append(Partition(f[0], f[1], f[2], _number(f[3]), _number(f[4])))
    return rows


def app_slots(csv: Path) -> list[Partition]:
    return [p for p in read_partitions(csv) if p.type == "app"]


# ------------------------------------------------------------------------------ build
def stale_build(build_dir: Path, folder: Path, mp: Path) -> str | None:
    """Why the ESP-IDF build folder must be started afresh, or None when it can be reused."""
    sdkconfig = build_dir / "sdkconfig"
    if not sdkconfig.is_file():
        return None
    m = re.search(r'^CONFIG_PARTITION_TABLE_CUSTOM_FILENAME="(.*)"$',
                  sdkconfig.read_text(errors="replace"), re.M)
    if not m or Path(m.group(1)) != folder / "partitions.csv":
        return "its sdkconfig names another partition table"
    configured = sdkconfig.stat().st_mtime
    inputs = [folder / n for n in CONFIG_INPUTS] + [IDF_BOARDS_DIR / "meterlink_board.cmake"]
    newer = [p.name for p in inputs if p.stat().st_mtime > configured]
    if newer:
        return f"{', '.join(newer)} changed since it was configured"
    cache = build_dir / "CMakeCache.txt"
    if cache.is_file():
        m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(errors="replace"),
                      re.M)
        if m and Path(m.group(1)).resolve() != (mp / "ports" / "esp32").resolve():
            return f"it was configured for {m.group(1)}"
    return None


def build(folder: Path, mp: Path, build_dir: Path) -> None:
    """Runs the port's build for the board definition `folder`; its output streams through."""
    if not shutil.which("make"):
        raise UserError("make not found: install it (`sudo apt install make`)")
    reason = stale_build(build_dir, folder, mp)
    if reason:
        say(f"{build_dir}: starting afresh ({reason})")
        shutil.rmtree(build_dir)
    cmd = ["make", "-C", str(mp / "ports" / "esp32"), f"BOARD={folder.name}",
           f"BOARD_DIR={folder}", f"BUILD={build_dir}"]
    say(" ".join(cmd))
    env = {k: v for k, v in os.environ.items() if k not in MAKE_ENV}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise UserError(f"the ESP-IDF build of {folder.name} failed (its output is above)",
                        hint=f"after an ESP-IDF or MicroPython upgrade, `rm -rf {build_dir}` "
                             f"and run it again")


def publish(board: device.Board, folder: Path, build_dir: Path, out: Path) -> None:
    """Copies the images to OUT/<board>/ and prints their sizes against the app slot."""
    dest = out / board.name
    dest.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name in IMAGE_FILES:
        src = build_dir / name
        if not src.is_file():
            raise UserError(f"the build left no {src}: it did not finish (its output is above)")
        shutil.copyfile(src, dest / name)
        sizes[name] = src.stat().st_size
    slots = app_slots(folder / "partitions.csv")
    slot = min(p.size for p in slots)  # ESP-IDF's check_sizes.py: the smallest app partition
    free = slot - sizes["micropython.bin"]
    say(f"{board.name}: {dest}")
    say(f"  firmware.bin     {sizes['firmware.bin']:>9} bytes  bootloader, partition table and "
        f"app, written at {board.flash_offset:#x} by `meterlink flash --board {board.name}`")
    say(f"  micropython.bin  {sizes['micropython.bin']:>9} bytes  the app (an OTA update); its "
        f"slots {', '.join(p.name for p in slots)} are {slot} bytes: {free} bytes "
        f"({100 * free // slot}%) free")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.image",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="", metavar="NAME",
                    help="board file in boards/, or its IDF board folder in boards/idf/")
    ap.add_argument("--out", type=Path, default=IMAGE_DIR, help=f"default {IMAGE_DIR}")
    ap.add_argument("--build-dir", type=Path, default=BUILD_DIR,
                    help=f"ESP-IDF build folders (one per board), default {BUILD_DIR}")
    ap.add_argument("--check", action="store_true",
                    help="only check that the board, ESP-IDF and MicroPython are there")
    args = ap.parse_args(argv)

    def run() -> int:
        board, folder = find_board(args.board)
        check_idf(dict(os.environ))
        mp = check_micropython(dict(os.environ))
        if args.check:
            return 0
        build_dir = args.build_dir.resolve() / folder.name
        build(folder, mp, build_dir)
        publish(board, folder, build_dir, args.out)
        return 0

    from host_tools.cli import reporting  # the CLI's error reporting, under our name

    return reporting(PROG, run)


if __name__ == "__main__":
    sys.exit(main())
