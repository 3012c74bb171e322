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
            if r.flags & 2:  # the previous boot never reached a healthy loop
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
        if r.flags & 2 or r.crash_boots:
            r.flags &= ~2
            r.crash_boots = 0
            r.save()



def start():
    boot = Boot()
    import config

    try:
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
