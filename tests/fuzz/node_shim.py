"""Runs the node's code under CPython, for the fuzzer only.

The issue allows it ("node code may run under CPython for the fuzzer"); what the fuzzer finds is
replayed under the real MicroPython unix port by tests/test_fuzz_corpus.py, which is the
verdict. `install()` puts `tests/fuzz/shim` (a `micropython` module with `const`), `firmware/`
and `drivers/` on sys.path and adds the few MicroPython names that are read at import time:
`time.ticks_ms` / `ticks_us` / `ticks_add` / `ticks_diff`, `asyncio.sleep_ms` and
`sys.implementation._mpy`. The targets (node_targets.py) swap each driver's `time` and
`asyncio` for a virtual clock anyway, in both interpreters, so nothing here decides a result.
Never imported by the product or by the gateway targets.
"""

import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# MicroPython 1.25's sys.implementation._mpy on the unix port: .mpy version 6, sub-version 3
MPY_1_25 = 0x0706


def _ticks_ms() -> int:
    return int(time.monotonic() * 1000) & 0x3FFFFFFF


def _ticks_us() -> int:
    return int(time.monotonic() * 1000000) & 0x3FFFFFFF


def _ticks_add(t: int, delta: int) -> int:
    return (t + delta) & 0x3FFFFFFF


def _ticks_diff(a: int, b: int) -> int:
    d = (a - b) & 0x3FFFFFFF
    return d - 0x40000000 if d & 0x20000000 else d


async def _sleep_ms(ms: int) -> None:
    await asyncio.sleep(ms / 1000)


def install() -> None:
    """Idempotent; call before importing node_targets."""
    for path in (HERE, ROOT / "drivers", ROOT / "firmware", HERE / "shim"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    for name, fn in (("ticks_ms", _ticks_ms), ("ticks_us", _ticks_us),
                     ("ticks_add", _ticks_add), ("ticks_diff", _ticks_diff)):
        if not hasattr(time, name):
            setattr(time, name, fn)
    if not hasattr(asyncio, "sleep_ms"):
        asyncio.sleep_ms = _sleep_ms
    if not hasattr(sys.implementation, "_mpy"):
        sys.implementation._mpy = MPY_1_25
