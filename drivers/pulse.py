"""Pulse-output water and gas meters and tipping-bucket rain gauges: debounced,
direction-aware counting and a total that survives resets, deep sleep, power loss and firmware
updates; leak, backflow, tamper alarms; rainfall and intensity per reading."""

# Pulse-output water and gas meters: a debounced, direction-aware pulse count, persisted so
# the meter total survives resets, deep sleep, power loss and firmware updates, plus the leak,
# backflow and tamper alarms of docs/wire-format.md. Tipping-bucket rain gauges (kind "rain")
# are counted by the same machinery; see "Rain gauges" below.
#
#     from pulse import PulseMeter
#     m = PulseMeter(kind="water", pin_a=25, pin_b=26, tamper_pin=27, litres_per_pulse=10,
#                    slot=0)
#     m.poll()            # hour bookkeeping, alarms; call at least hourly (the adapter's sample())
#     m.total_l           # the meter total in litres (water L, gas 0.001 m3 = 1 L; rain: um)
#     m.save()            # before deep sleep or reset: RTC memory, and the flash journal
#     m.wake_pins()       # ((gpio, level), ...) that must wake the node from deep sleep
#
# Counting. A reed contact (or open collector) closes the input to GND; the internal pull-up
# holds it high while open. Each edge runs `_edge` (a Pin IRQ, soft as on the ESP32 port): it
# reads the clock and the line and counts a closing edge only if the line had been open for at
# least `debounce_ms` (default 10 ms; contact bounce is up to ~5 ms). Chatter after either
# transition is therefore ignored, and a handler that runs late (soft IRQs coalesce) still sees
# the settled level. The handler allocates nothing: it updates small-int attributes created in
# the constructor. With a second contact in quadrature (`pin_b`, water meters), the level of B
# at A's closing edge gives the direction: B open = forward (+1), B closed = reverse (-1, and
# the backflow alarm).
#
# PCNT: the ESP32/ESP32-S3 pulse counter's glitch filter stops at 1023 APB cycles (12.8 us), far
# too short for reed bounce, so reed contacts are counted with the Pin IRQ above on every chip.
# `esp32.PCNT` is used (counter "pcnt", or "auto" on a board with PCNT units) for bounce-free
# electronic outputs with debounce_ms 0: PCNT channel 0 counts A's closing (falling) edges, B is
# its control input (B high: count up; B low: count down reversed), so quadrature decoding runs
# in hardware; the IRQ on the unit's min/max limits folds the 16-bit hardware count into a
# small-int accumulator.
#
# Persistence (the functions after the constants below; why hand-written: no flash-journal
# library fits the heap, and the layout must be readable by every later firmware):
# - RTC slow memory, bytes 64..255 of machine.RTC().memory() (the runtime owns 0..63): one
#   96-byte slot per pulse meter (slot 0 at 64, slot 1 at 160), rewritten by save(). It holds
#   the exact count, the debounced contact state and the hour history, and survives deep
#   sleep, resets and firmware updates (not power loss). Layout, little-endian:
#   magic "P1" u16 0x3150, version u8, pin_a u8, seq u32, net i64, reverse i32, hour u32,
#   hour_start i64 (moves at the hour's start), flags u8 (bit0 contact closed, bit1 B closed,
#   bit2 counted while closed), hist_n u8, last_alarms u8, pad u8, hist 24 x u16 (litres per
#   completed hour, newest first), last_reverse u32 (time), crc32 u32 over all before it.
# - Flash journal `pulse<slot>a.log` / `pulse<slot>b.log`: 24-byte records appended, magic u16
#   0x4A50, version u8, pin_a u8, seq u32, net i64, reverse i32, crc32 u32. A file takes 170
#   records (one 4 KB flash sector), then the other file is truncated and continues: the
#   older file stays valid until the new one holds a good record. A torn or corrupted record
#   fails its CRC and is skipped, so the total falls back to the record before; it never takes
#   a value that was not written whole. A damaged file is never appended to again (the next
#   write starts the other file).
# - At start the RTC slot wins when its CRC holds and its seq is not older than the journal's;
#   otherwise (power loss, first boot after flashing a new layout) the journal's last good
#   record is used. The journal is written before a changed total is reported (poll(report=
#   True)) and by save(), so a total the gateway has seen is never lost: after a power loss the
#   total restarts at the last reported value or later, never lower.
# - Deep sleep: the chip counts nothing while asleep, so wake_pins() asks to be woken when
#   contact A changes from its saved state (closing when open, opening when closed). At start,
#   a contact that is closed while the saved state says open is a new pulse; woken by pin A
#   (EXT0) with the contact already open again (a pulse shorter than the boot) also counts one.
#
# Rain gauges (kind="rain", litres_per_pulse = um of rain per tip, e.g. 200 for 0.2 mm): a
# magnet on the tipping bucket closes a reed contact to GND once per tip, so a tip is a pulse
# of contact A (no pin_b, no tamper loop, no hour history or alarms: poll() is not used).
#     m = PulseMeter(kind="rain", pin_a=25, litres_per_pulse=200, debounce_ms=50)
#     total, um, nm_s = m.rain()  # at each reading: the total (um), the rain since the
#                       # previous reading (um) and its mean intensity (nm/s, rounded; over at
#                       # least 1 s, the clock's resolution; None with rain if the clock went back)
# Debounce 50 ms (cfg_pulse's default for rain): a tip swings the bucket over in 100-500 ms and
# the reed closes once while the magnet passes, bouncing for a few ms at each transition (up to
# ~5 ms, as for meters above). The fastest real tips are far apart: a 0.1 mm bucket at 500 mm/h
# (more than the heaviest hour of rain on record) tips every 0.72 s, 0.2 mm every 1.44 s. 50 ms
# is ten times the bounce and a fourteenth of the shortest time between tips, and leaves room
# for soft IRQs delayed by a flash write or garbage collection.
# The previous reading's count and time are the gauge's persisted state: `rev` (unused by a
# one-contact gauge) holds the count at the previous reading and `hour` its Unix time, so both
# are in the RTC slot and `rev` also in every journal record. rain() sets them to this reading
# and journals before it returns, so the rainfall of consecutive readings sums exactly to the
# change of the total, through deep sleep and resets, and through a power loss too (the
# journal's last record pairs the total with the count at the last reading; only the time is
# lost then, and the next intensity is taken over the time since the boot). A gauge's RTC slot
# and journal records have their own magic ("R1", "RJ" instead of "P1", "PJ"), so a gauge
# never takes over a water or gas meter's count on the same pin, nor the reverse.
#
# Alarms (bits of the `alarms` channel, docs/wire-format.md):
# - leak (1): every one of the last 24 completed hours had flow; clears with an hour of no flow.
# - backflow (2): a reverse pulse was counted; clears after 3600 s without reverse pulses.
# - tamper (4): the tamper loop is open (cut cable, meter-head tamper contact such as the
#   IN-Z61's, or a magnet sensor output), or it opened since the last poll; clears when the
#   loop is closed again at a poll.
# The minimum night flow is the smallest hourly volume of the last 24 completed hours, as a
# flow rate in uL/s (after 24 hours of history).
#
# Hours are Unix hours of the node's clock (time.time()); pulses that arrive across a gap of
# several hours between polls are spread evenly over those hours. A jump of the clock backwards
# or more than 48 hours ahead (the clock being set) restarts the current hour and keeps the
# history.
#
# (Documentation is in comments: compiled from source on a 96 KB heap, a long docstring is
# one large string while the module compiles; a comment costs nothing.)


import struct
import time

from micropython import const

_HOURS = const(24)
_BACKFLOW_CLEAR_S = const(3600)
_MAX_GAP_H = const(48)  # a longer jump between polls is the clock being set, not time passing
_PCNT_LIM = const(32000)

LEAK = const(1)
BACKFLOW = const(2)
TAMPER = const(4)

# ------------------------------------------------------------------ persistence
# The RTC slot and the flash journal of the comment above. (drivers/pulsenode.py, the node's
# adapter, imports this module, never the reverse.)
_RTC_BASE = const(64)
_RTC_SLOT = const(96)
_RTC_END = const(256)
_RTC_MAGIC = const(0x3150)  # "P1"; a rain gauge's: + 2, "R1"
_J_MAGIC = const(0x4A50)  # "PJ"; a rain gauge's: + 2, "RJ"
_VERSION = const(1)
_J_SIZE = const(24)
_J_PER_FILE = const(170)
_RTC_FMT = "<HBBIqiIqBBBB24HI"  # without the trailing crc
_J_FMT = "<HBBIqi"

try:
    from binascii import crc32 as _crc32
except ImportError:  # a port built without it
    def _crc32(data):
        c = 0xFFFFFFFF
        for b in data:
            c ^= b
            for _ in range(8):
                c = (c >> 1) ^ (0xEDB88320 & -(c & 1))
        return c ^ 0xFFFFFFFF


def _save_rtc(m):
    import machine

    m.seq += 1
    flags = m._closed | (2 if m._b is not None and not m._b.value() else 0) | \
        (4 if m._counted else 0)
    body = struct.pack(_RTC_FMT, _RTC_MAGIC + m._mg, _VERSION, m._pin_no & 0xFF, m.seq,
                       m.net, m.rev, m.hour, m.hour_start, flags, m.hist_n,
                       m.last_alarms, 0, *m.hist, m.last_reverse)
    rtc = machine.RTC()
    cur = rtc.memory()
    mem = bytearray(max(len(cur), _RTC_END))
    mem[:len(cur)] = cur
    off = _RTC_BASE + _RTC_SLOT * m._slot
    mem[off:off + len(body)] = body
    mem[off + len(body):off + len(body) + 4] = struct.pack("<I", _crc32(body))
    rtc.memory(mem)


def _journal(m):
    if m._jnet == (m.net, m.rev):
        return
    import os

    m.seq += 1
    body = struct.pack(_J_FMT, _J_MAGIC + m._mg, _VERSION, m._pin_no & 0xFF, m.seq,
                       m.net, m.rev)
    rec = body + struct.pack("<I", _crc32(body))
    if m._jcount >= _J_PER_FILE:
        m._jfile ^= 1
        m._jcount = 0
        mode = "wb"
    else:
        mode = "ab"
    with open(_jname(m, m._jfile), mode) as f:
        f.write(rec)
    try:
        os.sync()
    except (AttributeError, OSError):
        pass
    m._jcount += 1
    m._jnet = (m.net, m.rev)


def _jname(m, i):
    return "%s%s.log" % (m._jpath, "ab"[i])


def _read_journal(m):
    """The newest good record of both files: (seq, net, rev) or None; sets which file to
    append to."""
    best = None
    buf = bytearray(_J_SIZE)
    for i in (0, 1):
        n = 0
        damaged = False
        try:
            f = open(_jname(m, i), "rb")
        except OSError:
            continue
        with f:
            while True:
                got = f.readinto(buf)
                if not got:
                    break
                if got != _J_SIZE:
                    damaged = True  # torn tail
                    break
                n += 1
                mv = memoryview(buf)
                if _crc32(mv[:20]) != struct.unpack_from("<I", buf, 20)[0]:
                    damaged = True
                    continue
                magic, ver, pin, seq, net, rev = struct.unpack_from(_J_FMT, buf)
                if magic != _J_MAGIC + m._mg or ver != _VERSION or pin != m._pin_no & 0xFF:
                    damaged = True
                    continue
                if best is None or seq > best[0]:
                    best = (seq, net, rev)
                    m._jfile = i
                    m._jcount = _J_PER_FILE if damaged else n
        if damaged and m._jfile == i:
            m._jcount = _J_PER_FILE  # never append after damage: start the other file
    return best


def _read_rtc(m, machine):
    mem = machine.RTC().memory()
    off = _RTC_BASE + _RTC_SLOT * m._slot
    size = struct.calcsize(_RTC_FMT)
    if len(mem) < off + size + 4:
        return None
    body = memoryview(mem)[off:off + size]
    if _crc32(body) != struct.unpack_from("<I", mem, off + size)[0]:
        return None
    v = struct.unpack_from(_RTC_FMT, mem, off)
    if v[0] != _RTC_MAGIC + m._mg or v[1] != _VERSION or v[2] != m._pin_no & 0xFF:
        return None
    return v


def _restore(m, machine):
    j = _read_journal(m)
    r = _read_rtc(m, machine)
    flags = 0
    if r is not None:
        # the hour history and contact state live only here; the count is the newer of
        # the two copies
        (_, _, _, m.seq, m.net, m.rev, m.hour, m.hour_start, flags,
         m.hist_n, m.last_alarms, _) = r[:12]
        m.hist = list(r[12:12 + 24])
        m.last_reverse = r[12 + 24]
    if j is not None and (r is None or j[0] > r[3]):
        m.seq, m.net, m.rev = j
    if j is not None:
        m._jnet = (j[1], j[2])
        m.seq = max(m.seq, j[0])
    # a pulse that began (or came and went) while the node was down
    was_closed = flags & 1
    closed = 1 - m._a.value()
    woke_by_a = machine.reset_cause() == machine.DEEPSLEEP_RESET and \
        machine.wake_reason() == machine.EXT0_WAKE
    if not was_closed and (closed or woke_by_a):
        b_closed = m._b is not None and not m._b.value() if closed else flags & 2
        if m._b is not None and b_closed:
            m.net -= 1
            m.rev += 1
        else:
            m.net += 1
        m._counted = 1
    m._closed = closed


class PulseMeter:
    def __init__(self, *, kind="water", pin_a, pin_b=None, tamper_pin=None,
                 litres_per_pulse=1, debounce_ms=10, counter="irq", slot=0,
                 ticks_ms=None, clock=None, journal_dir=""):
        import machine

        if kind not in ("water", "gas", "rain"):
            raise ValueError("kind must be water, gas or rain: got %r" % (kind,))
        self.kind = kind
        self._mg = 2 if kind == "rain" else 0  # added to the magics: a gauge's own records
        self.lpp = litres_per_pulse
        self._deb = debounce_ms
        self._ticks = ticks_ms or time.ticks_ms
        self._clock = clock or time.time
        self._slot = slot
        self._pin_no = pin_a
        self._t_pin = tamper_pin
        self._jpath = "%spulse%d" % (journal_dir, slot)
        self._a = machine.Pin(pin_a, machine.Pin.IN, machine.Pin.PULL_UP)
        self._b = None if pin_b is None else machine.Pin(pin_b, machine.Pin.IN,
                                                         machine.Pin.PULL_UP)
        self._t = None if tamper_pin is None else machine.Pin(tamper_pin, machine.Pin.IN,
                                                              machine.Pin.PULL_UP)
        # counting state, touched by the IRQ handler: small ints only
        self.net = 0  # forward minus reverse pulses
        self.rev = 0  # reverse pulses ever
        self._closed = 0  # line level seen at the last edge: 1 closed
        self._counted = 0  # the current closure was counted
        # an input found open at start counts as open long enough: the next closing counts
        self._last_ms = time.ticks_add(self._ticks(), -debounce_ms - 1)
        self._tamper_events = 0
        self._pcnt = None
        self._pcnt_rev = None
        self._praw = 0
        self._rraw = 0
        # bookkeeping
        self.seq = 0
        self.hour = 0
        self.hour_start = 0
        self.hist = [0] * _HOURS
        self.hist_n = 0
        self.last_alarms = 0
        self.last_reverse = 0
        self._rev_seen = 0
        self._jnet = None  # (net, rev) of the newest journal record
        self._jfile = 0  # 0: "a", 1: "b"
        self._jcount = _J_PER_FILE  # records in the current file (full: start the other)
        self._flow = None  # (time, net) of the previous report

        _restore(self, machine)
        if counter == "pcnt":
            self._start_pcnt()
        else:
            self._a.irq(self._edge, machine.Pin.IRQ_FALLING | machine.Pin.IRQ_RISING)
        if self._t is not None:
            self._t.irq(self._tamper_edge, machine.Pin.IRQ_RISING)
        self._rev_seen = self.rev
        if not self.hour:  # rain: the start of the first reading
            self.hour = self._clock() // (1 if self._mg else 3600)
            self.hour_start = self.moves()

    # ------------------------------------------------------------------ counting (IRQ)
    def _edge(self, pin):
        t = self._ticks()
        closed = 1 - pin.value()
        if closed and not self._closed and time.ticks_diff(t, self._last_ms) >= self._deb:
            if self._b is not None and not self._b.value():
                self.net -= 1
                self.rev += 1
            else:
                self.net += 1
            self._counted = 1
        elif not closed:
            self._counted = 0
        self._closed = closed
        self._last_ms = t

    def _tamper_edge(self, pin):
        self._tamper_events += 1

    def _start_pcnt(self):
        import esp32

        P = esp32.PCNT
        kw = {"channel": 0, "pin": self._a, "falling": P.INCREMENT, "rising": P.IGNORE,
              "min": -_PCNT_LIM, "max": _PCNT_LIM, "value": 0}
        if self._b is not None:
            # B open (high): forward, count up; B closed (low): reverse, count down
            kw.update(mode_pin=self._b, mode_low=P.REVERSE, mode_high=P.NORMAL)
        self._pcnt = P(2 * self._slot, **kw)
        self._pcnt.irq(self._pcnt_limit, P.IRQ_MIN | P.IRQ_MAX)
        self._pcnt.start()
        if self._b is not None:
            # a second unit counts reverse pulses alone (held while B is open)
            kw.update(mode_low=P.NORMAL, mode_high=P.HOLD)
            self._pcnt_rev = P(2 * self._slot + 1, **kw)
            self._pcnt_rev.irq(self._pcnt_rev_limit, P.IRQ_MAX)
            self._pcnt_rev.start()

    def _pcnt_limit(self, pcnt):
        # the unit went back to 0 on reaching a limit: shift the last raw value with it
        self._praw += -_PCNT_LIM if pcnt.irq().flags() & pcnt.IRQ_MAX else _PCNT_LIM

    def _pcnt_rev_limit(self, pcnt):
        self._rraw -= _PCNT_LIM

    def _pcnt_fold(self):
        # never reset the hardware count (read-and-reset is not atomic and could drop a
        # pulse): take the difference from the previous read
        raw = self._pcnt.value()
        self.net += raw - self._praw
        self._praw = raw
        if self._pcnt_rev is not None:
            raw = self._pcnt_rev.value()
            self.rev += raw - self._rraw
            self._rraw = raw

    # ------------------------------------------------------------------ figures
    def moves(self):
        """Pulses through the meter in either direction (for the flow history)."""
        return self.net + 2 * self.rev

    @property
    def total_l(self):
        return self.net * self.lpp

    def tamper_open(self):
        return self._t is not None and self._t.value() == 1

    def poll(self, report=False):
        """Hour bookkeeping and alarms; with report=True also journals a changed total first
        (so a reported total is on flash). Returns the alarm bits."""
        if self._pcnt is not None:
            self._pcnt_fold()
        now = self._clock()
        h = now // 3600
        if self.hour < h <= self.hour + _MAX_GAP_H:
            m = self.moves()
            vol = (m - self.hour_start) * self.lpp
            gap = h - self.hour
            for i in range(max(0, gap - _HOURS), gap):
                share = vol // gap + (1 if i < vol % gap else 0)
                self.hist.insert(0, min(share, 0xFFFF))
                self.hist.pop()
            self.hist_n = min(_HOURS, self.hist_n + gap)
            self.hour = h
            self.hour_start = m
        elif h != self.hour:  # the clock was set (back, or days ahead): start the hour again
            self.hour = h
            self.hour_start = self.moves()
        alarms = 0
        if self.rev != self._rev_seen:
            self._rev_seen = self.rev
            self.last_reverse = now
        if self.last_reverse and now - self.last_reverse < _BACKFLOW_CLEAR_S:
            alarms |= BACKFLOW
        if self.hist_n >= _HOURS and min(self.hist) > 0:
            alarms |= LEAK
        if self._tamper_events or self.tamper_open():
            self._tamper_events = 0
            alarms |= TAMPER
        if report:
            _journal(self)
        _save_rtc(self)  # cheap, no flash wear: a crash reset loses nothing counted
        return alarms

    def rain(self):
        """Rain gauges, at each reading: (total um, um of rain since the previous reading, its
        mean intensity in nm/s rounded, or None when the clock went back), all from one count.
        That count and the time become the next reading's start (`rev`, `hour`), journaled
        and in RTC memory before the figures are returned; unchanged if the journal fails."""
        if self._pcnt is not None:
            self._pcnt_fold()
        now = self._clock()
        net = self.net  # a tip counted from here on is the next reading's
        prev = self.rev, self.hour
        self.rev, self.hour = net, now
        try:
            _journal(self)
        except Exception:
            self.rev, self.hour = prev
            raise
        _save_rtc(self)
        um = (net - prev[0]) * self.lpp
        dt = now - prev[1]
        if dt < 0:  # the clock was set back: no time to divide by
            return net * self.lpp, um, None if um else 0
        dt = dt or 1  # two readings in one second (a tip woke the node): the clock's resolution
        return net * self.lpp, um, (um * 1000 + dt // 2) // dt

    def night_flow_ul_s(self):
        """Smallest hourly volume of the last 24 h as uL/s, or None before 24 h of history."""
        if self.hist_n < _HOURS:
            return None
        return (min(self.hist) * 2500 + 4) // 9  # L/h * 1e6 / 3600

    def flow_ml_s(self):
        """Mean flow since the previous call, mL/s (None on the first call)."""
        now = self._clock()
        prev, self._flow = self._flow, (now, self.net)
        if prev is None or now <= prev[0]:
            return None
        return (self.net - prev[1]) * self.lpp * 1000 // (now - prev[0])

    # ------------------------------------------------------------------ persistence
    def wake_pins(self):
        out = [(self._pin_no, 1 if self._closed else 0)]
        if self._t is not None:
            out.append((self._t_pin, 1))
        return tuple(out)

    def save(self):
        """Persists the count: RTC memory always, the flash journal if the count changed."""
        if self._pcnt is not None:
            self._pcnt_fold()
        _journal(self)
        _save_rtc(self)
