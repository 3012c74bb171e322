"""CBOR encoder for the node (RFC 8949): the deterministic subset the wire format needs.

Why our own and not a library: micropython-lib's CBOR package cannot be installed on our build
machines from a registry, and on the device heap and flash decide. This encoder is a few
hundred bytes of bytecode, writes into one preallocated buffer that the caller reuses for every
message, and encodes only what the wire format uses (integers, text and byte strings, arrays,
maps, true/false/null). It never encodes floats: values are scaled integers (see
docs/wire-format.md).

Output is deterministic (RFC 8949 section 4.2.1): shortest integer heads, definite lengths, and
map keys sorted by their encoded bytes (`encode()` sorts; the streaming API leaves key order to
the caller, which writes keys in ascending order).

    enc = Encoder(128)
    enc.array(2); enc.int(1); enc.text("a")
    payload = enc.bytes()      # b'\\x82\\x01aa'

    encode({"a": 1, "b": [2, 3]})   # one-shot, allocates; for tests and rare messages

The decoder is `cbordec.py`, loaded only when a downlink message arrives.
"""

from micropython import const

_UINT = const(0)
_NINT = const(1)
_BYTES = const(2)
_TEXT = const(3)
_ARRAY = const(4)
_MAP = const(5)


class Encoder:
    """Streaming encoder into a fixed buffer; raises OverflowError when the buffer is full,
    which a caller building a size-bounded message uses to stop adding records."""

    def __init__(self, size=256):
        self.buf = bytearray(size)
        self.n = 0

    def reset(self):
        self.n = 0

    def mark(self):
        return self.n

    def rewind(self, mark):
        self.n = mark

    def bytes(self):
        return bytes(memoryview(self.buf)[: self.n])

    def view(self):
        return memoryview(self.buf)[: self.n]

    def _put(self, b):
        n = self.n
        if n >= len(self.buf):
            raise OverflowError("CBOR buffer full")
        self.buf[n] = b
        self.n = n + 1

    def _head(self, major, value):
        # value >= 0; shortest form: immediate, 1, 2, 4 or 8 bytes.
        mt = major << 5
        if value < 24:
            self._put(mt | value)
            return
        if value < 0x100:
            self._put(mt | 24)
            size = 1
        elif value < 0x10000:
            self._put(mt | 25)
            size = 2
        elif value < 0x100000000:
            self._put(mt | 26)
            size = 4
        elif value < 0x10000000000000000:
            self._put(mt | 27)
            size = 8
        else:
            raise ValueError("integer too large for CBOR")
        n = self.n
        if n + size > len(self.buf):
            raise OverflowError("CBOR buffer full")
        shift = (size - 1) * 8
        while shift >= 0:
            self.buf[n] = (value >> shift) & 0xFF
            n += 1
            shift -= 8
        self.n = n

    def int(self, value):
        if value >= 0:
            self._head(_UINT, value)
        else:
            self._head(_NINT, -1 - value)

    def text(self, s):
        b = s.encode() if isinstance(s, str) else s
        self._head(_TEXT, len(b))
        self._raw(b)

    def bytestring(self, b):
        self._head(_BYTES, len(b))
        self._raw(b)

    def _raw(self, b):
        n = self.n
        end = n + len(b)
        if end > len(self.buf):
            raise OverflowError("CBOR buffer full")
        self.buf[n:end] = b
        self.n = end

    def array(self, count):
        self._head(_ARRAY, count)

    def map(self, count):
        self._head(_MAP, count)

    def simple(self, value):
        # false 20, true 21, null 22
        self._put(0xE0 | value)

    def item(self, obj):
        """Encodes any supported value (recursively); map keys are sorted deterministically."""
        if obj is True:
            self.simple(21)
        elif obj is False:
            self.simple(20)
        elif obj is None:
            self.simple(22)
        elif isinstance(obj, int):
            self.int(obj)
        elif isinstance(obj, str):
            self.text(obj)
        elif isinstance(obj, (bytes, bytearray)):
            self.bytestring(obj)
        elif isinstance(obj, (list, tuple)):
            self.array(len(obj))
            for x in obj:
                self.item(x)
        elif isinstance(obj, dict):
            self.map(len(obj))
            pairs = [(encode(k), k) for k in obj]
            pairs.sort()
            for enc_key, k in pairs:
                self._raw(enc_key)
                self.item(obj[k])
        else:
            raise TypeError("cannot CBOR-encode %s" % type(obj).__name__)


def encode(obj, size=128):
    """One-shot encoding to bytes (allocates; grows the buffer as needed)."""
    while True:
        enc = Encoder(size)
        try:
            enc.item(obj)
            return enc.bytes()
        except OverflowError:
            size *= 4

