"""What every sink shares: the `Sink` base class, converting items, SenML records and packs.

    class FileSink(Sink): ...                # gateway/sinks/file.py
    records = convert_each(batch, senml_records)

The seam is narrow on purpose: `deliver(batch)` returns when the upstream confirmed the whole
batch, raises `DeliveryFailed` for a transient failure (the batch is retried later with the same
items and the same idempotency key), `DeliveryRejected` for a permanent one (the batch goes
to the dead-letter table) and `DeliveryUnauthorized` when the upstream refuses the credential
(the batch stays, the sink pauses). A sink converts every item before it sends anything, with
`convert_each`: an item it cannot convert (a time past year 9999, a value JSON cannot hold)
raises `Unconvertible` naming it, and the batcher dead-letters that item alone and delivers the
rest, so one bad record never holds up the records behind it. Everything else (batching, retry timing, bookkeeping) is the
batcher's job (`gateway.batcher`), so a sink is only the protocol.

Items become SenML records (RFC 8428) the same way for every sink (`senml_records`): a reading
record gives one SenML record per channel value plus the meterlink fields `node`, `seq` and
`rid`; an alarm event gives one record `{"n": "node:alarm:leak", "vb": true, ...}` with `node`,
`event` and `rid` (and `readings`, the SenML records that decided it, for an early-warning
rule's alarm). `rid` is the stable record id: `{node}/{seq}/{channel}` for readings,
`{node}/alarm/{alarm}/{time in ms}/{raised|cleared}` for alarm events.

Those are resolved records (RFC 8428 section 4.6: full name, absolute time), what the `file`
sink writes one per line. The packs the `http` and `mqtt` sinks send (`senml_pack`, as JSON
text `pack_json`) carry the node's name prefix as base name `bn` and the reading's time as
base time `bt` on the first record of each item, so the records after it carry only their
channel. Every unit sent is a primary SenML unit: a secondary unit of the RFC 8798 registry
(`dBm`) is sent converted to its primary unit (`dBW`), so no pack needs the RFC 9100 feature
bit in `bver`, and a consumer that knows only RFC 8428 reads every pack. An absolute time
below 2^28 cannot be sent at all (SenML reads it as relative to now): such an item is
unconvertible.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from gateway.config import SinkConfig
from gateway.errors import Unconvertible
from gateway.outbox import Batch, Item
from gateway.wire import SENML_RELATIVE_LIMIT

# What converting a malformed value raises (json: ValueError for NaN, datetime: ValueError or
# OverflowError past year 9999, a missing or mistyped field: KeyError, TypeError, ...).
CONVERSION_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError,
                     AttributeError)


class Sink:
    """Base class: `open`, `deliver`, `close`. Subclasses set `name`."""

    name = ""
    # A background sink yields to ingest (gateway.batcher.QUIET_S): its deliveries wait for a
    # quiet moment, bounded, so that they never slow the acknowledgements to the nodes.
    background = False

    def __init__(self, config: SinkConfig) -> None:
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def open(self) -> None:
        """Prepares the sink (files, connections); SinkError when it cannot."""

    def deliver(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Releases what `open` took."""

    def resume(self) -> None:
        """Tells the batcher the upstream is back (the batcher puts its own in place)."""

    def credential_changed(self) -> bool:
        """True when the sink's credential changed since the last delivery tried (a token
        file rewritten): a sink paused on a refused credential probes again at once."""
        return False


def record_id(node: str, seq: int, name: str) -> str:
    channel = name.split(":", 1)[1] if ":" in name else name
    return f"{node}/{seq}/{channel}"


def event_id(body: dict[str, Any]) -> str:
    state = "raised" if body["active"] else "cleared"
    return f"{body['node']}/alarm/{body['alarm']}/{int(round(body['t'] * 1000))}/{state}"


# Secondary units (RFC 8798 registry) -> (primary unit, offset added to the value): the scale of
# every registered secondary unit we send is 1.
PRIMARY_UNIT = {"dBm": ("dBW", -30)}

_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _absolute(rec: dict[str, Any]) -> dict[str, Any]:
    t = rec.get("t")
    if type(t) in (int, float) and t < SENML_RELATIVE_LIMIT:
        raise ValueError(f"{rec.get('n')}: t {t} is below 2^28, which SenML reads as a time "
                         "relative to now")
    return rec


def senml_records(item: Item) -> list[dict[str, Any]]:
    """The resolved SenML records of one outbox item, with the meterlink fields."""
    if item.kind == "reading":
        out = []
        for r in item.body:
            rec = _absolute({**r, "node": item.node, "seq": item.seq,
                             "rid": record_id(item.node, item.seq, r["n"])})
            primary = PRIMARY_UNIT.get(rec.get("u"))
            if primary is not None:
                rec["u"], rec["v"] = primary[0], rec["v"] + primary[1]
            out.append(rec)
        return out
    body = item.body
    rec: dict[str, Any] = {"n": f"{body['node']}:alarm:{body['alarm']}", "vb": body["active"],
                           "t": body["t"], "node": body["node"], "event": "alarm",
                           "rid": event_id(body)}
    if body.get("detail"):
        rec["vs"] = body["detail"]
    if body.get("readings"):  # what decided an early-warning rule (gateway/rules.py)
        rec["readings"] = body["readings"]
    return [_absolute(rec)]


def senml_pack(item: Item) -> list[dict[str, Any]]:
    """The records of one item for a SenML pack: the first carries `bn` = `{node}:` and `bt`
    = its time, and a record repeats neither (a later one with another time sets `bt` again).
    An item's records never lean on base values set by the item before it, so one item can be
    left out of a pack (`convert_each`) without changing how the others resolve."""
    out = []
    bn = bt = None
    for rec in senml_records(item):
        name, t = rec.pop("n"), rec.pop("t")
        prefix = f"{rec['node']}:"
        head: dict[str, Any] = {}
        if not name.startswith(prefix):
            prefix = ""
        if prefix != bn:
            head["bn"] = bn = prefix
        if t != bt:
            head["bt"] = bt = t
        head["n"] = name[len(prefix):]
        out.append({**head, **rec})
    return out


# the shapes of a stored reading record `pack_json` and the file sink format themselves
FULL = ("n", "u", "v", "t")
UNITLESS = ("n", "v", "t")
# node -> SenML n -> its channel, or "" (see `channel_of`); unit -> `_unit(unit)`
_channels: dict[str, dict[str, str]] = {}
_units: dict[str, tuple[str, int]] = {}
_NOT_PLAIN = ("", 0)
_CACHE_LIMIT = 100_000


def _plain(text: str) -> bool:
    """True when JSON writes `text` as it is, between quotes."""
    return _encode(text)[1:-1] == text


def channel_of(node: str, name: Any) -> str:
    """The channel of SenML name `name` (`{node}:{channel}`, as the resolver builds it), or
    "" when the name is not that or JSON escapes something in it: then the sink's general
    encoder writes the record. Remembered per node (bounded): the fast formatters of the
    `http`, `mqtt` and `file` sinks ask for every value."""
    names = _channels.get(node)
    if names is None:
        if type(node) is not str or ":" in node or not _plain(node):
            return ""
        if len(_channels) >= _CACHE_LIMIT:
            _channels.clear()
        names = _channels[node] = {}
    channel = names.get(name)
    if channel is None:
        if type(name) is not str:
            return ""
        if len(names) >= _CACHE_LIMIT:
            names.clear()
        prefix = node + ":"
        channel = name[len(prefix):]
        channel = names[name] = channel if name.startswith(prefix) and _plain(channel) else ""
    return channel


def _unit(unit: str) -> tuple[str, int]:
    """(the unit sent, the offset added to the value) for a stored unit (`PRIMARY_UNIT`)."""
    sent, offset = PRIMARY_UNIT.get(unit, (unit, 0))
    return (sent, offset) if _plain(sent) else _NOT_PLAIN


def pack_json(item: Item) -> str:
    """`senml_pack(item)` as compact JSON text, its records without the enclosing brackets:
    what the `http` and `mqtt` sinks send, one item after the other. Byte for byte
    `_encode(senml_pack(item))[1:-1]` (tests/test_gw_senml.py checks it), and it raises what
    that raises (an unconvertible item).

    A reading of the usual shape (records `{n, u, v, t}` or `{n, v, t}` named `{node}:...`,
    finite numbers, nothing JSON escapes) is formatted straight from its stored records, as
    the file sink writes its lines: building the pack's dicts and encoding them cost three
    times as much, and this runs for every value sent. Anything else is encoded."""
    if item.kind == "reading":
        text = _reading_json(item)
        if text is not None:
            return text
    return _encode(senml_pack(item))[1:-1]


def _reading_json(item: Item) -> str | None:
    """`pack_json` of a reading of the usual shape; None when it is not."""
    node, seq = item.node, item.seq
    if type(seq) is not int:
        return None
    tail = f',"node":"{node}","seq":{seq},"rid":"{node}/{seq}/'
    parts = []
    bt = None
    isfinite = math.isfinite
    for r in item.body:
        if type(r) is not dict:
            return None
        shape = tuple(r)
        full = shape == FULL
        if not full and shape != UNITLESS:
            return None
        v, t = r["v"], r["t"]
        channel = channel_of(node, r["n"])
        if not channel:
            return None
        tv, tt = type(v), type(t)
        if not (tv is int or (tv is float and isfinite(v))) \
                or not (tt is int or (tt is float and isfinite(t))) or t < SENML_RELATIVE_LIMIT:
            return None
        if full:
            u = r["u"]
            how = _units.get(u) if type(u) is str else _NOT_PLAIN
            if how is None:
                if len(_units) >= _CACHE_LIMIT:
                    _units.clear()
                how = _units[u] = _unit(u)
            sent, offset = how
            if not sent:
                return None
            if offset:
                v += offset
            values = f'"n":"{channel}","u":"{sent}","v":{v!r}'
        else:
            values = f'"n":"{channel}","v":{v!r}'
        if bt is None:
            bt = t
            parts.append(f'{{"bn":"{node}:","bt":{t!r},{values}{tail}{channel}"}}')
        elif t != bt:
            bt = t
            parts.append(f'{{"bt":{t!r},{values}{tail}{channel}"}}')
        else:
            parts.append(f'{{{values}{tail}{channel}"}}')
    return ",".join(parts)


def item_problem(item: Item) -> str | None:
    """The field at fault in an item a sink could not convert, named for the dead letter:
    `w1:temperature: v nan is not a finite number`, `...: t 253402300800 is past 9999`."""
    if isinstance(item.body, dict) and "unreadable" in item.body:  # see Outbox._resolve
        return str(item.body["unreadable"])
    records = item.body if item.kind == "reading" else [item.body]
    if not isinstance(records, list):
        return f"body is {type(records).__name__}, not a list of records"
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            return f"record {i} is {type(rec).__name__}, not an object"
        name = rec.get("n", rec.get("alarm", f"record {i}"))
        for key in ("v", "t"):
            value = rec.get(key)
            if type(value) is float and not math.isfinite(value):
                return f"{name}: {key} {value} is not a finite number"
        t = rec.get("t")
        if type(t) in (int, float) and not -62135596800 <= t < 253402300800:
            return f"{name}: t {t} is outside years 1-9999"
        if type(t) in (int, float) and t < SENML_RELATIVE_LIMIT:
            return f"{name}: t {t} is below 2^28 (SenML would read it as relative)"
    return None


def convert_each(batch: Batch, convert: Callable[[Item], Any]) -> list[Any]:
    """`convert(item)` of every item in order; `Unconvertible` naming each item that raised
    one of `CONVERSION_ERRORS` (with the reason), so the batcher can set those apart."""
    out = []
    bad = []
    for item in batch.items:
        try:
            out.append(convert(item))
        except CONVERSION_ERRORS as exc:
            problem = item_problem(item)
            error = f"{type(exc).__name__}: {exc}"
            bad.append((item, f"{problem} ({error})" if problem else error))
    if bad:
        raise Unconvertible(bad)
    return out
