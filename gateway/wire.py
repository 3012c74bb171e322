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
from dataclasses import dataclass
from typing import Any, Mapping

import cbor2

from gateway.channels import ChannelTable, default_table
from gateway.errors import TopicError, WireError

FORMAT_VERSION = 1
MAX_PAYLOAD = 4096
MAX_RECORDS = 64
MAX_SEQ = 2**32 - 1
VALUE_LIMIT = 2**53  # |value| must be below: exact in a JSON (IEEE double) number
# Record times the gateway takes (see `time_problem`): SenML (RFC 8428 4.5.3) reads a time
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


@dataclass(frozen=True, slots=True)
class Record:
    """One reading record, with its deltas resolved.

    `elapsed` is seconds from the message `time` to this record (the sum of the key-0 deltas up
    to and including this record); `values` maps channel keys to absolute values, in wire
    order; `offset` is the byte offset of the record's map in the payload.
    """

    index: int
    seq: int
    elapsed: int
    values: Mapping[int, int]
    offset: int


@dataclass(frozen=True, slots=True)
class Reading:
    """A decoded reading message: `time` as sent (negative: clock not set, `-1 - age`)."""

    version: int
    seq: int
    time: int
    records: tuple[Record, ...]
    size: int

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
        """Absolute Unix time that record elapsed times count from."""
        return received_at - (-1 - self.time) if self.time < 0 else self.time

    def record_time(self, record: Record, *, received_at: int) -> int:
        """Absolute Unix time of `record` (relative time is anchored at `received_at`)."""
        return self.base_time(received_at=received_at) + record.elapsed


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


def decode_reading(payload: bytes, table: ChannelTable | None = None) -> Reading:
    """Decodes a reading message (`r` topic payload) and resolves its deltas.

    Raises WireError (reason class, byte offset, detail) for anything wire format v1 rejects.
    `table` defaults to the table shipped with the gateway.
    """
    table = table if table is not None else default_table()
    payload = bytes(payload)
    size = len(payload)
    if size == 0:
        raise WireError("empty", 0, "payload is empty")
    if size > MAX_PAYLOAD:
        raise WireError("too_large", 0,
                        f"payload too large: {size} bytes, at most {MAX_PAYLOAD}")
    p = _Parser(payload)

    major, info, count, pos = p.head(0, "message")
    if major != 4:
        raise WireError("structure", 0, "message must be an array [version, seq, time, "
                                        f"record...], got {p.describe(0, 'message')}")
    if info == 31:
        raise WireError("indefinite", 0, "message array has indefinite length: "
                                         "definite lengths only")
    if count < 4:
        raise WireError("structure", 0, f"message array has {count} items: needs version, "
                                        "seq, time and at least one record")
    if count - 3 > MAX_RECORDS:
        raise WireError("too_many_records", 0,
                        f"message has {count - 3} records, at most {MAX_RECORDS}")

    off = pos
    version, pos = p.integer(off, "version")
    if version != FORMAT_VERSION:
        raise WireError("version", off, f"unsupported version {version}")
    off = pos
    seq, pos = p.integer(off, "seq")
    if not 0 <= seq <= MAX_SEQ:
        raise WireError("range", off, f"seq must be 0-{MAX_SEQ}, got {seq}")
    time_value, pos = p.integer(pos, "time")

    records: list[Record] = []
    last: dict[int, int] = {}  # channel key -> latest absolute value in this message
    elapsed = 0
    for index in range(count - 3):
        rec_off = pos
        where = f"record {index}"
        major, info, pairs, pos = p.head(rec_off, where)
        if major != 5:
            raise WireError("structure", rec_off,
                            f"{where} must be a map, got {p.describe(rec_off, where)}")
        if info == 31:
            raise WireError("indefinite", rec_off,
                            f"{where} is an indefinite-length map: definite lengths only")
        if seq + index > MAX_SEQ:
            raise WireError("range", rec_off, f"{where}: seq {seq + index} is over {MAX_SEQ} "
                                              f"(message seq {seq} + {index})")
        values: dict[int, int] = {}
        delta = 0
        seen_keys: set[int] = set()
        for _ in range(pairs):
            key_off = pos
            if key_off < len(payload) and payload[key_off] >> 5 != 0:
                raise WireError("structure", key_off,
                                f"{where}: map key must be an unsigned integer, got "
                                f"{p.describe(key_off, where + ' map key')}")
            key, pos = p.integer(key_off, f"{where} map key")
            if key in seen_keys:
                raise WireError("structure", key_off, f"{where}: key {key} appears twice")
            seen_keys.add(key)
            val_off = pos
            if key == 0:
                what = f"{where}: key 0 (seconds since the previous record)"
                delta, pos = p.integer(val_off, what)
                if delta < 0:
                    raise WireError("range", val_off, f"{what} must be >= 0, got {delta}")
                continue
            problem = table.key_problem(key)
            if problem:
                raise WireError("unknown_channel", key_off, f"{where}: {problem}")
            sent, pos = p.integer(val_off, f"{where}: channel key {key} value")
            value = sent + last[key] if key in last else sent
            if not -VALUE_LIMIT < value < VALUE_LIMIT:
                how = f" (delta {sent} from {last[key]})" if key in last else ""
                raise WireError("range", val_off, f"{where}: channel key {key} value {value}"
                                                  f"{how} is out of range: |v| must be < 2^53")
            values[key] = value
        if not values:
            raise WireError("structure", rec_off, f"{where} holds no channel value"
                                                  f"{' (only key 0)' if pairs else ''}")
        elapsed += delta
        last.update(values)
        records.append(Record(index=index, seq=seq + index, elapsed=elapsed, values=values,
                              offset=rec_off))

    if pos != size:
        extra = size - pos
        raise WireError("trailing", pos, f"{extra} byte{'s' if extra > 1 else ''} after the end "
                                         "of the message array")
    return Reading(version=version, seq=seq, time=time_value, records=tuple(records),
                   size=size)


def senml_value(value: int, scale: int) -> int | float:
    """`value * 10**scale` as an exact decimal JSON number.

    An int when the result is whole (scale >= 0, or 1500 with scale -2 -> 15, as the vectors
    write it); otherwise the float nearest the exact decimal (2153, -2 -> 21.53), which
    prints back as that same decimal in JSON. (`float("2153e-2")` rounds correctly, exactly
    as `float(Decimal(...))` does, at a fraction of the cost.)
    """
    if scale >= 0:
        return value * 10**scale
    whole, rest = divmod(value, 10**-scale)
    if not rest:
        return whole
    return float(f"{value}e{scale}")


def _head_len(n: int) -> int:
    """Bytes of the shortest CBOR head carrying argument `n` (n >= 0)."""
    return 1 if n < 24 else 2 if n < 0x100 else 3 if n < 0x10000 else \
        5 if n < 0x100000000 else 9


def fast_decode(payload: bytes, keys: frozenset[int] | set[int]
                ) -> tuple[int, int, list[tuple[int, dict[int, int]]]] | None:
    """The gateway's hot path: `(seq, time, [(elapsed, {key: absolute value}), ...])` of a
    well-formed reading message, or None to say "use `decode_reading`".

    None does not mean invalid: it means "not the plain shape", and `decode_reading` then
    accepts it or names the error. What this accepts, `decode_reading` accepts with the same
    numbers (the test vectors check both): the payload is decoded by cbor2's C decoder and
    then held to wire format v1 here, and its length must equal the length of the shortest
    definite-length encoding of what was decoded. Any repeated map key (lost by the decode),
    indefinite length, tag, non-shortest head or trailing byte makes the payload longer than
    that, so none of them gets through. `keys` holds the valid channel keys of the table.
    """
    try:  # no text belongs in this shape: replacement (no leak, _REPLACEMENT) is enough
        msg = cbor2.loads(payload, str_errors="replace")
    except Exception:  # noqa: BLE001 - anything odd: the careful decoder names it
        return None
    if type(msg) is not list:
        return None
    count = len(msg)
    if count < 4 or count - 3 > MAX_RECORDS:
        return None
    version, seq, time_value = msg[0], msg[1], msg[2]
    if version != FORMAT_VERSION or type(version) is not int or type(seq) is not int \
            or type(time_value) is not int or seq < 0 or seq + count - 4 > MAX_SEQ:
        return None
    size = 1 + 1 + _head_len(seq) + _head_len(time_value if time_value >= 0 else -1 - time_value)
    if count >= 24:
        size += 1
    records = []
    last: dict[int, int] = {}
    elapsed = 0
    # the head lengths are written out (not `_head_len`): this loop runs for every value
    for rec in msg[3:]:
        if type(rec) is not dict:
            return None
        pairs = len(rec)
        size += 1 if pairs < 24 else _head_len(pairs)
        values = {}
        for key, sent in rec.items():
            if type(key) is not int or type(sent) is not int:
                return None
            if key == 0:
                if sent < 0:
                    return None
                elapsed += sent
                size += 2 if sent < 24 else 1 + _head_len(sent)
                continue
            if key not in keys:
                return None
            m = sent if sent >= 0 else -1 - sent
            size += (1 if key < 24 else 2 if key < 0x100 else 3) + \
                (1 if m < 24 else 2 if m < 0x100 else 3 if m < 0x10000 else
                 5 if m < 0x100000000 else 9)
            prev = last.get(key)
            value = sent if prev is None else sent + prev
            if not -VALUE_LIMIT < value < VALUE_LIMIT:
                return None
            values[key] = value
        if not values:
            return None
        last.update(values)
        records.append((elapsed, values))
    if size != len(payload):
        return None
    return seq, time_value, records


def _utc(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t} s"


def time_problem(payload: bytes, time_value: int, first: int, last: int, *, low: int,
                 high: int) -> WireError | None:
    """The "time" error when record times `first`..`last` (absolute, from the message's
    `time_value`) leave the window `low`..`high`, else None. The offset is the time item's."""
    if low <= first and last <= high:
        return None
    p = _Parser(payload)
    _, _, _, off = p.head(0, "message")
    for what in ("version", "seq"):
        off = p.head(off, what)[3]
    bad = first if first < low else last
    if time_value < 0:
        sent = f"time {time_value} (clock not set, age {-1 - time_value} s)"
    else:
        sent = f"time {time_value}"
    hint = " (a clock in milliseconds?)" if bad > high and time_value >= 1000 * low else ""
    return WireError("time", off, f"{sent} puts a record at {_utc(bad)}, outside the "
                                  f"plausible window {_utc(low)} .. {_utc(high)}{hint}")


def reading_time_error(payload: bytes, reading: Reading, *, received_at: int,
                       time_min: int = TIME_MIN_DEFAULT,
                       max_future_s: int = 86400) -> WireError | None:
    """`time_problem` of a decoded reading, with relative time anchored at `received_at`."""
    first = reading.base_time(received_at=received_at)
    return time_problem(payload, reading.time, first, first + reading.records[-1].elapsed,
                        low=time_min, high=received_at + max_future_s)


def senml_name(node_id: str, channel_name: str, instance: int) -> str:
    """SenML `n`: `node:channel`, plus `:instance` for instance > 0."""
    name = f"{node_id}:{channel_name}"
    return f"{name}:{instance}" if instance else name


def resolve_records(node_id: str, reading: Reading, table: ChannelTable, *,
                    received_at: int) -> list[tuple[Record, list[dict[str, Any]]]]:
    """Each record of `reading` with its SenML records (see `resolve`)."""
    base = reading.base_time(received_at=received_at)
    out = []
    for record in reading.records:
        t = base + record.elapsed
        senml = []
        for key, value in record.values.items():
            channel, instance = table.lookup(key)
            rec = {"n": senml_name(node_id, channel.name, instance), "u": channel.unit,
                   "v": senml_value(value, channel.scale), "t": t}
            if not channel.unit:  # a unitless channel (the alarm bits): SenML omits "u"
                del rec["u"]
            senml.append(rec)
        out.append((record, senml))
    return out


def resolve(node_id: str, reading: Reading, table: ChannelTable, *,
            received_at: int) -> list[dict[str, Any]]:
    """The SenML pack of a reading: one `{n, u, v, t}` per channel value, in record order.

    `t` is absolute Unix seconds; a relative-time message is anchored at `received_at`
    (first record time = `received_at - age`).
    """
    return [item for _, senml in resolve_records(node_id, reading, table,
                                                  received_at=received_at)
            for item in senml]


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
