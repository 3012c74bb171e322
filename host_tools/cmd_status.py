"""`meterlink status`: the node's diagnostics over its serial port, as a table.

    meterlink status [--port PORT] [--json] [--no-resume]

Stops the node's main loop (Ctrl-C, raw REPL: the node keeps its state), runs
`import node; node.diagnostics()` (the status keys of docs/wire-format.md plus `last`, the
latest reading of each sensor), prints them, and resumes the node without a reboot
(`Device.resume_node`: the runtime main.py started is closed as it closes itself and started
again with the same boot, so the boot count, the reset cause and the crash-boot count that
leads to safe mode stay as they were). A node that was not running (no config, or no heap
left to resume in place) is soft-reset instead, which counts as a boot, and the command says
so. `--no-resume` leaves it at the REPL. Keys the firmware does not report are left out; a
node in safe mode prints its table, then the safe-mode error (exit status 1).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys

from host_tools import device
from host_tools.channels import channel_text
from host_tools.device import Device, DeviceError, say
from meterlink_common import UserError

HELP = "show the node's diagnostics (heap, queue, last readings, errors) over the serial port"

# key -> what it means, in the order shown (docs/wire-format.md, Status)
FIELDS = (
    ("fw", "firmware version"),
    ("on", "connected to the broker"),
    ("mode", "power mode"),
    ("boot", "boot count"),
    ("rst", "cause of the last reset"),
    ("up", "seconds since boot"),
    ("t", "node time (Unix s)"),
    ("clock", "time source"),
    ("cv", "configuration version"),
    ("iv", "shortest reading interval (s)"),
    ("seq", "next sequence number"),
    ("q", "readings queued on flash"),
    ("queue_bytes", "flash used by the queue (bytes)"),
    ("qd", "readings dropped, queue full (ever)"),
    ("sent", "readings sent since boot"),
    ("rejected", "downlink messages rejected"),
    ("heap", "free heap (bytes)"),
    ("heap_peak", "peak heap used (bytes)"),
    ("rssi", "Wi-Fi RSSI (dBm)"),
    ("bat", "battery / supply (mV)"),
    ("err", "failed readings per sensor since boot"),
    ("cfg_err", "configuration problem"),
    ("safe", "SAFE MODE"),
)

_DIAG = """\
import node
print(repr(node.diagnostics() if hasattr(node, 'diagnostics') else 'NO-DIAGNOSTICS'))
"""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")
    parser.add_argument("--json", action="store_true", help="print the diagnostics as JSON")
    parser.add_argument("--no-resume", action="store_true",
                        help="leave the node stopped at the REPL afterwards")


def _heap_error(exc: DeviceError) -> UserError:
    return UserError("the node has no free heap left for the REPL (MemoryError): its firmware "
                     "uses too much memory; `meterlink monitor` shows its heap, `meterlink "
                     "deploy` updates it")


def read_diagnostics(dev: Device) -> dict:
    """node.diagnostics() of the stopped node; UserError when the firmware has none."""
    try:
        text = dev.exec(_DIAG).strip()
    except DeviceError as exc:
        if "MemoryError" in exc.output:
            raise _heap_error(exc) from exc
        raise
    if text == "'NO-DIAGNOSTICS'":
        raise UserError(device.ERR_NO_DIAGNOSTICS)
    try:
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise UserError(f"unexpected diagnostics from the node: {text[:200]!r}") from exc
    if not isinstance(d, dict):
        raise UserError(f"unexpected diagnostics from the node: {text[:200]!r}")
    return d


def format_table(d: dict) -> list[str]:
    rows = []
    for key, meaning in FIELDS:
        if key not in d or d[key] is None:
            continue
        v = d[key]
        if isinstance(v, dict):
            v = ", ".join(f"{k}: {x}" for k, x in v.items()) or "-"
        rows.append((meaning, str(v)))
    known = {k for k, _ in FIELDS} | {"last"}
    for key in sorted(k for k in d if k not in known and d[k] is not None):
        rows.append((key, str(d[key])))  # keys a newer firmware adds
    last = d.get("last") or {}
    for label, values in last.items():
        if isinstance(values, dict):
            text = "  ".join(channel_text(k, v) for k, v in sorted(values.items()))
        else:
            text = str(values)
        rows.append((f"last {label}", text))
    width = max((len(r[0]) for r in rows), default=0)
    return [f"{m:<{width}}  {v}" for m, v in rows]


def run(args: argparse.Namespace) -> int:
    port = device.pick_port(args.port)
    with Device(port, soft_reset=False) as dev:
        try:
            dev.exec("import node")
        except DeviceError as exc:
            if "ImportError" not in exc.output:
                if "MemoryError" in exc.output:
                    raise _heap_error(exc) from exc
                raise
            raise UserError(f"the node has no firmware ({exc.output.strip().splitlines()[-1]}):"
                            f" install it with `meterlink deploy --board NAME`") from exc
        d = read_diagnostics(dev)
        resumed = None
        if not args.no_resume:
            resumed = dev.resume_node()
            if not resumed:  # no runtime was running: start it as a reset does
                dev.run_main()
    if args.json:
        say(json.dumps(d, sort_keys=True, default=str))
    else:
        say(f"node on {port}")
        for line in format_table(d):
            say("  " + line)
    if resumed is not None:
        note(RESUMED if resumed else RESTARTED)
    if d.get("safe"):
        raise UserError(device.ERR_SAFE_MODE.format(reason=d["safe"]))
    return 0


RESUMED = "the node runs again (resumed without a reboot)"
RESTARTED = ("the node could not be resumed in place (its runtime was not running, or no heap "
             "was left): soft reset, it boots again (counts as a boot)")


def note(text: str) -> None:
    """A line for the technician that stays out of --json's stdout."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
