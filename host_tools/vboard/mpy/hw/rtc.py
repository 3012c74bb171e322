"""machine.WDT and machine.RTC of the virtual board, loaded on first use (`machine` hands them
out through its module __getattr__ so a node that never uses them does not pay their heap)."""

# WDT(0, timeout=ms): the task watchdog, one per chip. feed() pushes `deadline` (a ticks_ms
# value) out by `timeout` ms. The deadline is checked whenever the firmware touches the
# hardware (hw.wdt_poll(): I2C transfers, the hang fault, Wi-Fi status, idle/lightsleep); once
# it has passed, the chip resets as a watchdog reset does: reset_cause.json gets WDT_RESET and
# the process exits with status 3 (like machine.reset()). A pure-Python busy loop that never
# touches the hardware is not caught. As on the ESP32, a started WDT cannot be stopped.
#
# RTC(): datetime() is the host clock in UTC plus the offset a datetime(tuple) call set (kept in
# $VBOARD_DIR/rtc.json, so it survives restarts as the RTC keeps counting through deep sleep);
# time.time() stays on the host clock. memory() is RTC slow memory, up to 2048 bytes like the
# port, backed by $VBOARD_DIR/rtc_memory.bin: it survives every restart of the process.
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

import time

import hw

_MEM_MAX = 2048
_cache = {}  # "wdt": the WDT, "mem": RTC memory contents


def power_on():
    _cache.clear()
    hw.wdt = None


class WDT:
    def __new__(cls, id=0, timeout=5000):
        if id != 0:
            raise ValueError()
        if timeout <= 0:
            raise ValueError("WDT timeout too short")
        if "wdt" not in _cache:
            _cache["wdt"] = object.__new__(cls)
        return _cache["wdt"]

    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self.feed()
        hw.wdt = self

    def feed(self):
        self.deadline = time.ticks_add(time.ticks_ms(), self.timeout)
        hw.tick()

    def expired(self):
        return time.ticks_diff(time.ticks_ms(), self.deadline) > 0

    def bite(self):
        import machine

        print("WDT: not fed for %d ms: reset" % self.timeout)
        machine._leave(machine.WDT_RESET)
        machine._exit(3)


def _days_from_civil(y, m, d):
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


class RTC:
    def datetime(self, dt=None):
        path = hw.board().file("rtc.json")
        if dt is None:
            ns = time.time_ns()
            t = time.gmtime(ns // 1000000000 + (hw.read_json(path) or {}).get("offset_s", 0))
            # (year, month, day, weekday 0 = Monday, hour, minute, second, microsecond)
            return (t[0], t[1], t[2], t[6], t[3], t[4], t[5], (ns // 1000) % 1000000)
        if len(dt) != 8:
            raise ValueError("requested length 8 but object has length %d" % len(dt))
        s = _days_from_civil(dt[0], dt[1], dt[2]) * 86400 + dt[4] * 3600 + dt[5] * 60 + dt[6]
        if path is not None:
            hw.write_json(path, {"offset_s": s - time.time()})

    def init(self, dt):
        """dt = (year, month, day, hour, minute, second, microsecond, tzinfo)."""
        self.datetime((dt[0], dt[1], dt[2], 0, dt[3], dt[4], dt[5], dt[6]))

    def memory(self, data=None):
        path = hw.board().file("rtc_memory.bin")
        if data is None:
            if "mem" not in _cache:
                _cache["mem"] = b""
                if path is not None:
                    try:
                        with open(path, "rb") as f:
                            _cache["mem"] = f.read(_MEM_MAX)
                    except OSError:
                        pass
            return _cache["mem"]
        if len(data) > _MEM_MAX:
            raise ValueError("buffer too long")
        _cache["mem"] = bytes(data)
        if path is not None:
            hw.write_file(path, _cache["mem"])
