"""machine.Pin of the virtual board (see `machine`). The port's constants and checks; the
line level is the output latch (OUT, OPEN_DRAIN driving low), else what drives it from
outside (drive()), else the pull. IRQ handlers run as soft IRQs (micropython.schedule),
as the ESP32 port delivers them."""

import hw

_pins = {}  # GPIO number -> Pin: one object per GPIO, as on the port
_irq = {"off": 0, "deferred": []}  # machine.disable_irq() nesting, events held meanwhile
_watch = {}  # GPIO -> [fn(new_level)]: peripherals wired to the pad (esp32.PCNT), run at once


def power_on():
    _pins.clear()
    _watch.clear()


def watch(gpio, fn):
    """Routes the pad of `gpio` to a peripheral input: fn(level) runs on every level change."""
    _watch.setdefault(gpio, []).append(fn)


def schedule(handler, pin):
    if _irq["off"]:
        _irq["deferred"].append((handler, pin))
    else:
        import micropython

        micropython.schedule(handler, pin)


def _pin_ok(chip, n):
    if chip == "esp32":
        return 0 <= n <= 39 and n not in (20, 24, 28, 29, 30, 31)
    if chip in ("esp32s2", "esp32s3"):
        return 0 <= n <= 48 and not 22 <= n <= 25
    return 0 <= n <= (21 if chip == "esp32c3" else 30)


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_DOWN = 1
    PULL_UP = 2
    IRQ_RISING = 1
    IRQ_FALLING = 2
    WAKE_LOW = 4
    WAKE_HIGH = 5
    DRIVE_0 = 0
    DRIVE_1 = 1
    DRIVE_2 = 2
    DRIVE_3 = 3

    def __new__(cls, id, *args, **kwargs):
        if isinstance(id, Pin):
            return id
        p = _pins.get(id)
        if p is None:
            if not isinstance(id, int) or not _pin_ok(hw.board().chip, id):
                raise ValueError("invalid pin")
            p = object.__new__(cls)
            # GPIO number, mode, pull, output latch, external drive (None: not driven),
            # irq handler, irq trigger
            p._id, p._mode, p._pull, p._out, p._ext, p._handler, p._trigger = \
                id, None, 0, 0, None, None, 0
            _pins[id] = p
        return p

    def __init__(self, id, *args, **kwargs):
        if args or kwargs:
            self.init(*args, **kwargs)

    def __repr__(self):
        return "Pin(%d)" % self._id

    def init(self, mode=None, pull=-1, *, value=None, drive=None, hold=None):
        if value is not None:
            self._out = 1 if value else 0
        if mode is not None:
            if mode not in (1, 3, 7):
                raise ValueError("invalid pin mode")
            if mode & 2 and self._id >= 34 and hw.board().chip == "esp32":
                raise ValueError("pin can only be input")
            self._mode = mode
        if pull != -1:
            self._pull = pull or 0

    def _level(self):
        if self._mode == 3 or (self._mode == 7 and not self._out):
            return self._out
        if self._ext is not None:
            return self._ext
        return 1 if self._pull & 2 else 0

    def value(self, v=None):
        if v is None:
            return self._level()
        self._change(1 if v else 0, self._ext)

    __call__ = value

    def on(self):
        self._change(1, self._ext)

    def off(self):
        self._change(0, self._ext)

    def toggle(self):
        self._change(1 - self._out, self._ext)

    def _change(self, out, ext):
        old = self._level()
        self._out, self._ext = out, ext
        new = self._level()
        if new != old:
            for fn in _watch.get(self._id, ()):
                fn(new)
            if self._handler is not None and self._trigger & (1 if new else 2):
                schedule(self._handler, self)

    def irq(self, handler=None, trigger=3, *, wake=None):
        if trigger in (4, 5) and wake is not None:
            if wake not in (2, 4, 6):  # machine.SLEEP, DEEPSLEEP or both
                raise ValueError("bad wake value")
            hw.wake["ext0"] = {"pin": self._id, "level": trigger - 4}
        else:
            self._handler = handler
            self._trigger = trigger if handler is not None else 0
        return _PinIRQ(self)


class _PinIRQ:
    def __init__(self, pin):
        self._pin = pin

    def __call__(self):
        if self._pin._handler is not None:
            schedule(self._pin._handler, self._pin)

    def trigger(self, trigger=None):
        old = self._pin._trigger
        if trigger is not None:
            self._pin._trigger = trigger
        return old


def drive(pin, level):
    """Drives GPIO `pin` from outside the chip: 1, 0, or None to release the line. Soft IRQ
    handlers of the edge run before this returns (the loop below is a backward jump, where the
    VM runs scheduled callbacks), as an idle ESP32 runs them within microseconds of the edge;
    a model that moves its clock after drive() has the handler read the edge's time."""
    p = Pin(pin)
    p._change(p._out, None if level is None else (1 if level else 0))
    for _ in _ONE:
        pass


_ONE = (0,)


def relay(b):
    """board.json "relay": {"pin": 26}: a relay module whose coil is driven by that GPIO (high
    energises it). Each change of the line's level is appended to relay.json in the board's
    folder as [level, host time in ms], so a test sees the output switch, and when."""
    import time

    path = hw._join(b.dir, "relay.json")
    log = hw.read_json(path) or []  # kept across restarts of the process, as the coil is

    def changed(level):
        log.append([level, time.time_ns() // 1000000])
        if path is not None:
            hw.write_json(path, log)

    watch(b.spec["relay"]["pin"], changed)
