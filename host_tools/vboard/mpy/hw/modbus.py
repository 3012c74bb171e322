"""A Modbus RTU slave on a serial line (Modbus over Serial Line V1.02 and the Modbus Application
Protocol V1.1b3): a water-quality probe, an ultrasonic flow meter, a combustible-gas or CO
detector, a water level sensor or a sound level meter, by register map."""

# ModbusSlave(address=1, profile="water_quality" | "flow", baudrate=9600, parity=None, stop=1,
#             registers=None): answers function 03 (read holding registers) and 04 (read input
# registers, the same map here) for its own address; 0 (broadcast) and other addresses get no
# answer. A request with a bad CRC is ignored, as the standard says (the master times out).
# Exceptions: 01 illegal function (any other function code), 02 illegal data address (a
# register outside the map), 03 illegal data value (quantity 0 or over 125), 06 busy (while
# `busy` is set). Turnaround: 3 ms after the request's last byte.
#
# Profiles (the values come from env.json at each request, so a test changes the water):
#   water_quality: 0 pH x100 (env "ph", default 7.2), 1 turbidity NTU x100 ("turbidity_ntu",
#     0.8), 2 conductivity uS/cm ("conductivity_us_cm", 540), 3 free chlorine mg/L x100
#     ("chlorine_mg_l", 0.35), 4 water temperature degC x100, signed ("water_temperature_c",
#     12.5)
#   flow: 0-1 flow rate m3/h as an IEEE 754 float, high word first ("flow_m3_h", 3.6), 2-3
#     total m3 x1000 (litres) as an unsigned 32-bit integer, high word first ("total_l",
#     123456), 4 error flags (bit 0: no signal, "flow_error" 0)
#   gas_lel: a fixed combustible-gas (methane) transmitter: 0 concentration in 0.1 % LEL
#     ("methane_lel", 0.0), 1 status word (bit 0 alarm 1, bit 1 alarm 2 at the detector's own
#     set points 20 / 40 % LEL, bit 3 fault: "gas_fault" 0); the layout of the concentration
#     and status registers of fixed detectors such as Pemtech's PT495 (40001 concentration in
#     tenths, 40002 status) and IGD's TOC-635 (status bit 3 fault)
#   gas_co: the same for carbon monoxide: 0 ppm ("co_ppm", 0), 1 status (set points 30 / 150
#     ppm, bit 3 fault "gas_fault")
#   level: an ultrasonic / radar level sensor: 0 level in mm ("level_m", 0.5), 1 distance from
#     the sensor face to the water in mm ("mount_m" 3.0 minus the level), 2 status (bit 0: no
#     echo, "level_fault" 0)
#   noise: a class 2 sound level meter module: 0 LAeq over its interval in 0.1 dB(A)
#     ("laeq_db", 45.0), 1 LAmax (fast) in 0.1 dB(A) ("lamax_db", 52.0), 2 status (bit 0:
#     microphone fault, "noise_fault" 0)
# `registers` ({reg: value}) overrides single registers.
# Test hook: `requests` counts the valid requests addressed to this slave.

import struct

import hw

_MAPS = {
    "water_quality": (("ph", 7.2, 100, False), ("turbidity_ntu", 0.8, 100, False),
                      ("conductivity_us_cm", 540, 1, False), ("chlorine_mg_l", 0.35, 100, False),
                      ("water_temperature_c", 12.5, 100, True)),
}


_PROFILES = ("water_quality", "flow", "gas_lel", "gas_co", "level", "noise")


def crc16(data):
    c = 0xFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ 0xA001 if c & 1 else c >> 1
    return c


class ModbusSlave:
    def __init__(self, address=1, profile="water_quality", baudrate=9600, parity=None, stop=1,
                 registers=None):
        if profile not in _PROFILES:
            raise ValueError("profile must be one of %s: got %r" % (", ".join(_PROFILES),
                                                                   profile))
        self.address = address
        self.fault_key = address
        self.profile = profile
        self.line = (baudrate, 8, parity, stop)
        self.overrides = dict(registers or {})
        self.busy = False
        self.requests = 0
        self.bus = None

    def _map(self):
        e = hw.env()
        e.refresh()
        regs = {}
        if self.profile == "flow":
            w = struct.pack(">fIH", float(e.data.get("flow_m3_h", 3.6)),
                            int(e.data.get("total_l", 123456)), int(e.data.get("flow_error", 0)))
            for i in range(5):
                regs[i] = (w[2 * i] << 8) | w[2 * i + 1]
        elif self.profile in ("gas_lel", "gas_co"):
            lel = self.profile == "gas_lel"
            v = float(e.data.get("methane_lel" if lel else "co_ppm", 0.0))
            code = int(round(v * 10 if lel else v))
            al1, al2 = (200, 400) if lel else (30, 150)
            regs[0] = max(0, min(code, 0xFFFF))
            regs[1] = (1 if code >= al1 else 0) | (2 if code >= al2 else 0) \
                | (8 if e.data.get("gas_fault") else 0)
        elif self.profile == "level":
            level = float(e.data.get("level_m", 0.5))
            regs[0] = max(0, int(round(level * 1000)))
            regs[1] = max(0, int(round((float(e.data.get("mount_m", 3.0)) - level) * 1000)))
            regs[2] = 1 if e.data.get("level_fault") else 0
        elif self.profile == "noise":
            regs[0] = int(round(float(e.data.get("laeq_db", 45.0)) * 10))
            regs[1] = int(round(float(e.data.get("lamax_db", 52.0)) * 10))
            regs[2] = 1 if e.data.get("noise_fault") else 0
        else:
            for i, (key, default, mul, _signed) in enumerate(_MAPS[self.profile]):
                v = int(round(float(e.data.get(key, default)) * mul))
                regs[i] = v & 0xFFFF
        regs.update(self.overrides)
        return regs

    def _frame(self, body):
        c = crc16(body)
        return bytes(body) + bytes((c & 0xFF, c >> 8))

    def receive(self, data):
        if len(data) < 4 or data[0] != self.address:
            return None
        if crc16(data[:-2]) != data[-2] | (data[-1] << 8):
            return None  # a corrupted request is ignored
        self.requests += 1
        fn = data[1]
        if fn not in (3, 4) or len(data) != 8:
            return 3000, self._frame(bytes((self.address, fn | 0x80, 1)))
        if self.busy:
            return 3000, self._frame(bytes((self.address, fn | 0x80, 6)))
        start = (data[2] << 8) | data[3]
        count = (data[4] << 8) | data[5]
        if not 1 <= count <= 125:
            return 3000, self._frame(bytes((self.address, fn | 0x80, 3)))
        regs = self._map()
        if any(r not in regs for r in range(start, start + count)):
            return 3000, self._frame(bytes((self.address, fn | 0x80, 2)))
        out = bytearray((self.address, fn, 2 * count))
        for r in range(start, start + count):
            out.append(regs[r] >> 8)
            out.append(regs[r] & 0xFF)
        return 3000, self._frame(out)
