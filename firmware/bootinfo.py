"""Boot of the node: counters in RTC memory, the reset cause, the configuration (with the
fall-back to the last good one) and the safe-mode decision, before the runtime is loaded.

    import bootinfo
    boot = bootinfo.start()     # None: no usable configuration (the reason is logged)

The config validator is imported, used and dropped here, before node.py, mqtt.py and the
queue are loaded, so the boot never needs all of them in the heap at once.
"""

import gc
import sys
import time

import log
import rtcstate
from files import bump as _bump_file, read_int as _read_int, read_text as _read_text


def _reset_cause():
    import machine

    names = {getattr(machine, "PWRON_RESET", 1): "power", getattr(machine, "HARD_RESET", 2): "hard",
             getattr(machine, "WDT_RESET", 3): "wdt", getattr(machine, "DEEPSLEEP_RESET", 4): "deepsleep",
             getattr(machine, "SOFT_RESET", 5): "soft"}
    return names.get(machine.reset_cause(), "unknown")


class Boot:
    """What the node learned while booting: counters, reset cause, the config and its problems."""

    def __init__(self):
        self.rtc = rtcstate.RtcState()
        self.cause = _reset_cause()
        r = self.rtc
        self.woke = self.cause == "deepsleep" and r.valid
        self.total_boots = _read_int("boots.dat") if self.woke else _bump_file("boots.dat")
        if not r.valid:  # power-on: RTC memory is empty
            r.power_cycle = self.total_boots & 0xFFFF
        if self.woke:
            r.wakes += 1
        else:
            r.boots += 1
            r.wakes = 0
            r.boot_time = time.time()
            # The previous boot never reached a healthy loop and ended in a reset a failure
            # makes: the watchdog, or a hard reset (the runtime's crash handler, a panic).
            # A soft reset (Ctrl-D, what the technician's tools do) and a power cycle never
            # count: safe mode is for real failures only. `meterlink reboot` and the reboot
            # command clear the streak before they reset.
            if r.flags & 2 and self.cause in ("hard", "wdt"):
                r.crash_boots += 1
        r.flags |= 2  # "crash boot in progress" until the loop is healthy
        r.save()
        self.safe = None
        self.cfg_err = _read_text("config.err")
        self.raw, self.cfg = None, None

    def healthy(self):
        r = self.rtc
        if self.safe:
            return  # leaving safe mode takes a reboot command, a new config or a power cycle
        r.clear_crashes()



def _config_next(config):
    """A configuration update stored by the downlink: checked now, with the boot's validator,
    and installed or discarded; the answer waits in ack.pending for the next connect."""
    import json

    from files import copy, read_text, remove, write_text

    raw = read_text("config.next.json")
    if raw is None:
        return
    try:
        rid = json.loads(read_text("config.req") or "{}").get("id")
    except ValueError:
        rid = None
    ack = {"cmd": "config"}
    if rid is not None:
        ack["id"] = rid
    v = 0
    try:
        new = json.loads(raw)
        if isinstance(new, dict) and isinstance(new.get("version"), int):
            v = new["version"]
        config.validate(new)
    except (ValueError, config.ConfigError) as exc:
        write_text("config.rejected", "%d" % v)
        ack.update(ok=False, err="v%d: %s" % (v, exc))
        log.error("config", "update v%d rejected: %s", v, exc)
    else:
        if read_text("config.json") == read_text("config.good.json") or \
                read_text("config.good.json") is None:
            copy("config.json", "config.good.json")
        write_text("config.json", raw)
        remove("config.err")
        ack.update(ok=True, cv=v)
        log.info("config", "update v%d installed", v)
    write_text("ack.pending", json.dumps(ack))
    remove("config.next.json")
    remove("config.req")


def start():
    boot = Boot()
    import config

    try:
        _config_next(config)
        boot.raw, boot.cfg, problem = config.load_with_fallback()
    except config.ConfigError as exc:
        # Nothing usable: stay at the REPL with a clear reason instead of boot-looping.
        log.error("config", "%s", exc)
        return None
    finally:
        del config
        sys.modules.pop("config", None)  # the validator is not needed until a config update
        gc.collect()
    if problem:
        log.error("config", "%s", problem)
        boot.cfg_err = problem
    if boot.rtc.crash_boots >= boot.cfg["safe_mode_after"]:
        boot.safe = "%d boots in a row crashed before the node was healthy" % boot.rtc.crash_boots
        log.error("node", "safe mode: %s", boot.safe)
    return boot
