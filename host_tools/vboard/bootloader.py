"""The ESP-IDF second-stage bootloader of a virtual board: which app partition a start runs,
with app rollback (CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE, set in the port's sdkconfig.base).

The launcher (VirtualNode, PtyBoard) calls `start(root)` before every start of the node's
process, as the chip runs its bootloader before every start of the app. The state is the
node folder's `otadata.json`, which the node's `esp32.Partition` (host_tools/vboard/mpy/hw/
flash.py) reads and writes:

- an app `set_boot()` marked "new" starts as "pending_verify";
- an app still "pending_verify" at the next start did not call
  `mark_app_valid_cancel_rollback()`: it is marked aborted, and the previous app starts;
- otherwise the boot partition starts.

`prepare(root, form)` (`flash_layout(root, board)`) writes the partition table the meterlink image brings (its
boards/idf/<board>/partitions.csv) as `partitions.json`; without it the board has a stock
MicroPython image's single app partition.
"""

from __future__ import annotations

import json
from pathlib import Path

from host_tools import image, toolchain
from meterlink_common import write_json_atomic

TYPES = {"app": 0, "data": 1}
SUBTYPES = {"factory": 0x00, "ota_0": 0x10, "ota_1": 0x11, "ota": 0x00, "phy": 0x01,
            "nvs": 0x02, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83}


def prepare(root: Path, form: str) -> None:
    """The partition table of the image a board of this `form` was flashed with: the
    meterlink image's ("image"), or a stock image's single app partition ("mpy")."""
    root = Path(root)
    if form == "image":
        try:
            name = json.loads((root / "board.json").read_text()).get("board")
        except (OSError, ValueError):
            name = None
        flash_layout(root, name)
    else:
        (root / "partitions.json").unlink(missing_ok=True)


def flash_layout(root: Path, board_name: str | None) -> None:
    """The meterlink image's partition table for the board (by boards/<name>.json)."""
    spec = toolchain.ROOT / "boards" / f"{board_name or 'esp32-devkitc'}.json"
    idf = json.loads(spec.read_text())["idf_board"] if spec.exists() else "METERLINK_ESP32"
    rows = image.read_partitions(image.IDF_BOARDS_DIR / idf / "partitions.csv")
    table = [[TYPES[p.type], SUBTYPES[p.subtype], p.offset, p.size, p.name] for p in rows]
    path = Path(root) / "partitions.json"
    try:
        same = json.loads(path.read_text()) == table
    except (OSError, ValueError):
        same = False
    if not same:
        write_json_atomic(path, table)


def start(root: Path) -> str | None:
    """Runs the bootloader's choice for one start; returns the app partition that runs (None:
    nothing was ever selected, the first app runs)."""
    path = Path(root) / "otadata.json"
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if d.get("state") == "new":
        d["state"] = "pending_verify"
    elif d.get("state") == "pending_verify" and d.get("prev"):
        d["aborted"] = d["boot"]
        d["boot"], d["state"] = d["prev"], "valid"
    d["running"] = d["boot"]
    write_json_atomic(path, d)
    return d["running"]
