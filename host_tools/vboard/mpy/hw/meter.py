"""Pulse-output water and gas meters (reed contacts with bounce, quadrature, tamper loop) and
tipping-bucket rain gauges."""

# A reed or open-collector pulse output is a switch to GND: closed drives the GPIO low, open
# releases it (the input's pull-up reads 1). The model owns a virtual clock (microseconds) and
# moves the contacts at exact timestamps, so a test drives 10 000 bounced pulses in seconds:
#
#     m = PulseMeter(a=25, b=26, tamper=27, seed=1)
#     m.run(3, period_ms=200)            # 3 forward pulses, 200 ms apart, contacts bouncing
#     m.run(2, reverse=True)             # backflow: contact B leads contact A
#     m.step_ms(3600 * 1000)             # an hour without flow
#     m.tamper(True)                     # loop opened (cut cable, IN-Z61 tamper, magnet sensor)
#     m.ticks_ms(), m.time()             # the clock, as time.ticks_ms() / time.time()
#
# Quadrature (two contacts a quarter turn apart): forward, A closes while B is open, then B
# closes, A opens, B opens; in reverse B leads. So the level of B at A's closing edge gives
# the direction. Every contact transition bounces: `bounce_ms` (default 5) after a transition
# the contact chatters 1-5 extra times at pseudo-random instants inside that window, ending
# in its new state. `forward`, `reverse` count the pulses generated (the truth for tests).
# With b=None the meter has a single contact (gas meters, simple water meters).

import hw.pin

_T0 = 1763712000  # time() at t = 0: 2025-11-21 08:00 UTC


class PulseMeter:
    def __init__(self, a, b=None, tamper=None, bounce_ms=5, seed=1, t0=_T0):
        self.a, self.b, self.tamper_pin = a, b, tamper
        self.bounce_us = bounce_ms * 1000
        self.t_us = 0
        self.t0 = t0
        self._seed = seed or 1
        self.forward = 0
        self.reverse = 0
        self._lines = {}  # GPIO -> what the meter drives: 0 (closed to GND) or None (open)
        for p in (a, b):
            if p is not None:
                self._drive(p, None)  # contacts open
        if tamper is not None:
            self._drive(tamper, 0)  # loop closed

    def _drive(self, pin, level):
        self._lines[pin] = level
        hw.pin.drive(pin, level)

    def reattach(self):
        """Drives the lines again after a board power-on (machine.vboard_configure() resets
        the GPIO matrix; the meter's contacts stay where they were)."""
        for pin, level in self._lines.items():
            hw.pin.drive(pin, level)

    # -- clock
    def ticks_ms(self):
        return (self.t_us // 1000) & 0x3FFFFFFF

    def time(self):
        return self.t0 + self.t_us // 1000000

    def step_ms(self, ms):
        self.t_us += ms * 1000

    # -- contacts
    def _rand(self, n):
        # xorshift32: repeatable bounce patterns without the random module
        x = self._seed
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self._seed = x
        return x % n

    def _set(self, pin, closed, bounce=True):
        level = 0 if closed else None
        if bounce and self.bounce_us:
            chatter = 1 + self._rand(5)
            t = self.t_us
            for i in range(chatter):
                # alternate: new state, old state, ..., at increasing instants in the window
                t += 1 + self._rand(self.bounce_us // (chatter + 1))
                self.t_us = t
                hw.pin.drive(pin, level if i % 2 == 0 else (None if closed else 0))
            self.t_us = t + 1
        self._drive(pin, level)

    def pulse(self, reverse=False, period_ms=100):
        """One pulse, taking `period_ms`, each contact transition a quarter of it apart."""
        q = period_ms * 250  # a quarter period in us
        first, second = (self.b, self.a) if reverse and self.b is not None else (self.a, self.b)
        start = self.t_us
        self._set(first, True)
        if second is not None:
            self.t_us = max(self.t_us, start + q)
            self._set(second, True)
        self.t_us = max(self.t_us, start + 2 * q)
        self._set(first, False)
        if second is not None:
            self.t_us = max(self.t_us, start + 3 * q)
            self._set(second, False)
        self.t_us = max(self.t_us, start + 4 * q)
        if reverse:
            self.reverse += 1
        else:
            self.forward += 1

    def run(self, n, reverse=False, period_ms=100):
        for _ in range(n):
            self.pulse(reverse, period_ms)

    def hold(self, pin, closed):
        """Leaves one contact closed (True) or open (False), without bounce: a meter that stopped
        with its magnet over the reed, or a pulse in progress."""
        self._drive(pin, 0 if closed else None)

    def tamper(self, opened):
        """Opens (True) or closes the tamper loop."""
        self._drive(self.tamper_pin, None if opened else 0)


# A tipping-bucket rain gauge: two buckets on a pivot under the funnel; when the upper one holds
# its volume of rain (0.2 mm over the funnel, say) it tips over, and a magnet on the bucket
# passes a reed contact, which closes once per tip for `closed_ms` (default 100) and bounces
# like the meters' contacts (`bounce_ms`, default 5) as it closes and as it opens. One contact
# (`a`), no direction: each tip is a forward pulse, so `tips` is `forward`.
#
#     g = RainGauge(a=25, seed=1)
#     g.rain(12, gap_ms=2000)            # 12 tips, 2 s apart (a 0.2 mm bucket at 360 mm/h)
#     g.step_ms(600 * 1000)              # ten dry minutes
class RainGauge(PulseMeter):
    def __init__(self, a, closed_ms=100, bounce_ms=5, seed=1, t0=_T0):
        super().__init__(a, None, None, bounce_ms, seed, t0)
        self.closed_ms = closed_ms

    @property
    def tips(self):
        return self.forward

    def pulse(self, reverse=False, period_ms=None):
        """One tip: the contact closes for `closed_ms`, then opens (a gauge has no reverse)."""
        start = self.t_us
        self._set(self.a, True)
        self.t_us = max(self.t_us, start + self.closed_ms * 1000)
        self._set(self.a, False)
        self.forward += 1

    def rain(self, n, gap_ms=1000):
        """`n` tips, one every `gap_ms` (from one closing to the next)."""
        for _ in range(n):
            start = self.t_us
            self.pulse()
            self.t_us = max(self.t_us, start + gap_ms * 1000)


# ---------------------------------------------------------------------------------- env-driven
# A meter wired to a node that runs as its own process (VirtualNode), driven by the test through
# env.json instead of in-process calls:
#
#     board.json  "meters": [{"a": 25, "b": 26, "tamper": 27, "bounce_ms": 5}]   (b, tamper
#                 optional); a rain gauge: {"a": 25, "model": "rain_gauge"} (closed_ms,
#                 bounce_ms optional), its tips are its forward pulses
#     env.json    "meters": {"25": {"forward": 120, "reverse": 2, "tamper": false,
#                                   "period_ms": 100}}
#     meters.json {"25": {"forward": 118, "reverse": 2}}: the pulses the meter has made so far
#
# env.json gives the pulses the meter is to have made (its register's count), keyed by the GPIO
# of contact A; meters.json in the node folder is the physical meter's own count, which the
# chip's restarts do not touch. The meter makes the difference in real time: one pulse
# (quadrature and bounce as PulseMeter above) each time the virtual board looks and at least
# `period_ms` (real time) passed since its previous pulse; the board looks whenever the firmware
# touches the hardware (hw.tick(): I2C transfers, Wi-Fi status, idle, and the watchdog feed,
# which a healthy node does every second). Forward pulses first, then reverse. "tamper": true
# opens the loop. A meter without meters.json starts at the env.json count (its history).
# While the node sleeps, the launcher (VirtualNode) makes the next pulse itself when contact A
# is armed for wake-up: it counts it in meters.json and wakes the node by EXT0. A rain gauge
# makes one tip where a meter makes a pulse ("reverse" is ignored): its edges, bounce included,
# follow each other at once in real time (the 100 ms closure is on the model's own clock), and
# `period_ms` keeps tips apart by more than the driver's 50 ms debounce.
class EnvMeter:
    def __init__(self, board, counts, a, b=None, tamper=None, bounce_ms=5, model="meter",
                 closed_ms=100):
        self.key = str(a)
        if model == "rain_gauge":
            if b is not None or tamper is not None:
                raise ValueError("a rain gauge has one contact: no b, no tamper")
            self.meter = RainGauge(a, closed_ms=closed_ms, bounce_ms=bounce_ms)
        elif model == "meter":
            self.meter = PulseMeter(a, b, tamper, bounce_ms=bounce_ms)
        else:
            raise ValueError("model must be meter or rain_gauge: got %r" % (model,))
        self._path = board.file("meters.json")
        self._counts = counts  # meters.json, shared by the board's meters
        self._ver = -1
        self._want = (0, 0)
        self._last = None  # time.ticks_ms() of the last pulse made
        self._period = 100
        self._busy = False
        self._read()
        made = counts.get(self.key)
        if made is None:
            self.meter.forward, self.meter.reverse = self._want
            self._save()
        else:
            self.meter.forward, self.meter.reverse = made["forward"], made["reverse"]

    def _read(self):
        e = hw.env()
        e.refresh()
        if e.version == self._ver:
            return
        self._ver = e.version
        m = (e.data.get("meters") or {}).get(self.key) or {}
        rev = 0 if isinstance(self.meter, RainGauge) else int(m.get("reverse", 0))
        self._want = (int(m.get("forward", 0)), rev)
        self._period = int(m.get("period_ms", 100))
        if self.meter.tamper_pin is not None:
            opened = bool(m.get("tamper"))
            if (self.meter._lines.get(self.meter.tamper_pin) is None) != opened:
                self.meter.tamper(opened)

    def _save(self):
        self._counts[self.key] = {"forward": self.meter.forward, "reverse": self.meter.reverse}
        if self._path is not None:
            hw.write_json(self._path, self._counts)

    def made(self):
        return self.meter.forward + self.meter.reverse

    def tick(self):
        if self._busy:  # an IRQ handler run by our own edge touched the hardware
            return
        self._busy = True
        try:
            self._read()
            m = self.meter
            fwd, rev = self._want
            if m.forward >= fwd and m.reverse >= rev:
                return
            import time

            now = time.ticks_ms()
            if self._last is not None and time.ticks_diff(now, self._last) < self._period:
                return
            self._last = now
            m.pulse(reverse=m.forward >= fwd)
            self._save()
        finally:
            self._busy = False


def env_meters(board):
    out = []
    counts = hw.read_json(board.file("meters.json")) or {}
    for n, spec in enumerate(board.spec.get("meters") or ()):
        try:
            out.append(EnvMeter(board, counts, **spec))
        except (TypeError, ValueError) as exc:
            raise ValueError("board.json meters[%d]: %s" % (n, exc))
    return out
