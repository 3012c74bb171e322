"""Plantower PMS5003 particulate sensor on a serial line (datasheet "PMS5003 series data
manual" V2.3: 9600 baud 8N1, 32-byte frames, 7-byte commands)."""

# Frames: 42 4D, frame length 00 1C, thirteen 16-bit big-endian words (PM1.0 / PM2.5 / PM10
# "CF=1", the same three in atmospheric environment, six particle counts per 0.1 L, reserved),
# check code = the byte sum of everything before it. Commands: 42 4D CMD DATAH DATAL LRCH LRCL
# (LRC = byte sum of the first five): E1 00/01 passive / active mode, E2 read (passive mode),
# E4 00/01 sleep / wake up. Mode and sleep commands are answered with 42 4D 00 04 CMD DATA +
# check code. At power-on the sensor is awake in active mode and sends a frame every second;
# asleep (fan stopped) it sends and answers nothing but the wake-up command. For `warmup_ms`
# (30 s by the datasheet) after waking, the fan is not at speed: the values it reports are
# too low (a third of the real ones) - a driver must wait.
# Values: env.json "pm1_ug_m3", "pm2_5_ug_m3", "pm10_ug_m3" (defaults 8, 12, 15). Faults as in
# hw/uart.py ("uart<id>": "noise" / "dead"), plus "pms5003": "length" (a wrong frame length).

import time

import hw


class PMS5003:
    def __init__(self, warmup_ms=30000):
        self.line = (9600, 8, None, 1)
        self.warmup_ms = warmup_ms
        self.active = True
        self.asleep = False
        self._woke = time.ticks_ms()
        self._next = time.ticks_add(time.ticks_us(), 1000000)
        self.reads = 0
        self.bus = None

    def _frame(self):
        e = hw.env()
        e.refresh()
        pm = [int(e.data.get(k, d)) for k, d in (("pm1_ug_m3", 8), ("pm2_5_ug_m3", 12),
                                                   ("pm10_ug_m3", 15))]
        if time.ticks_diff(time.ticks_ms(), self._woke) < self.warmup_ms:
            pm = [v // 3 for v in pm]
        words = pm + pm + [pm[0] * 60, pm[0] * 18, pm[1] * 3, pm[2], pm[2] // 4, 1, 0]
        out = bytearray((0x42, 0x4D, 0x00, 0x1C))
        for w in words:
            out += bytes((w >> 8, w & 0xFF))
        if (e.faults or {}).get("pms5003") == "length":
            out[3] = 0x1E
        c = sum(out) & 0xFFFF
        out += bytes((c >> 8, c & 0xFF))
        return bytes(out)

    def _answer(self, cmd, data):
        out = bytearray((0x42, 0x4D, 0x00, 0x04, cmd, data))
        c = sum(out) & 0xFFFF
        return bytes(out) + bytes((c >> 8, c & 0xFF))

    def poll(self, now_us):
        if not self.active or self.asleep or time.ticks_diff(now_us, self._next) < 0:
            return None
        self._next = time.ticks_add(now_us, 1000000)
        return self._frame()

    def receive(self, data):
        if len(data) != 7 or data[0] != 0x42 or data[1] != 0x4D:
            return None
        if (data[5] << 8 | data[6]) != sum(data[:5]) & 0xFFFF:
            return None
        cmd, val = data[2], data[4]
        if cmd == 0xE4:
            if val and self.asleep:
                self.asleep = False
                self._woke = time.ticks_ms()
            elif not val:
                self.asleep = True
            return 5000, self._answer(cmd, val)
        if self.asleep:
            return None
        if cmd == 0xE1:
            self.active = bool(val)
            return 5000, self._answer(cmd, val)
        if cmd == 0xE2 and not self.active:
            self.reads += 1
            return 5000, self._frame()
        return None
