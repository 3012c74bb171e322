"""Sink plugins: where batches from the outbox go. One module per sink, one registry.

    sink = make_sink(config_of_one_sink)     # SINKS[name](config)
    sink.open(); sink.deliver(batch); sink.close()

The seam is narrow on purpose: `deliver(batch)` returns when the upstream confirmed the whole
batch, raises `DeliveryFailed` for a transient failure (the batch is retried later with the same
items and the same idempotency key), `DeliveryRejected` for a permanent one (the batch goes
to the dead-letter table) and `DeliveryUnauthorized` when the upstream refuses the credential
(the batch stays, the sink pauses). A sink converts every item before it sends anything, with
`convert_each`: an item it cannot convert (a time past year 9999, a value JSON cannot hold)
raises `Unconvertible` naming it, and the batcher dead-letters that item alone and delivers the
rest, so one bad record never holds up the records behind it. Everything else (batching, retry timing, bookkeeping) is the
batcher's job (`gateway.batcher`), so a sink is only the protocol.

Each sink's keys are in `gateway.config.SINK_SCHEMAS` and documented in `gateway/sample.toml`.
Keeping them there rather than in a folder per sink means one loader checks every key of the
file with the same error messages, and one test checks the sample against all of them.

Items become SenML records (RFC 8428) the same way for every sink (`senml_records`): a reading
record gives one SenML record per channel value plus the meterlink fields `node`, `seq` and
`rid`; an alarm event gives one record `{"n": "node:alarm:leak", "vb": true, ...}` with `node`,
`event` and `rid`. `rid` is the stable record id: `{node}/{seq}/{channel}` for readings,
`{node}/alarm/{alarm}/{time in ms}/{raised|cleared}` for alarm events.

Those are resolved records (RFC 8428 section 4.6: full name, absolute time), what the `file`
sink writes one per line. The packs the `http` and `mqtt` sinks send (`senml_pack`) carry the
node's name prefix as base name `bn` and the reading's time as base time `bt` on the first
record of each item, so the records after it carry only their channel. Every unit sent is a
primary SenML unit: a secondary unit of the RFC 8798 registry (`dBm`) is sent converted to its
primary unit (`dBW`), so no pack needs the RFC 9100 feature bit in `bver`, and a consumer that
knows only RFC 8428 reads every pack. An absolute time below 2^28 cannot be sent at all (SenML
reads it as relative to now): such an item is unconvertible.
"""

from __future__ import annotations

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


def item_problem(item: Item) -> str | None:
    """The field at fault in an item a sink could not convert, named for the dead letter:
    `w1:temperature: v nan is not a finite number`, `...: t 253402300800 is past 9999`."""
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


def _registry() -> dict[str, Callable[[SinkConfig], Sink]]:
    from gateway.sinks.file import FileSink
    from gateway.sinks.history import HistorySink
    from gateway.sinks.http import HttpSink
    from gateway.sinks.mqtt import MqttSink
    from gateway.sinks.ngsild import NgsiLdSink
    return {"file": FileSink, "http": HttpSink, "ngsi-ld": NgsiLdSink, "mqtt": MqttSink,
            "history": HistorySink}


def make_sink(config: SinkConfig) -> Sink:
    return _registry()[config.name](config)
