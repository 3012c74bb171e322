"""1-Wire buses of the virtual board and the DS18B20 model, at the bit level (Maxim DS18B20
datasheet 19-7487; the ROM search of Maxim application note 187)."""

# A bus is the GPIO it is on: hw.onewire.bus(4). Parts: board.json "onewire": {"4": {"devices":
# [{"model": "ds18b20", "rom": "28ff4a1c0a00005e", "temp_c": 12.5}]}} or in-process
# hw.onewire.attach(4, DS18B20(...)). A ROM is 8 bytes, family code first, CRC-8 last (as
# read on the wire); DS18B20(serial=n) builds one with a correct CRC.
#
# The master (the `onewire` module's reset/readbit/writebit) talks to every part at once:
# after a reset pulse each present part answers with a presence pulse; then ROM commands 0xF0
# SEARCH ROM (per bit: the parts put their bit, then its complement, on the wired-AND line;
# the master writes the direction and parts that differ drop out), 0x55 MATCH ROM, 0xCC SKIP
# ROM, 0x33 READ ROM; then function commands 0x44 CONVERT T (read slots give 0 until done: 750
# ms at 12 bits, 94 / 188 / 375 ms at 9 / 10 / 11), 0xBE READ SCRATCHPAD (9 bytes, CRC last),
# 0x4E WRITE SCRATCHPAD (TH, TL, config), 0x48 COPY SCRATCHPAD (accepted). Until the first
# conversion the scratchpad holds the power-on value +85 degC (0x0550). Idle read slots read 1.
#
# Conversion time: the part's `conv_ms` at 12 bits (default 750, the datasheet's maximum; a real
# part is often faster, and tests that read a probe many times give it less), halved per bit
# of lower resolution.
#
# Temperatures: the part's `temp_c`, else env.json "ds18b20": {"<rom hex>": degC}, else the
# env temperature_c. Faults: "onewire<gpio>": "short" (line held low: no presence, reads 0),
# "open" (no part answers); "onewire<gpio>:<rom hex>": "absent" (that part is gone), "crc"
# (its scratchpad CRC is wrong), "por" (it was power-cycled during the conversion: the
# scratchpad holds the power-on value again).

import time

import hw


def crc8(data):
    c = 0
    for b in data:
        for _ in range(8):
            mix = (c ^ b) & 1
            c >>= 1
            if mix:
                c ^= 0x8C
            b >>= 1
    return c


class DS18B20:
    def __init__(self, rom=None, serial=1, temp_c=None, conv_ms=750):
        if rom is None:
            body = bytes([0x28] + [(serial >> (8 * i)) & 0xFF for i in range(6)])
            rom = body + bytes((crc8(body),))
        elif isinstance(rom, str):
            rom = bytes.fromhex(rom)
        if len(rom) != 8:
            raise ValueError("a ROM is 8 bytes: got %r" % (rom,))
        self.rom = bytes(rom)
        self.temp_c = temp_c
        self.conv_ms = int(conv_ms)
        self.sp = bytearray((0x50, 0x05, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10, 0))
        self.sp[8] = crc8(self.sp[:8])
        self._conv_until = None
        self.conversions = 0
        self.bus = None

    def hexrom(self):
        return "".join("%02x" % b for b in self.rom)

    def _fault(self):
        return self.bus.fault(self.hexrom()) if self.bus else None

    def _temp(self):
        if self.temp_c is not None:
            return self.temp_c
        e = hw.env()
        e.refresh()
        t = (e.data.get("ds18b20") or {}).get(self.hexrom())
        return e.get("temperature_c") if t is None else t

    def convert(self):
        bits = 9 + ((self.sp[4] >> 5) & 3)
        self._conv_until = time.ticks_add(time.ticks_ms(), self.conv_ms >> (12 - bits))
        raw = int(round(self._temp() * 16)) & 0xFFFF
        raw &= ~((1 << (12 - bits)) - 1) & 0xFFFF  # unused low bits at lower resolutions
        self.sp[0], self.sp[1] = raw & 0xFF, raw >> 8
        self.sp[8] = crc8(self.sp[:8])
        self.conversions += 1

    def busy(self):
        return self._conv_until is not None and \
            time.ticks_diff(self._conv_until, time.ticks_ms()) > 0

    def scratchpad(self):
        out = bytearray(self.sp)
        f = self._fault()
        if f == "por":
            out[0], out[1], out[4] = 0x50, 0x05, 0x7F
            out[8] = crc8(out[:8])
        elif f == "crc":
            out[8] ^= 0x21
        return out


class Bus:
    def __init__(self, gpio):
        self.gpio = gpio
        self.devices = []
        self._state = None
        self._active = []

    def attach(self, model):
        self.devices.append(model)
        model.bus = self
        return model

    def fault(self, rom_hex=None):
        e = hw.env()
        e.refresh()
        if not e.faults:
            return None
        key = "onewire%d" % self.gpio if rom_hex is None else "onewire%d:%s" % (self.gpio, rom_hex)
        return e.faults.get(key)

    # ---- the master's primitives
    def reset(self):
        f = self.fault()
        self._active = [d for d in self.devices if d._fault() != "absent"] \
            if f not in ("short", "open") else []
        self._state = ["rom", 0, 0]  # phase, bits collected, value
        return bool(self._active)

    def _line(self):
        return 0 if self.fault() == "short" else None

    def readbit(self):
        if self._line() == 0:
            return 0
        st = self._state
        if st is None or not self._active:
            return 1
        kind = st[0]
        if kind == "search":
            i, phase = st[1], st[2]
            bits = [(d.rom[i >> 3] >> (i & 7)) & 1 for d in self._active]
            if phase == 0:
                st[2] = 1
                return 1 if all(bits) else 0
            if phase == 1:
                st[2] = 2
                return 1 if all(1 - b for b in bits) else 0
            return 1
        if kind == "out":
            data, n = st[1], st[2]
            st[2] = n + 1
            if n >= len(data) * 8:
                return 1
            return (data[n >> 3] >> (n & 7)) & 1
        if kind == "converting":
            return 0 if any(d.busy() for d in self._active) else 1
        return 1

    def writebit(self, bit):
        st = self._state
        if st is None or not self._active:
            return
        kind = st[0]
        if kind == "search":
            i = st[1]
            self._active = [d for d in self._active if (d.rom[i >> 3] >> (i & 7)) & 1 == bit]
            st[1], st[2] = i + 1, 0
            if st[1] == 64:
                self._state = ["func", 0, 0]
            return
        if kind in ("rom", "func", "match", "write"):
            n = st[1]
            st[2] |= (bit & 1) << n
            st[1] = n + 1
            if kind == "match" and st[1] == 64:
                rom = st[2].to_bytes(8, "little")
                self._active = [d for d in self._active if d.rom == rom]
                self._state = ["func", 0, 0]
            elif kind == "write" and st[1] == 24:
                for d in self._active:
                    v = st[2]
                    d.sp[2], d.sp[3], d.sp[4] = v & 0xFF, (v >> 8) & 0xFF, ((v >> 16) & 0x60) | 0x1F
                    d.sp[8] = crc8(d.sp[:8])
                self._state = None
            elif kind in ("rom", "func") and st[1] == 8:
                self._command(kind, st[2])

    def _command(self, kind, cmd):
        if kind == "rom":
            if cmd == 0xF0:
                self._state = ["search", 0, 0]
            elif cmd == 0x55:
                self._state = ["match", 0, 0]
            elif cmd == 0xCC:
                self._state = ["func", 0, 0]
            elif cmd == 0x33:
                rom = self._active[0].rom if len(self._active) == 1 else bytes(
                    a & b for a, b in zip(*(d.rom for d in self._active)))
                self._state = ["out", rom, 0]
            else:
                self._state = None
            return
        if cmd == 0x44:
            for d in self._active:
                d.convert()
            self._state = ["converting", 0, 0]
        elif cmd == 0xBE:
            sp = self._active[0].scratchpad()
            for d in self._active[1:]:  # several talking at once: wired-AND
                sp = bytes(a & b for a, b in zip(sp, d.scratchpad()))
            self._state = ["out", sp, 0]
        elif cmd == 0x4E:
            self._state = ["write", 0, 0]
        else:
            self._state = None


def bus(gpio):
    b = hw.board()
    buses = getattr(b, "onewire", None)
    if buses is None:
        buses = b.onewire = {}
        for key, spec in (b.spec.get("onewire") or {}).items():
            line = buses[int(key)] = Bus(int(key))
            for n, dev in enumerate(spec.get("devices") or ()):
                if dev.get("model") != "ds18b20":
                    raise ValueError("board.json onewire.%s.devices[%d]: unknown model %r"
                                     % (key, n, dev.get("model")))
                kw = dict(dev)
                kw.pop("model")
                line.attach(DS18B20(**kw))
    line = buses.get(gpio)
    if line is None:
        line = buses[gpio] = Bus(gpio)
    return line


def attach(gpio, model):
    return bus(gpio).attach(model)
