"""The runtime's counters in RTC memory: they survive deep sleep, resets and watchdog resets
(not a power cut), cost no flash wear, and are rewritten freely.

Bytes 0..63 of `machine.RTC().memory()` belong to the runtime (this module); bytes 64.. belong
to the drivers (see firmware/sensors.py). Writers keep the other party's bytes as they are.

    layout (little endian), 40 bytes:
    0   "ML" magic, 1 byte layout version
    3   flags: 1 clock set, 2 crash boot in progress
    4   boots          u32  boots of this power cycle (resets, not wake-ups)
    8   wakes          u32  deep-sleep wake-ups since the last boot
    12  crash_boots    u8   boots in a row that did not reach a healthy main loop
    13  clock_src      u8   0 none, 1 NTP, 2 gateway
    14  power_cycle    u16  the flash boot counter at this power-on (marks relative times)
    16  seq_next       u32  the next sequence number (valid with the flash-reserved block)
    20  clock_offset   i32  Unix time minus time.time(), when the clock is set
    24  clock_at       u32  time.time() when the clock was last set
    28  boot_time      u32  time.time() at this boot
    32  reserved       u32
    36  crc32 of bytes 0..35

A bad magic or CRC (power-on, a torn write in the virtual board) gives all zeros: `valid` is
False and the runtime treats it as a power-on.
"""

import binascii
import struct

_FMT = "<2sBBIIBBHIiIII"
_SIZE = 36
_SLICE = 64



class RtcState:
    FIELDS = ("flags", "boots", "wakes", "crash_boots", "clock_src", "power_cycle", "seq_next",
              "clock_offset", "clock_at", "boot_time", "reserved")

    def __init__(self):
        import machine

        self._rtc = machine.RTC()
        mem = self._rtc.memory()
        self.valid = False
        vals = (0,) * len(self.FIELDS)
        if len(mem) >= _SIZE + 4:
            crc = struct.unpack_from("<I", mem, _SIZE)[0]
            if binascii.crc32(memoryview(mem)[:_SIZE]) & 0xFFFFFFFF == crc:
                v = struct.unpack_from(_FMT, mem, 0)
                if v[0] == b"ML" and v[1] == 1:
                    vals = v[2:]
                    self.valid = True
        for name, v in zip(self.FIELDS, vals):
            setattr(self, name, v)

    def save(self):
        mem = bytearray(self._rtc.memory())
        if len(mem) < _SLICE:
            mem.extend(bytes(_SLICE - len(mem)))
        struct.pack_into(_FMT, mem, 0, b"ML", 1, *[getattr(self, n) for n in self.FIELDS])
        struct.pack_into("<I", mem, _SIZE, binascii.crc32(memoryview(mem)[:_SIZE]) & 0xFFFFFFFF)
        self._rtc.memory(mem)

    def clear_crashes(self):
        """Ends a crash streak (healthy, or a start an operator asked for): saved at once;
        returns how many crashed boots it had counted."""
        n = self.crash_boots
        if self.flags & 2 or n:
            self.flags &= ~2
            self.crash_boots = 0
            self.save()
        return n
