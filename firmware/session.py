"""The node's session duties, loaded when needed and dropped after (heap): what happens on
every connect (subscriptions, the retained status, the answer to a configuration update
checked at boot, re-sending unacknowledged messages, NTP), the status and diagnostics maps of
docs/wire-format.md, and the last-good-configuration bookkeeping.

The last good configuration: `config.good.json` is the last `config.json` the node connected
with. A new configuration that cannot reach the broker for several attempts in a row is put
aside (`config.rejected.json`), the last good one is restored, the reason goes to
`config.err` (reported as `cfg_err`) and the node restarts.

Every function is handed the running Node (node._session() calls it) and never imports
node.py: what it needs of the node is the Node's (firmware/node.py, "Modules").
"""

import asyncio
import gc

import cbor
import clock
import log
from files import copy as _copy, exists as _exists, read_text as _read_text, remove as _remove
from files import same as _same
from files import write_text as _write_text


async def established(node, present):
    """What the node does on every connect: subscribe, birth status, pending answers,
    re-sends, and the clock."""
    b = node.cfg["broker"]
    await node.client.subscribe(node.topic_c, 1)
    await node.client.subscribe(node.topic_k, 1)
    log.info("mqtt", "connected to %s:%d as %s (session %s)", b["host"], b["port"],
             node.node_id, "resumed" if present else "new")
    node.connect_failures = 0
    _confirm_config(node)
    await publish_status(node)
    for name in ("ack.pending", "ota.ack"):  # answers decided at boot: config, app rollback
        pending = _read_text(name)
        if pending:
            import json

            await node.ack(json.loads(pending))
            _remove(name)
    await node._resend_inflight()
    if not node.rtc.clock_src and node.cfg["time"]["ntp"]:
        asyncio.create_task(sync_ntp(node))


async def try_credential(node, trial):
    """Connects with the new credential of a `cred` command. Connected: the config names it
    from now on (config.json and the last good copy), and the answer says so. Refused: the
    old credential connects again, stays, and the answer gives the broker's reason. A power
    cut on the way leaves the old credential in the config: nothing can lock the node out."""
    c = node.client
    old = (c.ssl, c.password)
    b, raw = node.cfg["broker"], node.raw["broker"]
    try:
        if "password" in trial:
            c.password = trial["password"]
        else:
            c.ssl = node.tls_context(trial["cert"], trial["key"])
        present = await c.connect()
    except Exception as exc:
        await c.close()
        c.ssl, c.password = old
        log.warn("mqtt", "the new credential was refused (%r): back to the old one", exc)
        present = await c.connect()
        await established(node, present)
        await node.ack({"id": trial["id"], "cmd": "cred", "ok": False,
                        "err": "the broker refused the new credential (%r): the old one stays "
                               "in use" % (exc,)})
        return
    if "password" in trial:
        b["password"] = raw["password"] = trial["password"]
    else:
        for k in ("cert", "key"):
            b["tls"][k] = raw["tls"][k] = trial[k]
    import json

    _write_text("config.json", json.dumps(node.raw))
    _copy("config.json", "config.good.json")  # it has just connected
    log.info("mqtt", "the new credential connected: in use from now on")
    await established(node, present)
    await node.ack({"id": trial["id"], "cmd": "cred", "ok": True})


async def sync_ntp(node):
    t = node.cfg["time"]
    try:
        now = await clock.ntp(t["ntp"], t["ntp_port"])
    except Exception as exc:
        log.warn("time", "NTP failed: %r", exc)
        return
    clock.set(now, clock.NTP)
    log.info("time", "clock set from NTP %s: %d", t["ntp"], now)


async def publish_status(node, on=True, sleep_s=None):
    import status  # only this duty needs it; node._session() drops it with this module: heap

    payload = cbor.encode(status.status(node, on, sleep_s))
    gc.collect()
    await node.client.publish(node.topic_s, payload, 1, True)


def _config_confirmed(node):
    return _same("config.json", "config.good.json")


def _confirm_config(node):
    if not node.boot.cfg_err and not _config_confirmed(node):
        _copy("config.json", "config.good.json")
        log.info("config", "v%d confirmed: kept as the last good configuration",
                 node.cfg["version"])


def revert_config(node, why):
    """Puts the running configuration aside for the last good one; True when it did (the node
    must restart on it), False when there is nothing better to go back to (keep trying)."""
    if _config_confirmed(node) or not _exists("config.good.json"):
        return False
    reason = "config v%d %s; reverted to the last good configuration" % (
        node.cfg["version"], why)
    log.error("config", "%s", reason)
    _copy("config.json", "config.rejected.json")
    _copy("config.good.json", "config.json")
    _write_text("config.err", reason)
    return True
