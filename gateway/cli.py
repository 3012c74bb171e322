"""`meterlink gateway`: runs the gateway daemon in the foreground, or sends a downlink.

    meterlink gateway --config /etc/meterlink/gateway.toml
    meterlink gateway send --config FILE NODE config PATCH.json --version N
    meterlink gateway send --config FILE --group G cmd NAME [key=value ...]

The config is checked completely before anything connects; an invalid one exits with status 2
and a message naming the key. SIGINT or SIGTERM stop the gateway cleanly (status 0).

`send` publishes a configuration update (retained on `{prefix}/{node}/c`) or a command
(`{prefix}/{node}/k`) to one node or every registered node of a group, waits for each node's
acknowledgement on `{prefix}/{node}/a` until `--timeout`, and prints one line per node:
`ok`, `failed: <the node's reason>` or `timeout`. Exit status 0 only when every node
acknowledged with ok. PATCH.json is a file, `-` for stdin, or inline JSON starting with `{`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import SAMPLE_PATH, load_config
from gateway.errors import EXIT_ERROR, EXIT_INPUT, EXIT_OK, ConfigError, SinkError, UserError
from gateway.logfmt import configure_logging

HELP = "run the gateway (MQTT readings in, outbox, sinks out), or `gateway send` a downlink"


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"gateway config (TOML); every key is described in {SAMPLE_PATH}")
    sub = parser.add_subparsers(dest="gateway_action", metavar="ACTION")
    send = sub.add_parser("send", help="send a config update or command to nodes, wait for "
                                       "their acknowledgements",
                          description=__doc__.split("\n\n")[3])
    send.add_argument("--config", dest="send_config", metavar="FILE", help="gateway config")
    send.add_argument("--group", help="every registered node of this group")
    send.add_argument("--version", dest="cfg_version", type=int, metavar="N",
                      help="configuration version (for `config`), >= 1 and above the node's")
    send.add_argument("--timeout", type=float, default=None, metavar="S",
                      help="seconds to wait for acknowledgements (default [gateway] "
                           "ack_timeout_s)")
    send.add_argument("words", nargs="*", metavar="[NODE] config PATCH | cmd NAME [k=v...]")


def _load(path: str | None):
    if not path:
        raise UserError("gateway: --config FILE is required", exit_code=EXIT_INPUT)
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UserError(f"gateway: {exc}", hint=f"every key is described in {SAMPLE_PATH}",
                        exit_code=EXIT_INPUT) from exc


def run(args: argparse.Namespace) -> int:
    if getattr(args, "gateway_action", None) == "send":
        return run_send(args)
    config = _load(args.config)
    configure_logging(config.gateway.log_level)
    from gateway.daemon import Gateway
    try:
        return Gateway(config).run()
    except SinkError as exc:
        raise UserError(f"gateway: {exc}", exit_code=EXIT_ERROR) from exc


def _read_patch(spec: str) -> dict:
    try:
        text = sys.stdin.read() if spec == "-" else (
            spec if spec.lstrip().startswith("{") else Path(spec).read_text())
        patch = json.loads(text)
    except OSError as exc:
        raise UserError(f"gateway send: cannot read {spec}: {exc.strerror}",
                        exit_code=EXIT_INPUT) from exc
    except ValueError as exc:
        raise UserError(f"gateway send: patch is not JSON: {exc}", exit_code=EXIT_INPUT) from exc
    if not isinstance(patch, dict):
        raise UserError("gateway send: the patch must be a JSON object", exit_code=EXIT_INPUT)
    return patch


def run_send(args: argparse.Namespace) -> int:
    from gateway.api import ApiError, message_builder, resolve_targets
    from gateway.downlink import parse_args, send_standalone
    from gateway.outbox import Outbox

    config = _load(args.send_config or args.config)
    words = list(args.words)
    body: dict = {}
    if args.group:
        body["group"] = args.group
    else:
        if not words:
            raise UserError("gateway send: give a NODE or --group G", exit_code=EXIT_INPUT)
        body["node"] = words.pop(0)
    if not words or words[0] not in ("config", "cmd"):
        raise UserError("gateway send: after the target comes `config PATCH.json --version N` "
                        "or `cmd NAME [key=value ...]`", exit_code=EXIT_INPUT)
    action = words.pop(0)
    try:
        if action == "config":
            if len(words) != 1 or args.cfg_version is None:
                raise ValueError("config needs exactly one PATCH (file, - or inline JSON) and "
                                 "--version N")
            body.update(config=_read_patch(words[0]), version=args.cfg_version)
        else:
            if not words:
                raise ValueError("cmd needs a command NAME")
            body.update(cmd=words[0], args=parse_args(words[1:]))
        kind, build = message_builder(body)
        build("gw-check")
    except ValueError as exc:
        raise UserError(f"gateway send: {exc}", exit_code=EXIT_INPUT) from exc
    import threading
    box = Outbox(config.outbox.path) if "group" in body else None
    try:
        targets = resolve_targets(box, threading.Lock(), body) if box else [body["node"]]
    except ApiError as exc:
        raise UserError(f"gateway send: {exc}", exit_code=EXIT_INPUT) from exc
    finally:
        if box is not None:
            box.close()
    timeout = args.timeout if args.timeout is not None else config.gateway.ack_timeout_s
    try:
        reports = send_standalone(config.mqtt, targets, build, kind=kind, timeout=timeout,
                                  retain=(kind == "config"))
    except OSError as exc:
        raise UserError(f"gateway send: broker {config.mqtt.host}:{config.mqtt.port}: "
                        f"{exc.strerror or exc}") from exc
    for r in reports:
        line = f"{r['node']:<24} {kind:<8} {r['result']}"
        ack = r.get("ack", {})
        if r["result"] == "failed":
            line += f": {ack.get('err', 'no reason given')}"
        extra = {k: v for k, v in ack.items() if k not in ("err", "cmd")}
        if extra:
            line += "  " + " ".join(f"{k}={v}" for k, v in extra.items())
        print(line)
    ok = sum(r["result"] == "ok" for r in reports)
    print(f"{ok} of {len(reports)} acknowledged ok")
    return EXIT_OK if ok == len(reports) else EXIT_ERROR
