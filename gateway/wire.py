"""Wire format v1: decoding reading messages, resolving them to SenML, and parsing topics.

Normative text: `docs/wire-format.md`; the test vectors in `tests/vectors/` (and the malformed
ones in `tests/vectors/invalid/`) pin the behaviour.

    reading = decode_reading(payload, default_table())
    senml = resolve("node-01", reading, default_table(), received_at=int(time.time()))

Every rejection is a `WireError` with a reason class (a key of `REASONS`, used as a counter
name by the gateway) and the byte offset of the CBOR item at fault, e.g.
`offset 14: record 1: channel key 7 value must be an integer, got float 3.5`.

How the decoder reads CBOR: the message uses only arrays, maps and integers, and all three are
nothing but a CBOR head, so the heads are parsed here and every error names the byte offset of
the item it is about (this is also the gateway's hot path: no decoder object per item). cbor2
is used only to show a wrong item in an error message: a non-integer item where an integer is
due is named from its initial byte and rendered with cbor2 when it decodes; a tag is never
handed to cbor2, which would otherwise turn tag 2 (bignum) into a plain integer.
"""

from __future__ import annotations

import io
import re
from datetime import datetime, timezone
from typing import Any, Iterator, NamedTuple, Sequence

import cbor2

from gateway.channels import ChannelTable, default_table
from gateway.errors import TopicError, WireError

FORMAT_VERSION = 1
MAX_PAYLOAD = 4096
MAX_RECORDS = 64
MAX_SEQ = 2**32 - 1
VALUE_LIMIT = 2**53  # |value| must be below: exact in a JSON (IEEE double) number
# Record times the gateway takes (see `reading_time_error`): SenML (RFC 8428 4.5.3) reads a time
# below 2^28 as relative to now, so no absolute time may be that small; by default nothing
# before 2020-01-01 (the configured `[ingest] time_min`) and nothing more than a day ahead.
SENML_RELATIVE_LIMIT = 2**28
TIME_MIN_DEFAULT = 1577836800  # 2020-01-01T00:00:00Z

# Reason classes of WireError, with what each covers. The gateway counts rejects by these.
REASONS: dict[str, str] = {
    "empty": "the payload has no bytes",
    "too_large": f"the payload is over {MAX_PAYLOAD} bytes",
    "cbor": "not well-formed CBOR: truncated item or reserved encoding",
    "trailing": "bytes after the end of the message array",
    "indefinite": "an indefinite-length array or map (definite lengths only)",
    "structure": "not [version, seq, time, record...]; a record that is not a map, holds no "
                 "channel value, or has a key that is not an unsigned integer or is repeated",
    "version": f"a format version other than {FORMAT_VERSION}",
    "type": "an integer field holding another type: float, string, tag, bool, null, ...",
    "range": "a number out of its limits: negative seq or key-0 delta, "
             "|value| >= 2^53, seq of a record over 2^32-1",
    "too_many_records": f"more than {MAX_RECORDS} records",
    "unknown_channel": "a channel key whose id is 0 or not in the table, or whose instance is "
                       "over 15",
    "time": "a record time outside the plausible window ([ingest] time_min to the gateway's "
            "clock plus max_future_s): a clock in milliseconds, unset or far off",
}

_MAJOR_NAMES = {2: "byte string", 3: "text string", 4: "array", 5: "map"}
_PREVIEW_CHARS = 24
# cbor2 5.9's C decoder leaks the text it was building (about 650 bytes) each time a text
# string is not valid UTF-8 and it raises: a node sending such payloads over and over would
# grow the gateway's memory without end. Decoding with str_errors="replace" never raises for
# that, and leaks nothing; `cbor_loads` then holds the text to strict UTF-8 itself.
_REPLACEMENT = "\ufffd"


class Record(NamedTuple):
    """One reading record: `elapsed` is seconds from the message `time` (the sum of the key-0
    deltas up to and including this record); `values` maps channel keys to absolute wire
    values (deltas added back), in wire order."""

    elapsed: int
    values: dict[int, int]


class Reading(NamedTuple):
    """A reading message in the gateway's one record shape: wire integers, deltas resolved,
    keys of the channel table. Record `i` has seq `seq + i`; `time` is as sent (negative:
    the node's clock was not set, `-1 - age`)."""

    seq: int
    time: int
    records: list[Record]

    @property
    def relative(self) -> bool:
        """True when the node's clock was not set and `time` encodes an age."""
        return self.time < 0

    @property
    def age(self) -> int | None:
        """Seconds from the first record to the building of the message (relative time only)."""
        return -1 - self.time if self.time < 0 else None

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.records) - 1

    def base_time(self, *, received_at: int) -> int:
        """Absolute Unix time that record elapsed times count from (the one place the
        relative-time rule is written: `time < 0` is anchored at `received_at`)."""
        return received_at - (-1 - self.time) if self.time < 0 else self.time


class _Parser:
    """Walks one payload; every method takes and returns byte offsets."""

    def __init__(self, payload: bytes) -> None:
        self.buf = payload
        self._decoder: cbor2.CBORDecoder | None = None

    @property
    def decoder(self) -> cbor2.CBORDecoder:
        """A cbor2 decoder on the payload, made on first use (only error messages need it)."""
        if self._decoder is None:
            self.fp = io.BytesIO(self.buf)
            self._decoder = cbor2.CBORDecoder(self.fp, str_errors="replace")  # _REPLACEMENT
        return self._decoder

    def _truncated(self, off: int, what: str) -> WireError:
        return WireError("cbor", off, f"{what} is truncated: the payload ends at byte "
                                      f"{len(self.buf)}")

    def head(self, off: int, what: str) -> tuple[int, int, int, int]:
        """`(major, additional info, argument, offset after the head)` of the item at `off`.

        For indefinite length (additional info 31) the argument is -1.
        """
        if off >= len(self.buf):
            raise self._truncated(off, what)
        initial = self.buf[off]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info, off + 1
        if info == 31:
            return major, info, -1, off + 1
        if info > 27:
            raise WireError("cbor", off, f"{what}: initial byte 0x{initial:02x} uses reserved "
                                         f"additional information {info}")
        size = 1 << (info - 24)
        end = off + 1 + size
        if end > len(self.buf):
            raise self._truncated(off, what)
        return major, info, int.from_bytes(self.buf[off + 1:end], "big"), end

    def _preview(self, off: int) -> str | None:
        """A short rendering of the item at `off` when cbor2 decodes it, else None."""
        decoder = self.decoder
        self.fp.seek(off)
        try:
            value = decoder.decode()
        except (cbor2.CBORDecodeError, RecursionError):
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            text = value if len(value) <= _PREVIEW_CHARS else value[:_PREVIEW_CHARS] + "..."
            return '"' + text.replace('"', '\\"') + '"'
        if isinstance(value, bytes):
            text = value[:_PREVIEW_CHARS // 2].hex()
            return f"h'{text}{'...' if len(value) > _PREVIEW_CHARS // 2 else ''}'"
        if isinstance(value, float):
            return repr(value)
        return None

    def describe(self, off: int, what: str) -> str:
        """What the item at `off` is, for 'must be X, got ...' messages."""
        major, info, arg, _ = self.head(off, what)
        if major in (0, 1):
            decoder = self.decoder
            self.fp.seek(off)
            try:
                value = decoder.decode()
            except cbor2.CBORDecodeError:
                return "integer"
            return f"{'negative ' if major == 1 else ''}integer {value}"
        if major in (2, 3):
            name = _MAJOR_NAMES[major]
            preview = self._preview(off) if info != 31 else None
            return f"{name} {preview}" if preview else name
        if major in (4, 5):
            return ("indefinite-length " if info == 31 else "") + _MAJOR_NAMES[major]
        if major == 6:
            return f"tag {arg}"
        # major 7: simple values and floats
        if info in (20, 21):
            return "bool " + ("true" if info == 21 else "false")
        if info == 22:
            return "null"
        if info == 23:
            return "undefined"
        if info in (25, 26, 27):
            preview = self._preview(off)
            return f"float {preview}" if preview else "float"
        if info == 31:
            raise WireError("cbor", off, f"{what}: unexpected break byte 0xff")
        return f"simple value {arg}"

    def integer(self, off: int, what: str) -> tuple[int, int]:
        """`(value, offset after)` of an integer item; WireError naming `what` otherwise.

        The value comes straight from the head (major 0: the argument, major 1: -1 - it):
        an integer is nothing but its head, and this is the hot path of every message.
        """
        major, info, arg, end = self.head(off, what)  # truncated head, reserved encoding
        if major not in (0, 1):
            raise WireError("type", off, f"{what} must be an integer, got "
                                         f"{self.describe(off, what)}")
        if info == 31:
            raise WireError("cbor", off, f"{what}: initial byte 0x{self.buf[off]:02x} is an "
                                         "integer with indefinite length, which is not "
                                         "well-formed")
        return (arg if major == 0 else -1 - arg), end


def _replaced(value: Any, depth: int = 0) -> bool:
    """True when a text string in `value` (keys too) holds U+FFFD."""
    if isinstance(value, str):
        return _REPLACEMENT in value
    if depth > 64:  # cbor2 stops far deeper payloads itself; this walk stays bounded
        return True
    if isinstance(value, (list, tuple)):
        return any(_replaced(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return any(_replaced(k, depth + 1) or _replaced(v, depth + 1)
                   for k, v in value.items())
    return False


def cbor_loads(payload: bytes) -> Any:
    """`cbor2.loads` with strict UTF-8, without the C decoder's leak (see `_REPLACEMENT`):
    decoded with replacement, and only when a text string then holds U+FFFD (invalid UTF-8,
    or a U+FFFD that was sent) decoded again by cbor2's pure-Python decoder, strictly, which
    does not leak; invalid UTF-8 is then a `CBORDecodeError`."""
    value = cbor2.loads(payload, str_errors="replace")
    if _replaced(value):
        from cbor2._decoder import loads as strict_loads

        try:
            value = strict_loads(payload)
        except Exception as exc:  # noqa: BLE001 - its own error classes, not cbor2's public ones
            raise cbor2.CBORDecodeValueError("a text string is not valid UTF-8") from exc
    return value


class _Fault(Exception):
    """A rule of the format broken by the decoded message, at item `path` (see `_locate`)."""

    def __init__(self, path: tuple[int, ...], reason: str, detail: str) -> None:
        super().__init__(detail)
        self.path, self.reason, self.detail = path, reason, detail


class _Odd(Exception):
    """The decoded message is not made of what the format allows where it is (a float, a
    text string, a tag's value, an array where an integer is due ...): `_locate` names it."""


# Paths of items for `_locate`: (0,) the message; (1, i) item i of the message array (0
# version, 1 seq, 2 time, 3 + r record r); (2, r, k) key k in record r (its first pair);
# (3, r, k) its value; (4, r) record r once its pairs are read (where "holds no channel value" is told).
_MESSAGE = (0,)
_new = tuple.__new__  # a NamedTuple made without its Python-level __new__ (hot path)
_ITEM_NAMES = ("version", "seq", "time")


def decode_reading(payload: bytes, table: ChannelTable | None = None) -> Reading:
    """The gateway's one decoder of reading messages (`r` topic payloads).

    Returns the message as a `Reading` (deltas resolved), or raises WireError (reason class,
    byte offset, detail) for anything wire format v1 rejects. `table` defaults to the table
    shipped with the gateway.

    How: cbor2's C decoder reads the payload, `_parse` holds the result to the format and
    computes the length of its shortest definite-length encoding. When that length is the
    payload's, nothing the decoded values cannot show is there either (a repeated map key,
    which the decode loses, an indefinite length, a tag, a non-shortest head or a trailing
    byte all make the payload longer). Otherwise, and for every fault, `_locate` walks the
    CBOR heads in byte order to name the first fault and its offset; a payload longer only
    by non-shortest heads is well-formed, and accepted with the values decoded.
    """
    table = table if table is not None else default_table()
    payload = bytes(payload)
    size = len(payload)
    if size == 0:
        raise WireError("empty", 0, "payload is empty")
    if size > MAX_PAYLOAD:
        raise WireError("too_large", 0,
                        f"payload too large: {size} bytes, at most {MAX_PAYLOAD}")
    try:  # no text belongs in a reading: replacement (no leak, _REPLACEMENT) is enough
        msg = cbor2.loads(payload, str_errors="replace")
    except Exception:  # noqa: BLE001 - not well-formed CBOR: `_locate` names what and where
        msg = _partial(payload)
    try:
        reading, encoded = _parse(msg, table)
    except _Fault as fault:
        raise _fault_error(payload, fault) from None
    except _Odd:
        _locate(payload, None)
        raise WireError("cbor", 0, "payload does not decode as a reading message") from None
    if encoded != size:
        _locate(payload, None)  # raises, unless only non-shortest heads made the difference
    return reading


class _Missing:
    """An item of the message array that `_partial` could not read."""


_MISSING = _Missing()


def _partial(payload: bytes) -> list[Any] | None:
    """The items of a message array that does not decode whole, each decoded on its own up
    to the first that cannot be, the rest `_MISSING`: so that a fault before the broken item
    (a version 2, a bad seq, an unknown key in an earlier record) is the one named."""
    p = _Parser(payload)
    try:
        major, info, count, pos = p.head(0, "message")
    except WireError:
        return None
    if major != 4 or info == 31 or count > MAX_PAYLOAD:  # (every item takes a byte)
        return None
    decoder = p.decoder
    p.fp.seek(pos)
    items: list[Any] = []
    while len(items) < min(count, MAX_RECORDS + 3):
        try:
            items.append(decoder.decode())
        except Exception:  # noqa: BLE001 - the broken item: `_locate` names it
            break
    return items + [_MISSING] * (count - len(items))


def _fault_error(payload: bytes, fault: _Fault) -> WireError:
    """The WireError of `fault` at its item's offset (or the fault `_locate` meets first)."""
    return WireError(fault.reason, _locate(payload, fault.path), fault.detail)


def _parse(msg: Any, table: ChannelTable) -> tuple[Reading, int]:
    """`(reading, length of its shortest encoding)` of a decoded message; `_Fault` for a
    broken rule, `_Odd` for an item of the wrong kind. The format's rules on values, in
    byte order; written for speed, as it runs for every value the gateway takes."""
    if type(msg) is not list:
        raise _Odd()
    count = len(msg)
    if count < 4:
        raise _Fault(_MESSAGE, "structure", f"message array has {count} items: needs version, "
                                            "seq, time and at least one record")
    if count - 3 > MAX_RECORDS:
        raise _Fault(_MESSAGE, "too_many_records",
                     f"message has {count - 3} records, at most {MAX_RECORDS}")
    version, seq, time_value = msg[0], msg[1], msg[2]
    if type(version) is not int:
        raise _Odd()
    if version != FORMAT_VERSION:
        raise _Fault((1, 0), "version", f"unsupported version {version}")
    if type(seq) is not int:
        raise _Odd()
    if not 0 <= seq <= MAX_SEQ:
        raise _Fault((1, 1), "range", f"seq must be 0-{MAX_SEQ}, got {seq}")
    if type(time_value) is not int:
        raise _Odd()
    keys = table.keys
    size = 1 + (count >= 24) + 1 + _head_len(seq) + \
        _head_len(time_value if time_value >= 0 else -1 - time_value)
    records = []
    last: dict[int, int] = {}  # channel key -> latest absolute value in this message
    elapsed = 0
    over = MAX_SEQ - seq + 1  # the first record whose seq would be over MAX_SEQ
    for r, rec in enumerate(msg[3:]):
        if type(rec) is not dict:
            raise _Odd()
        if r == over:
            raise _Fault((1, r + 3), "range", f"record {r}: seq {seq + r} is over {MAX_SEQ} "
                                              f"(message seq {seq} + {r})")
        pairs = len(rec)
        size += 1 if pairs < 24 else _head_len(pairs)
        values = {}
        # the head lengths are written out (not `_head_len`): this loop runs for every value
        for key, sent in rec.items():
            if type(key) is not int or key < 0:  # (every valid key is below 2^16)
                raise _Odd()
            if key and key not in keys:
                raise _Fault((2, r, key), "unknown_channel", f"record {r}: {table.key_problem(key)}")
            if type(sent) is not int:
                raise _Odd()
            m = sent if sent >= 0 else -1 - sent
            size += (1 if key < 24 else 2 if key < 0x100 else 3) + \
                (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else
                 5 if m < 0x100000000 else 9)
            if not key:
                if sent < 0:
                    raise _Fault((3, r, key), "range", f"record {r}: key 0 (seconds since the "
                                                     f"previous record) must be >= 0, got {sent}")
                elapsed += sent
                continue
            prev = last.get(key)
            value = sent if prev is None else sent + prev
            if not -VALUE_LIMIT < value < VALUE_LIMIT:
                how = f" (delta {sent} from {prev})" if prev is not None else ""
                raise _Fault((3, r, key), "range", f"record {r}: channel key {key} value {value}"
                                                 f"{how} is out of range: |v| must be < 2^53")
            values[key] = value
        if not values:
            raise _Fault((4, r), "structure", f"record {r} holds no channel value"
                                              f"{' (only key 0)' if pairs else ''}")
        last.update(values)
        records.append(_new(Record, (elapsed, values)))
    return _new(Reading, (seq, time_value, records)), size


def _locate(payload: bytes, want: tuple[int, ...] | None) -> int:
    """Walks the message's CBOR heads in byte order and raises the first fault of form it
    meets (not well-formed CBOR, an indefinite length, a repeated key, an item of the wrong
    kind, a trailing byte), or returns the offset of item `want` when it gets there first.
    With `want` None it walks to the end and returns -1 when it met no fault: a payload
    longer than its shortest encoding only by non-shortest heads."""
    p = _Parser(payload)
    major, info, count, pos = p.head(0, "message")
    if major != 4:
        raise WireError("structure", 0, "message must be an array [version, seq, time, "
                                        f"record...], got {p.describe(0, 'message')}")
    if info == 31:
        raise WireError("indefinite", 0, "message array has indefinite length: "
                                         "definite lengths only")
    if want == _MESSAGE:
        return 0
    for i in range(count):  # each item takes a byte at least: a bogus count meets the end
        off = pos
        if i < 3:
            _, pos = p.integer(off, _ITEM_NAMES[i])
            if want == (1, i):
                return off
            continue
        r = i - 3
        where = f"record {r}"
        major, info, pairs, pos = p.head(off, where)
        if major != 5:
            raise WireError("structure", off,
                            f"{where} must be a map, got {p.describe(off, where)}")
        if info == 31:
            raise WireError("indefinite", off,
                            f"{where} is an indefinite-length map: definite lengths only")
        if want == (1, i):
            return off
        seen: set[int] = set()
        for _ in range(pairs):
            key_off = pos
            if key_off < len(payload) and payload[key_off] >> 5 != 0:
                raise WireError("structure", key_off,
                                f"{where}: map key must be an unsigned integer, got "
                                f"{p.describe(key_off, where + ' map key')}")
            key, pos = p.integer(key_off, f"{where} map key")
            if key in seen:
                raise WireError("structure", key_off, f"{where}: key {key} appears twice")
            seen.add(key)
            if want == (2, r, key):
                return key_off
            val_off = pos
            what = f"{where}: key 0 (seconds since the previous record)" if key == 0 else \
                f"{where}: channel key {key} value"
            _, pos = p.integer(val_off, what)
            if want == (3, r, key):
                return val_off
        if want == (4, r):
            return off
    if pos != len(payload):
        extra = len(payload) - pos
        raise WireError("trailing", pos, f"{extra} byte{'s' if extra > 1 else ''} after the end "
                                         "of the message array")
    if want is not None:
        raise WireError("structure", 0, f"no item at {want} in the message")
    return -1


def senml_value(value: int, scale: int) -> int | float:
    """`value * 10**scale` as an exact decimal JSON number.

    An int when the result is whole (scale >= 0, or 1500 with scale -2 -> 15, as the vectors
    write it); otherwise the float nearest the exact decimal (2153, -2 -> 21.53), which
    prints back as that same decimal in JSON. (`value / 10**-scale` rounds correctly, exactly
    as `float(Decimal(...))` does, at a fraction of the cost: |value| < 2^53 and the divisor a
    power of ten are both exact doubles.)
    """
    if scale >= 0:
        return value * 10**scale
    div = 10**-scale
    return value / div if value % div else value // div


def _head_len(n: int) -> int:
    """Bytes of the shortest CBOR head carrying argument `n` (n >= 0)."""
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else \
        5 if n < 0x100000000 else 9


def _utc(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t} s"


def reading_time_error(payload: bytes, reading: Reading, *, received_at: int,
                       time_min: int = TIME_MIN_DEFAULT,
                       max_future_s: int = 86400) -> WireError | None:
    """The "time" error when a record of `reading` falls outside the plausible window
    `time_min` .. `received_at + max_future_s` (relative time anchored at `received_at`),
    else None. The offset is the time item's."""
    first = reading.base_time(received_at=received_at)
    last = first + reading.records[-1].elapsed
    low, high = time_min, received_at + max_future_s
    if low <= first and last <= high:
        return None
    bad = first if first < low else last
    if reading.time < 0:
        sent = f"time {reading.time} (clock not set, age {-1 - reading.time} s)"
    else:
        sent = f"time {reading.time}"
    hint = " (a clock in milliseconds?)" if bad > high and reading.time >= 1000 * low else ""
    return WireError("time", _locate(payload, (1, 2)),
                     f"{sent} puts a record at {_utc(bad)}, outside the plausible window "
                     f"{_utc(low)} .. {_utc(high)}{hint}")


def senml_name(node_id: str, channel_name: str, instance: int) -> str:
    """SenML `n`: `node:channel`, plus `:instance` for instance > 0."""
    name = f"{node_id}:{channel_name}"
    return f"{name}:{instance}" if instance else name


class Resolved(Sequence):
    """The SenML records of one reading record, as `Resolver.records` resolves them: a
    sequence of `{n, u, v, t}` dicts (`{n, v, t}` for a unitless channel), all at time `t`.

    It holds the record's wire values and the node's resolved names, units and scales
    (`names`: wire key -> (SenML n, unit, scale)); the dicts are made on first use
    (iterating, indexing, comparing), once. The sinks that format JSON (`gateway.sinks.
    pack_json`, the file sink's lines) read the wire values and names directly and make no
    dict at all: claiming and formatting a batch of 1 250 values (the drain bench's) took
    2.6-3.2 ms with the dicts made at the claim, and takes 2.2-2.4 ms so (same hour, claim
    and format alone). What the resolver guarantees, they rely on: the name
    `{node}:{channel}[:{instance}]`, the channel's unit, a wire integer below 2^53 and an
    integer absolute time. Typed, so that a sink tells them from records of any other origin
    (a dead letter queued again, an old outbox). Nothing changes them once made."""

    __slots__ = ("t", "values", "names", "_made")

    def __init__(self, t: int, values: dict[int, int],
                 names: dict[int, tuple[str, str, int]]) -> None:
        self.t = t
        self.values = values
        self.names = names  # holds every key of `values`
        self._made: list[dict[str, Any]] | None = None

    def records(self) -> list[dict[str, Any]]:
        """The SenML dicts (made on the first call)."""
        made = self._made
        if made is None:
            t, names = self.t, self.names
            made = []
            for key, value in self.values.items():
                name, unit, scale = names[key]
                if unit:
                    made.append({"n": name, "u": unit, "v": senml_value(value, scale), "t": t})
                else:
                    made.append({"n": name, "v": senml_value(value, scale), "t": t})
            self._made = made
        return made

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __getitem__(self, index):
        return self.records()[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, Resolved)):
            return self.records() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Resolved({self.records()!r})"


class Resolver:
    """Turns readings into SenML records: the one place the gateway does it, for every sink
    and for `meterlink decode`. Remembers each node's names, units and scales (bounded)."""

    NODES_KEPT = 10_000

    def __init__(self, table: ChannelTable) -> None:
        self.table = table
        # node -> wire key -> (SenML n, unit, scale)
        self._names: dict[str, dict[int, tuple[str, str, int]]] = {}

    def records(self, node_id: str, reading: Reading, *,
                received_at: int) -> list[Resolved]:
        """The SenML records `{n, u, v, t}` of each record of `reading`, in record order
        (`u` left out for a unitless channel: the alarm bits). `t` is absolute Unix seconds
        (`Reading.base_time`)."""
        names = self._names.get(node_id)
        if names is None:
            if len(self._names) >= self.NODES_KEPT:
                self._names.clear()
            names = self._names[node_id] = {}
        base = reading.base_time(received_at=received_at)
        out = []
        for elapsed, values in reading.records:
            for key in values:
                if key not in names:
                    channel, instance = self.table.lookup(key)
                    names[key] = (senml_name(node_id, channel.name, instance), channel.unit,
                                  channel.scale)
            out.append(Resolved(base + elapsed, values, names))
        return out


def resolve(node_id: str, reading: Reading, table: ChannelTable, *,
            received_at: int) -> list[dict[str, Any]]:
    """The SenML pack of a reading: one `{n, u, v, t}` per channel value, in record order.

    `t` is absolute Unix seconds; a relative-time message is anchored at `received_at`
    (first record time = `received_at - age`).
    """
    return [rec for senml in Resolver(table).records(node_id, reading, received_at=received_at)
            for rec in senml]


# ---- topics -------------------------------------------------------------------------------

PREFIX_RE = re.compile(r"^[a-z0-9_-]{1,16}$")
NODE_ID_MAX = 32
_NODE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_NODE_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def node_id_problem(node_id: str) -> tuple[int, str] | None:
    """`(character index, why)` when `node_id` breaks the node id rule, else None."""
    if not node_id:
        return 0, "node id is empty"
    if len(node_id) > NODE_ID_MAX:
        return NODE_ID_MAX, f"node id is {len(node_id)} characters, at most {NODE_ID_MAX}"
    if node_id[0] not in _NODE_FIRST:
        return 0, f"node id must start with a letter a-z or a digit, got {node_id[0]!r}"
    for i, ch in enumerate(node_id):
        if ch not in _NODE_CHARS:
            return i, f"node id may hold only a-z 0-9 _ -, got {ch!r}"
    return None


def parse_topic(topic: str, prefix: str) -> tuple[str, str]:
    """`(node_id, kind)` of a `{prefix}/{node_id}/{kind}` topic; TopicError otherwise."""
    parts = topic.split("/")
    if len(parts) != 3:
        at = len(topic) if len(parts) < 3 else len("/".join(parts[:3]))
        raise TopicError(topic, at, f"must be {prefix}/{{node_id}}/{{kind}}, "
                                    f"has {len(parts)} levels")
    head, node_id, kind = parts
    if head != prefix:
        raise TopicError(topic, 0, f"prefix must be {prefix!r}, got {head!r}")
    problem = node_id_problem(node_id)
    if problem:
        at, why = problem
        raise TopicError(topic, len(head) + 1 + at, why)
    if len(kind) != 1 or not "a" <= kind <= "z":
        raise TopicError(topic, len(head) + len(node_id) + 2,
                         f"kind must be one letter a-z, got {kind!r}")
    return node_id, kind
