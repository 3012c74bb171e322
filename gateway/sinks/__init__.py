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
"""

from __future__ import annotations

import math
from typing import Any, Callable

from gateway.config import SinkConfig
from gateway.errors import Unconvertible
from gateway.outbox import Batch, Item

# What converting a malformed value raises (json: ValueError for NaN, datetime: ValueError or
# OverflowError past year 9999, a missing or mistyped field: KeyError, TypeError, ...).
CONVERSION_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError,
                     AttributeError)


class Sink:
    """Base class: `open`, `deliver`, `close`. Subclasses set `name`."""

    name = ""

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


def senml_records(item: Item) -> list[dict[str, Any]]:
    """The SenML records of one outbox item, with the meterlink fields."""
    if item.kind == "reading":
        return [{**r, "node": item.node, "seq": item.seq,
                 "rid": record_id(item.node, item.seq, r["n"])} for r in item.body]
    body = item.body
    rec: dict[str, Any] = {"n": f"{body['node']}:alarm:{body['alarm']}", "vb": body["active"],
                           "t": body["t"], "node": body["node"], "event": "alarm",
                           "rid": event_id(body)}
    if body.get("detail"):
        rec["vs"] = body["detail"]
    return rec and [rec]


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
    from gateway.sinks.http import HttpSink
    from gateway.sinks.mqtt import MqttSink
    from gateway.sinks.ngsild import NgsiLdSink
    return {"file": FileSink, "http": HttpSink, "ngsi-ld": NgsiLdSink, "mqtt": MqttSink}


def make_sink(config: SinkConfig) -> Sink:
    return _registry()[config.name](config)
