"""Downlink: configuration updates (`c`, retained) and commands (`k`) to nodes, and their acks.

    msg = config_message(patch, version=3, request_id="gw-1a2b")   # CBOR bytes for {p}/{n}/c
    msg = command_message("interval", {"s": 60}, request_id="gw-1a2b")
    ack = parse_ack(payload)                                        # dict, WireError if bad

The payloads follow docs/wire-format.md (*Control messages*): CBOR maps with text keys,
canonical encoding, at most 1024 bytes. `send_standalone` is what `meterlink gateway send`
runs: its own short MQTT connection, publish, wait for every acknowledgement on `a` or the
timeout, and a report per node. The daemon's HTTP API (`POST /api/send`) uses the same
message builders with the daemon's own connection (see `gateway.daemon`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import cbor2

from gateway import mqtt_tls
from gateway.errors import WireError
from gateway.wire import cbor_loads

CONTROL_LIMIT = 1024
STATUS_LIMIT = 512
COMMANDS = ("read", "interval", "flush", "reboot", "diag", "time", "cred", "replay")


def new_request_id() -> str:
    return "gw-" + os.urandom(4).hex()


def _encode(obj: Mapping[str, Any]) -> bytes:
    data = cbor2.dumps(dict(obj), canonical=True)
    if len(data) > CONTROL_LIMIT:
        raise ValueError(f"message is {len(data)} bytes, the limit is {CONTROL_LIMIT}")
    return data


def config_message(patch: Mapping[str, Any], *, version: int, request_id: str,
                   now: float | None = None) -> bytes:
    """A `c` message: JSON Merge Patch `patch` as configuration version `version`."""
    if not isinstance(patch, dict):
        raise ValueError("the patch must be a JSON object")
    if type(version) is not int or version < 1:
        raise ValueError(f"version must be an integer >= 1: got {version!r}")
    _check_no_floats(patch, "patch")
    return _encode({"v": version, "patch": patch, "id": request_id,
                    "t": int(time.time() if now is None else now)})


def command_message(cmd: str, args: Mapping[str, Any], *, request_id: str,
                    now: float | None = None) -> bytes:
    """A `k` message: command `cmd` with its arguments."""
    if cmd not in COMMANDS:
        raise ValueError(f"unknown command {cmd!r} (known: {', '.join(COMMANDS)})")
    for reserved in ("cmd", "id"):
        if reserved in args:
            raise ValueError(f"argument {reserved!r} is set by the gateway")
    _check_no_floats(args, "arguments")
    body = {**args, "cmd": cmd, "id": request_id}
    body.setdefault("t", int(time.time() if now is None else now))
    return _encode(body)


def _check_no_floats(obj: Any, where: str) -> None:
    if isinstance(obj, float):
        raise ValueError(f"{where}: floats are not allowed on the wire (use scaled integers)")
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_no_floats(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _check_no_floats(v, f"{where}[{i}]")


def parse_args(pairs: list[str]) -> dict[str, Any]:
    """`["s=60", "sensor=0", "x=abc", "cert=@node.crt.der"]` -> `{"s": 60, "sensor": 0,
    "x": "abc", "cert": b"<the file's bytes>"}`."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r} must be key=value")
        if value.startswith("@"):
            try:
                out[key] = Path(value[1:]).read_bytes()
            except OSError as exc:
                raise ValueError(f"argument {key}: cannot read {value[1:]}: {exc.strerror}") from exc
        elif value.lstrip("-").isdigit():
            out[key] = int(value)
        elif value in ("true", "false"):
            out[key] = value == "true"
        else:
            out[key] = value
    return out


def decode_control(payload: bytes, *, limit: int, what: str) -> dict[str, Any]:
    """A control message (text-key CBOR map); WireError naming the fault otherwise."""
    if len(payload) > limit:
        raise WireError("too_large", limit, f"{what} is {len(payload)} bytes, over {limit}")
    try:
        obj = cbor_loads(payload)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types for bad input
        raise WireError("cbor", 0, f"{what} is not well-formed CBOR: {exc}") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise WireError("structure", 0, f"{what} must be a CBOR map with text keys")
    return obj


def parse_ack(payload: bytes) -> dict[str, Any]:
    ack = decode_control(payload, limit=CONTROL_LIMIT, what="acknowledgement")
    if not isinstance(ack.get("ok"), bool):
        raise WireError("structure", 0, "acknowledgement lacks a boolean 'ok'")
    return ack


@dataclass
class Pending:
    """One request waiting for its acknowledgement."""

    node: str
    request_id: str
    kind: str
    sent_at: float
    ack: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def report(self) -> dict[str, Any]:
        if self.ack is None:
            return {"node": self.node, "id": self.request_id, "kind": self.kind,
                    "result": "timeout"}
        res = {"node": self.node, "id": self.request_id, "kind": self.kind,
               "result": "ok" if self.ack.get("ok") else "failed"}
        extra = {k: v for k, v in self.ack.items() if k not in ("id", "ok")}
        if extra:
            res["ack"] = extra
        return res


def send_standalone(mqtt_cfg, nodes: list[str], build, *, kind: str, timeout: float,
                    retain: bool) -> list[dict[str, Any]]:
    """Publishes `build(request_id)` to each node on its own connection; waits for acks.

    Returns one report per node: result ok / failed (with the node's `err`) / timeout.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic_kind = "c" if kind == "config" else "k"
    pending = {n: Pending(n, new_request_id(), kind, time.time()) for n in nodes}
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"{mqtt_cfg.client_id}-send-{os.getpid()}",
                         clean_session=True, protocol=mqtt.MQTTv311)
    if mqtt_cfg.username is not None:
        client.username_pw_set(mqtt_cfg.username, mqtt_cfg.password)
    mqtt_tls.apply(client, tls=mqtt_cfg.tls, ca_file=mqtt_cfg.ca_file,
                   cert_file=mqtt_cfg.cert_file, key_file=mqtt_cfg.key_file)

    def on_message(c, u, message) -> None:
        node = message.topic.split("/")[1]
        p = pending.get(node)
        try:
            ack = parse_ack(message.payload)
        except WireError:
            return
        if p is not None and str(ack.get("id")) == p.request_id:
            p.ack = ack
            p.done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect(mqtt_cfg.host, mqtt_cfg.port, keepalive=mqtt_cfg.keepalive)
    client.loop_start()
    try:
        client.subscribe([(f"{mqtt_cfg.prefix}/{n}/a", 1) for n in nodes])
        if not subscribed.wait(10):
            raise OSError("the broker did not confirm the subscription to acknowledgements")
        for node, p in pending.items():
            info = client.publish(f"{mqtt_cfg.prefix}/{node}/{topic_kind}", build(p.request_id),
                                  qos=1, retain=retain)
            info.wait_for_publish(10)
        deadline = time.monotonic() + timeout
        for p in pending.values():
            p.done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        client.disconnect()
        client.loop_stop()
    return [p.report() for p in pending.values()]
