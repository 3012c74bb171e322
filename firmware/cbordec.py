"""CBOR decoder for the node (RFC 8949): what the node receives in downlink `c`/`k` payloads.

    decode(b"\xa1aa\x01")          # {"a": 1}; DecodeError("offset N: ...") on bad input

The same subset the encoder (cbor.py) writes: integers, text and byte strings, arrays, maps,
true/false/null; definite lengths only, at most `max_depth` levels of nesting. Anything else,
a truncated item or trailing bytes is a DecodeError naming the byte offset, so an operator sees
exactly what was wrong with a downlink message. A separate module so that the node loads it
only while it handles a downlink message (heap).
"""


class DecodeError(ValueError):
    pass


class _Decoder:
    def __init__(self, buf, max_depth):
        self.buf = buf
        self.pos = 0
        self.max_depth = max_depth

    def fail(self, at, what):
        raise DecodeError("offset %d: %s" % (at, what))

    def head(self):
        buf = self.buf
        at = self.pos
        if at >= len(buf):
            self.fail(at, "truncated: expected a data item")
        ib = buf[at]
        major = ib >> 5
        info = ib & 0x1F
        self.pos = at + 1
        if info < 24:
            return at, major, info
        if info > 27:
            self.fail(at, "indefinite length or reserved additional info %d not supported" % info)
        size = 1 << (info - 24)
        end = self.pos + size
        if end > len(buf):
            self.fail(at, "truncated: %d-byte argument" % size)
        v = 0
        for i in range(self.pos, end):
            v = (v << 8) | buf[i]
        self.pos = end
        return at, major, v

    def item(self, depth):
        at, major, v = self.head()
        if major == 0:
            return v
        if major == 1:
            return -1 - v
        if major == 2 or major == 3:
            end = self.pos + v
            if end > len(self.buf):
                self.fail(at, "truncated: %d-byte string" % v)
            b = bytes(self.buf[self.pos:end])
            self.pos = end
            if major == 2:
                return b
            try:
                return b.decode()
            except UnicodeError:
                self.fail(at, "text string is not valid UTF-8")
        if major == 7:
            if v == 20:
                return False
            if v == 21:
                return True
            if v == 22:
                return None
            self.fail(at, "floats and simple value %d not supported" % v)
        if major == 6:
            self.fail(at, "tags not supported")
        if depth >= self.max_depth:
            self.fail(at, "nested deeper than %d levels" % self.max_depth)
        if v > len(self.buf) - self.pos:  # each element takes at least one byte
            self.fail(at, "truncated: %d elements announced" % v)
        if major == 4:
            return [self.item(depth + 1) for _ in range(v)]
        out = {}
        for _ in range(v):
            kat = self.pos
            k = self.item(depth + 1)
            if isinstance(k, (list, dict)):
                self.fail(kat, "map key must be an integer or a string")
            if k in out:
                self.fail(kat, "duplicate map key %r" % (k,))
            out[k] = self.item(depth + 1)
        return out


def decode(buf, max_depth=8):
    """Decodes exactly one CBOR item from `buf` (bytes-like)."""
    d = _Decoder(buf, max_depth)
    obj = d.item(0)
    if d.pos != len(buf):
        d.fail(d.pos, "%d trailing bytes after the item" % (len(buf) - d.pos))
    return obj
