"""Downlink handling for the node: configuration updates (`c`) and commands (`k`), checked,
carried out and answered on `a` as docs/wire-format.md describes.

Loaded when a message arrives and unloaded after it (node.py's downlink task), so the code for
rare events does not sit in the 96 KB heap between them.

A configuration update is merged (RFC 7396) into the configuration in use and stored as
`config.next.json`; the node restarts, and the boot validates it with the same code as any
config file, before the runtime is loaded (bootinfo.py): valid, it becomes `config.json`;
invalid, it is discarded with the validator's per-field reasons. Either way the answer is
acknowledged on `a` right after the next connect. A rejected version is remembered
(`config.rejected`), so the retained message does not make the node try it again.

Every rejection names what was wrong (`v must be an integer >= 1`, `not CBOR: offset 3:
truncated ...`, `unknown command "x"`, a config field's rule), is acknowledged with
`ok: false`, counted (`rejected` in diagnostics) and logged; the node keeps running on the
configuration it had.
"""

import json

import cbordec
import clock
import log
from files import copy, read_int, same, write_text

MAX = 1024  # bytes of a `c` or `k` payload
_CFG_KEYS = ("v", "patch", "id", "t")


async def handle(node, topic, payload):
    kind = "config" if topic == node.topic_c else "cmd"
    if payload is None or len(payload) > MAX:
        return await reject(node, kind, None, "message larger than %d bytes" % MAX)
    if not payload:
        return  # a retained config was cleared
    try:
        msg = cbordec.decode(payload)
    except cbordec.DecodeError as exc:
        return await reject(node, kind, None, "not CBOR: %s" % exc)
    if not isinstance(msg, dict):
        return await reject(node, kind, None, "must be a CBOR map")
    rid = msg.get("id")
    if rid is not None and (not isinstance(rid, (int, str)) or isinstance(rid, bool)):
        return await reject(node, kind, None, "id must be an integer or a text string")
    t = msg.get("t")
    if t is not None:
        if not _int(t) or t < 1700000000:
            return await reject(node, kind, rid, "t must be Unix seconds")
        if clock.set(t, clock.GATEWAY):
            log.info("time", "clock set from the gateway: %d", t)
    if kind == "config":
        await config_update(node, msg, rid)
    else:
        await command(node, msg, rid)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


async def reject(node, kind, rid, reason, extra=None):
    node.rejected += 1
    log.error("down", "%s rejected: %s", kind, reason)
    body = {"cmd": kind, "ok": False, "err": reason}
    if rid is not None:
        body["id"] = rid
    if extra:
        body.update(extra)
    await node.ack(body)


def merge_patch(target, patch):
    """RFC 7396 JSON Merge Patch: objects merge key by key, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _json_problem(v, where, depth):
    """Why `v` cannot be stored as JSON text and read back (a map key that is not text, bytes,
    a float that is not finite, nesting past 8), or None."""
    if depth > 8:
        return "%s: nested deeper than 8" % where
    if isinstance(v, dict):
        for k in v:
            if not isinstance(k, str):
                return "%s: a map key is not text" % where
            bad = _json_problem(v[k], where + "." + k, depth + 1)
            if bad:
                return bad
        return None
    if isinstance(v, list):
        for i, x in enumerate(v):
            bad = _json_problem(x, "%s[%d]" % (where, i), depth + 1)
            if bad:
                return bad
        return None
    if isinstance(v, float):
        return None if v == v and v - v == 0 else "%s: not a finite number" % where
    if v is None or isinstance(v, (str, int, bool)):
        return None
    return "%s: a %s has no JSON form" % (where, type(v).__name__)


async def config_update(node, msg, rid):
    for k in msg:
        if k not in _CFG_KEYS:
            return await reject(node, "config", rid, "unknown key %s" % k)
    v = msg.get("v")
    if not _int(v) or v < 1:
        return await reject(node, "config", rid, "v must be an integer >= 1")
    done = max(node.cfg["version"], read_int("config.rejected"))
    if v <= done:
        log.info("down", "config v%d ignored: v%d in use or rejected", v, done)
        return
    patch = msg.get("patch")
    if not isinstance(patch, dict):
        return await reject(node, "config", rid, "patch must be a map (RFC 7396 merge patch)")
    for k in ("node_id", "version"):
        if k in patch:
            return await reject(node, "config", rid, "patch cannot change %s" % k)
    bad = _json_problem(patch, "patch", 0)
    if bad:  # would be written to config.next.json as something no boot can read back
        return await reject(node, "config", rid, bad)
    new = merge_patch(node.raw, patch)
    new["version"] = v
    write_text("config.req", json.dumps({"id": rid}))
    write_text("config.next.json", json.dumps(new))
    log.info("down", "config v%d stored; restarting to check and apply it", v)
    await node.restart("config")


async def command(node, msg, rid):
    cmd = msg.get("cmd")
    if rid is None:
        return await reject(node, "cmd", None, "id is required")
    if not isinstance(cmd, str):
        return await reject(node, "cmd", rid, "cmd must be a text string")
    body = {"id": rid, "cmd": cmd, "ok": True}
    err = None
    if node.safe and cmd not in ("diag", "reboot", "time", "ota"):
        err = "safe mode (%s): only diag, reboot, time, ota and config" % node.safe
    elif cmd == "read":
        body["seq"] = await node.read_all()
        node.flush = True  # asked for: sent now, not at the node's slot
    elif cmd == "interval":
        err = _interval(node, msg)
        if not err:
            body["iv"] = node.interval()
    elif cmd == "flush":
        body["q"] = len(node.q)
        node.flush = True
        node.wake.set()
    elif cmd == "replay":
        lo, hi = msg.get("from"), msg.get("to")
        if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi < 1 << 32):
            err = "from and to must be seqs, from <= to"
        else:
            node.replay = [lo, hi]
            body["kept"] = node.q.oldest()  # nothing below it can come again
            node.wake.set()
    elif cmd == "reboot":
        node.rtc.clear_crashes()  # the operator asks for a normal start
    elif cmd == "diag":
        body.update(node.diagnostics())
        body.pop("last", None)
    elif cmd == "time":
        body["t"] = clock.unix()
        if body["t"] is None:
            err = "t is required"
    elif cmd == "ota":
        import sys

        import ota

        try:
            body.update(ota.handle(node, msg))
        except ota.Refused as exc:
            op = msg.get("op")
            return await reject(node, "ota", rid, str(exc),
                                {"op": op if isinstance(op, str) else "?", "next": exc.next})
        finally:
            ota = None
            sys.modules.pop("ota", None)
    elif cmd == "cred":
        err = _credential(node, msg, rid)
        if not err:
            log.info("down", "new credential: the next connect tries it")
            await node.client.close()  # the publisher reconnects at once, with it
            return  # answered after that connect (session.try_credential)
    else:
        err = 'unknown command "%s"' % cmd
    if err:
        return await reject(node, "cmd", rid, err)
    if cmd != "ota":  # hundreds of chunks: ota.py logs what matters
        log.info("down", "command %s done", cmd)
    await node.ack(body)
    if cmd == "reboot" or node.restart_after_ack:
        await node.restart("reboot" if cmd == "reboot" else "update")


def _credential(node, msg, rid):
    """Checks a new credential (a password, or a DER certificate and key) and keeps it in
    `node.trial` for the next connect. The old one stays in the config, and in use, until the
    new one has connected; a certificate goes to the file names the config does not use."""
    pw, cert, key = msg.get("password"), msg.get("cert"), msg.get("key")
    if pw is not None:
        if not isinstance(pw, str) or not 1 <= len(pw) <= 128:
            return "password must be a text string of 1-128 characters"
        if cert is not None or key is not None:
            return "give a password, or a cert and key: not both"
        node.trial = {"id": rid, "password": pw}
        return None
    if not isinstance(cert, bytes) or not isinstance(key, bytes):
        return "cred needs a password, or cert and key (DER byte strings)"
    t = node.cfg["broker"]["tls"]
    if not t:
        return "a certificate needs TLS to the broker (broker.tls)"
    import mqtt

    try:
        with open(t["ca"], "rb") as f:
            mqtt.tls_context(f.read(), cert, key)  # parses both: a broken one is refused now
    except Exception as exc:
        return "cert and key are not usable: %r" % (exc,)
    gen = "node2" if t["cert"] != "node2.crt.der" else "node"
    write_text(gen + ".crt.der", cert)
    write_text(gen + ".key.der", key)
    node.trial = {"id": rid, "cert": gen + ".crt.der", "key": gen + ".key.der"}
    return None


def _interval(node, msg):
    s = msg.get("s")
    if not _int(s) or not 1 <= s <= 86400:
        return "s must be an integer 1-86400"
    which = msg.get("sensor")
    specs = node.cfg["sensors"]  # the specs the sensor tasks read their interval from
    n = len(specs)
    if which is not None and (not _int(which) or not 0 <= which < n):
        return "sensor must be an index 0-%d" % (n - 1)
    for i in (range(n) if which is None else (which,)):
        specs[i]["interval_s"] = s
        node.raw["sensors"][i]["interval_s"] = s
    _save_raw(node)
    return None


def _save_raw(node):
    # A change the node made itself (the `interval` command): the same configuration version,
    # so the last good copy follows when it was this one.
    confirmed = same("config.json", "config.good.json")
    write_text("config.json", json.dumps(node.raw))
    if confirmed:
        copy("config.json", "config.good.json")
