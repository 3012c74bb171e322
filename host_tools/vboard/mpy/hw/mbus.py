"""A wired M-Bus meter (EN 13757-2 link layer, EN 13757-3 application layer) on a serial line:
water, gas or heat meter, answering with the frame layouts meters in the field send."""

# MBusMeter(address=1, serial=12345678, manufacturer="ZRI", version=0x01, medium="water" |
#           "gas" | "heat", baudrate=2400): on an 8E1 line (a UART with other settings
# hears noise). Link layer: SND_NKE (10 40 A CS 16) -> E5, and deselects a selected meter when
# sent to 0xFD; REQ_UD2 (10 5B/7B A CS 16, FCV set, FCB toggling) -> RSP_UD long frame
# (68 L L 68 08 A 72 ... CS 16); SND_UD with CI 0x52 to 0xFD (secondary address selection:
# ID BCD, manufacturer, version, medium; F nibbles / FF bytes are wildcards) -> E5 from the
# meter that matches, which then answers REQ_UD2 at 0xFD. A frame with a bad checksum or for
# another address gets no answer. Addresses 254 (broadcast, answered) work too.
# FCB (EN 13757-2 5.4): a REQ_UD2 whose FCB equals the previous one is a repetition: the meter
# sends the same telegram again (same access number); a toggled FCB gets a new telegram and the
# access number counts up. SND_NKE resets it (the next REQ_UD2 is new whatever its FCB).
#
# RSP_UD, CI 0x72: fixed header (ID 4 bytes BCD LSB first, manufacturer 2 bytes, version,
# medium 0x07 water / 0x03 gas / 0x04 heat, access number, status, signature 00 00), then the
# records (DIF [DIFE...] VIF [VIFE...] data), per medium:
#   water: 0C 13 volume 8-digit BCD 0.001 m3 | 4C 13 volume at due date (storage 1) |
#          42 6C due date (type G) | 0B 3B flow 6-digit BCD 0.001 m3/h |
#          8C 10 13 volume tariff 1 (a DIFE) | 04 6D date and time (type F) |
#          0A 5A flow temperature 4-digit BCD 0.1 degC | 02 FD 17 error flags (VIF extension
#          table FD) | 84 01 93 3D backward-flow volume, storage 2 (DIFE, VIF with a VIFE)
#   gas:   0C 13 volume | 04 6D date and time | 02 FD 17 error flags
#   heat:  04 06 energy kWh (32-bit) | 0C 13 volume | 0A 5A flow and 0A 5E return
#          temperature 0.1 degC | 0B 2D power 0.1 kW (6-digit BCD) | 04 6D | 02 FD 17
# Values from env.json "mbus": {"<serial>": {"volume_l": 123456, "flow_l_h": 540,
# "flow_temp_c": 11.3, "return_temp_c": 8.0, "energy_kwh": 4567, "power_w": 1200,
# "error_flags": 0}} (defaults as written); the meter's clock is the host's UTC time.
# Faults "uart<id>:<address>" as in hw/uart.py; and "mbus:<serial>": "checksum" (wrong CS),
# "length" (the second L byte differs), "short" (the frame is cut 5 bytes before its end).
# Test hook: `telegrams` counts the telegrams built (repetitions not counted).

import time

import hw

_MEDIA = {"water": 0x07, "gas": 0x03, "heat": 0x04}
_DEFAULTS = {"volume_l": 123456, "flow_l_h": 540, "flow_temp_c": 11.3, "return_temp_c": 8.0,
             "energy_kwh": 4567, "power_w": 1200, "error_flags": 0}


def bcd(value, nbytes):
    out = bytearray(nbytes)
    v = abs(int(value))
    for i in range(nbytes):
        out[i] = (v % 10) | ((v // 10 % 10) << 4)
        v //= 100
    if value < 0:
        out[-1] = (out[-1] & 0x0F) | 0xF0
    return bytes(out)


def le(value, nbytes):
    return bytes((int(value) >> (8 * i)) & 0xFF for i in range(nbytes))


def manufacturer_code(name):
    return ((ord(name[0]) - 64) << 10) | ((ord(name[1]) - 64) << 5) | (ord(name[2]) - 64)


def date_g(y, m, d):
    return bytes((d | ((y - 2000) & 7) << 5, m | (((y - 2000) >> 3) & 15) << 4))


def datetime_f(y, mo, d, h, mi):
    return bytes((mi, h, d | ((y - 2000) & 7) << 5, mo | (((y - 2000) >> 3) & 15) << 4))


def checksum(data):
    return sum(data) & 0xFF


class MBusMeter:
    def __init__(self, address=1, serial=12345678, manufacturer="ZRI", version=1,
                 medium="water", baudrate=2400):
        if medium not in _MEDIA:
            raise ValueError("medium must be water, gas or heat: got %r" % (medium,))
        self.address = address
        self.fault_key = address
        self.serial = serial
        self.manufacturer = manufacturer
        self.version = version
        self.medium = medium
        self.line = (baudrate, 8, 0, 1)
        self.selected = False
        self.access = 0
        self.telegrams = 0
        self._last_fcb = None
        self._last = None
        self.bus = None

    def _values(self):
        e = hw.env()
        e.refresh()
        v = dict(_DEFAULTS)
        v.update((e.data.get("mbus") or {}).get(str(self.serial), {}))
        return v

    def _addressed(self, a):
        return a == self.address or a == 254 or (a == 0xFD and self.selected)

    def receive(self, data):
        if data == b"":
            return None
        if data[0] == 0x10 and len(data) == 5:
            c, a = data[1], data[2]
            if data[4] != 0x16 or data[3] != checksum(data[1:3]):
                return None
            if c == 0x40:
                if a == 0xFD:
                    self.selected = False
                    return None
                if not self._addressed(a):
                    return None
                self._last_fcb = None
                return 2000, b"\xE5"
            if c in (0x5B, 0x7B) and self._addressed(a):
                fcb = c & 0x20
                if self._last is None or self._last_fcb is None or fcb != self._last_fcb:
                    self._last = self._telegram()
                self._last_fcb = fcb
                return 10000, self._damage(self._last)
            return None
        if data[0] == 0x68 and len(data) >= 9 and data[1] == data[2] and data[3] == 0x68:
            body = data[4:-2]
            if data[-1] != 0x16 or data[-2] != checksum(body) or len(body) != data[1]:
                return None
            c, a, ci = body[0], body[1], body[2]
            if c in (0x53, 0x73) and a == 0xFD and ci == 0x52 and len(body) == 11:
                self.selected = self._matches(body[3:11])
                return (2000, b"\xE5") if self.selected else None
        return None

    def _matches(self, sel):
        mine = bcd(self.serial, 4) + le(manufacturer_code(self.manufacturer), 2) + \
            bytes((self.version, _MEDIA[self.medium]))
        for i in range(4):  # BCD nibbles, F = any
            for shift in (0, 4):
                n = (sel[i] >> shift) & 15
                if n != 15 and n != (mine[i] >> shift) & 15:
                    return False
        return all(sel[i] == 0xFF or sel[i] == mine[i] for i in range(4, 8))

    def _telegram(self):
        self.telegrams += 1
        self.access = (self.access + 1) & 0xFF
        v = self._values()
        t = time.gmtime()
        now = datetime_f(t[0], t[1], t[2], t[3], t[4])
        status = 0x00 if not v["error_flags"] else 0x08
        head = bcd(self.serial, 4) + le(manufacturer_code(self.manufacturer), 2) + \
            bytes((self.version, _MEDIA[self.medium], self.access, status, 0, 0))
        recs = bytearray()
        if self.medium == "heat":
            recs += b"\x04\x06" + le(v["energy_kwh"], 4)
            recs += b"\x0C\x13" + bcd(v["volume_l"], 4)
            recs += b"\x0A\x5A" + bcd(round(v["flow_temp_c"] * 10), 2)
            recs += b"\x0A\x5E" + bcd(round(v["return_temp_c"] * 10), 2)
            recs += b"\x0B\x2D" + bcd(v["power_w"] // 100, 3)
        else:
            recs += b"\x0C\x13" + bcd(v["volume_l"], 4)
            if self.medium == "water":
                recs += b"\x4C\x13" + bcd(max(0, v["volume_l"] - 20000), 4)
                recs += b"\x42\x6C" + date_g(t[0] - 1, 12, 31)
                recs += b"\x0B\x3B" + bcd(v["flow_l_h"], 3)
                recs += b"\x8C\x10\x13" + bcd(v["volume_l"] // 3, 4)
                recs += b"\x0A\x5A" + bcd(round(v["flow_temp_c"] * 10), 2)
                recs += b"\x84\x01\x93\x3D" + le(17, 4)
        recs += b"\x04\x6D" + now
        recs += b"\x02\xFD\x17" + le(v["error_flags"], 2)
        body = bytes((0x08, self.address if self.address != 254 else 0, 0x72)) + head + recs
        return bytes((0x68, len(body), len(body), 0x68)) + body + \
            bytes((checksum(body), 0x16))

    def _damage(self, frame):
        e = hw.env()
        e.refresh()
        f = (e.faults or {}).get("mbus:%d" % self.serial)
        if f == "checksum":
            return frame[:-2] + bytes(((frame[-2] + 1) & 0xFF, 0x16))
        if f == "length":
            return frame[:2] + bytes((frame[2] + 1,)) + frame[3:]
        if f == "short":
            return frame[:-5]
        return frame
