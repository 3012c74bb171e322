"""`meterlink check`: on-site commissioning of a node.

    meterlink check [--port PORT] [--gateway http://127.0.0.1:8080] [--timeout 60]

1. Stops the node's loop (Ctrl-C, raw REPL), reads `node.diagnostics()` when the firmware has
   it (a node in safe mode stops here: it runs no sensors; `last` gives the previous meter
   totals), then soft-resets MicroPython into the raw REPL for a clean heap.
2. Reads every configured sensor now (config.json through the firmware's `config.load`), on
   the device, through the firmware's own adapters
   (`sensors.Hardware`, `sensors.create(spec, hw)`, `await adapter.sample()`), and prints
   each value with its unit and a plausibility verdict (ranges below; meter totals must not be
   lower than the node's last reading).
3. Soft-resets the node so it runs again, and with `--gateway URL` proves the whole path: it
   asks the gateway (`POST URL/api/send {"node", "cmd": "read"}`) to have the node read and
   send now, takes the sequence number from the node's acknowledgement, and waits until the
   gateway's registry (`GET URL/api/nodes/{id}`, `max_seq`) shows that reading received.

Exit status 0 when every sensor read a plausible value (and the gateway got the reading).
"""

from __future__ import annotations

import argparse
import ast
import time

from gateway.channels import default_table
from gateway.wire import senml_value
from host_tools import device, gwapi
from host_tools.channels import channel_text
from host_tools.device import Device, DeviceError, say
from meterlink_common import UserError

HELP = "commissioning: read every sensor now, check plausibility, confirm the gateway gets a reading"

# channel name -> (low, high) in the SenML unit: what a working part can report on site
PLAUSIBLE = {
    "temperature": (-40.0, 85.0),  # BME280 / SHT4x operating range, Cel
    "humidity": (0.0, 100.0),
    "pressure": (30000.0, 110000.0),  # 30-110 kPa: the BME280's range, sea level to 9 km
    "water_flow": (0.0, 0.1),
    "battery_voltage": (2.5, 4.5),
    "rssi": (-100.0, -20.0),
    "ph": (0.0, 14.0),
    "water_pressure": (0.0, 2.5e6),
    "free_chlorine": (0.0, 0.005),
}
MONOTONIC = ("water_volume", "gas_volume")

# Three pieces, each compiled on the node by itself: the compiler needs a contiguous block of
# heap for what it compiles, and the node's heap is busy with what the runtime left loaded.
_READ = ("""\
import asyncio, gc, sensors
try:
    _cfg = _ml_boot.cfg  # the config the stopped runtime ran with (Device.stop_runtime)
except NameError:  # after a soft reset: config.json, checked by the firmware's rules
    import config
    try:
        _cfg = config.load('config.json')
    except Exception as e:
        _cfg = None
        print(repr(('config', repr(e))))
gc.collect()
""", """\
async def _read_all():
    hw = sensors.Hardware(_cfg)
    out = []
    for spec in _cfg['sensors']:
        label = '%s@%s:%s' % (spec.get('driver'), spec.get('bus'), spec.get('address'))
        try:
            a = sensors.create(spec, hw)
            label = getattr(a, 'label', label)
            v = await a.sample()
            out.append((label, v, None))
        except Exception as e:
            out.append((label, None, repr(e)))
    return out
""", """\
if _cfg is not None:
    print(repr(('readings', asyncio.run(_read_all()), _cfg['node_id'])))
import sys
_cfg = _read_all = None  # nothing of this stays in the heap of the node resumed next
sys.modules.pop('config', None)
gc.collect()
""")

_DIAG = """\
try:
    import node
    print(repr(node.diagnostics() if hasattr(node, 'diagnostics') else None))
except Exception:
    print('None')
"""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")
    parser.add_argument("--gateway", metavar="URL",
                        help="gateway HTTP API: confirm it receives a reading from the node")
    gwapi.add_token_option(parser)
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="how long to wait for the gateway (default: 60)")


def plausibility(key, value, last: dict | None) -> str:
    """'ok', or why the value is not plausible."""
    try:
        ch, _ = default_table().lookup(int(key))
    except (KeyError, ValueError):
        return "unknown channel"
    if not isinstance(value, int):
        return f"not an integer: {value!r}"
    v = senml_value(value, ch.scale)
    if ch.name in PLAUSIBLE:
        lo, hi = PLAUSIBLE[ch.name]
        if not lo <= v <= hi:
            return f"IMPLAUSIBLE: outside {lo:g}..{hi:g} {ch.unit}"
    if ch.name in MONOTONIC and last and isinstance(last.get(key), int) and value < last[key]:
        return f"IMPLAUSIBLE: total went down from {last[key]} to {value}"
    return "ok"


def _http(method: str, url: str, body: dict | None = None, *, token: str | None) -> dict:
    status, reply = gwapi.call(method, url, body, token=token, timeout=90)
    if status >= 300:
        raise UserError(f"the gateway answered {status} to {method} {url}: "
                        f"{reply.get('error', reply)}")
    return reply


def confirm_gateway(url: str, node: str, timeout: float, *, token: str | None = None) -> int:
    """Has the node read and send now (the `read` command) and waits until the gateway
    received that sequence number; returns it."""
    base = url.rstrip("/")
    deadline = time.monotonic() + timeout
    while True:  # the node needs a few seconds after the reset to connect and subscribe
        res = _http("POST", f"{base}/api/send", {"node": node, "cmd": "read", "timeout_s": 15},
                    token=token)
        report = (res.get("results") or [{}])[0]
        if report.get("result") == "ok":
            break
        if time.monotonic() > deadline:
            raise UserError(f"the node did not answer the gateway's read command within "
                            f"{timeout:.0f} s ({report.get('result')}): check its Wi-Fi and "
                            f"broker settings and `meterlink monitor`")
    seq = (report.get("ack") or {}).get("seq")
    if not isinstance(seq, int):
        raise UserError(f"the node's acknowledgement has no sequence number: {report}")
    while time.monotonic() < deadline:
        row = _http("GET", f"{base}/api/nodes/{node}", token=token)
        got = row.get("max_seq")
        if isinstance(got, int) and got >= seq:
            return seq
        time.sleep(0.5)
    raise UserError(f"the gateway did not receive reading seq={seq} from {node} within "
                    f"{timeout:.0f} s: check the broker credentials (`meterlink provision`)")


def run(args: argparse.Namespace) -> int:
    port = device.pick_port(args.port)
    bad = 0
    with Device(port, soft_reset=False) as dev:
        try:
            diag = ast.literal_eval(dev.exec(_DIAG).strip() or "None")
        except DeviceError:  # e.g. MemoryError: the running node left the REPL no heap
            diag = None
        if isinstance(diag, dict) and diag.get("safe"):
            if not dev.resume_node():
                dev.run_main()
            raise UserError(device.ERR_SAFE_MODE.format(reason=diag["safe"]))
        last_all = diag.get("last") or {} if isinstance(diag, dict) else {}
        # the heap for the reads: the stopped runtime closed (it resumes afterwards with the
        # same boot), or, when none was running, a soft reset into the raw REPL (boot.py only)
        resume = dev.stop_runtime()
        if not resume:
            dev.transport.enter_raw_repl(soft_reset=True, timeout_overall=device.REPL_TIMEOUT)
        try:
            text = "".join(dev.exec(piece, timeout=60) for piece in _READ).strip()
        except DeviceError as exc:
            raise UserError(f"the node's firmware cannot read its sensors: "
                            f"{exc.output.strip().splitlines()[-1]} (deploy it again with "
                            f"`meterlink deploy`)") from exc
        finally:  # the node runs again whatever the reads gave
            if resume:
                dev.start_runtime()
            else:
                dev.run_main()
        answer = ast.literal_eval(text.splitlines()[-1]) if text else None
    if not answer or answer[0] == "config":
        raise UserError(f"the node's config.json is missing or invalid "
                        f"({answer[1] if answer else 'no answer'}): run `meterlink provision`")
    _, readings, node_id = answer
    say(f"{node_id} on {port}: {len(readings)} sensor(s)")
    for label, values, err in readings:
        if err is not None:
            bad += 1
            say(f"  {label}: FAILED {err}")
            continue
        last = last_all.get(label) if isinstance(last_all, dict) else None
        for key, value in sorted(values.items()):
            verdict = plausibility(key, value, last)
            bad += verdict != "ok"
            say(f"  {label}: {channel_text(key, value):<32} {verdict}")
    if args.gateway:
        seq = confirm_gateway(args.gateway, node_id, args.timeout, token=gwapi.token(args))
        say(f"  gateway {args.gateway} received reading seq={seq} from {node_id}")
    if bad:
        raise UserError(f"{bad} check(s) failed: see the lines above (wiring, address, the "
                        f"part itself); `meterlink monitor` shows the node's errors")
    return 0
