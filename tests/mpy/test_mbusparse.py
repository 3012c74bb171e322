# drivers/mbusparse.py against EN 13757-3's data field coding (clause 6.3, Annex A), in the
# MicroPython unix port with the 96 KB heap: variable-length data (LVAR), 32-bit reals that are
# NaN or infinite, BCD holding the digits A-F, dates (types G, F, I), identification numbers,
# and real meters' telegrams (tests/vectors/mbus/README.md: their source and licence).
#
# Frames are written out byte by byte: 68 L L 68 | C 08, A 01, CI 72 | ID (8 BCD digits, LSB
# first), manufacturer ZRI (49 6A), version 01, medium 07 water, access 2A, status 00,
# signature 00 00 | records: DIF [DIFE..] VIF [VIFE..] data, multi-byte data LSB first | CS 16.
# The first record is at frame offset 19; a problem names the offset of its record's DIF.
import os

import mbus
import mbusparse
from driver_support import expect_oserror

VECTORS = os.getenv("METERLINK_ROOT") + "/tests/vectors/mbus/"
HEAD = b"\x49\x6a\x01\x07\x2a\x00\x00\x00"
TOTAL = b"\x0c\x13\x78\x56\x34\x12"  # volume, 8-digit BCD, 0.001 m3: 12345.678 m3
BCD = "value unavailable: hex digit in BCD"
NO_DATE = "date unavailable: no calendar date"
NO_TIME = "date/time unavailable: no calendar date and time"
IV = "date/time unavailable: invalid-time bit (IV) set"
NOT_ID = "identification is not BCD"
parse = mbusparse.parse


def telegram(records, ident=b"\x78\x56\x34\x12"):
    body = b"\x08\x01\x72" + ident + HEAD + records
    f = bytes((0x68, len(body), len(body), 0x68)) + body + bytes((sum(body) & 0xFF, 0x16))
    assert mbus.check_long(f, len(f)) == len(f)
    return f


def vector(name):
    with open(VECTORS + name + ".hex") as fh:
        f = bytes.fromhex(fh.read().strip())
    assert mbus.check_long(f, len(f)) == len(f)
    return f


def values(t):
    return [r[:3] for r in t["records"]]


def little(data):
    return int.from_bytes(data, "little")


# 1. Variable length (DIF data field D): the LVAR byte after the VIF gives the type and length
# (EN 13757-3 Table 5: 00-BF text, C0-C9 / D0-D9 positive / negative BCD of LVAR-C0 / LVAR-D0
# bytes, E0-EF binary of LVAR-E0 bytes, F0-F4 binary of 4 * (LVAR-EC) bytes, F5 48 and F6 64
# bytes, the rest reserved; m-bus-parser's decoder reads the same lengths).
def test_variable_length_data_in_every_range_keeps_the_position():
    t = parse(telegram(
        b"\x0d\xfd\x0c\x03" b"21V"           # 19: FD 0C model/version, text "V12" sent reversed
        b"\x0d\x13\xc2\x34\x12"              # 26: volume, positive BCD of 2 bytes: 1.234 m3
        b"\x0d\x61\xd1\x18"                  # 31: temperature difference, negative BCD: -0.18 K
        b"\x0d\x2b\xe3\x40\xe2\x01"          # 35: power, binary of 3 bytes: 0x01E240 W
        b"\x0d\x2b\xe3\xff\xff\xff"          # 41: power, binary: -1 W
        b"\x0d\xfd\x0b\xf0" + bytes(range(1, 17))  # 47: FD 0B, binary of 16 bytes
        + b"\x0d\xfd\x0b\xf4" + bytes(range(32))   # 67: 32 bytes
        + b"\x0d\xfd\x0b\xf5" + bytes(range(48))   # 103: 48 bytes
        + b"\x0d\xfd\x0b\xf6" + bytes(range(64))   # 155: 64 bytes
        + b"\x0d\x13\xc0" + TOTAL))                # 223: an empty BCD; 226: the billing total
    assert t["problems"] == [], t["problems"]
    assert values(t) == [
        ("vif_fd_0c", 0, "V12"), ("m3", -3, 1234), ("temp_diff_K", -2, -18), ("W", 0, 123456),
        ("W", 0, -1), ("vif_fd_0b", 0, little(bytes(range(1, 17)))),
        ("vif_fd_0b", 0, little(bytes(range(32)))), ("vif_fd_0b", 0, little(bytes(range(48)))),
        ("vif_fd_0b", 0, little(bytes(range(64)))), ("m3", -3, None),
        ("m3", -3, 12345678)], values(t)


def test_a_reserved_lvar_stops_with_its_offset_and_the_records_before_it_stand():
    for lvar in (0xCA, 0xCF, 0xDA, 0xF7, 0xFF):
        t = parse(telegram(TOTAL + b"\x0d\x13" + bytes((lvar,)) + b"\x11\x22" + TOTAL))
        assert values(t) == [("m3", -3, 12345678)], values(t)
        assert t["problems"] == [(25, "m3", "unsupported LVAR 0x%02x at offset 27: the records "
                                            "after it are not read" % lvar)], t["problems"]


def test_a_sixteen_byte_binary_lvar_of_a_real_meter():
    # libmbus prints this number MSB first: 17 3E D1 DC B3 1A B5 3D 01 93 A6 27 2A 5B 07 96
    t = parse(vector("binary16_lvar"))
    assert values(t) == [("text", 0, 0x173ED1DCB31AB53D0193A6272A5B0796)], values(t)
    assert t["problems"] == []


# 2. 32-bit real (coding 5, IEEE 754 LSB first): exponent bits all ones is NaN or infinity.
def test_nan_and_infinite_reals_are_reported_and_the_total_stands():
    t = parse(telegram(
        b"\x05\x5b\x00\x00\xc0\x7f"          # 19: flow temperature (degC): 7FC00000, NaN
        b"\x05\x5f\x00\x00\x80\xff"          # 25: return temperature: FF800000, -infinity
        b"\x05\x2b\x01\x00\x80\x7f"          # 31: power: 7F800001, a signalling NaN
        b"\x05\x5b\x00\x00\xb4\x41"          # 37: flow temperature: 41B40000, 22.5 degC
        + TOTAL))                            # 43
    assert values(t) == [("flow_temp_C", 0, 22.5), ("m3", -3, 12345678)], values(t)
    assert t["problems"] == [(19, "flow_temp_C", "value unavailable: 32-bit real is NaN"),
                             (25, "return_temp_C", "value unavailable: 32-bit real is infinite"),
                             (31, "W", "value unavailable: 32-bit real is NaN")], t["problems"]


# 3. BCD (type A): digits 0-9; F in the most significant digit is the minus sign, any other
# A-F (E on top included) is what meters send to show dashes or an error code.
def test_bcd_digits_a_to_f_are_unavailable_and_a_top_f_is_the_sign():
    t = parse(telegram(
        b"\x0c\x13\x56\x34\x12\x00"          # 19: volume 00123456: 123.456 m3
        b"\x0b\x2b\xaa\xaa\xaa"              # 25: power AAAAAA (dashes)
        b"\x0a\x5a\x00\xe1"                  # 30: flow temperature E100: E on top is no sign
        b"\x0a\x5a\x01\x1f"                  # 34: 1F01: F below the top digit
        b"\x0c\x13\xff\xff\xff\xff"          # 38: FFFFFFFF
        b"\x0b\x61\x18\x00\xf0"              # 44: temperature difference F00018: -0.18 K
        b"\x09\x5e\xf5"                      # 49: return temperature F5: -0.5 degC
        + TOTAL))                            # 52
    assert values(t) == [("m3", -3, 123456), ("temp_diff_K", -2, -18),
                         ("return_temp_C", -1, -5), ("m3", -3, 12345678)], values(t)
    assert t["problems"] == [(25, "W", BCD), (30, "flow_temp_C", BCD), (34, "flow_temp_C", BCD),
                             (38, "m3", BCD)], t["problems"]


def test_error_state_values_of_real_heat_meters_are_unavailable_not_numbers():
    # "value during error state" power and flow of an ABB F95 and an Elster F96 Plus, sent as
    # BCD DD B4 EB DD / BD EB DD DD: libmbus reads 1311041.3 W and 13131113 W out of them. The
    # other values as libmbus prints them (its .norm.xml), in this parser's units.
    t = parse(vector("abb_f95"))
    assert (t["id"], t["manufacturer"], t["medium"]) == (26718590, "HYD", 4)
    assert t["problems"] == [(31, "W", BCD), (37, "m3/h", BCD)], t["problems"]
    v = values(t)
    assert v[:6] == [("Wh", 2, 0), ("m3", -4, 742), ("flow_temp_C", -1, 204),
                     ("return_temp_C", -1, 204), ("temp_diff_K", -1, 0),
                     ("datetime", 0, (2012, 1, 13, 16, 34, 0, 0))], v
    assert [r[2] for r in t["records"] if r[0] == "datetime"][1:] == [
        (2011, 4, 30, 23, 59, 0, 0), (2012, 4, 30, 23, 59, 0, 0), (2011, 12, 31, 23, 59, 0, 0)]
    assert v[-1] == ("operating_time_h", 0, 86553)  # libmbus: 311590800 s
    t = parse(vector("elster_f96_plus"))
    assert t["id"] == 44493951 and t["problems"] == [(45, "W", BCD), (51, "m3/h", BCD)]
    v = values(t)
    assert v[4:9] == [("flow_temp_C", -1, 227), ("return_temp_C", -1, 226),
                      ("temp_diff_K", -1, 1), ("operating_time_d", 0, 730),
                      ("datetime", 0, (2014, 3, 13, 13, 9, 0, 0))], v
    assert v[-1] == ("date", 0, (2013, 5, 31)) and len(v) == 14


# 4. Dates. Type G (2 bytes): day bits 0-4 and year bits 0-2 in byte 1, month bits 0-3 and year
# bits 3-6 in byte 2. Type F (4 bytes): minute + IV (bit 7); hour + hundred-year (bits 5-6) + SU
# (bit 7); then a type G date. Type I (6 bytes): second; minute + SU (bit 6) + IV (bit 7); hour +
# day of week; date as type G; week + leap year.
def test_dates_of_types_g_f_and_i_with_century_summer_time_and_invalid_time():
    t = parse(telegram(
        b"\x02\x6c\x3f\x3c"                  # 19: G 2025-12-31
        b"\x04\x6d\x05\xae\x21\x37"          # 23: F 2025-07-01 14:05, hundred-year 1, summer
        b"\x04\x6d\x00\x40\xa5\x01"          # 29: F hundred-year 2, year 5: 2105-01-05 00:00
        b"\x04\x6d\x3b\x17\x7f\xcc"          # 35: F hundred-year 0, year 99: 1999-12-31 23:59
        b"\x06\x6d\x3a\x7b\x97\x1d\x32\x49"  # 41: I 2024-02-29 23:59:58, summer, Thursday, week 9
        b"\x02\x6c\xff\xff"                  # 49: G FF FF: month 15, year 127
        b"\x02\x6c\xfd\x22"                  # 53: G 2023-02-29
        b"\x04\x6d\x85\xae\x21\x37"          # 57: F with IV set
        b"\x04\x6d\x05\x18\x21\x37"          # 63: F hour 24
        b"\x06\x6d\x3a\xbb\x97\x1d\x32\x49"  # 69: I with IV set
        b"\x03\x6d\x3a\x3b\x17"              # 77: type J (time only), not decoded
        b"\x04\x6c\x3f\x3c\x00\x00"          # 82: a date VIF with 4 bytes: no type G
        + TOTAL))                            # 88
    assert values(t) == [
        ("date", 0, (2025, 12, 31)), ("datetime", 0, (2025, 7, 1, 14, 5, 0, 1)),
        ("datetime", 0, (2105, 1, 5, 0, 0, 0, 0)), ("datetime", 0, (1999, 12, 31, 23, 59, 0, 0)),
        ("datetime", 0, (2024, 2, 29, 23, 59, 58, 1)), ("m3", -3, 12345678)], values(t)
    assert t["problems"] == [
        (49, "date", NO_DATE), (53, "date", NO_DATE), (57, "datetime", IV),
        (63, "datetime", NO_TIME), (69, "datetime", IV),
        (77, "datetime", "datetime with data field coding 3: not decoded"),
        (82, "date", "date with data field coding 4: not decoded")], t["problems"]


def test_a_due_date_of_ff_ff_from_a_real_water_meter_is_unavailable():
    # libmbus issue 123: printed as 2127-15-31
    t = parse(vector("water_due_date_ffff"))
    assert (t["id"], t["manufacturer"]) == (9996879, "LSE")
    assert t["problems"] == [(37, "date", NO_DATE)], t["problems"]
    assert values(t)[:4] == [("datetime", 0, (2016, 10, 12, 6, 13, 0, 0)), ("m3", -3, 183),
                             ("m3", -3, 0), ("date", 0, (2016, 10, 13))], values(t)
    assert t["records"][3][6] == 3  # that date is a "value during error state"


# 5. Identification numbers: 8 BCD digits, no sign.
def test_identification_numbers_that_are_not_bcd_are_refused():
    expect_oserror(lambda: parse(telegram(TOTAL, ident=b"\x78\x56\x3a\x12")),
                   "identification number 123a5678 at offset 7 is not BCD")
    expect_oserror(lambda: parse(telegram(TOTAL, ident=b"\xff\xff\xff\xff")),
                   "identification number ffffffff at offset 7")
    t = parse(telegram(
        b"\x0c\x78\x78\x56\x34\x12"          # 19: fabrication number 12345678
        b"\x0c\x79\x78\x56\x34\xf2"          # 25: identification F2345678 (F is no sign here)
        b"\x0c\x78\x78\x56\xa4\x12"          # 31: fabrication number 12A45678
        + TOTAL))
    assert values(t) == [("fabrication_no", 0, 12345678), ("m3", -3, 12345678)], values(t)
    assert t["problems"] == [(25, "identification", NOT_ID), (31, "fabrication_no", NOT_ID)]
