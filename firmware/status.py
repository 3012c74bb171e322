"""The status and diagnostics maps of docs/wire-format.md (`s`, and the `diag` command's
answer). Its own small module so that the connect duties (session.py) and the downlink
(downlink.py, ota.py) load it only while they use it. It reads the Node it is handed and never
imports node.py (firmware/node.py, "Modules")."""

import gc
import time

import clock


def status(node, on=True, sleep_s=None):
    gc.collect()
    st = {"on": on, "fw": firmware_version(node), "boot": node.boot.total_boots,
          "rst": node.boot.cause, "up": time.ticks_diff(time.ticks_ms(), node.started) // 1000,
          "mode": node.cfg["power"]["mode"], "cv": node.cfg["version"],
          "iv": node.interval(),
          "q": len(node.q), "qd": node.q.dropped, "seq": node.seq.peek(),
          "heap": gc.mem_free()}
    t = clock.unix()
    if t is not None:
        st["t"] = t
    if sleep_s is not None:
        st["sleep"] = sleep_s
    rssi = _rssi()
    if rssi is not None:
        st["rssi"] = rssi
    for values in node.last.values():  # the battery channel (7), when a sensor measures it
        if 7 in values:
            st["bat"] = values[7]
    errs = {k: v for k, v in node.errors.items() if v}
    if errs:
        st["err"] = errs
    if node.boot.cfg_err:
        st["cfg_err"] = node.boot.cfg_err
    if node.safe:
        st["safe"] = node.safe
    if node.app_trial:
        st["trial"] = True  # running an update that is not yet confirmed
    img = image_version()
    if img:
        st["img"] = img
    return st


def firmware_version(node):
    """The version of the code that runs: the app update's, else the image's firmware."""
    return (node.app or {}).get("v") or node.firmware


def _rssi():
    """The Wi-Fi signal (dBm) while connected, else None."""
    try:
        import network

        wlan = network.WLAN(network.STA_IF)
        if wlan.isconnected():
            return wlan.status("rssi")
    except Exception:
        pass
    return None


def image_version():
    """The running firmware image's version: the ESP-IDF app description (esp_app_desc_t,
    offset 32 of the app partition: magic 0xABCD5432, the version string at +16), or None."""
    b = bytearray(48)
    try:
        import esp32

        esp32.Partition(esp32.Partition.RUNNING).readblocks(0, b, 32)
    except Exception:
        return None
    if b[:4] != b"\x32\x54\xcd\xab":
        return None
    v = bytes(b[16:48])
    i = v.find(b"\0")
    return (v[:i] if i >= 0 else v).decode()


def diagnostics(node):
    d = status(node, on=node.client.connected)  # measured: is the MQTT session up now
    d["queue_bytes"] = node.q.bytes_used()
    d["heap_peak"] = node.heap_peak
    d["sent"] = node.sent
    d["rejected"] = node.rejected
    d["clock"] = clock.source()
    d["last"] = dict(node.last)
    return d
