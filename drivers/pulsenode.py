"""The node side of pulse meters: persistence of the counts (the RTC memory slot and the flash
journal; see drivers/pulse.py for the layout and the rules), and create() with the
adapter for firmware/sensors.py. Separate from pulse.py so neither module is large to load."""

import struct

from micropython import const

_RTC_BASE = const(64)
_RTC_SLOT = const(96)
_RTC_END = const(256)
_RTC_MAGIC = const(0x3150)
_J_MAGIC = const(0x4A50)
_VERSION = const(1)
_J_SIZE = const(24)
J_PER_FILE = const(170)
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


def save_rtc(m):
    import machine

    m.seq += 1
    flags = m._closed | (2 if m._b is not None and not m._b.value() else 0) | \
        (4 if m._counted else 0)
    body = struct.pack(_RTC_FMT, _RTC_MAGIC, _VERSION, m._pin_no & 0xFF, m.seq,
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


def journal(m):
    if m._jnet == (m.net, m.rev):
        return
    import os

    m.seq += 1
    body = struct.pack(_J_FMT, _J_MAGIC, _VERSION, m._pin_no & 0xFF, m.seq,
                       m.net, m.rev)
    rec = body + struct.pack("<I", _crc32(body))
    if m._jcount >= J_PER_FILE:
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
                if magic != _J_MAGIC or ver != _VERSION or pin != m._pin_no & 0xFF:
                    damaged = True
                    continue
                if best is None or seq > best[0]:
                    best = (seq, net, rev)
                    m._jfile = i
                    m._jcount = J_PER_FILE if damaged else n
        if damaged and m._jfile == i:
            m._jcount = J_PER_FILE  # never append after damage: start the other file
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
    if v[0] != _RTC_MAGIC or v[1] != _VERSION or v[2] != m._pin_no & 0xFF:
        return None
    return v


def restore(m, machine):
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


# ---------------------------------------------------------------------------------- node glue
# create() and the adapter for firmware/sensors.py (driver "pulse"; its config is checked by
# drivers/cfg_pulse.py).


def create(spec, hw):
    return PulseSensor(spec, hw)


class PulseSensor:
    def __init__(self, spec, hw):
        import channels

        counter = spec["counter"]
        if counter == "auto":
            counter = "pcnt" if hw.board_info().get("pcnt_units", 0) > spec["slot"] * 2 + 1 \
                and not spec["debounce_ms"] else "irq"
        if counter == "pcnt":
            import esp32

            if not hasattr(esp32, "PCNT"):
                raise OSError("pulse@gpio%d: counter pcnt: this chip has no PCNT" % spec["pin"])
        self.counter = counter
        self.label = "pulse@gpio%d" % spec["pin"]
        self.interval_s = spec["interval_s"]
        import pulse

        self.meter = pulse.PulseMeter(
            kind=spec["kind"], pin_a=spec["pin"], pin_b=spec["pin_b"],
            tamper_pin=spec["tamper_pin"], litres_per_pulse=spec["litres_per_pulse"],
            debounce_ms=spec["debounce_ms"], counter=counter, slot=spec["slot"],
            ticks_ms=hw.ticks_ms, clock=hw.clock)
        inst = spec["instance"]
        water = spec["kind"] == "water"
        self.k_total = channels.key(channels.WATER_VOLUME if water else channels.GAS_VOLUME, inst)
        self.k_flow = channels.key(channels.WATER_FLOW, inst) if water else None
        self.k_night = channels.key(channels.NIGHT_FLOW, inst) if water else None
        self.k_alarms = channels.key(channels.ALARMS, inst)

    async def sample(self):
        m = self.meter
        alarms = m.poll(report=True)  # journals a changed total before it is reported
        values = {self.k_total: m.total_l}
        if self.k_flow is not None:
            flow = m.flow_ml_s()
            if flow is not None:
                values[self.k_flow] = flow
            night = m.night_flow_ul_s()
            if night is not None:
                values[self.k_night] = night
        if alarms or alarms != m.last_alarms:
            values[self.k_alarms] = alarms
        m.last_alarms = alarms
        return values

    def wake_pins(self):
        return self.meter.wake_pins()

    def save(self):
        self.meter.save()


def arm_wake(pins):
    """Arms deep-sleep wake-up for (gpio, level) pairs from adapters' wake_pins(): the first
    pair on ext0 (one pin, either level), pairs with level 1 on ext1 (any high). On the
    ESP32-C3 (no ext0/ext1) through Pin.irq(wake=DEEPSLEEP) on GPIO 0-5."""
    import machine

    if not pins:
        return
    try:
        import esp32

        esp32.wake_on_ext0(machine.Pin(pins[0][0]), pins[0][1])
        high = [machine.Pin(g) for g, lvl in pins[1:] if lvl]
        if high:
            esp32.wake_on_ext1(high, esp32.WAKEUP_ANY_HIGH)
    except (AttributeError, ValueError):
        for g, lvl in pins:
            machine.Pin(g).irq(trigger=machine.Pin.WAKE_HIGH if lvl else machine.Pin.WAKE_LOW,
                               wake=machine.DEEPSLEEP)
