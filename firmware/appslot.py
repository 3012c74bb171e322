"""Which code the node runs: the image's own firmware, or an app update in one of two slots
on the filesystem, with automatic rollback (docs/ota.md).

    import appslot
    app = appslot.select()    # in main.py, before anything else of the firmware is imported

An app update (firmware/ota.py) unpacks a bundle of .mpy modules into the slot that is not
running (`app0/` or `app1/`) and switches by rewriting `app.json` atomically:

    {"run": "app1", "v": "0.4.0", "prev": "app0", "pv": "0.3.1", "trial": 0, "dl": 300,
     "id": "gw-..."}

`select()` puts the running slot first on sys.path, so its modules take precedence over the
frozen ones (or the image's .mpy files). While "trial" is present the update is on trial:

- every start that is not a deep-sleep wake-up counts (`trial`); a fourth start rolls back;
- a hardware timer (machine.Timer(0)) resets the node when the update has not become healthy
  within `dl` seconds of the start, and the start after that rolls back;
- main.py calls `fail()` when the update's code raises before the runtime runs;
- the runtime calls `confirm()` when the node is healthy: connected, and a reading
  acknowledged by the broker. The update is then kept; its answer goes to the gateway.

Rolling back runs the previous slot (or the image's firmware) and leaves the answer
(`ok: false` with the reason) in `ota.ack`, sent at the next connect. This module and main.py
are never part of a bundle: the code that decides what runs cannot be replaced by what it
judges. It has no imports from the rest of the firmware for the same reason.
"""

import json
import os
import sys

STATE = "app.json"
ACK = "ota.ack"
BAD = "ota.bad"  # the version last rolled back
_STARTS = 3  # starts an update gets to become healthy


def load():
    try:
        with open(STATE) as f:
            st = json.load(f)
        return st if isinstance(st, dict) and st.get("run") else None
    except (OSError, ValueError):
        return None


def _write(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def select():
    """Picks the code to run (rolling a failed update back); returns app.json's contents for
    the runtime, or None when the image's firmware runs."""
    st = load()
    if st is None:
        return None
    if "trial" in st:
        import machine

        if machine.reset_cause() != machine.DEEPSLEEP_RESET:
            st["trial"] += 1
        why = st.get("fail")
        if why is None and st["trial"] > _STARTS:
            why = "did not become healthy in %d starts" % _STARTS
        if why is not None:
            st = _rollback(st, why)
            if st is None:
                return None
        else:
            _write(STATE, st)
            machine.Timer(0, mode=machine.Timer.ONE_SHOT, period=st["dl"] * 1000,
                          callback=_expired)
    sys.path.insert(0, st["run"])
    return st


def _rollback(st, why):
    ack = {"cmd": "ota", "op": "done", "ok": False, "v": st["v"],
           "err": "%s %s: rolled back to %s" % (st["v"], why, st.get("pv") or "the image")}
    if st.get("id") is not None:
        ack["id"] = st["id"]
    _write(ACK, ack)
    print("appslot: update", ack["err"])
    with open(BAD, "w") as f:  # not offered again unless forced (firmware/ota.py)
        f.write(st["v"])
    if st.get("prev"):
        back = {"run": st["prev"], "v": st["pv"]}
        _write(STATE, back)
        return back
    os.remove(STATE)
    return None


def _expired(_t):
    st = load()
    if st is not None and "trial" in st:
        fail("did not become healthy within %d s" % st["dl"])


def fail(why):
    """The update on trial failed: the next start rolls it back. Resets now."""
    import machine

    st = load()
    if st is not None and "trial" in st:
        st["fail"] = why
        _write(STATE, st)
        print("appslot: update", st["v"], why, "- resetting")
        machine.reset()


def confirm():
    """The node is healthy: keeps the update on trial. Returns the answer for the gateway, or
    None when nothing was on trial."""
    st = load()
    if st is None or "trial" not in st:
        return None
    import machine

    machine.Timer(0).deinit()
    ack = {"cmd": "ota", "op": "done", "ok": True, "v": st["v"]}
    if st.get("id") is not None:
        ack["id"] = st["id"]
    for k in ("trial", "dl", "id", "fail"):
        st.pop(k, None)
    _write(STATE, st)
    return ack
