"""Which code the node runs: the image's own firmware, or an app update in one of two slots
on the filesystem, with automatic rollback; and the trial of a new firmware image
(docs/ota.md).

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

A firmware image (written to the idle OTA partition by firmware/ota.py) is on trial while
`img.json` exists: the same deadline timer and start-up check; `confirm()` marks it valid
(esp32.Partition.mark_app_valid_cancel_rollback()); a reset before that makes the ESP-IDF
bootloader start the previous partition again, which `select()` then reports.

Rolling back runs the previous slot (or the image's firmware) and leaves the answer
(`ok: false` with the reason) in `ota.ack`, sent at the next connect. This module and main.py
are never part of a bundle: the code that decides what runs cannot be replaced by what it
judges. It has no imports from the rest of the firmware for the same reason.
"""

import json
import os
import sys

STATE = "app.json"
IMG = "img.json"  # a firmware image on trial: {"v", "id", "dl", "to": partition, "pv"}
ACK = "ota.ack"
BAD = "ota.bad"  # the version last rolled back
_STARTS = 3  # starts an update gets to become healthy


def load(path=STATE):
    try:
        with open(path) as f:
            st = json.load(f)
        return st if isinstance(st, dict) and (st.get("run") or st.get("to")) else None
    except (OSError, ValueError):
        return None


def _write(path, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.rename(path + ".tmp", path)


def select():
    """Picks the code to run (rolling a failed update back); returns app.json's contents for
    the runtime, {"img": version, "trial": 1} while a firmware image is on trial, or None when
    the image's firmware runs."""
    img = load(IMG)
    if img is not None:
        return _image_trial(img)
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


def _image_trial(img):
    """A firmware image update: the ESP-IDF bootloader started it (pending verify), or went
    back to the previous partition because it was reset before it was marked valid."""
    import esp32
    import machine

    running = esp32.Partition(esp32.Partition.RUNNING).info()[4]
    if running != img["to"]:
        ack = {"cmd": "ota", "op": "done", "ok": False, "v": img["v"],
               "err": "image %s %s: the bootloader went back to %s (%s)" % (
                   img["v"], img.get("fail") or "did not start", running,
                   img.get("pv") or "the previous image")}
        if img.get("id") is not None:
            ack["id"] = img["id"]
        _write(ACK, ack)
        with open(BAD, "w") as f:
            f.write(img["v"])
        os.remove(IMG)
        try:
            os.rename(STATE + ".img", STATE)  # the app update it had replaced comes back
        except OSError:
            pass
        print("appslot: update", ack["err"])
        return select()
    machine.Timer(0, mode=machine.Timer.ONE_SHOT, period=img["dl"] * 1000, callback=_expired)
    return {"img": img["v"], "trial": 1}


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


def _on_trial():
    """(file, contents) of the update on trial, or (None, None)."""
    img = load(IMG)
    if img is not None:
        return IMG, img
    st = load()
    if st is not None and "trial" in st:
        return STATE, st
    return None, None


def _expired(_t):
    path, st = _on_trial()
    if st is not None:
        fail("did not become healthy within %d s" % st["dl"])


def fail(why):
    """The update on trial failed: the next start rolls it back (an image: the bootloader
    does, as it was not marked valid). Resets now."""
    import machine

    path, st = _on_trial()
    if st is not None:
        st["fail"] = why
        _write(path, st)
        print("appslot: update", st["v"], why, "- resetting")
        machine.reset()


def confirm():
    """The node is healthy: keeps the update on trial. Returns the answer for the gateway, or
    None when nothing was on trial."""
    path, st = _on_trial()
    if st is None:
        return None
    import machine

    machine.Timer(0).deinit()
    ack = {"cmd": "ota", "op": "done", "ok": True, "v": st["v"]}
    if st.get("id") is not None:
        ack["id"] = st["id"]
    if path == IMG:
        import esp32

        esp32.Partition.mark_app_valid_cancel_rollback()  # the bootloader keeps it now
        ack["img"] = True
        os.remove(IMG)
        try:
            os.remove(STATE + ".img")  # the app update the image replaced is not needed
        except OSError:
            pass
        return ack
    for k in ("trial", "dl", "id", "fail"):
        st.pop(k, None)
    _write(STATE, st)
    return ack
