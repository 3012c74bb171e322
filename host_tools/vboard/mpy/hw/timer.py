"""machine.Timer of the virtual board, loaded on first use."""

# Timer(id, mode=Timer.PERIODIC, period=ms, callback=f) (or freq=Hz), init(...), deinit(),
# value(): the ESP32 port's hardware timers (ids 0-3; 0-1 on the ESP32-C3, which has two),
# whose callback runs as a soft IRQ through micropython.schedule, like the port's.
# A timer is due in real time (ticks_ms); its callback is scheduled whenever the firmware
# touches the hardware (hw.tick(): I2C transfers, Wi-Fi status, the watchdog feed, idle), as
# the watchdog is checked. Firmware that keeps using the hardware or the network sees its
# timers fire within a few milliseconds of their time; a pure-Python busy loop that touches
# nothing is not interrupted. power_on() stops every timer, as a reset does.
#
# (Details are comments rather than docstring: loaded from source instead of frozen, a module
# compiles on the node's heap, where a docstring costs memory and a comment does not.)

import time

import hw

_armed = {}  # id -> Timer


def power_on():
    _armed.clear()


def poll():
    if not _armed:
        return
    import micropython

    now = time.ticks_ms()
    for t in list(_armed.values()):
        if time.ticks_diff(now, t._due) >= 0:
            if t._mode == Timer.ONE_SHOT:
                _armed.pop(t._id, None)
            else:
                t._due = time.ticks_add(t._due, t._period)
            if t._cb is not None:
                micropython.schedule(t._cb, t)


class Timer:
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id, **kw):
        n = 2 if hw.board().chip in ("esp32c3", "esp32c6") else 4
        if not 0 <= id < n:
            raise ValueError("invalid Timer number")
        self._id = id
        self._due = None
        if kw:
            self.init(**kw)

    def __repr__(self):
        return "Timer(%d; alarm_en=%d, auto_reload=%d)" % (
            self._id, self._id in _armed, self._mode == Timer.PERIODIC if self._due else 0)

    def init(self, mode=1, callback=None, period=-1, tick_hz=1000, freq=None):
        if freq is not None:
            period = int(1000 / freq)
        elif period >= 0:
            period = period * 1000 // tick_hz
        if period < 0:
            raise ValueError("period too large")
        self._mode = mode
        self._cb = callback
        self._period = max(period, 1)
        self._due = time.ticks_add(time.ticks_ms(), self._period)
        _armed[self._id] = self

    def deinit(self):
        _armed.pop(self._id, None)

    def value(self):
        if self._due is None:
            return 0
        return max(0, self._period - max(0, time.ticks_diff(self._due, time.ticks_ms())))
