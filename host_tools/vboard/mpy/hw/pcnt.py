"""esp32.PCNT of the virtual board (ESP32: 8 units, ESP32-S2/S3: 4, ESP32-C3: none)."""

# PCNT(id, *, channel=0, pin=, rising=, falling=, mode_pin=, mode_low=, mode_high=, filter=,
# min=, max=, value=) as in the ESP32 port's esp32.PCNT; init() takes the same keywords.
# Modelled: channel 0 of each unit; an edge on `pin` applies rising/falling (IGNORE,
# INCREMENT, DECREMENT), modified by the level of `mode_pin` (mode_low / mode_high: NORMAL,
# REVERSE, HOLD); the 16-bit signed count returns to 0 when it reaches `min` or `max`, which
# raises IRQ_MIN / IRQ_MAX (handler scheduled like a soft IRQ with the PCNT as argument;
# irq().flags() gives the events). Counting happens only between start() and stop(), and in
# hardware: edges are seen as they happen, whatever the Python side is doing. value() reads,
# value(0) reads and resets. The glitch filter is accepted (max 1023 APB cycles, 12.8 us)
# but nothing bounces that fast in the models, so it changes nothing.

import hw
import hw.pin

IGNORE, INCREMENT, DECREMENT = 0, 1, 2
NORMAL, REVERSE, HOLD = 0, 1, 2
IRQ_ZERO, IRQ_MIN, IRQ_MAX, IRQ_THRESHOLD0, IRQ_THRESHOLD1 = 1, 2, 4, 8, 16
_UNITS = {"esp32": 8, "esp32s2": 4, "esp32s3": 4}
_units = {}


def available():
    return hw.board().chip in _UNITS


def _power_on(b):
    _units.clear()


hw.on_configure(_power_on)


class _Irq:
    def __init__(self):
        self._flags = 0

    def flags(self):
        return self._flags


class PCNT:
    IGNORE, INCREMENT, DECREMENT = IGNORE, INCREMENT, DECREMENT
    NORMAL, REVERSE, HOLD = NORMAL, REVERSE, HOLD
    IRQ_ZERO, IRQ_MIN, IRQ_MAX = IRQ_ZERO, IRQ_MIN, IRQ_MAX
    IRQ_THRESHOLD0, IRQ_THRESHOLD1 = IRQ_THRESHOLD0, IRQ_THRESHOLD1

    def __new__(cls, id, **kwargs):
        n = _UNITS.get(hw.board().chip, 0)
        if not isinstance(id, int) or not 0 <= id < n:
            raise ValueError("invalid PCNT unit")
        u = _units.get(id)
        if u is None:
            u = _units[id] = object.__new__(cls)
            u._id, u._count, u._run, u._pin, u._mode_pin = id, 0, False, None, None
            u._rising, u._falling, u._low, u._high = IGNORE, IGNORE, NORMAL, NORMAL
            u._min, u._max, u._handler, u._trigger, u._irq = -32768, 32767, None, 0, _Irq()
        return u

    def __init__(self, id, **kwargs):
        if kwargs:
            self.init(**kwargs)

    def init(self, *, channel=0, pin=None, rising=None, falling=None, mode_pin=None,
             mode_low=None, mode_high=None, filter=None, min=None, max=None, value=None,
             threshold0=None, threshold1=None):
        if channel not in (0, 1):
            raise ValueError("channel must be 0 or 1")
        import machine

        if pin is not None:
            self._pin = machine.Pin(pin)
            hw.pin.watch(self._pin._id, self._edge)
        if mode_pin is not None:
            self._mode_pin = machine.Pin(mode_pin)
        for name, v in (("_rising", rising), ("_falling", falling), ("_low", mode_low),
                        ("_high", mode_high)):
            if v is not None:
                if v not in (0, 1, 2):
                    raise ValueError("invalid mode")
                setattr(self, name, v)
        if filter is not None and not 0 <= filter <= 12787:
            raise ValueError("filter must be 0-12787 ns")
        if min is not None:
            if not -32768 <= min <= 0:
                raise ValueError("min out of range")
            self._min = min
        if max is not None:
            if not 0 <= max <= 32767:
                raise ValueError("max out of range")
            self._max = max
        if value is not None:
            self.value(value)

    def _edge(self, level):
        if not self._run:
            return
        act = self._rising if level else self._falling
        if act == IGNORE:
            return
        step = 1 if act == INCREMENT else -1
        if self._mode_pin is not None:
            mode = self._high if self._mode_pin.value() else self._low
            if mode == HOLD:
                return
            if mode == REVERSE:
                step = -step
        self._count += step
        ev = 0
        if self._count >= self._max:
            ev = IRQ_MAX
        elif self._count <= self._min:
            ev = IRQ_MIN
        if ev:
            self._count = 0
            self._irq._flags = ev
            if self._handler is not None and self._trigger & ev:
                hw.pin.schedule(self._handler, self)

    def start(self):
        self._run = True

    def stop(self):
        self._run = False

    def value(self, value=None):
        v = self._count
        if value is not None:
            if value != 0:
                raise ValueError("can only set value to 0")
            self._count = 0
        return v

    def irq(self, handler=None, trigger=IRQ_ZERO):
        if handler is not None:
            self._handler, self._trigger = handler, trigger
        return self._irq
