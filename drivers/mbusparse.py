"""EN 13757-3 variable data telegrams (CI 0x72, long header) decoded into records of integer
values with a power-of-ten exponent (no floats unless the meter sends a 32-bit real).

    t = parse(frame)   # a long frame checked by mbus.check_long()
    # {"id": 12345678, "manufacturer": "ZRI", "medium": 7, "access": 42, "status": 0,
    #  "records": [("m3", -3, 123456, storage, tariff, subunit, function, vifes), ...],
    #  "problems": [(31, "W", "value unavailable: hex digit in BCD"), ...]}

A value that cannot be decoded never becomes a number. Its record is left out of "records" and
listed in "problems" as (frame offset of its DIF, unit, reason); it is skipped by its length, so
the records after it (the billing total) still decode. Where the length itself is unknown
(a reserved LVAR or DIF) the records before it stand, the problem says where and why, and the
rest of the telegram is not read. A header that cannot be trusted raises MBusError.

MBusError, the M-Bus driver's one error (an OSError, as the sensors' contract asks), is defined
here and used by the link layer too: mbus.py imports this module, never the reverse.

Data field coding (DIF bits 0-3), EN 13757-3 clause 6.3 and Annex A, as read here:
- BCD (type A; codings 9-C, E; LSB first): an F in the most significant digit is the minus sign
  (negative power of a Techem Ultra S3 in libmbus issue 191; libmbus, wmbusmeters and
  m-bus-parser read it so). Any other digit A-F, including E on top and F lower down, is a meter
  showing dashes or an error code (ABB F95, Elster F96 "value during error state" records in
  libmbus's test frames): value unavailable.
- Identification numbers (header ID, VIF 78 fabrication number, 79 identification): 8 BCD
  digits, unsigned: a digit A-F refuses the header (MBusError) or the record (a problem).
- Integers (type B; codings 1-4, 6, 7): signed, LSB first. 32-bit real (coding 5): a NaN or
  infinity (exponent bits all ones) is unavailable and never reaches a float.
- Variable length (coding D) by its first byte, LVAR: 00-BF text of LVAR ISO 8859-1 characters
  (sent last character first); C0-C9 positive BCD of LVAR-C0 bytes ((LVAR-C0)*2 digits; libmbus
  and jMBus read twice as many bytes); D0-D9 negative BCD of LVAR-D0 bytes; E0-EF binary number
  of LVAR-E0 bytes; F0-F4 binary of 4*(LVAR-EC) bytes; F5 48 and F6 64 bytes (signed as the
  fixed-size integers). Anything else is reserved (the older M-Bus documentation had C0-CF,
  D0-DF and floats at F0-FA): "unsupported LVAR 0x.. at offset N", and no further records.
- Dates (bytes counted from 1 as sent, bits from 0): VIF 6C with coding 2 is type G, (y, m, d);
  VIF 6D with coding 4 is type F and with coding 6 type I, both (y, m, d, h, min, s, su): s is 0
  for type F, su 1 when the meter's clock is on summer time (F: byte 2 bit 7; I: byte 2 bit 6,
  beside IV; libmbus reads byte 1 bit 6, a bit of the daylight-saving deviation). The meter's
  local time, no time zone. Year: 7 bits, 0-99; type F's hundred-year bits c (byte 2, bits 5-6)
  give 1900 + 100 * c + year, and with c = 0 (types G and I always) 0-80 is 2000-2080 and 81-99
  1981-1999, the standard's rule for meters with two-digit years. The invalid-time bit (IV, bit
  7 of the minute byte), month 0 or 13-15, day 0 or past the month's end, hour > 23, minute or
  second > 59, year > 99 (127 and 15 are "every year / month" in time points) or another coding
  make it unavailable, never a wrong date: FF FF, a due date a meter had not reached (libmbus
  issue 123), used to read as 2127-15-31.
"""

from micropython import const

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
_REST = ": the records after it are not read"


class MBusError(OSError):
    """A frame or telegram that cannot be trusted (link layer or header), or no answer."""


def _bcd(data, i, size, signed):
    """The integer in `size` BCD bytes at data[i] (LSB first), or None when a digit is A-F;
    where `signed`, an F in the top digit is the minus sign."""
    v, neg = 0, False
    for k in range(size - 1, -1, -1):
        b = data[i + k]
        hi, lo = b >> 4, b & 15
        if signed and k == size - 1 and hi == 15:
            neg, hi = True, 0
        if hi > 9 or lo > 9:
            return None
        v = v * 100 + hi * 10 + lo
    return -v if neg else v


def _int(data, i, size):
    """Signed binary integer of `size` bytes at data[i], LSB first."""
    v = 0
    for k in range(size - 1, -1, -1):
        v = (v << 8) | data[i + k]
    if v >> (8 * size - 1):
        v -= 1 << (8 * size)
    return v


def _lvar(lvar):
    """Data bytes after the LVAR byte of a variable-length field; -1 for a reserved LVAR."""
    if lvar < 0xC0:
        return lvar  # text
    hi, lo = lvar >> 4, lvar & 15
    if hi == 0xC or hi == 0xD:
        return lo if lo < 10 else -1  # positive, negative BCD
    if hi == 0xE:
        return lo  # binary
    if lvar <= 0xF4:
        return 4 * (lvar - 0xEC)
    return 48 if lvar == 0xF5 else 64 if lvar == 0xF6 else -1


def _date(b0, b1, c):
    """(y, m, d) from the date bits of types G, F and I (day and low year bits in b0, month and
    high year bits in b1) and the hundred-year bits c, or None when it is no calendar date."""
    y, m, d = (b0 >> 5) | ((b1 >> 4) << 3), b1 & 15, b0 & 31
    if y > 99 or not 1 <= m <= 12 or d == 0:
        return None
    y += 1900 + 100 * (c or y <= 80)
    if m == 2:
        last = 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28
    else:
        last = 30 if m in (4, 6, 9, 11) else 31
    return None if d > last else (y, m, d)


def _value(b, i, coding, size, unit, lvar):
    """(value, None) of one data field, or (None, why) when it holds no usable value."""
    if size == 0 or coding == 8:
        return None, None  # no data, selection for readout
    if unit == "date" or unit == "datetime":
        return _time(b, i, coding, unit)
    ident = unit == "fabrication_no" or unit == "identification"
    if coding == 13:
        if lvar < 0xC0:
            return "".join(chr(b[k]) for k in range(i + size - 1, i - 1, -1)), None
        if lvar >= 0xE0:
            return _int(b, i, size), None
        v = _bcd(b, i, size, False)
        if v is None:
            return None, "value unavailable: hex digit in BCD"
        return (-v if lvar >= 0xD0 else v), None
    if coding == 5:
        if b[i + 3] & 0x7F == 0x7F and b[i + 2] & 0x80:
            nan = b[i + 2] & 0x7F or b[i + 1] or b[i]
            return None, "value unavailable: 32-bit real is " + ("NaN" if nan else "infinite")
        import struct

        return struct.unpack_from("<f", b, i)[0], None
    if coding > 8:
        v = _bcd(b, i, size, not ident)
        if v is None:
            return None, ("identification is not BCD" if ident else
                          "value unavailable: hex digit in BCD")
        return v, None
    return _int(b, i, size), None


def _time(b, i, coding, unit):
    """Types G, F and I (see the module docstring) as (value, None) or (None, why)."""
    if unit == "date" and coding == 2:
        d = _date(b[i], b[i + 1], 0)
        return (None, "date unavailable: no calendar date") if d is None else (d, None)
    if unit == "datetime" and coding == 4:  # type F
        s, mi, hour, c, su, d = 0, b[i], b[i + 1] & 31, (b[i + 1] >> 5) & 3, b[i + 1] >> 7, 2
    elif unit == "datetime" and coding == 6:  # type I
        s, mi, hour, c, su, d = b[i] & 63, b[i + 1], b[i + 2] & 31, 0, (b[i + 1] >> 6) & 1, 3
    else:  # e.g. type J (time of day, coding 3)
        return None, "%s with data field coding %d: not decoded" % (unit, coding)
    if mi & 0x80:
        return None, "date/time unavailable: invalid-time bit (IV) set"
    mi &= 63
    day = _date(b[i + d], b[i + d + 1], c)
    if day is None or hour > 23 or mi > 59 or s > 59:
        return None, "date/time unavailable: no calendar date and time"
    return day + (hour, mi, s, su), None


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
    version, medium, access, status, records: (unit, exponent, value, storage, tariff,
    subunit, function, vifes) tuples, and problems: (offset, unit, reason) of the records left
    out; dates are (y, m, d) / (y, m, d, h, min, s, su)."""
    ci = frame[6]
    if ci != _CI_RSP_LONG:
        raise MBusError("CI 0x%02x at offset 6: only 0x72 (variable data, long header) is read"
                        % ci)
    end = len(frame) - 2
    h = 7
    ident = _bcd(frame, h, 4, False)
    if ident is None:
        raise MBusError("identification number %02x%02x%02x%02x at offset %d is not BCD"
                        % (frame[h + 3], frame[h + 2], frame[h + 1], frame[h], h))
    man = frame[h + 4] | (frame[h + 5] << 8)
    problems = []
    out = {"id": ident, "address": frame[5],
           "manufacturer": "".join(chr(((man >> s) & 31) + 64) for s in (10, 5, 0)),
           "version": frame[h + 6], "medium": frame[h + 7], "access": frame[h + 8],
           "status": frame[h + 9], "records": [], "problems": problems}
    i = h + 12
    while i < end:
        at = i
        dif = frame[i]
        i += 1
        if dif == 0x2F:  # idle filler
            continue
        if dif in (0x0F, 0x1F):  # manufacturer-specific data to the end
            out["more"] = dif == 0x1F
            break
        if dif & 15 == 15:  # 3F-6F reserved, 7F global readout request: no length to skip by
            problems.append((at, None, "special-function DIF 0x%02x at offset %d%s"
                             % (dif, at, _REST)))
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
        if table == 0xFD and vifes and vifes[0] & 0x7F == 0x17:
            unit, exp = "error_flags", 0
        elif table is not None:
            unit, exp = "vif_%02x_%02x" % (table, vifes[0] & 0x7F if vifes else 0), 0
        elif vif & 0x7F in (0x7C, 0x7F):
            unit, exp = "text" if vif & 0x7F == 0x7C else "manufacturer", 0
        else:
            unit, exp = _vif(vif & 0x7F)
        coding = dif & 15
        size = _SIZES[coding]
        lvar = 0
        if coding == 13:  # variable length: LVAR
            if i >= end:
                raise MBusError("record at offset %d: LVAR missing" % i)
            lvar = frame[i]
            size = _lvar(lvar)
            if size < 0:
                problems.append((at, unit, "unsupported LVAR 0x%02x at offset %d%s"
                                 % (lvar, i, _REST)))
                break
            i += 1
        if i + size > end:
            raise MBusError("record at offset %d: %d data bytes run past the frame" % (i, size))
        value, why = _value(frame, i, coding, size, unit, lvar)
        i += size
        if why:
            problems.append((at, unit, why))
            continue
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
