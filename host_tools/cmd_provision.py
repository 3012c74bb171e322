"""`meterlink provision`: gives a node its identity, MQTT credentials and configuration.

    meterlink provision --board esp32-devkitc --node-id park-01 --broker 192.168.1.10:8883 \\
        --wifi-ssid utility-iot --wifi-password '...' --pki pki --client-cert \\
        [--password-file /etc/mosquitto/meterlink.passwd] [--acl-file /etc/mosquitto/meterlink.acl] \\
        [--gateway http://127.0.0.1:8080] [--group park] [--interval 60] [--port PORT] \\
        [--location 50.8466,4.3601] [--district centre] [--public]

1. The configuration: what the node already has in `config.json` (re-provisioning keeps its
   Wi-Fi and sensors), else the board's defaults (its I2C pins, and a BME280 at 0x76 on i2c0
   when the board carries the bme280 driver); `--config FILE` (JSON) is merged over it, then
   the options. Identity: `node_id` (also the MQTT client id and user name).
2. A new random MQTT password (24 URL-safe characters, `secrets`) on every run: provisioning
   a node again rotates its credentials.
3. Validation with the firmware's own rules: `firmware/config.py`'s `validate()` runs in the
   MicroPython unix port (the interpreter and the source the device runs, not a CPython
   re-implementation), so a config that passes here boots there. Every problem is listed.
4. The config goes to the device as `config.json` (written to `config.json.new`, then renamed,
   then read back), with `board.json`, the board file trimmed to what the firmware reads
   (`BOARD_KEYS`); the node soft-resets and runs with it.
   With `--pki DIR` (a `meterlink pki` folder) the node speaks TLS to the broker: it gets the
   CA (`ca.der`) and `broker.tls` in its config; with `--client-cert` also its own
   certificate and key (`node.crt.der`, `node.key.der`: the PKI's certificate for the node
   id, issued there on first use) and no password (the broker knows it by the certificate's
   CN). docs/security.md says which to choose.
5. Broker side (passwords): the Mosquitto `password_file` line (hashed by Debian's `mosquitto_passwd`) and
   the ACL block that lets the node write only its own `r`, `s`, `a` topics and read only its
   own `c`, `k` (`{prefix}/{node_id}/...`). With `--password-file`/`--acl-file` they replace
   the node's previous entries in those files (the rest is kept); without, they are printed.
   Mosquitto reads both files again on SIGHUP (`systemctl reload mosquitto`).
6. With `--gateway URL`, the node is registered: `PUT URL/api/nodes/{node_id}` with
   {"board", "sensors", "interval_s", "group", "location", "district", "public"}: where it is
   (the dashboard's map), the district and whether the public page shows it. These are
   checked before anything is written to the node, and need `--gateway`.

The password appears only in the device's config.json and, hashed, in the password file.
"""

from __future__ import annotations

import argparse
import getpass
import json
import math
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from host_tools import device, gwapi, toolchain
from host_tools.device import Device, DeviceError, no_space, prepare_files, say, write_file
from host_tools.options import parse_broker
from host_tools.pki import Pki
from meterlink_common import EXIT_INPUT, UserError, write_atomic

HELP = "give a node its id, MQTT credentials and validated config; emit Mosquitto auth lines"
PASSWORD_BYTES = 18  # 24 characters of URL-safe base64
ACL_BEGIN = "# meterlink node {node} (meterlink provision)"
ACL_END = "# end meterlink node {node}"

_VALIDATE = """\
import sys, json, config
try:
    out = config.validate(json.loads(sys.stdin.read()))
    print("OK " + json.dumps(out))
except config.ConfigError as e:
    print("ERR " + str(e))
"""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--board", required=True, metavar="NAME", help="board file in boards/")
    parser.add_argument("--node-id", required=True, metavar="ID",
                        help="1-32 characters a-z 0-9 - _ (the MQTT client id and user)")
    parser.add_argument("--broker", metavar="HOST:PORT",
                        help="MQTT broker the node connects to (default: keep the node's)")
    parser.add_argument("--prefix", metavar="P", help="topic prefix (default: keep, or m)")
    parser.add_argument("--wifi-ssid", metavar="SSID")
    parser.add_argument("--wifi-password", metavar="KEY",
                        help="the Wi-Fi key; `-` asks for it (keeps it out of shell history)")
    parser.add_argument("--interval", type=int, metavar="S",
                        help="reading interval of every sensor, seconds")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="JSON merged over the node's config before the options")
    parser.add_argument("--pki", type=Path, metavar="DIR",
                        help="TLS to the broker: the CA of this `meterlink pki` folder")
    parser.add_argument("--client-cert", action="store_true",
                        help="with --pki: the node's own certificate instead of a password")
    parser.add_argument("--server-name", metavar="NAME",
                        help="with --pki: the broker's name in its certificate, when the node "
                             "connects by an address the certificate does not carry")
    parser.add_argument("--password-file", type=Path, metavar="FILE",
                        help="Mosquitto password_file to update (created if missing)")
    parser.add_argument("--acl-file", type=Path, metavar="FILE",
                        help="Mosquitto acl_file to update (created if missing)")
    parser.add_argument("--gateway", metavar="URL",
                        help="register the node with the gateway's HTTP API at URL")
    gwapi.add_token_option(parser)
    parser.add_argument("--group", metavar="NAME", help="group for the gateway registry")
    parser.add_argument("--location", metavar="LAT,LON",
                        help="with --gateway: where the node is, WGS 84 degrees, for the "
                             "dashboard's map (a negative latitude: --location=-33.92,18.42)")
    parser.add_argument("--district", metavar="NAME",
                        help="with --gateway: the district the public page groups it under")
    parser.add_argument("--public", action="store_true",
                        help="with --gateway: show its environment values on the public page")
    parser.add_argument("--port", metavar="PORT", help="serial port (default: the only one)")
    parser.add_argument("--no-reset", action="store_true",
                        help="leave the node stopped at the REPL afterwards")


# ------------------------------------------------------------------------------ config
def default_config(board: device.Board) -> dict:
    cfg: dict = {"prefix": "m", "wifi": {}, "broker": {"port": 1883, "keepalive": 60}}
    i2c = board.raw.get("i2c") or {}
    if i2c:
        cfg["i2c"] = {bus: {"scl": p["scl"], "sda": p["sda"]} for bus, p in i2c.items()}
    if i2c and (board.drivers is None or "bme280" in board.drivers) and "0" in i2c:
        cfg["sensors"] = [{"driver": "bme280", "bus": "i2c0", "address": 0x76, "interval_s": 60}]
    return cfg


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def build_config(board: device.Board, current: dict | None, args: argparse.Namespace,
                 password: str) -> dict:
    cfg = current if isinstance(current, dict) else default_config(board)
    if args.config is not None:
        try:
            cfg = _merge(cfg, json.loads(args.config.read_text()))
        except (OSError, ValueError) as exc:
            raise UserError(f"--config {args.config}: {exc}", exit_code=EXIT_INPUT) from exc
    cfg = json.loads(json.dumps(cfg))  # a private copy
    cfg["node_id"] = args.node_id
    if args.prefix:
        cfg["prefix"] = args.prefix
    broker = cfg.setdefault("broker", {})
    if args.broker:
        broker["host"], broker["port"] = parse_broker(args.broker)
    if args.pki:
        tls = {"ca": "ca.der"}
        if args.server_name:
            tls["server_name"] = args.server_name
        if args.client_cert:
            tls.update(cert="node.crt.der", key="node.key.der")
        broker["tls"] = tls
    if password is None:  # a client certificate is the node's credential
        broker.pop("user", None)
        broker.pop("password", None)
    else:
        broker["user"] = args.node_id
        broker["password"] = password
    wifi = cfg.setdefault("wifi", {})
    if args.wifi_ssid is not None:
        wifi["ssid"] = args.wifi_ssid
    if args.wifi_password == "-":
        wifi["password"] = _ask("Wi-Fi key: ")
    elif args.wifi_password is not None:
        wifi["password"] = args.wifi_password
    if args.interval is not None:
        for s in cfg.get("sensors") or []:
            if isinstance(s, dict):
                s["interval_s"] = args.interval
    add_modbus_profiles(cfg)
    return cfg


def add_modbus_profiles(cfg: dict) -> None:
    """Copies the product profiles the config's Modbus sensors name (`"profile": "gas_lel"`)
    from boards/modbus/profiles.json into its `modbus_profiles`, unless it defines them itself;
    a name in neither is left for the validation to report."""
    names = {s.get("profile") for s in cfg.get("sensors") or []
             if isinstance(s, dict) and s.get("driver") == "modbus"} - {None}
    own = cfg.get("modbus_profiles")
    if not names or not isinstance(own, (dict, type(None))):
        return
    library = json.loads(device.MODBUS_PROFILES.read_text())["profiles"]
    for name in sorted(names):
        if name in library and name not in (own or {}):
            cfg.setdefault("modbus_profiles", {})[name] = library[name]


def _ask(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\n")


def validate(cfg: dict) -> dict:
    """firmware/config.py's validate() in the MicroPython unix port: the config with defaults,
    or UserError listing every problem."""
    done = subprocess.run(
        [toolchain.micropython(), "-X", "heapsize=96K", "-c", _VALIDATE],
        input=json.dumps(cfg), capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin",
             "MICROPYPATH": f"{toolchain.FIRMWARE_DIR}:{toolchain.DRIVERS_DIR}:.frozen"},
        cwd=toolchain.FIRMWARE_DIR)
    out = done.stdout.strip()
    if out.startswith("OK "):
        return json.loads(out[3:])
    if out.startswith("ERR "):
        raise UserError(f"the config is invalid: {out[4:]}", exit_code=EXIT_INPUT)
    raise UserError(f"validating the config failed: {(done.stdout + done.stderr).strip()[-400:]}")


# ------------------------------------------------------------------------------ broker files
def password_line(user: str, password: str) -> str:
    """One `password_file` line, hashed by mosquitto_passwd (Debian's mosquitto package)."""
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(exe).exists():
        raise UserError("mosquitto_passwd not found: install Debian's mosquitto package "
                        "(`sudo apt-get install mosquitto`)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "passwd"
        done = subprocess.run([exe, "-c", "-b", str(path), user, password],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise UserError(f"mosquitto_passwd failed: {(done.stdout + done.stderr).strip()}")
        return path.read_text().strip()


def acl_block(node: str, prefix: str) -> str:
    base = f"{prefix}/{node}"
    return "\n".join([
        ACL_BEGIN.format(node=node),
        f"user {node}",
        f"topic write {base}/r",
        f"topic write {base}/s",
        f"topic write {base}/a",
        f"topic read {base}/c",
        f"topic read {base}/k",
        ACL_END.format(node=node),
    ]) + "\n"


def _write_broker_file(path: Path, text: str) -> None:
    """A Mosquitto password or ACL file, replaced atomically with the permissions it had."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), keep_mode=True)


def update_password_file(path: Path, user: str, line: str) -> str:
    """Puts `line` in place of `user`'s entry; returns what happened: "created" (no file
    before), "added" (no entry before) or "replaced"."""
    existed = path.exists()
    old = path.read_text().splitlines() if existed else []
    kept = [ln for ln in old if ln.split(":", 1)[0] != user]
    _write_broker_file(path, "\n".join(kept + [line]) + "\n")
    return "created" if not existed else ("replaced" if len(kept) < len(old) else "added")


def update_acl_file(path: Path, node: str, block: str) -> str:
    """Puts `block` in place of the node's block; returns "created", "added" or "replaced"."""
    existed = path.exists()
    text = path.read_text() if existed else ""
    begin, end = re.escape(ACL_BEGIN.format(node=node)), re.escape(ACL_END.format(node=node))
    text, found = re.subn(rf"(?ms)^{begin}\n.*?^{end}\n?", "", text)
    if text and not text.endswith("\n"):
        text += "\n"
    _write_broker_file(path, text + block)
    return "created" if not existed else ("replaced" if found else "added")


def _file_report(kind: str, path: Path, what: str, node: str, item: str) -> str:
    if what == "created":
        return f"{kind} {path}: created, with the {item} for {node}"
    return f"{kind} {path}: {item} for {node} {what}"


# ------------------------------------------------------------------------------ gateway
DISTRICT_MAX = 64  # webapp.Registration's rule


def registration_extras(args: argparse.Namespace) -> dict:
    """`location`, `district` and `public` for the registration, checked (UserError naming
    the flag) before anything is written to the node."""
    given = [f for f, v in (("--location", args.location), ("--district", args.district),
                            ("--public", args.public)) if v]
    if given and not args.gateway:
        raise UserError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                        "--gateway URL: they are registered with the gateway",
                        exit_code=EXIT_INPUT)
    out: dict = {}
    if args.location is not None:
        out["location"] = parse_location(args.location)
    if args.district is not None:
        district = args.district.strip()
        if not 1 <= len(district) <= DISTRICT_MAX:
            raise UserError(f"--district must be 1-{DISTRICT_MAX} characters: got "
                            f"{args.district!r}", exit_code=EXIT_INPUT)
        out["district"] = district
    if args.public:
        out["public"] = True
    return out


def parse_location(text: str) -> dict:
    """`LAT,LON` in degrees -> {"lat", "lon"}; UserError naming --location otherwise."""
    rule = (f"--location must be LAT,LON in degrees, latitude -90..90 and longitude "
            f"-180..180 (50.8466,4.3601): got {text!r}")
    parts = text.split(",")
    try:
        lat, lon = (float(p) for p in parts) if len(parts) == 2 else (math.nan, math.nan)
    except ValueError:
        raise UserError(rule, exit_code=EXIT_INPUT) from None
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90
            and -180 <= lon <= 180):
        raise UserError(rule, exit_code=EXIT_INPUT)
    return {"lat": lat, "lon": lon}


def register(url: str, node: str, body: dict, *, token: str | None) -> None:
    status, reply = gwapi.call("PUT", f"{url.rstrip('/')}/api/nodes/{node}", body, token=token,
                               timeout=10)
    if status >= 300:
        raise UserError(f"the gateway refused the registration ({status}): "
                        f"{reply.get('error', reply)}")


# ------------------------------------------------------------------------------ the command
_READ_CONFIG = """\
try:
    with open('config.json') as _f:
        print(_f.read())
except OSError:
    print('null')
"""


# What the firmware reads from board.json (sensors.Hardware.board_info()): only the number of
# hardware pulse counters, which decides whether the pulse driver counts in the PCNT unit or
# in an interrupt. The full board file (pins, driver list, flash layout) is for the host
# tools; the node gets the few bytes it uses, plus the board's name and chip to identify it.
BOARD_KEYS = ("name", "chip", "pcnt_units")


def board_file(board: device.Board) -> str:
    """The node's board.json: the board file trimmed to BOARD_KEYS."""
    trimmed = {"name": board.name, "chip": board.chip}
    trimmed.update({k: board.raw[k] for k in BOARD_KEYS[2:] if k in board.raw})
    return json.dumps(trimmed, separators=(",", ":"), sort_keys=True)


def tls_files(args: argparse.Namespace) -> dict[str, bytes]:
    """The files a node with --pki gets: the CA, and with --client-cert its certificate and key
    (issued in the PKI on first use)."""
    if not args.pki:
        if args.client_cert or args.server_name:
            raise UserError("--client-cert and --server-name need --pki DIR", exit_code=EXIT_INPUT)
        return {}
    return Pki(args.pki).node_tls(args.node_id, cert=args.client_cert)[1]


def run(args: argparse.Namespace) -> int:
    extras = registration_extras(args)
    board = device.load_board(args.board)
    port = device.pick_port(args.port)
    files = tls_files(args)
    password = None if args.client_cert else secrets.token_urlsafe(PASSWORD_BYTES)
    with Device(port, soft_reset=True) as dev:
        dev.check_chip(board)
        try:
            current = json.loads(dev.exec(_READ_CONFIG) or "null")
        except ValueError:
            current = None  # an unreadable config is replaced
        raw = build_config(board, current, args, password)
        cfg = validate(raw)  # the file keeps what was given; the firmware fills the defaults
        text = json.dumps(raw, separators=(",", ":"), sort_keys=True)
        try:
            if files:
                prepare_files(dev)
                for name, data in files.items():  # before the config that names them
                    write_file(dev, name, data)
            for name, body in (("config.json", text), ("board.json", board_file(board))):
                dev.exec(f"import os\nwith open({name + '.new'!r}, 'w') as _f:\n"
                         f" _f.write({body!r})\n"
                         f"try:\n os.rename({name + '.new'!r}, {name!r})\nexcept OSError:\n"
                         f" os.remove({name!r})\n os.rename({name + '.new'!r}, {name!r})")
            back = dev.exec("with open('config.json') as _f:\n print(_f.read())").strip()
        except DeviceError as exc:
            if no_space(exc):
                raise UserError(device.ERR_NO_SPACE.format(
                    detail="writing config.json failed (ENOSPC)", port=port)) from exc
            raise
        if back != text:
            raise UserError("config.json on the node does not read back as written: "
                            "provision again")
        credential = ("its client certificate" if args.client_cert else "new MQTT password")
        say(f"{args.node_id}: config written to {port} (broker {cfg['broker']['host']}:"
            f"{cfg['broker']['port']}{' over TLS' if args.pki else ''}, "
            f"{len(cfg.get('sensors') or [])} sensor(s), {credential})")
        if not args.no_reset:
            dev.run_main()
    acl = acl_block(args.node_id, cfg["prefix"])
    if password is None:
        pass  # no password line: the broker knows the node by its certificate
    elif args.password_file:
        line = password_line(args.node_id, password)
        what = update_password_file(args.password_file, args.node_id, line)
        say(_file_report("password_file", args.password_file, what, args.node_id, "entry"))
    else:
        say("\n# add to the broker's password_file:\n" + password_line(args.node_id, password))
    if args.acl_file:
        what = update_acl_file(args.acl_file, args.node_id, acl)
        say(_file_report("acl_file", args.acl_file, what, args.node_id, "block"))
    else:
        say("\n# add to the broker's acl_file:\n" + acl, end="")
    if args.password_file or args.acl_file:
        say("reload Mosquitto to apply: `sudo systemctl reload mosquitto` (SIGHUP)")
    if args.gateway:
        sensors = cfg.get("sensors") or []
        body = {"board": board.name, "sensors": sensors,
                "interval_s": min([s["interval_s"] for s in sensors] or [60])}
        if args.group:
            body["group"] = args.group
        body.update(extras)
        register(args.gateway, args.node_id, body, token=gwapi.token(args))
        say(f"registered {args.node_id} with the gateway at {args.gateway}")
    return 0
