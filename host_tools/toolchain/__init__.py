"""Where the toolchain lives: the pinned MicroPython unix port, Mosquitto, and the project paths.

`host_tools/toolchain/setup.sh` (run by `make setup`) installs everything; this module only
finds it and fails loudly, naming the fix, when something is missing or the wrong release.
The versions are recorded once, in `versions.env` beside this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
FIRMWARE_DIR = ROOT / "firmware"
DRIVERS_DIR = ROOT / "drivers"
CACHE_DIR = ROOT / ".cache"


class ToolchainError(RuntimeError):
    """A tool the project needs is missing or is the wrong version."""


def _read_versions() -> dict[str, str]:
    out = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


VERSIONS = _read_versions()
MICROPYTHON_VERSION = VERSIONS["MICROPYTHON_VERSION"]


# The two builds of the unix port (setup.sh): "image" has the firmware frozen in as a meterlink
# image for the ESP32 has it; "stock" stands in for a stock MicroPython image, the firmware
# deployed as .mpy files. Both are 32-bit, so heap figures are a device's.
FORMS = ("image", "stock")
_FORM_LINK = {"image": "micropython", "stock": "micropython-stock"}
_FORM_ENV = {"image": "MICROPYTHON", "stock": "MICROPYTHON_STOCK"}


@cache
def micropython(form: str = "image") -> str:
    """Path of the MicroPython unix port to run, checked to be the pinned release.

    `form` is "image" (the firmware frozen in: what tests, the demo and virtual boards run) or
    "stock" (no firmware: it comes from .mpy files on the node's filesystem).
    `$MICROPYTHON` / `$MICROPYTHON_STOCK` override; otherwise the project's own builds in
    `.cache/`, brought up to date first (`setup.sh micropython`: rebuilds only what changed).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}: got {form!r}")
    candidate = os.environ.get(_FORM_ENV[form])
    if not candidate:
        candidate = str(CACHE_DIR / "bin" / _FORM_LINK[form])
        _setup_micropython()
    if not Path(candidate).exists():
        raise ToolchainError(f"MicroPython unix port not found at {candidate}: run `make setup`")
    try:
        got = subprocess.run(
            [candidate, "-c", 'import sys; print("%d.%d.%d" % sys.implementation.version[:3])'],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ToolchainError(f"{candidate} does not run: {exc}") from exc
    if got != MICROPYTHON_VERSION:
        raise ToolchainError(
            f"{candidate} is MicroPython {got}, the project pins {MICROPYTHON_VERSION} "
            f"(host_tools/toolchain/versions.env): run `make setup`"
        )
    return candidate


@cache
def _setup_micropython() -> None:
    """Brings both builds up to date, once per process (a firmware edit rebuilds the image
    build in a few seconds)."""
    done = subprocess.run(["bash", str(HERE / "setup.sh"), "micropython"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolchainError(f"building the MicroPython unix port failed:\n{done.stdout}{done.stderr}")


@cache
def mosquitto() -> str:
    """Path of the Mosquitto broker binary (Debian installs it in /usr/sbin)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ToolchainError("mosquitto not found: run `make setup` (installs Debian's mosquitto)")
    return found


def micropypath(*extra: str | os.PathLike) -> str:
    """MICROPYPATH for MicroPython-side tests: any `extra` folders, then the frozen modules
    (asyncio, the virtual board's `machine`, `network`, `esp32` and `hw`, and in the image
    build the firmware and drivers: code that takes no heap, as on a device)."""
    return ":".join([str(p) for p in extra] + [".frozen"])
