# Device CBOR encoder against RFC 8949 Appendix A (integers, strings, arrays, maps, simple
# values). Runs in the MicroPython unix port (tests/mpy/run.py).
from binascii import hexlify

import cbor
import cbordec

U10151 = b"\xf0\x90\x85\x91".decode()  # U+10151, written as UTF-8 to stay ASCII here

INTEGERS = [
    (0, "00"), (1, "01"), (10, "0a"), (23, "17"), (24, "1818"), (25, "1819"), (100, "1864"),
    (1000, "1903e8"), (1000000, "1a000f4240"), (1000000000000, "1b000000e8d4a51000"),
    (18446744073709551615, "1bffffffffffffffff"), (-18446744073709551616, "3bffffffffffffffff"),
    (-1, "20"), (-10, "29"), (-100, "3863"), (-1000, "3903e7"),
]
STRINGS = [
    (b"", "40"), (b"\x01\x02\x03\x04", "4401020304"), ("", "60"), ("a", "6161"),
    ("IETF", "6449455446"), ("\"\\", "62225c"), ("\u00fc", "62c3bc"), ("\u6c34", "63e6b0b4"),
    (U10151, "64f0908591"),
]
ARRAYS = [
    ([], "80"), ([1, 2, 3], "83010203"), ([1, [2, 3], [4, 5]], "8301820203820405"),
    (list(range(1, 26)), "98190102030405060708090a0b0c0d0e0f101112131415161718181819"),
]
MAPS = [
    ({}, "a0"), ({1: 2, 3: 4}, "a201020304"), ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
    (["a", {"b": "c"}], "826161a161626163"),
    ({"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"}, "a56161614161626142616361436164614461656145"),
]
SIMPLE = [(False, "f4"), (True, "f5"), (None, "f6")]


def check(cases):
    for value, want in cases:
        got = hexlify(cbor.encode(value)).decode()
        assert got == want, "%r: got %s, want %s" % (value, got, want)


def test_integers():
    check(INTEGERS)


def test_strings():
    check(STRINGS)


def test_arrays():
    check(ARRAYS)


def test_maps():
    check(MAPS)


def test_simple_values():
    check(SIMPLE)


def test_integers_beyond_64_bits_are_refused():
    # RFC 8949 encodes these as bignums (tag 2/3); the wire format has no tags.
    for value in (18446744073709551616, -18446744073709551617):
        try:
            cbor.encode(value)
        except ValueError:
            continue
        raise AssertionError("encoded %d without a tag" % value)


def test_floats_are_refused():
    try:
        cbor.encode(1.5)
    except TypeError:
        return
    raise AssertionError("the device encoder must not encode floats")


def test_map_keys_sorted_by_encoding():
    # Core deterministic encoding sorts keys bytewise by their encoding (RFC 8949 4.2.1):
    # 01 < 18 64 < 20 < 61 61.
    got = hexlify(cbor.encode({100: 1, 1: 2, -1: 3, "a": 4})).decode()
    assert got == "a4" "0102" "1864" "01" "20" "03" "6161" "04", got


def test_streaming_encoder_overflows_cleanly():
    enc = cbor.Encoder(4)
    enc.array(1)
    try:
        enc.int(1000000)
    except OverflowError:
        return
    raise AssertionError("a full buffer must raise OverflowError")


# ------------------------------------------------------------------ decoder (downlink, queue)
def test_decoder_reads_the_rfc_vectors_back():
    from binascii import unhexlify

    for value, hx in INTEGERS + STRINGS + ARRAYS + MAPS + SIMPLE:
        got = cbordec.decode(unhexlify(hx))
        assert got == value, "%s: got %r, want %r" % (hx, got, value)


def expect_error(hx, offset, words):
    from binascii import unhexlify

    try:
        cbordec.decode(unhexlify(hx))
    except cbordec.DecodeError as exc:
        msg = str(exc)
        assert msg.startswith("offset %d:" % offset) and words in msg, "%s: %s" % (hx, msg)
        return
    raise AssertionError("%s decoded without error" % hx)


def test_decoder_rejects_with_offset():
    expect_error("", 0, "truncated")
    expect_error("a2616101", 4, "truncated")  # {"a": 1, <missing>
    expect_error("1a0001", 0, "4-byte argument")
    expect_error("9f01ff", 0, "indefinite")  # [_ 1]
    expect_error("f93c00", 0, "floats")  # 1.0 as half float
    expect_error("c1 1a 5bc8e6a0".replace(" ", ""), 0, "tags")
    expect_error("0102", 1, "1 trailing bytes")
    expect_error("a2616101616102", 4, "duplicate map key")
    expect_error("a1800a", 1, "map key must be")
    expect_error("62c328", 0, "UTF-8")
    expect_error("9affffffff", 0, "4294967295 elements")
    expect_error("8181818181818181818101", 8, "deeper than 8")
