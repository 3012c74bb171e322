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
from typing import Any, Callable, NamedTuple

from gateway.config import SinkConfig
from gateway.errors import Unconvertible
from gateway.outbox import Batch, Item
from gateway.wire import SENML_RELATIVE_LIMIT, Resolved, senml_value

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

    # A pipelined sink splits `deliver` in two: `prepare` converts the batch (raising
    # `Unconvertible` as `deliver` does, before anything is sent) and `send` puts it on its
    # way, returning the function that waits for the upstream's answer (raising what
    # `deliver` raises). The batcher claims and prepares the next batch in between, so that
    # work overlaps the round trip to the upstream.
    pipelined = False

    def prepare(self, batch: Batch) -> Any:
        raise NotImplementedError

    def send(self, prepared: Any) -> Callable[[], object]:
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


# a resolved channel (`Resolved.names` entry) -> `Format` (see `resolved_format`); unit ->
# `_unit(unit)`
_formats: dict[tuple[str, str, int], "Format"] = {}
_units: dict[str, tuple[str, int]] = {}
_NOT_PLAIN = ("", 0)
_CACHE_LIMIT = 100_000


def _plain(text: str) -> bool:
    """True when JSON writes `text` as it is, between quotes."""
    return _encode(text)[1:-1] == text


def _unit(unit: str) -> tuple[str, int]:
    """(the unit sent, the offset added to the value) for a stored unit (`PRIMARY_UNIT`)."""
    sent, offset = PRIMARY_UNIT.get(unit, (unit, 0))
    return (sent, offset) if _plain(sent) else _NOT_PLAIN


class Format(NamedTuple):
    """The JSON text around the values of one resolved channel of a node, made once."""

    node: str
    channel: str  # the SenML name less its `{node}:` prefix
    pack: str     # `"n":"{channel}","u":"{sent unit}","v":` in a pack (base name set)
    line: str     # `{"n":"{name}","u":"{sent unit}","v":` a file sink line begins with
    offset: int   # added to the value (a secondary unit sent as its primary, dBm -> dBW)
    scale: int    # the channel's decimal scale (`wire.senml_value`)


def resolved_format(node: str, how: tuple[str, str, int]) -> Format | None:
    """The `Format` of `node`'s records of resolved name, unit and scale `how` (a
    `Resolved.names` entry; unit "" for a unitless channel); None when JSON would escape
    something in them (the sink's general encoder writes the item then). Remembered per
    `how` (bounded): the sinks ask for every value."""
    fmt = _formats.get(how)
    if fmt is not None and fmt.node == node:
        return fmt
    name, unit, scale = how
    prefix = f"{node}:"
    channel = name[len(prefix):]
    if not name.startswith(prefix) or not _plain(name):
        return None
    if not unit:
        fmt = Format(node, channel, f'"n":"{channel}","v":', f'{{"n":"{name}","v":', 0, scale)
    else:
        sent_offset = _units.get(unit)
        if sent_offset is None:
            if len(_units) >= _CACHE_LIMIT:
                _units.clear()
            sent_offset = _units[unit] = _unit(unit)
        sent, offset = sent_offset
        if not sent:
            return None
        fmt = Format(node, channel, f'"n":"{channel}","u":"{sent}","v":',
                     f'{{"n":"{name}","u":"{sent}","v":', offset, scale)
    if len(_formats) >= _CACHE_LIMIT:
        _formats.clear()
    _formats[how] = fmt
    return fmt


def pack_json(item: Item) -> str:
    """`senml_pack(item)` as compact JSON text, its records without the enclosing brackets:
    what the `http` and `mqtt` sinks send, one item after the other. Byte for byte
    `_encode(senml_pack(item))[1:-1]` (tests/test_gw_senml.py checks it), and it raises what
    that raises (an unconvertible item).

    The records the resolver made (`wire.Resolved`: every reading the outbox hands out) are
    formatted straight from their wire values with each channel's `resolved_format`: building
    the pack's dicts and encoding them, or checking each value, cost two to three times as
    much, and this runs for every value sent. Anything else is encoded."""
    body = item.body
    if type(body) is Resolved and type(item.seq) is int and item.kind == "reading":
        text = _resolved_json(item.node, item.seq, body)
        if text is not None:
            return text
    return _encode(senml_pack(item))[1:-1]


def _resolved_json(node: str, seq: int, body: Resolved) -> str | None:
    """`pack_json` of a reading record the resolver made; None when a name or unit is one
    JSON escapes."""
    t = body.t
    if t < SENML_RELATIVE_LIMIT:  # (ingest never takes one; the encoder names it)
        return None
    names = body.names
    tail = f',"node":"{node}","seq":{seq},"rid":"{node}/{seq}/'
    lead = f'{{"bn":"{node}:","bt":{t!r},'
    parts = []
    for key, value in body.values.items():
        f = resolved_format(node, names[key])
        if f is None:
            return None
        v = senml_value(value, f.scale)
        if f.offset:
            v += f.offset
        parts.append(f'{lead}{f.pack}{v!r}{tail}{f.channel}"}}')
        lead = "{"
    return ",".join(parts)


def item_problem(item: Item) -> str | None:
    """The field at fault in an item a sink could not convert, named for the dead letter:
    `w1:temperature: v nan is not a finite number`, `...: t 253402300800 is past 9999`."""
    if isinstance(item.body, dict) and "unreadable" in item.body:  # see Outbox._resolve
        return str(item.body["unreadable"])
    records = item.body if item.kind == "reading" else [item.body]
    if not isinstance(records, (list, Resolved)):
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
