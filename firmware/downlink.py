"""Downlink handling for the node: configuration updates (`c`) and commands (`k`), checked,
carried out and answered on `a` as docs/wire-format.md describes.

Loaded when a message arrives and unloaded after it (node.py's downlink task), so the code
for rare events does not sit in the 96 KB heap between them; `config` comes and goes with it.

Every rejection names what was wrong (`v must be an integer >= 1`, `not CBOR: offset 3:
truncated`, `unknown command "x"`, or the config validator's own per-field messages), is
acknowledged with `ok: false`, counted (`rejected` in diagnostics) and logged; the node keeps
running on the configuration it had.
"""

import cbor
import cbordec
import clock
import config
import log

_DOWNLINK_MAX = 1024

from files import copy as _copy, read_text as _read_text, remove as _remove
from node import _reset

async def handle(node, topic, payload):
    kind = "config" if topic == node.topic_c else "cmd"
    if payload is None:
        await _reject(kind, None, "message larger than %d bytes" % _DOWNLINK_MAX)
        return
    if len(payload) > _DOWNLINK_MAX:
        await _reject(kind, None, "message larger than %d bytes" % _DOWNLINK_MAX)
        return
    if not payload and kind == "config":
        return  # the retained config was cleared
    try:
        msg = cbordec.decode(payload)
    except cbordec.DecodeError as exc:
        await _reject(kind, None, "not CBOR: %s" % exc)
        return
    if not isinstance(msg, dict):
        await _reject(kind, None, "must be a CBOR map")
        return
    rid = msg.get("id")
    if rid is not None and not isinstance(rid, (int, str)):
        await _reject(kind, None, "id must be an integer or a text string")
        return
    t = msg.get("t")
    if t is not None:
        if isinstance(t, int) and not isinstance(t, bool) and t > 1700000000:
            if clock.set(t, clock.GATEWAY):
                log.info("time", "clock set from the gateway: %d", t)
        else:
            await _reject(kind, rid, "t must be Unix seconds")
            return
    if kind == "config":
        await apply_config(msg, rid)
    else:
        await command(msg, rid)

async def _reject(node, kind, rid, reason):
    node.rejected += 1
    log.error("down", "%s rejected: %s", kind, reason)
    body = {"cmd": kind, "ok": False, "err": reason}
    if rid is not None:
        body["id"] = rid
    await node.ack(body)

async def apply_config(node, msg, rid):
    unknown = [k for k in msg if k not in ("v", "patch", "id", "t")]
    if unknown:
        await _reject("config", rid, "unknown key %s" % unknown[0])
        return
    v = msg.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        await _reject("config", rid, "v must be an integer >= 1")
        return
    if v <= node.cfg["version"]:
        log.info("down", "config v%d ignored: v%d in use", v, node.cfg["version"])
        return
    patch = msg.get("patch")
    if not isinstance(patch, dict):
        await _reject("config", rid, "patch must be a map (RFC 7396 merge patch)")
        return
    if "node_id" in patch or "version" in patch:
        await _reject("config", rid, "patch cannot change %s" % (
            "node_id" if "node_id" in patch else "version"))
        return
    new = config.merge_patch(node.raw, patch)
    new["version"] = v
    try:
        config.validate(new)
    except config.ConfigError as exc:
        await _reject("config", rid, "v%d: %s" % (v, exc))
        return
    if _read_text("config.json") is not None and node._config_confirmed():
        _copy("config.json", "config.good.json")
    config.write("config.json", new)
    _remove("config.err")
    log.info("down", "config v%d stored; restarting to apply it", v)
    body = {"cmd": "config", "ok": True, "cv": v}
    if rid is not None:
        body["id"] = rid
    await node.ack(body)
    await node.shutdown()
    _reset()

async def command(node, msg, rid):
    cmd = msg.get("cmd")
    if rid is None:
        await _reject("cmd", None, "id is required")
        return
    if not isinstance(cmd, str):
        await _reject("cmd", rid, "cmd must be a text string")
        return
    body = {"id": rid, "cmd": cmd, "ok": True}
    if node.safe and cmd not in ("diag", "reboot", "time"):
        body["ok"] = False
        body["err"] = "safe mode (%s): only diag, reboot, time and config" % node.safe
    elif cmd == "read":
        body["seq"] = await node.read_all()
    elif cmd == "interval":
        err = _set_interval(msg)
        if err:
            body["ok"] = False
            body["err"] = err
        else:
            body["iv"] = min(s[0]["interval_s"] for s in node.sensors)
    elif cmd == "flush":
        body["q"] = len(node.q)
        node.flush = True
        node.wake.set()
    elif cmd == "reboot":
        node.rtc.crash_boots = 0
        node.rtc.flags &= ~2
        node.rtc.save()
    elif cmd == "diag":
        body.update(node.diagnostics())
        body.pop("last", None)
        body["on"] = True
    elif cmd == "time":
        body["t"] = clock.unix()
        if body["t"] is None:
            body["ok"] = False
            body["err"] = "t is required"
    else:
        body["ok"] = False
        body["err"] = 'unknown command "%s"' % cmd
    if not body["ok"]:
        node.rejected += 1
        log.error("down", "command %s rejected: %s", cmd, body["err"])
    else:
        log.info("down", "command %s done", cmd)
    await node.ack(body)
    if cmd == "reboot" and body["ok"]:
        await node.shutdown()
        _reset()

def _set_interval(node, msg):
    s = msg.get("s")
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 86400:
        return "s must be an integer 1-86400"
    which = msg.get("sensor")
    if which is not None and (not isinstance(which, int) or not 0 <= which < len(node.sensors)):
        return "sensor must be an index 0-%d" % (len(node.sensors) - 1)
    idx = range(len(node.sensors)) if which is None else (which,)
    for i in idx:
        node.sensors[i][0]["interval_s"] = s
        node.raw["sensors"][i]["interval_s"] = s
    confirmed = node._config_confirmed()
    config.write("config.json", node.raw)
    if confirmed:
        _copy("config.json", "config.good.json")
    return None
