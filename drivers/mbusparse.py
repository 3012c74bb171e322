"""EN 13757-3 variable data telegrams (CI 0x72, long header) decoded into records of integer
values with a power-of-ten exponent (no floats unless the meter sends a 32-bit real).

    t = parse(frame)   # a long frame checked by mbus.check_long()
    # {"id": 12345678, "manufacturer": "ZRI", "medium": 7, "access": 42, "status": 0,
    #  "records": [("m3", -3, 123456, storage, tariff, subunit, function, vifes), ...]}
"""

from micropython import const

from mbus import MBusError

_CI_RSP_LONG = const(0x72)
# primary VIF (without the extension bit) -> (mask base, mask, unit, exponent offset)
_VIFS = (
    (0x00, 0x78, "Wh", -3), (0x08, 0x78, "J", 0), (0x10, 0x78, "m3", -6),
    (0x18, 0x78, "kg", -3), (0x28, 0x78, "W", -3), (0x30, 0x78, "J/h", 0),
    (0x38, 0x78, "m3/h", -6), (0x40, 0x78, "m3/min", -7), (0x48, 0x78, "m3/s", -9),
    (0x50, 0x78, "kg/h", -3), (0x58, 0x7C, "flow_temp_C", -3), (0x5C, 0x7C, "return_temp_C", -3),
    (0x60, 0x7C, "temp_diff_K", -3), (0x64, 0x7C, "ext_temp_C", -3), (0x68, 0x7C, "bar", -3),
)
_SIZES = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, -1, 6, 0)  # data field coding -> bytes


def _value(data, i, coding, size):
    """(value, exponent adjustment) of one data field."""
    if coding in (9, 10, 11, 12, 14):  # BCD
        v, neg = 0, False
        for k in range(size - 1, -1, -1):
            b = data[i + k]
            hi, lo = b >> 4, b & 15
            if k == size - 1 and hi == 15:
                neg, hi = True, 0
            if hi > 9 or lo > 9:
                raise MBusError("record at offset %d: invalid BCD byte 0x%02x" % (i, b))
            v = v * 100 + hi * 10 + lo
        return -v if neg else v
    if coding == 5:
        import struct

        return struct.unpack_from("<f", data, i)[0]
    v = 0
    for k in range(size - 1, -1, -1):
        v = (v << 8) | data[i + k]
    if v >> (8 * size - 1):
        v -= 1 << (8 * size)
    return v


def _vif(vif):
    """(unit, exponent) of a primary VIF (extension bit cleared)."""
    for base, mask, unit, off in _VIFS:
        if vif & mask == base:
            return unit, (vif & ~mask & 0x7F) + off
    if vif & 0x7E == 0x6C:
        return ("date" if vif == 0x6C else "datetime"), 0
    if vif & 0x7C in (0x20, 0x24, 0x70, 0x74):
        return ("on_time", "operating_time", "averaging", "actuality")[
            (0x20, 0x24, 0x70, 0x74).index(vif & 0x7C)] + "_" + "smhd"[vif & 3], 0
    return {0x78: ("fabrication_no", 0), 0x79: ("identification", 0),
            0x7A: ("bus_address", 0), 0x7E: ("any", 0)}.get(vif, ("vif_%02x" % vif, 0))


def parse(frame):
    """A checked RSP_UD frame (68 L L 68 C A CI ... CS 16) -> dict with id, manufacturer,
    version, medium, access, status and records: (unit, exponent, value, storage, tariff,
    subunit, function, vifes) tuples; dates are (y, m, d) / (y, m, d, h, min)."""
    ci = frame[6]
    if ci != _CI_RSP_LONG:
        raise MBusError("CI 0x%02x at offset 6: only 0x72 (variable data, long header) is read"
                        % ci)
    end = len(frame) - 2
    h = 7
    ident = 0
    for k in range(3, -1, -1):
        b = frame[h + k]
        ident = ident * 100 + (b >> 4) * 10 + (b & 15)
    man = frame[h + 4] | (frame[h + 5] << 8)
    out = {"id": ident, "address": frame[5],
           "manufacturer": "".join(chr(((man >> s) & 31) + 64) for s in (10, 5, 0)),
           "version": frame[h + 6], "medium": frame[h + 7], "access": frame[h + 8],
           "status": frame[h + 9], "records": []}
    i = h + 12
    while i < end:
        dif = frame[i]
        i += 1
        if dif == 0x2F:  # idle filler
            continue
        if dif in (0x0F, 0x1F):  # manufacturer-specific data to the end
            out["more"] = dif == 0x1F
            break
        storage, tariff, subunit, shift = (dif >> 6) & 1, 0, 0, 1
        ext = dif & 0x80
        n = 0
        while ext:
            if i >= end or n == 10:
                raise MBusError("record at offset %d: DIFE chain runs past the data" % i)
            e = frame[i]
            i += 1
            n += 1
            storage |= (e & 15) << shift
            tariff |= ((e >> 4) & 3) << (2 * (n - 1))
            subunit |= ((e >> 6) & 1) << (n - 1)
            shift += 4
            ext = e & 0x80
        if i >= end:
            raise MBusError("record at offset %d: VIF missing" % i)
        vif = frame[i]
        i += 1
        vifes = []
        if vif in (0xFB, 0xFD):
            table = vif
            vif = None
        elif vif in (0x7C, 0xFC):  # plain-text unit: length + ASCII (reversed)
            i += 1 + frame[i]
            table = None
        else:
            table = None
        ext = 0x80 if table else vif is not None and vif & 0x80
        while ext:
            if i >= end or len(vifes) == 10:
                raise MBusError("record at offset %d: VIFE chain runs past the data" % i)
            vifes.append(frame[i])
            ext = frame[i] & 0x80
            i += 1
        coding = dif & 15
        size = _SIZES[coding]
        if coding == 13:  # variable length: LVAR
            size = frame[i] if frame[i] < 0xC0 else 0
            i += 1
        if i + size > end:
            raise MBusError("record at offset %d: %d data bytes run past the frame" % (i, size))
        if table == 0xFD and vifes and vifes[0] & 0x7F == 0x17:
            unit, exp = "error_flags", 0
        elif table is not None:
            unit, exp = "vif_%02x_%02x" % (table, vifes[0] & 0x7F if vifes else 0), 0
        elif vif is None or vif & 0x7F in (0x7C, 0x7F):
            unit, exp = "text" if vif is not None and vif & 0x7F == 0x7C else "manufacturer", 0
        else:
            unit, exp = _vif(vif & 0x7F)
        if size == 0 or coding in (8, 13):
            value = None
        elif unit == "date":
            b0, b1 = frame[i], frame[i + 1]
            value = (2000 + (((b1 >> 4) << 3) | (b0 >> 5)), b1 & 15, b0 & 31)
        elif unit == "datetime":
            b0, b1, b2, b3 = frame[i], frame[i + 1], frame[i + 2], frame[i + 3]
            value = (2000 + (((b3 >> 4) << 3) | (b2 >> 5)), b3 & 15, b2 & 31, b1 & 31, b0 & 63)
        else:
            value = _value(frame, i, coding, size)
        i += size
        out["records"].append((unit, exp, value, storage, tariff, subunit, (dif >> 4) & 3,
                               tuple(vifes)))
    return out


def scaled(value, exp, to_exp):
    """value * 10^exp expressed in units of 10^to_exp, rounded to nearest."""
    d = exp - to_exp
    if isinstance(value, float):
        x = value * 10 ** d
        return int(x + 0.5) if x >= 0 else -int(0.5 - x)
    if d >= 0:
        return value * 10 ** d
    q = 10 ** -d
    return (2 * value + (q if value >= 0 else -q)) // (2 * q)
